"""`make provision` and what it runs (python -m provision.run): unattended runs, --limit typos, the debug log, and
its own small environment. Against pyinfra's @fake connector: nothing can be changed anywhere."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .provision_harness import PYINFRA, REPO_ROOT, write_hosts_file
from .test_provision_bad_data import FAKE_UBUNTU

pytestmark = pytest.mark.skipif(not PYINFRA.exists(), reason=f"pyinfra is not installed at {PYINFRA}")

NODES = {
    "mi300x": [{"name": "@fake/gpu-mi300x-01", "data": FAKE_UBUNTU}],
    "nvidia": [{"name": "@fake/gpu-h100-01", "data": FAKE_UBUNTU}],
}


def run_provision(tmp_path: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """python -m provision.run as `make provision` calls it, stdin not a terminal (as in CI)."""
    hosts = write_hosts_file(tmp_path / "hosts.yaml", NODES)
    clean = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    return subprocess.run(
        [sys.executable, "-m", "provision.run", *args],
        cwd=cwd or REPO_ROOT,
        env={**clean, "PROVISION_HOSTS": str(hosts), "NO_COLOR": "1", "PYTHONPATH": str(REPO_ROOT), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def output(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


def test_an_unattended_run_answers_pyinfras_prompt_itself(tmp_path):
    run = run_provision(tmp_path)
    assert run.returncode == 0, output(run)[-3000:]
    assert "--> Starting operation" in output(run)
    assert "EOFError" not in output(run) and "Press enter" not in output(run)


@pytest.mark.parametrize("limits", [["--limit", "nosuch-host"], ["--limit", "mi300x", "--limit=gpu-h100-0l"]])
def test_a_limit_that_matches_no_host_is_refused(tmp_path, limits):
    run = run_provision(tmp_path, *limits)
    assert run.returncode == 2, output(run)[-3000:]
    unmatched = "nosuch-host" if "nosuch-host" in limits else "gpu-h100-0l"
    assert f"provision: --limit {unmatched} matches no host in {tmp_path / 'hosts.yaml'}; nothing was run" in output(
        run
    )
    assert "Loading inventory" not in output(run)  # pyinfra itself never started


@pytest.mark.parametrize(
    ("limit", "hosts"),
    [("mi300x", ["mi300x"]), ("@fake/gpu-h100-01", ["h100"]), ("@fake/gpu-*", ["mi300x", "h100"])],
)
def test_a_limit_naming_a_group_a_host_or_a_wildcard_runs(tmp_path, limit, hosts):
    run = run_provision(tmp_path, "--dry", "--limit", limit)
    assert run.returncode == 0, output(run)[-3000:]
    assert "--> Detected changes" in output(run), output(run)[-3000:]
    for model in ("mi300x", "h100"):
        ready = re.search(rf"\[@fake/gpu-{model}-01\]\s+Ready", output(run))
        assert bool(ready) is (model in hosts), model


def test_pyinfras_debug_log_is_not_left_in_the_working_directory(tmp_path):
    logs, work = tmp_path / "logs", tmp_path / "work"
    work.mkdir()

    # A --data value without "=": an internal error in pyinfra's CLI, after which it writes pyinfra-debug.log.
    run = run_provision(tmp_path, "--data", "no-equals-sign", cwd=work, PROVISION_LOG_DIR=str(logs))

    assert run.returncode != 0
    assert not (work / "pyinfra-debug.log").exists()
    assert "ValueError" in (logs / "pyinfra-debug.log").read_text()
    assert f"provision: pyinfra's traceback log is {logs / 'pyinfra-debug.log'}" in output(run)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_provision_uses_its_own_environment_and_the_wrapper():
    plan = subprocess.run(
        ["make", "-n", "provision", "PROVISION_ARGS=--dry"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "bash scripts/ci/provision-env.sh" in plan
    assert ".venv-provision/bin/python -m provision.run --data kit_image_name=clinical-finetune-kit --dry" in plan
    assert "bootstrap.sh" not in plan and ".venv/bin/pyinfra" not in plan


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_provision_environment_is_pinned_and_holds_pyinfras_dependencies():
    pins = requirement_pins(REPO_ROOT / "requirements" / "provision.txt")
    dev = (REPO_ROOT / "requirements" / "dev.txt").read_text()
    for name in ("pyinfra", "pyyaml"):
        assert pins[name] == distribution(name).version and f"{name}=={pins[name]}" in dev.lower()
    assert not {"torch", "transformers"} & set(pins)
    missing = []
    for name in ("pyinfra", *pins):
        for requirement in distribution(name).requires or []:
            req = Requirement(requirement)
            if not (req.marker and not req.marker.evaluate({"extra": ""})):
                if req.name.lower().replace("_", "-") not in pins:
                    missing.append(f"{req.name} (for {name})")
    assert not missing, f"requirements/provision.txt lacks {missing}"


def test_provisioning_imports_nothing_beyond_that_environment():
    allowed = {"pyinfra", "pyinfra_cli", "yaml", "provision", "kit"} | set(sys.stdlib_module_names)
    sources = [*(REPO_ROOT / "provision").rglob("*.py"), REPO_ROOT / "kit" / "__init__.py", REPO_ROOT / "kit" / "stack.py"]
    outside = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            outside.update(f"{source.name}: {name}" for name in names if name.split(".")[0] not in allowed)
    assert not outside
    assert re.search(r"^pyyaml==", (REPO_ROOT / "requirements" / "provision.txt").read_text(), re.MULTILINE)
