"""Single-process pieces of the several-GPU support: per-rank RNG in checkpoints, sharding, FSDP refusals."""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.core.config import RecipeError, load_recipe
from pipeline.core.errors import UnsupportedError
from pipeline.train import checkpoint as ckpt
from pipeline.train.distributed import Dist, shard


class _Adapter:
    """Stands in for the peft model: save_pretrained writes an empty adapter that set_peft_model_state_dict takes."""

    def save_pretrained(self, folder):
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({}, str(folder / "adapter_model.safetensors"))

    def parameters(self):  # no trainable weights: the checkpoint's size estimate is zero
        return iter(())


def _state_after(seed: int) -> dict:
    random.seed(seed)
    torch.manual_seed(seed)
    return ckpt.rng_state()


def _save(tmp_path, rng_states):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.ConstantLR(opt)
    path = ckpt.save_checkpoint(tmp_path, 3, model=_Adapter(), optimizer=opt, scheduler=sched, batcher_state={},
                                history={}, keep=1, rng_states=rng_states)
    return path, opt, sched


def test_each_rank_gets_its_own_rng_state_back(tmp_path, monkeypatch):
    import peft

    monkeypatch.setattr(peft, "set_peft_model_state_dict", lambda model, sd: None)
    states = [_state_after(1), _state_after(2)]
    path, opt, sched = _save(tmp_path, states)
    for rank, seed in ((0, 1), (1, 2)):
        _state_after(99)
        loaded = ckpt.load_checkpoint(path, model=None, optimizer=opt, scheduler=sched, rank=rank)
        assert loaded["rng_restored"] is True
        expected_next = (_state_after(seed), random.random(), torch.rand(1))[1:]
        ckpt.load_checkpoint(path, model=None, optimizer=opt, scheduler=sched, rank=rank)
        assert (random.random(), torch.rand(1)) == (expected_next[0], expected_next[1])
    # A third rank (resumed on more processes than saved the checkpoint) is told to seed itself.
    assert ckpt.load_checkpoint(path, model=None, optimizer=opt, scheduler=sched, rank=2)["rng_restored"] is False


@pytest.mark.parametrize("count,world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_cover_every_index_once(count, world):
    shares = [shard(count, Dist(rank=r, world_size=world, enabled=world > 1)) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_distributed_section_is_typed_and_defaults_to_ddp():
    recipe = load_recipe(None, ["distributed.timeout_minutes=90", "distributed.strategy=fsdp"])
    assert recipe.distributed.timeout_minutes == 90.0 and recipe.distributed.strategy == "fsdp"
    assert load_recipe(None).distributed.strategy == "ddp"
    with pytest.raises(RecipeError, match="distributed.strategy"):
        load_recipe(None, ["distributed.strategy=deepspeed"])


def test_the_70b_recipe_loads_and_asks_for_fsdp():
    from pathlib import Path

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "medqa-qlora-70b.yaml")
    assert recipe.distributed.strategy == "fsdp" and recipe.quantization.mode == "nf4"
    assert recipe.train.checkpoint_every == 200 and recipe.model.gradient_checkpointing


def test_fsdp_refuses_other_devices_naming_the_setting_and_accepts_checkpoints():
    from pipeline.train import fsdp

    recipe = load_recipe(None, ["distributed.strategy=fsdp", "train.checkpoint_every=0"])
    with pytest.raises(UnsupportedError, match="use distributed.strategy=ddp"):
        fsdp.check_recipe(recipe, torch.device("mps"))
    fsdp.check_recipe(recipe, torch.device("cpu"), "2.13.0+cpu")  # gloo, device_id=cpu (tests/pipeline/test_ddp.py)
    with pytest.raises(UnsupportedError, match=r"on the CPU, which needs torch >= 2.4 \(this is 2.3.1\)"):
        fsdp.check_recipe(recipe, torch.device("cpu"), "2.3.1")
    fsdp.check_recipe(recipe, torch.device("cuda", 0), "2.3.1")
    recipe = load_recipe(None, ["distributed.strategy=fsdp", "train.checkpoint_every=100"])
    fsdp.check_recipe(recipe, torch.device("cuda", 0))  # full-state checkpoints, resumable (pipeline/train/fsdp.py)


def _checkpoint_facts(folder, **facts):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"step": 3, "batcher": {}, "history": {}, **facts}))
    return folder


def test_fsdp_resume_on_another_number_of_ranks_is_refused_naming_both(tmp_path):
    from pipeline.core.errors import ResumeError
    from pipeline.train import fsdp

    found = _checkpoint_facts(tmp_path / "checkpoint-3",
                              sharding={"strategy": "fsdp", "state_dict": "full", "world_size": 2})
    fsdp.check_resume(found, 2)
    with pytest.raises(ResumeError, match="written by 2 FSDP ranks, this run has 4; resume on 2 ranks"):
        fsdp.check_resume(found, 4)
    with pytest.raises(ResumeError, match="written without FSDP"):
        fsdp.check_resume(_checkpoint_facts(tmp_path / "checkpoint-6"), 2)
    with pytest.raises(ResumeError, match="written by 2 FSDP ranks .* this run does not use FSDP"):
        fsdp.check_resume(found, 1, use_fsdp=False)
    fsdp.check_resume(_checkpoint_facts(tmp_path / "checkpoint-6"), 1, use_fsdp=False)


def test_a_lost_peer_is_named_by_rank_node_and_address(tmp_path):
    from pipeline.train.distributed import Dist, LostRankError, lost_ranks_error

    peers = [{"rank": r, "node": r // 2, "host": f"node{r // 2}", "addresses": [f"10.9.0.{r // 2 + 1}"]}
             for r in range(4)]
    dist = Dist(rank=1, world_size=4, enabled=True, backend="gloo", peers=peers)
    gone = RuntimeError("[pair.cc:553] Connection closed by peer [10.9.0.2]:4242")
    error = lost_ranks_error(gone, dist, step=4, output_dir=tmp_path, last_checkpoint=tmp_path / "checkpoint-3")
    assert isinstance(error, LostRankError) and dist.lost
    assert "rank 1 (node 0), step 5: a collective failed: lost rank(s) 2, 3 on node 1 (node1, 10.9.0.2)" in str(error)
    assert f"the last complete checkpoint is {tmp_path / 'checkpoint-3'}" in str(error)
    # Not a collective's failure, or one process: raised as it is.
    assert lost_ranks_error(ValueError("bad value"), Dist(rank=1, world_size=4, enabled=True, peers=peers),
                            step=4, output_dir=tmp_path) is None
    assert lost_ranks_error(gone, Dist(), step=4, output_dir=tmp_path) is None
    # An address the message does not name: the ranks on other nodes, as suspects.
    vague = lost_ranks_error(RuntimeError("Gloo: timed out"), Dist(rank=0, world_size=4, enabled=True, peers=peers),
                             step=0, output_dir=tmp_path)
    assert "lost a peer; ranks on other nodes: rank(s) 2, 3 on node 1" in str(vague)
    assert f"no complete checkpoint in {tmp_path} yet" in str(vague)
    alone = [p for p in peers if p["node"] == 0]
    same_node = lost_ranks_error(gone, Dist(rank=1, world_size=2, enabled=True, peers=alone), step=0,
                                 output_dir=tmp_path)
    assert "lost a peer on this node (another rank failed or was killed" in str(same_node)


def test_fsdp_stores_4bit_weights_in_the_compute_dtype():
    pytest.importorskip("bitsandbytes")
    from pipeline.model.load import Quantization, from_pretrained_kwargs

    quant = Quantization(True, torch.bfloat16, "nf4", "test")
    fsdp_recipe = load_recipe(None, ["distributed.strategy=fsdp"])
    kwargs = from_pretrained_kwargs(fsdp_recipe, torch.device("cuda", 0), quant, "sdpa")
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    kwargs = from_pretrained_kwargs(load_recipe(None), torch.device("cuda", 0), quant, "sdpa")
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.uint8


def test_shutdown_lets_collective_threads_finish_before_destroying_the_group(monkeypatch):
    """A Gloo worker still dropping the last collective's tensors needs the GIL: torch < 2.8 hung in the group's
    destructor, torch 2.13 aborted at interpreter exit (3 of 40 runs of the two-rank sharded evaluation). shutdown
    must give up the GIL (sleep) before destroy_process_group; after lost ranks it must not touch the group."""
    import time

    from pipeline.train import distributed

    calls = []
    monkeypatch.setattr(time, "sleep", lambda seconds: calls.append(("sleep", seconds)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append(("destroy",)))
    distributed.shutdown(distributed.Dist(rank=1, world_size=2, backend="gloo", enabled=True))
    assert calls == [("sleep", 0.5), ("destroy",)]
    calls.clear()
    distributed.shutdown(distributed.Dist(rank=1, world_size=2, backend="gloo", enabled=True, lost=True))
    assert calls == []
