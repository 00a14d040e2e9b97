"""python -m checks as users and CI run it: a real run on this CPU machine, plus the runner's semantics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import checks.__main__ as cli
from checks import catalog, core
from checks.core import FAIL, PASS, SKIP, WARN, Check, Context, Result

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECKS = {"platform.driver", "numerics.matmul_bf16", "numerics.flash_attention", "numerics.bnb_nf4",
              "numerics.triton_rmsnorm", "collectives.all_reduce"}
KEYS = {"name", "status", "value", "detail", "hint", "duration", "data"}


def run_cli(*args, env=None):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("KIT_BUILD_INFO", None)
    return subprocess.run([sys.executable, "-m", "checks", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cpu_run():
    return run_cli("--json")


def test_real_cpu_run_prints_only_json_and_exit_code_follows_failures(cpu_run):
    results = json.loads(cpu_run.stdout)  # stdout holds the JSON alone: logs went to stderr
    assert [r["name"] for r in results] == [c.name for c in catalog.all_checks()]
    assert all(set(r) == KEYS for r in results)
    failed = [r["name"] for r in results if r["status"] == FAIL]
    assert cpu_run.returncode == (1 if failed else 0), (failed, cpu_run.stderr[-2000:])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="asserts the CPU-only behaviour")
def test_real_cpu_run_skips_gpu_checks_with_a_reason(cpu_run):
    by_name = {r["name"]: r for r in json.loads(cpu_run.stdout)}
    for name in GPU_CHECKS:
        assert by_name[name]["status"] == SKIP and "no GPU" in by_name[name]["detail"], by_name[name]
    assert by_name["platform.gpus"]["status"] == WARN
    assert by_name["pipeline.qlora"]["status"] == PASS, by_name["pipeline.qlora"]
    assert by_name["platform.torch"]["status"] == PASS


def test_only_and_skip_by_group_and_name():
    res = run_cli("--json", "--only", "platform,access.shm", "--skip", "platform.driver")
    names = [r["name"] for r in json.loads(res.stdout)]
    assert names == ["platform.torch", "platform.pins", "platform.gpus", "access.shm"]


def test_unknown_name_is_a_usage_error():
    res = run_cli("--only", "numerics.fp8")
    assert res.returncode == 2 and "unknown check or group 'numerics.fp8'" in res.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="asserts the CPU-only behaviour")
def test_require_gpu_turns_no_gpu_into_a_failure(tmp_path):
    res = run_cli("--only", "platform", "--require-gpu", "--json-out", str(tmp_path / "out.json"))
    assert res.returncode == 1
    assert "platform.gpus" in res.stdout and "FAIL" in res.stdout  # the table
    saved = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())}
    assert saved["platform.gpus"]["status"] == FAIL


def test_table_lists_every_selected_check_and_the_verdict():
    res = run_cli("--only", "access")
    assert res.returncode in (0, 1)
    for name in ("access.devices", "access.groups", "access.hsa_override", "access.shm", "access.disk"):
        assert name in res.stdout
    assert "pass" in res.stdout and ("fit to fine-tune on" in res.stdout or "NOT fit" in res.stdout)


def test_list_prints_names_and_summaries():
    res = run_cli("--list")
    assert res.returncode == 0 and "numerics.bnb_nf4" in res.stdout and "bitsandbytes NF4" in res.stdout


# --- runner semantics, in process ---

def fake_registry(monkeypatch, *checks):
    monkeypatch.setattr(cli, "all_checks", lambda: list(checks))


def test_exit_code_is_zero_with_warnings_and_skips_only(monkeypatch, capsys):
    fake_registry(monkeypatch,
                  Check("a.warn", lambda ctx: Result("a.warn", WARN, "w"), "warns"),
                  Check("a.skip", lambda ctx: Result("a.skip", SKIP), "skips"))
    assert cli.main(["--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == [WARN, SKIP]


def test_a_crashing_check_is_a_failure_and_the_run_goes_on(monkeypatch, capsys):
    def boom(ctx):
        raise ZeroDivisionError("division by zero")

    fake_registry(monkeypatch, Check("a.boom", boom, "crashes"),
                  Check("a.ok", lambda ctx: Result("a.ok", PASS, "fine"), "passes"))
    assert cli.main(["--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out[0]["status"] == FAIL and out[0]["value"] == "ZeroDivisionError" and "test_cli.py" in out[0]["detail"]
    assert out[1]["status"] == PASS and out[0]["duration"] >= 0


def test_json_mode_keeps_stray_prints_off_stdout(monkeypatch, capfd):
    def noisy(ctx):
        print("library chatter")
        os.write(1, b"C-level chatter\n")
        return Result("a.noisy", PASS)

    fake_registry(monkeypatch, Check("a.noisy", noisy, "prints"))
    assert cli.main(["--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)[0]["name"] == "a.noisy"
    assert "library chatter" in err and "C-level chatter" in err
    assert cli.main([]) == 0  # the table, too, stays clean of what checks print
    out, err = capfd.readouterr()
    assert "a.noisy" in out and "chatter" not in out and "C-level chatter" in err


def test_registry_rejects_bad_names_and_statuses():
    with pytest.raises(ValueError, match="group.short"):
        core.check("nodot")
    with pytest.raises(ValueError, match="status must be one of"):
        Result("a.b", "ok")


def test_select_keeps_registry_order():
    checks = catalog.all_checks()
    picked = core.select(checks, only=["pipeline", "platform.torch"])
    assert [c.name for c in picked] == ["platform.torch", "pipeline.qlora"]
    assert core.select(checks, skip=["numerics", "collectives"])[-1].name == "pipeline.qlora"
    assert isinstance(Context().env, dict)


def test_json_out_replaces_the_file_whole_and_leaves_no_temporary(monkeypatch, capsys, tmp_path):
    fake_registry(monkeypatch, Check("a.ok", lambda ctx: Result("a.ok", PASS, "fine"), "passes"))
    out = tmp_path / "reports" / "checks.json"  # the folder does not exist yet
    assert cli.main(["--json", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["checks.json"]


def test_json_out_that_cannot_be_written_keeps_the_old_file(monkeypatch, capsys, tmp_path):
    fake_registry(monkeypatch, Check("a.ok", lambda ctx: Result("a.ok", PASS, "fine"), "passes"))
    out = tmp_path / "checks.json"
    out.write_text("previous run\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert cli.main(["--json-out", str(out)]) == 2
    assert f"cannot write --json-out {out}: No space left on device" in capsys.readouterr().err
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checks.json"]
