"""The GPU smoke workflow templates: valid YAML, the structure each CI system needs, scripts that parse."""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "ci-templates" / "github" / "gpu-smoke.yml"
GITLAB = ROOT / "ci-templates" / "gitlab" / "gpu-smoke.yml"


def load(path):
    return yaml.safe_load(path.read_text())


def bash_parses(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def assert_runs_checks(script: str) -> None:
    assert "python -m checks --json --require-gpu > checks.json" in script
    assert "--device /dev/kfd --device /dev/dri --group-add video" in script
    assert "stat -c '%g' /dev/kfd /dev/dri/renderD*" in script  # the host's render GID, never hard-coded
    assert "--gpus all" in script
    assert "exit ${status}" in script


def test_github_workflow_structure():
    wf = load(GITHUB)
    job = wf["jobs"]["checks"]
    assert job["strategy"]["matrix"]["vendor"] == ["rocm", "cuda"]
    assert job["strategy"]["fail-fast"] is False
    assert job["runs-on"] == ["self-hosted", "linux", "${{ matrix.vendor }}"]
    steps = {s.get("name", s.get("uses")): s for s in job["steps"]}
    run = steps["Run the environment checks on the GPUs"]["run"]
    assert_runs_checks(run)
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "checks.json"
    for step in job["steps"]:
        if "uses" in step:  # actions pinned by commit, not by a movable tag
            ref = step["uses"].split("@", 1)[1]
            assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), step["uses"]
        if "run" in step:
            assert "${{" not in step["run"], "expressions in run scripts invite injection: use env"
            bash_parses(step["run"])
    # YAML 1.1 reads a bare `on:` key as True; GitHub reads it as the trigger list. Either way it must be there.
    assert wf.get("on", wf.get(True))


def test_gitlab_pipeline_structure():
    ci = load(GITLAB)
    base = ci[".gpu-smoke"]
    assert base["stage"] in ci["stages"]
    assert base["artifacts"]["when"] == "always" and base["artifacts"]["paths"] == ["checks.json"]
    script = "\n".join(base["script"])
    assert_runs_checks(script)
    bash_parses(script)
    for vendor in ("rocm", "cuda"):
        job = ci[f"gpu-smoke-{vendor}"]
        assert job["extends"] == ".gpu-smoke" and job["tags"] == [vendor] and job["variables"]["VENDOR"] == vendor


@pytest.mark.parametrize("path", [GITHUB, GITLAB])
def test_templates_build_each_vendor_image_through_make(path):
    # The Dockerfiles take their versions from stack.env only through the Makefile; a bare docker build stops.
    text = path.read_text()
    assert 'make "image-${VENDOR}"' in text and "docker pull" in text and "docker build" not in text
