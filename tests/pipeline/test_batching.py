"""Length-grouped batches: determinism, less padding on real MedQA lengths, exact resume, DDP sharding; collate."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from pipeline.data.batching import LengthGroupedBatches, collate
from pipeline.data.prompts import encode_example
from pipeline.data.questions import load_questions


def take(batches, n):
    return list(itertools.islice(batches, n))


def padding_fraction(batches, lengths):
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / padded


LENGTHS = [random.Random(0).randint(20, 800) for _ in range(203)]


def test_same_seed_same_batches_other_seed_other_batches():
    a = take(LengthGroupedBatches(LENGTHS, 8, seed=1), 60)
    b = take(LengthGroupedBatches(LENGTHS, 8, seed=1), 60)
    c = take(LengthGroupedBatches(LENGTHS, 8, seed=2), 60)
    assert a == b
    assert a != c


@pytest.mark.parametrize("group", [True, False])
def test_each_epoch_serves_distinct_examples_and_epochs_differ(group):
    batches = LengthGroupedBatches(LENGTHS, 8, seed=0, group_by_length=group)
    per_epoch = len(LENGTHS) // 8
    assert batches.batches_per_epoch == per_epoch == 25
    epoch0, epoch1 = take(batches, per_epoch), take(batches, per_epoch)
    for epoch in (epoch0, epoch1):
        flat = [i for b in epoch for i in b]
        assert all(len(b) == 8 for b in epoch)
        assert len(set(flat)) == len(flat) == per_epoch * 8
    assert epoch0 != epoch1
    assert batches.state_dict()["epoch"] == 2


def test_first_batch_of_an_epoch_holds_the_longest_example():
    batches = LengthGroupedBatches(LENGTHS, 8, seed=3)
    epoch0 = take(batches, batches.batches_per_epoch)
    longest = max((i for b in epoch0 for i in b), key=lambda i: LENGTHS[i])
    assert longest in epoch0[0]


def test_grouping_cuts_padding_on_real_medqa_lengths(medqa_test_path, tiny_tokenizer):
    questions = load_questions(medqa_test_path)
    lengths = [len(encode_example(tiny_tokenizer, q, "letter", 4096)["input_ids"]) for q in questions]
    epochs = len(lengths) // 8
    grouped = padding_fraction(take(LengthGroupedBatches(lengths, 8, seed=0), epochs), lengths)
    plain = padding_fraction(take(LengthGroupedBatches(lengths, 8, seed=0, group_by_length=False), epochs), lengths)
    # Measured here (tiny tokenizer, seed 0): 35% of the tokens in random batches of 8 are padding, 4% in
    # length-grouped ones (mega-batches of 50 batches = 400 examples; sorting all 1273 at once would give 1%).
    assert plain > 0.25
    assert grouped < 0.06
    assert grouped < plain / 5


@pytest.mark.parametrize("stop", [0, 7, 25, 61])  # start, mid-epoch, exactly at an epoch boundary, a later epoch
def test_resume_from_state_dict_gives_exactly_the_uninterrupted_batches(stop):
    uninterrupted = take(LengthGroupedBatches(LENGTHS, 8, seed=5, rank=1, world_size=2), stop + 40)
    first = LengthGroupedBatches(LENGTHS, 8, seed=5, rank=1, world_size=2)
    assert take(first, stop) == uninterrupted[:stop]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = LengthGroupedBatches(LENGTHS, 8, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert take(resumed, 40) == uninterrupted[stop:]


@pytest.mark.parametrize("key,value", [("seed", 6), ("num_examples", 10)])
def test_resume_refuses_a_state_from_other_settings(key, value):
    state = LengthGroupedBatches(LENGTHS, 8, seed=5, world_size=2).state_dict()
    state[key] = value
    with pytest.raises(ValueError, match=f"checkpoint has {key}={value}, this run has {key}="):
        LengthGroupedBatches(LENGTHS, 8, seed=5, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("key,value", [("batch_size", 4), ("world_size", 4)])
def test_resume_refuses_another_global_batch(key, value):
    state = LengthGroupedBatches(LENGTHS, 8, seed=5, world_size=2).state_dict()
    state[key] = value
    with pytest.raises(ValueError, match="checkpoint has global batch .* this run has 16"):
        LengthGroupedBatches(LENGTHS, 8, seed=5, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("saved_world,resumed_world", [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_number_of_ranks_with_the_same_global_batch(saved_world, resumed_world):
    """Same global batch (16): the ranks of the resumed run together take exactly the batches not yet served."""
    saved = [LengthGroupedBatches(LENGTHS, 16 // saved_world, seed=5, rank=r, world_size=saved_world)
             for r in range(saved_world)]
    for batcher in saved:
        take(batcher, 7)
    reference = LengthGroupedBatches(LENGTHS, 16, seed=5)
    take(reference, 7)
    expected = take(reference, 5)
    resumed = [LengthGroupedBatches(LENGTHS, 16 // resumed_world, seed=5, rank=r, world_size=resumed_world)
               for r in range(resumed_world)]
    for batcher in resumed:
        batcher.load_state_dict(json.loads(json.dumps(saved[0].state_dict())))
    got = [sum((next(b) for b in resumed), []) for _ in range(5)]
    assert got == expected


def test_ranks_get_disjoint_equal_batches_covering_the_epoch():
    world = 3
    ranks = [LengthGroupedBatches(LENGTHS, 4, seed=9, rank=r, world_size=world) for r in range(world)]
    steps = ranks[0].batches_per_epoch
    assert steps == len(LENGTHS) // (4 * world)
    seen = []
    for _ in range(steps):
        step = [next(r) for r in ranks]
        assert all(len(b) == 4 for b in step)
        flat = [i for b in step for i in b]
        assert len(set(flat)) == len(flat)  # no example on two ranks in the same step
        seen.extend(flat)
    assert len(set(seen)) == len(seen) == steps * 4 * world  # and none twice within the epoch


def test_too_few_examples_for_one_global_batch_is_an_error():
    with pytest.raises(ValueError, match="5 examples cannot fill one batch of 4 on each of 2 rank"):
        LengthGroupedBatches([10] * 5, 4, seed=0, world_size=2)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
        LengthGroupedBatches([10] * 5, 1, seed=0, rank=2, world_size=2)


def test_collate_pads_right_masks_and_ignores_padding_in_labels():
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError, match="example 0: 2 input_ids but 1 labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}], pad_id=0)
