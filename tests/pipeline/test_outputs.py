"""The output folder: one owner at a time (two real processes), checks before training (a file, read-only, too
little space), I/O failures as one-line messages, and user error vs bug decided by exception type."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kit import atomic
from pipeline.__main__ import main, parse_args
from pipeline.core import preflight, run_lock
from pipeline.core.errors import OutputError, UserError
from pipeline.train import checkpoint as ckpt

from .recipe_helpers import write_questions, write_recipe_file

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {proc.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    _mount_tmpfs(where, "1m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    where = tmp_path / "ro"
    _mount_tmpfs(where, "1m")
    (where / "runs").mkdir()
    proc = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True)
    if proc.returncode != 0:
        subprocess.run(["umount", "-l", str(where)], check=False)
        pytest.skip(f"cannot remount read-only here: {proc.stderr.decode().strip()}")
    yield where / "runs"
    subprocess.run(["umount", "-l", str(where)], check=False)


def _recipe(tmp_path: Path, model_dir: Path, output_dir: Path, steps: int = 4) -> Path:
    return write_recipe_file(tmp_path, model_dir, output_dir=output_dir, steps=steps, eval_rows=4, log_every=1)


# ---------------------------------------------------------------------------------------------------------------
# One owner per output folder


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.core import run_lock
    with run_lock.hold(Path(sys.argv[1])):
        print("locked", flush=True)
        if sys.argv[2] == "die":
            import os; os._exit(137)
        time.sleep(120)
""")


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), "hold"], stdout=subprocess.PIPE, text=True,
                              env=ENV, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(run_lock.OutputInUseError) as err:
            with run_lock.hold(out):
                pass
        assert f"PID {holder.pid} on host {socket.gethostname()}" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the next run takes the folder and learns who held it last.
    with run_lock.hold(out) as previous:
        assert previous["pid"] == holder.pid
    with run_lock.hold(out) as previous:
        assert previous is None  # a clean release leaves no holder behind


def test_stale_lock_of_a_killed_run_is_recognized(tmp_path):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", _HOLDER, str(out), "die"], env=ENV, cwd=ROOT, capture_output=True,
                          timeout=60)
    assert dead.returncode == 137
    assert json.loads((out / run_lock.LOCK_NAME).read_text())["pid"] > 0
    with run_lock.hold(out) as previous:
        assert previous is not None and previous["host"] == socket.gethostname()


@pytest.mark.slow  # ~3 min on 2 cores: four real processes, one of them a 60-step run
def test_two_finetunes_into_one_output_dir(tmp_path, tiny_model_dir):
    """A second finetune (and a --resume) beside a running one exit 2 naming it, touch nothing, and the first
    finishes with its own report."""
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, tiny_model_dir, out, steps=60)
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "finetune", "--recipe", str(recipe), "--plain"],
                             env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while run_lock.read_holder(out / run_lock.LOCK_NAME) is None:
            assert first.poll() is None and time.monotonic() < deadline, "first run never took the lock"
            time.sleep(0.1)
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = subprocess.run([sys.executable, "-m", "pipeline", "finetune", "--recipe", str(recipe), *extra],
                                    env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr
            assert f"in use by PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None, "the first run had finished before the second tried: raise its steps"
        log, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and report["steps"] == 60
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [58, 60]
    assert (out / run_lock.LOCK_NAME).read_text() == ""  # released cleanly


def test_orphans_are_cleaned_only_by_the_owner(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, tiny_model_dir, out, steps=2)
    out.mkdir()
    orphans = [".tmp-checkpoint-4-abc", ".adapter-xyz", ".adapter.k2.tmp", ".report.json.q1.tmp"]
    for name in orphans:
        (out / name).mkdir() if not name.endswith(".json.q1.tmp") else (out / name).write_text("{")
    with run_lock.hold(out):
        # Another process cannot take the folder, so it cannot clean it either.
        assert main(["finetune", "--recipe", str(recipe)]) == 2
        assert all((out / name).exists() for name in orphans)
    assert main(["finetune", "--recipe", str(recipe), "--plain"]) == 0
    assert not any((out / name).exists() for name in orphans)


# ---------------------------------------------------------------------------------------------------------------
# Checks before training and I/O failures


def test_output_dir_that_is_a_file(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "run").write_text("not a folder")
    recipe = _recipe(tmp_path, tiny_model_dir, tmp_path / "run" / "sub")
    assert main(["finetune", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "is a file, expected a folder" in err and "Traceback" not in err


def test_read_only_output_dir_is_refused_before_training(tmp_path, tiny_model_dir, read_only_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, read_only_dir / "a")
    started = time.monotonic()
    assert main(["finetune", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and "train.output_dir" in err and "Traceback" not in err
    assert time.monotonic() - started < 10  # refused before any model loads


def test_run_larger_than_free_space_is_refused_before_step_1(tmp_path, tiny_model_dir, small_disk, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, small_disk / "run", steps=40)
    assert main(["finetune", "--recipe", str(recipe), "train.keep_checkpoints=0"]) == 2
    err = capsys.readouterr().err
    assert "this run needs about" in err and "free there" in err and "Traceback" not in err
    assert not ckpt.list_checkpoints(small_disk / "run")


def test_full_disk_during_a_checkpoint_write_is_one_line(small_disk):
    """torch.save's own error on a full disk says only 'enforce fail at inline_container.cc'."""
    with pytest.raises(OutputError) as err:
        with preflight.output_errors(small_disk):
            with atomic.folder(small_disk / "checkpoint-2") as tmp:
                ckpt._save_tensors({"state": torch.zeros(2_000_000)}, tmp / "training_state.pt")
    message = str(err.value)
    assert "is full" in message and "keep_checkpoints" in message and "--resume" in message
    assert os.listdir(small_disk) == []  # the half-written temporary is gone


def test_full_disk_in_a_writer_that_hides_the_os_error(small_disk):
    from safetensors.torch import save_file

    with pytest.raises(OSError) as err:
        with atomic.folder(small_disk / "adapter", expected_bytes=8_000_000) as tmp:
            save_file({"w": torch.zeros(2_000_000)}, str(tmp / "adapter_model.safetensors"))
    assert err.value.errno == errno.ENOSPC and os.listdir(small_disk) == []


def test_space_estimate_counts_kept_checkpoints():
    est = preflight.estimate_space(trainable_params=1000, param_bytes=4, optimizer="adamw", steps=100, start_step=0,
                                   checkpoint_every=10, keep_checkpoints=2, eval_questions=0)
    assert est.checkpoint_bytes == 1000 * (4 + 8) and est.checkpoints_on_disk == 3 and est.adapter_bytes == 4000
    resumed = preflight.estimate_space(trainable_params=1000, param_bytes=4, optimizer="adamw", steps=100,
                                       start_step=90, checkpoint_every=10, keep_checkpoints=0, eval_questions=0)
    assert resumed.checkpoints_on_disk == 1
    with pytest.raises(OutputError, match="needs about"):
        preflight.check_space(Path("/x"), est, free=est.total - 1)
    preflight.check_space(Path("/x"), est, free=est.total)


# ---------------------------------------------------------------------------------------------------------------
# User error vs bug: by type


def test_internal_file_not_found_is_a_traceback_not_a_user_error(tmp_path, monkeypatch):
    import pipeline.__main__ as cli

    def broken(args):
        raise FileNotFoundError("/internal/cache/file")

    monkeypatch.setattr(cli, "cmd_prepare", broken)
    with pytest.raises(FileNotFoundError):
        main(["prepare", "--recipe", "x.yaml"])


def test_every_user_error_class_derives_from_the_base():
    from pipeline.core.config import RecipeError
    from pipeline.core.errors import ExampleError, ModelNotFoundError, ResumeError
    from pipeline.data.questions import DataError
    from pipeline.model.load import AdapterGradientError, UnsupportedError

    for cls in (RecipeError, DataError, UnsupportedError, AdapterGradientError, ModelNotFoundError, ExampleError,
                ResumeError, OutputError, run_lock.OutputInUseError):
        assert issubclass(cls, UserError), cls


@pytest.mark.parametrize("override,key", [
    ("train.steps=-5", "train.steps"), ("train.grad_accum=0", "train.grad_accum"),
    ("train.batch_size=0", "train.batch_size"), ("train.checkpoint_every=-1", "train.checkpoint_every"),
])
def test_out_of_range_numbers_exit_2_before_any_model_loads(tmp_path, override, key, capsys):
    recipe = _recipe(tmp_path, tmp_path / "no-model-here", tmp_path / "run")
    assert main(["finetune", "--recipe", str(recipe), override]) == 2
    err = capsys.readouterr().err
    assert key in err and "must be" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was created: refused at recipe load


def test_overrides_are_accepted_after_flags():
    args = parse_args(["finetune", "--recipe", "r.yaml", "--resume", "train.steps=10", "--plain", "train.lr=1e-3"])
    assert args.resume and args.plain and args.overrides == ["train.steps=10", "train.lr=1e-3"]
    args = parse_args(["finetune", "train.seed=1", "--recipe", "r.yaml", "train.steps=10"])
    assert args.overrides == ["train.seed=1", "train.steps=10"]
    with pytest.raises(SystemExit):
        parse_args(["finetune", "--recipe", "r.yaml", "--bogus"])
    with pytest.raises(SystemExit):
        parse_args(["evaluate", "--model", "m", "--data", "d", "--output", "o", "train.steps=1"])


def test_evaluate_output_problems_are_found_before_scoring(tmp_path, capsys):
    data = write_questions(tmp_path / "eval.jsonl", 4)
    (tmp_path / "out").write_text("a file")
    code = main(["evaluate", "--model", str(tmp_path / "never-loaded"), "--data", str(data),
                 "--output", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--output" in err and "is a file, expected a folder" in err
    with pytest.raises(SystemExit):
        parse_args(["evaluate", "--model", "m", "--data", "d", "--output", "o", "--batch-size", "0"])
