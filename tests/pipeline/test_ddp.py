"""Data-parallel training through torchrun on CPU (gloo), against one process with the same global batch.

Why the runs can match: the batcher cuts the same global batches whatever the number of ranks (rank r takes slice
r), DDP averages the ranks' mean losses' gradients, and with a letter target every example has the same number of
answer tokens, so the average of the ranks' means is the one-process mean. Dropout is off (each rank would draw
its own masks) and the schedule is constant (so a run stopped at step 4 and resumed to 8 equals an 8-step run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _torchrun() -> str:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if found is None:
        pytest.skip("torchrun is not on PATH")
    return found


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _finetune_cmd(nproc: int, model: Path, train: Path, out: Path, steps: int, *extra: str,
                  batch_size: int = 0) -> list[str]:
    """``python -m pipeline finetune`` on ``nproc`` processes, a global batch of 8 unless ``batch_size`` says."""
    launch = [sys.executable] if nproc == 1 else [_torchrun(), "--standalone", "--nproc-per-node", str(nproc)]
    return [*launch, "-m", "pipeline", "finetune", "--recipe", str(ROOT / "recipes" / "demo-cpu.yaml"), "--plain",
            f"model.name_or_path={model}", "data.source=files", f"data.train={train}", "data.max_length=128",
            "data.target=letter", "lora.r=8", "lora.alpha=16", "lora.dropout=0.0",
            "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
            f"train.steps={steps}", f"train.batch_size={batch_size or 8 // nproc}", "train.lr=1e-2",
            "train.schedule=constant", "train.warmup_steps=0", "train.checkpoint_every=4",
            f"train.output_dir={out}", "eval.before_training=false", *extra]


def _finetune(nproc: int, model: Path, train: Path, out: Path, steps: int, *extra: str, resume: bool = False):
    """Run it, expect success; (report, the finished process)."""
    cmd = _finetune_cmd(nproc, model, train, out, steps, *extra) + (["--resume"] if resume else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "destroy_process_group" not in proc.stderr  # every rank left the process group itself
    return json.loads((out / "report.json").read_text()), proc


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _assert_same_run(report, out, reference_report, reference_out, lora_only: bool = False):
    """``lora_only``: compare the LoRA tensors alone (FSDP's adapter has no copy of the frozen lm_head that peft's
    save_pretrained adds when lm_head is a target)."""
    import torch

    assert report["training"]["losses"] == pytest.approx(reference_report["training"]["losses"], rel=1e-4, abs=1e-5)
    mine, ref = _adapter(out), _adapter(reference_out)
    if lora_only:
        ref = {k: v for k, v in ref.items() if ".lora_" in k}
    assert sorted(mine) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(mine[name], ref[name], rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture(scope="module")
def one_process_reference(tiny_model_dir, tmp_path_factory):
    from .recipe_helpers import write_questions

    folder = tmp_path_factory.mktemp("ddp")
    train = write_questions(folder / "train.jsonl", 24)
    report, _ = _finetune(1, tiny_model_dir, train, folder / "one", 8)
    assert report["training"]["world_size"] == 1
    return train, report, folder / "one"


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, one_process_reference, tmp_path):
    train, ref_report, ref_out = one_process_reference
    report, proc = _finetune(2, tiny_model_dir, train, tmp_path / "two", 8)
    training = report["training"]
    assert training["world_size"] == 2 and training["distributed"]["backend"] == "gloo"
    assert training["distributed"]["strategy"] == "ddp" and training["distributed"]["timeout_minutes"] == 30.0
    assert training["tokens_per_second_per_device"] == pytest.approx(training["tokens_per_second"] / 2, rel=0.01)
    assert training["tokens_per_step"] == ref_report["training"]["tokens_per_step"]  # the same examples each step
    losses = training["losses"]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    _assert_same_run(report, tmp_path / "two", ref_report, ref_out)
    # Rank 0 alone prints progress and writes checkpoints, with both ranks' RNG states.
    assert proc.stdout.count("step 8/8") == 1
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    import torch

    state = torch.load(tmp_path / "two" / "checkpoint-8" / "training_state.pt", weights_only=True)
    assert len(state["rng_per_rank"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes(tiny_model_dir, one_process_reference, tmp_path, before, after):
    """Stopped at step 4 on ``before`` processes, resumed to step 8 on ``after``: the uninterrupted 8-step run."""
    train, ref_report, ref_out = one_process_reference
    out = tmp_path / "run"
    _finetune(before, tiny_model_dir, train, out, 4)
    # Stopping at step 4 was done by train.steps=4: going on to 8 is a recipe change the user allows explicitly.
    report, proc = _finetune(after, tiny_model_dir, train, out, 8, "--allow-changes", "train.steps", resume=True)
    assert "resumed from" in proc.stdout and report["training"]["start_step"] == 4
    assert report["training"]["world_size"] == after
    _assert_same_run(report, out, ref_report, ref_out)


@pytest.mark.slow
def test_resume_with_another_global_batch_is_refused_naming_the_setting(tiny_model_dir, one_process_reference,
                                                                        tmp_path):
    train, _, _ = one_process_reference
    out = tmp_path / "run"
    _finetune(1, tiny_model_dir, train, out, 4)
    cmd = _finetune_cmd(2, tiny_model_dir, train, out, 8, batch_size=8) + ["--resume"]  # global batch 16
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    # The resume policy names the key with the global batches (train.batch_size x processes): 8 then, 16 now.
    assert "error: --resume from" in output and "train.batch_size: checkpoint 8, now 16" in output, output


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(tiny_model_dir, tiny_model, tiny_tokenizer, medqa_test_path, tmp_path):
    """2 ranks (9 questions: shares of 5 and 4), gathered on rank 0: the same predictions as one process.

    On torch 2.3.1 (the images' stack) this hung after writing the result: the process group's destructor held the
    GIL while a gloo thread needed it; on torch 2.13 a rank aborted at exit 1 run in 10 for the same reason
    (pipeline.core.compat.let_collective_threads_finish, called by shutdown, is the fix).
    """
    from pipeline.data.questions import load_questions
    from pipeline.evaluate.scoring import evaluate

    out = tmp_path / "sharded.json"
    cmd = [_torchrun(), "--standalone", "--nproc-per-node", "2", str(Path(__file__)), str(tiny_model_dir),
           str(medqa_test_path), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sharded = json.loads(out.read_text())
    alone = evaluate(tiny_model, tiny_tokenizer, load_questions(medqa_test_path), scoring="cloze", batch_size=3,
                     limit=9)
    assert [p["predicted"] for p in sharded["predictions"]] == [p["predicted"] for p in alone.predictions]
    for mine, ref in zip(sharded["predictions"], alone.predictions, strict=True):
        assert mine["source"] == ref["source"]
        assert list(mine["scores"].values()) == pytest.approx(list(ref["scores"].values()), abs=1e-4)
    assert sharded["metrics"]["accuracy"] == alone.metrics["accuracy"]
    assert sharded["metrics"]["count"] == 9 and sharded["shares"] == [5, 4]


def _torch_at_least(major: int, minor: int) -> bool:
    import re

    import torch

    found = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return bool(found) and (int(found[1]), int(found[2])) >= (major, minor)


@pytest.mark.slow
@pytest.mark.skipif(not _torch_at_least(2, 4), reason="FSDP on the CPU needs torch >= 2.4 (pipeline/train/fsdp.py)")
def test_fsdp_checkpoint_resumes_to_the_one_process_run_and_refuses_another_number_of_ranks(
        tiny_model_dir, one_process_reference, tmp_path):
    """FSDP (FullyShardedDataParallel over gloo, device_id=cpu) on 2 ranks: 4 steps, a full-state checkpoint,
    --resume to 8 == the uninterrupted one-process run (same global batch); a resume on 1 rank is refused."""
    train, ref_report, ref_out = one_process_reference
    out = tmp_path / "fsdp"
    _finetune(2, tiny_model_dir, train, out, 4, "distributed.strategy=fsdp")
    state = json.loads((out / "checkpoint-4" / "state.json").read_text())
    assert state["sharding"] == {"strategy": "fsdp", "state_dict": "full", "world_size": 2}
    one_rank = [_torchrun(), "--standalone", "--nproc-per-node", "1"] + _finetune_cmd(
        1, tiny_model_dir, train, out, 8, "distributed.strategy=fsdp", "--allow-changes", "train.steps",
        batch_size=8)[1:] + ["--resume"]
    refused = subprocess.run(one_rank, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert "written by 2 FSDP ranks, this run has 1; resume on 2 ranks" in refused.stdout + refused.stderr, \
        refused.stdout[-2000:] + refused.stderr[-2000:]
    report, proc = _finetune(2, tiny_model_dir, train, out, 8, "distributed.strategy=fsdp", "--allow-changes",
                             "train.steps", resume=True)
    assert report["training"]["distributed"]["strategy"] == "fsdp" and report["training"]["start_step"] == 4
    _assert_same_run(report, out, ref_report, ref_out, lora_only=True)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="torch's FSDP needs a GPU")
def test_fsdp_qlora_checkpoint_resumes_to_the_uninterrupted_run_on_one_gpu(tmp_path):
    """The 70B recipe (FSDP + QLoRA, NF4 stored as bf16) at world size 1 (torchrun, one GPU) on the LLaMA-2-70B
    shape with 2 of its 80 layers (random weights): 6 steps straight vs 3 steps, then --resume to 6. Dropout on
    (the recipe's 0.05): the restored CUDA RNG must give the same masks."""
    pytest.importorskip("bitsandbytes")
    data = ROOT / "tests" / "data" / "medqa" / "us5_test.jsonl"

    def run(out: Path, steps: int, *extra: str) -> dict:
        cmd = [_torchrun(), "--standalone", "--nproc-per-node", "1", "-m", "pipeline", "finetune", "--recipe",
               str(ROOT / "recipes" / "medqa-qlora-70b.yaml"), "--plain",
               "model.name_or_path=random:llama2-70b:num_hidden_layers=2", f"data.train={data}", "data.eval=null",
               "data.max_length=512", "train.batch_size=2", "train.grad_accum=2", f"train.steps={steps}",
               "train.schedule=constant", "train.warmup_steps=0", "train.checkpoint_every=3", "train.log_every=1",
               f"train.output_dir={out}", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        print(proc.stdout[-1500:])
        return json.loads((out / "report.json").read_text())

    straight = run(tmp_path / "straight", 6)
    assert straight["training"]["distributed"]["strategy"] == "fsdp" and straight["training"]["world_size"] == 1
    run(tmp_path / "resumed", 3)
    state = json.loads((tmp_path / "resumed" / "checkpoint-3" / "state.json").read_text())
    assert state["sharding"] == {"strategy": "fsdp", "state_dict": "full", "world_size": 1}
    resumed = run(tmp_path / "resumed", 6, "--resume", "--allow-changes", "train.steps")
    assert resumed["training"]["start_step"] == 3
    print("FSDP resume losses:", straight["training"]["losses"], resumed["training"]["losses"])
    _assert_same_run(resumed, tmp_path / "resumed", straight, tmp_path / "straight", lora_only=True)


def _sharded_eval_worker(model_dir: str, data: str, out: str) -> None:
    """Run under torchrun: each rank loads the model and scores its share; rank 0 writes the gathered result."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from pipeline.data.questions import load_questions
    from pipeline.evaluate.sharded import evaluate_sharded
    from pipeline.train.distributed import setup_distributed, shard, shutdown

    dist = setup_distributed(timeout_minutes=5)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    result = evaluate_sharded(model, tokenizer, load_questions(data), dist, scoring="cloze", batch_size=3, limit=9)
    shares = dist.gather_objects(len(shard(9, dist)))
    if dist.main:
        Path(out).write_text(json.dumps({"metrics": result.metrics, "predictions": result.predictions,
                                         "shares": shares}))
    else:
        assert result is None
    shutdown(dist)


if __name__ == "__main__":
    _sharded_eval_worker(*sys.argv[1:4])
