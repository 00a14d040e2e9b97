"""The generated demo set: valid MedQA layout, train/test really differ, deterministic, balanced answer letters."""

from __future__ import annotations

import re
from collections import Counter

from pipeline.data.demo import (
    DRUG_CLASSES,
    PATHOGEN_TREATMENTS,
    TEST_DRUG_TEMPLATES,
    TEST_PATHOGEN_TEMPLATES,
    TRAIN_DRUG_TEMPLATES,
    TRAIN_PATHOGEN_TEMPLATES,
    TRAINED_PATHOGENS,
    write_demo_data,
)
from pipeline.data.questions import find_overlap, load_questions, read_questions


def template_pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+)".join(re.escape(p) for p in parts) + "$")


def mentions(text: str, name: str) -> bool:
    # Whole words: "ofloxacin" is held out although "levofloxacin" (its own L-isomer) is trained.
    return re.search(rf"\b{re.escape(name)}\b", text, flags=re.IGNORECASE) is not None


def test_files_are_valid_medqa_and_sized_for_a_cpu_demo(demo_data_paths):
    train = load_questions(demo_data_paths[0])
    test = load_questions(demo_data_paths[1])
    assert 300 <= len(train) <= 600 and 80 <= len(test) <= 120
    for q in train + test:
        assert list(q.options) == ["A", "B", "C", "D"]
        assert len(set(q.options.values())) == 4  # one right answer, three different distractors
    assert Counter(q.meta_info for q in train) == {"drug-class": 480, "pathogen": 60}
    assert Counter(q.meta_info for q in test) == {
        "drug-class": 60, "drug-class-heldout": 30, "pathogen": 10, "pathogen-heldout": 16,
    }


def test_demo_files_load_without_a_warning(demo_data_paths):
    """The demo is the user's first run: the kit's own loader must find nothing to warn about in its own data (a
    question text repeated with other options was 270 warnings once)."""
    for path in demo_data_paths:
        assert read_questions(path).warnings == [], path


def test_answers_follow_the_tables(demo_data_paths):
    drug_class = {d: c for c, drugs in DRUG_CLASSES.items() for d in drugs}
    treatment = dict(PATHOGEN_TREATMENTS)
    for q in load_questions(demo_data_paths[0]) + load_questions(demo_data_paths[1]):
        names = [n for n in list(drug_class) + list(treatment) if mentions(q.question, n)]
        assert len(names) == 1, q.question
        expected = drug_class.get(names[0]) or treatment[names[0]]
        assert q.answer == expected, q.source


def test_train_and_test_differ_in_phrasing_and_heldout_items_are_unseen(demo_data_paths):
    train = load_questions(demo_data_paths[0])
    test = load_questions(demo_data_paths[1])
    assert find_overlap(train, test) == []
    train_patterns = [template_pattern(t) for t in TRAIN_DRUG_TEMPLATES + TRAIN_PATHOGEN_TEMPLATES]
    test_patterns = [template_pattern(t) for t in TEST_DRUG_TEMPLATES + TEST_PATHOGEN_TEMPLATES]
    assert all(any(p.match(q.question) for p in train_patterns) for q in train)
    assert not any(p.match(q.question) for p in test_patterns for q in train)
    assert not any(p.match(q.question) for p in train_patterns for q in test)
    heldout = [drugs[-1] for drugs in DRUG_CLASSES.values()] + [p for p, _ in PATHOGEN_TREATMENTS[TRAINED_PATHOGENS:]]
    assert not [name for name in heldout for q in train if mentions(q.question, name)]
    # Seen items come back with other options or another order, never the exact option list they trained with.
    train_options = {(q.answer, tuple(q.options.values())) for q in train}
    seen = [q for q in test if not q.meta_info.endswith("heldout")]
    assert not [q.source for q in seen if (q.answer, tuple(q.options.values())) in train_options]


def test_answer_letters_are_balanced(demo_data_paths):
    for path in demo_data_paths:
        counts = Counter(q.answer_idx for q in load_questions(path))
        assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_same_seed_same_files_other_seed_other_files(tmp_path, demo_data_paths):
    again = write_demo_data(tmp_path / "again", seed=0)
    other = write_demo_data(tmp_path / "other", seed=1)
    for a, b in zip(demo_data_paths, again, strict=False):
        assert a.read_bytes() == b.read_bytes()
    for a, b in zip(demo_data_paths, other, strict=False):
        assert a.read_bytes() != b.read_bytes()
    assert again[0].name == "train.jsonl" and again[1].name == "test.jsonl"
