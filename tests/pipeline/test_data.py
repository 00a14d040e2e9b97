"""Loading and validating MedQA / SWAG-style JSONL: every problem reported as path:line with what was expected."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter

import pytest

from pipeline.data.questions import DataError, Question, find_overlap, load_questions

GOOD = {
    "question": "Which drug class does lisinopril belong to?",
    "answer": "ACE inhibitor",
    "options": {"A": "Statin", "B": "ACE inhibitor", "C": "Beta blocker", "D": "Macrolide"},
    "meta_info": "step1",
    "answer_idx": "B",
}
SWAG = {"id": "x1", "sent1": "Which class is losartan?", "sent2": "", "ending0": "Statin",
        "ending1": "Angiotensin II receptor blocker", "ending2": "Triptan", "ending3": "Macrolide", "label": 1}
MEDQA_SHA256 = "cfa75cbcc53c29b023752b0a395ff49d8202121041392735ae44771a5ec734a3"


def with_(base: dict, **changes) -> dict:
    row = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


_DROP = object()

# (bad line, message after "path:2: ")
MALFORMED = [
    ('{"question": "x", ', "not valid JSON (Expecting property name enclosed in double quotes at column 19), "
                           "expected one JSON object a line"),
    ("[1, 2]", "got a JSON array, expected a JSON object"),
    ('"just text"', "got a JSON string, expected a JSON object"),
    (json.dumps({"prompt": "x"}), "no 'question' or 'sent1' field, expected the MedQA layout (question, options, "
                                 "answer_idx) or the SWAG layout (sent1, ending0.., label)"),
    (json.dumps(with_(GOOD, question="   ")), "'question' is empty, expected non-empty text"),
    (json.dumps(with_(GOOD, question=None)), "'question' is missing or null, expected non-empty text"),
    (json.dumps(with_(GOOD, options=_DROP)), "no 'options' field, expected an object of letter -> option text"),
    (json.dumps(with_(GOOD, options=["a", "b"])),
     "'options' is a JSON array, expected an object of letter -> option text"),
    (json.dumps(with_(GOOD, options={"A": "Statin"}, answer_idx="A", answer="Statin")),
     "1 option(s), expected at least 2"),
    (json.dumps(with_(GOOD, options={"A": "Statin", "C": "ACE inhibitor"}, answer_idx="C")),
     "option letters are 'A', 'C', expected A, B in that order"),
    (json.dumps(with_(GOOD, options={"B": "ACE inhibitor", "A": "Statin"})),
     "option letters are 'B', 'A', expected A, B in that order"),
    (json.dumps(with_(GOOD, options={"A": "Statin", "B": "ACE inhibitor", "C": ""})),
     "option 'C' is empty, expected non-empty text"),
    (json.dumps(with_(GOOD, options={"A": "Statin", "B": "ACE inhibitor", "C": 3})),
     "option 'C' is 3 (a JSON number), expected non-empty text"),
    (json.dumps(with_(GOOD, answer_idx=_DROP)), "no 'answer_idx' field, expected one of A, B, C, D"),
    (json.dumps(with_(GOOD, answer_idx="E")), "'answer_idx' is 'E', expected one of the option letters A, B, C, D"),
    (json.dumps(with_(GOOD, answer_idx=1)),
     "'answer_idx' is 1 (a JSON number), expected one of the option letters A, B, C, D"),
    (json.dumps(with_(GOOD, answer="Statin")),
     "'answer' is 'Statin' but option B is 'ACE inhibitor', expected 'answer' to equal the text of option "
     "'answer_idx'"),
    (json.dumps(with_(GOOD, meta_info=2)), "'meta_info' is 2 (a JSON number), expected text such as \"step1\" or "
                                           "no field"),
    (json.dumps(with_(SWAG, sent1="")), "'sent1' is empty, expected non-empty question text"),
    (json.dumps(with_(SWAG, ending2=_DROP)), "fields ending0, ending1, ending3, expected consecutive ending0..ending2"),
    (json.dumps(with_(SWAG, ending3="  ")), "'ending3' is empty, expected non-empty option text"),
    (json.dumps(with_(SWAG, label=4)), "'label' is 4 (a JSON number), expected an integer 0..3"),
    (json.dumps(with_(SWAG, label="1")), "'label' is '1', expected an integer 0..3"),
    (json.dumps(with_(SWAG, label=True)), "'label' is true (a JSON boolean), expected an integer 0..3"),
    (json.dumps(with_(SWAG, label=_DROP)), "no 'label' field, expected an integer 0..3"),
]


@pytest.mark.parametrize("bad_line,message", MALFORMED, ids=[m[:40] for _, m in MALFORMED])
def test_malformed_line_is_reported_with_file_line_and_expectation(write_jsonl, bad_line, message):
    path = write_jsonl([GOOD, bad_line, GOOD])
    with pytest.raises(DataError) as info:
        load_questions(path)
    assert info.value.problems == [f"{path}:2: {message}"]
    assert f"{path}:2: {message}" in str(info.value)


def test_all_problems_are_collected_not_just_the_first(write_jsonl):
    path = write_jsonl([GOOD, "{oops", GOOD, with_(GOOD, answer_idx="Z"), with_(SWAG, label=9), GOOD])
    with pytest.raises(DataError) as info:
        load_questions(path)
    assert [p.split(": ")[0] for p in info.value.problems] == [f"{path}:2", f"{path}:4", f"{path}:5"]


def test_several_problems_on_one_line_are_all_listed(write_jsonl):
    path = write_jsonl([with_(GOOD, question="", options={"A": "", "B": "x"})])
    with pytest.raises(DataError) as info:
        load_questions(path)
    assert info.value.problems == [
        f"{path}:1: 'question' is empty, expected non-empty text",
        f"{path}:1: option 'A' is empty, expected non-empty text",
    ]


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DataError) as info:
        load_questions(path)
    assert info.value.problems == [
        f"{path}:2: not valid UTF-8 (invalid continuation byte at byte 18 of the line), expected UTF-8 text"
    ]


def test_missing_and_empty_files_are_errors(tmp_path, write_jsonl):
    with pytest.raises(DataError, match=r"nothere\.jsonl: cannot read the file"):
        load_questions(tmp_path / "nothere.jsonl")
    empty = write_jsonl(["", "   "])
    with pytest.raises(DataError) as info:
        load_questions(empty)
    assert info.value.problems == [f"{empty}: no questions in the file, expected at least one JSON object line"]


def test_blank_lines_are_skipped_and_line_numbers_stay_true(write_jsonl):
    path = write_jsonl(["", GOOD, "  ", with_(GOOD, question="Second?")])
    questions = load_questions(path)
    assert [q.source for q in questions] == [f"{path}:2", f"{path}:4"]


def test_medqa_layouts_load_with_and_without_metamap_phrases(write_jsonl):
    four = with_(GOOD, metamap_phrases=["drug class", "lisinopril"], meta_info=_DROP)
    five = with_(GOOD, options={**GOOD["options"], "E": "Triptan"}, answer_idx="E", answer="Triptan")
    q4, q5 = load_questions(write_jsonl([four, five]))
    assert q4 == Question(GOOD["question"], GOOD["options"], "B", None, q4.source)
    assert (q4.answer, q4.gold) == ("ACE inhibitor", 1)
    assert list(q5.options) == ["A", "B", "C", "D", "E"]
    assert (q5.answer, q5.gold, q5.meta_info) == ("Triptan", 4, "step1")


def test_answer_field_is_optional(write_jsonl):
    (q,) = load_questions(write_jsonl([with_(GOOD, answer=_DROP)]))
    assert q.answer == "ACE inhibitor"


def test_swag_layout_maps_endings_to_letters_and_ignores_sent2_like_lm_eval(write_jsonl):
    (q,) = load_questions(write_jsonl([with_(SWAG, sent2="ignored continuation")]))
    assert q.question == "Which class is losartan?"
    assert q.options == {"A": "Statin", "B": "Angiotensin II receptor blocker", "C": "Triptan", "D": "Macrolide"}
    assert (q.answer_idx, q.answer, q.gold, q.meta_info) == ("B", "Angiotensin II receptor blocker", 1, None)


def test_error_message_lists_at_most_30_problems_but_keeps_all(write_jsonl):
    path = write_jsonl(["[]"] * 45)
    with pytest.raises(DataError) as info:
        load_questions(path)
    assert len(info.value.problems) == 45
    assert str(info.value).startswith("45 problem(s) in the data:\n")
    assert str(info.value).endswith("... and 15 more")


def test_find_overlap_normalizes_case_and_whitespace_and_warns(write_jsonl, caplog):
    train = load_questions(write_jsonl([GOOD, with_(GOOD, question="Unrelated?")], name="train.jsonl"))
    evals = load_questions(write_jsonl([with_(GOOD, question="  which DRUG class does\n lisinopril belong to? "),
                                        with_(GOOD, question="Other?")], name="eval.jsonl"))
    with caplog.at_level(logging.WARNING, logger="pipeline.data.questions"):
        pairs = find_overlap(train, evals)
    assert [(t.source, o.source) for t, o in pairs] == [(train[0].source, evals[0].source)]
    assert "1 question(s) occur in both the training and the evaluation data" in caplog.text


def test_find_overlap_is_silent_when_clean(write_jsonl, caplog):
    train = load_questions(write_jsonl([GOOD], name="train.jsonl"))
    evals = load_questions(write_jsonl([with_(GOOD, question="Other?")], name="eval.jsonl"))
    with caplog.at_level(logging.WARNING):
        assert find_overlap(train, evals) == []
    assert caplog.text == ""


def test_real_medqa_us5_test_file_loads(medqa_test_path):
    digest = hashlib.sha256(medqa_test_path.read_bytes()).hexdigest()
    if digest != MEDQA_SHA256:
        pytest.skip(f"{medqa_test_path} is not the known us5 test split (sha256 {digest})")
    questions = load_questions(medqa_test_path)
    assert len(questions) == 1273
    assert all(len(q.options) == 5 and q.answer == q.options[q.answer_idx] for q in questions)
    assert Counter(q.answer_idx for q in questions) == {"A": 273, "B": 277, "C": 252, "D": 269, "E": 202}
    assert set(Counter(q.meta_info for q in questions)) == {"step1", "step2&3"}
    assert questions[0].source == f"{medqa_test_path}:1"
