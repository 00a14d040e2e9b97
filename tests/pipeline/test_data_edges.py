"""Data files as users really have them: a byte order mark, UTF-16, a JSON array, repeated questions, a 2 MB
question; and the sha256 of exactly the bytes that were parsed."""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.data import lengths
from pipeline.data.questions import DataError, read_questions

GOOD = {"question": "Which drug class does lisinopril belong to?", "answer": "ACE inhibitor",
        "options": {"A": "Statin", "B": "ACE inhibitor", "C": "Beta blocker", "D": "Macrolide"}, "answer_idx": "B"}


def _row(**changes) -> str:
    return json.dumps({**GOOD, **changes})


def _write(tmp_path: Path, data: bytes, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_utf8_byte_order_mark_is_accepted_and_hashed_as_read(tmp_path):
    raw = codecs.BOM_UTF8 + (_row() + "\n" + _row(question="Other?") + "\n").encode()
    loaded = read_questions(_write(tmp_path, raw))
    assert [q.question for q in loaded.questions] == [GOOD["question"], "Other?"]
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest() and loaded.bytes == len(raw)
    assert loaded.facts()["rows"] == 2


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_is_named_with_how_to_convert(tmp_path, encoding):
    path = _write(tmp_path, (_row() + "\n").encode(encoding))
    with pytest.raises(DataError) as err:
        read_questions(path)
    (problem,) = err.value.problems
    assert f"{path}: the file is UTF-16" in problem and "iconv -f UTF-16 -t UTF-8" in problem


def test_json_array_gets_a_json_lines_hint(tmp_path):
    for text in (json.dumps([GOOD, GOOD]), json.dumps([GOOD, GOOD], indent=2)):
        path = _write(tmp_path, text.encode())
        with pytest.raises(DataError) as err:
            read_questions(path)
        (problem,) = err.value.problems
        assert "one JSON array, expected JSON Lines" in problem and "jq -c '.[]'" in problem


def test_pretty_printed_object_gets_a_json_lines_hint(tmp_path):
    path = _write(tmp_path, json.dumps(GOOD, indent=2).encode())
    with pytest.raises(DataError, match="one JSON object spread over several lines, expected JSON Lines"):
        read_questions(path)


def test_jsonl_whose_first_row_is_an_array_is_still_judged_line_by_line(tmp_path):
    path = _write(tmp_path, ("[1, 2]\n" + _row() + "\n").encode())
    with pytest.raises(DataError) as err:
        read_questions(path)
    assert err.value.problems == [f"{path}:1: got a JSON array, expected a JSON object"]


def test_repeated_question_is_warned_with_both_lines(tmp_path):
    rows = [_row(), _row(question="Other?"), _row(question="  which drug CLASS does lisinopril belong to? ")]
    path = _write(tmp_path, ("\n".join(rows) + "\n").encode())
    loaded = read_questions(path)
    assert len(loaded.questions) == 3
    assert loaded.warnings == [f"warning: {path}:3: repeats the question of line 1 (same options)"]


def test_over_long_rows_are_named_for_train_and_eval(tmp_path, tiny_tokenizer):
    huge = "Which drug class does lisinopril belong to? " + "history " * 250_000  # ~2 MB
    rows = [_row(question="Short one?"), _row(question=huge)]
    loaded = read_questions(_write(tmp_path, ("\n".join(rows) + "\n").encode()))
    short, long_q = loaded.questions
    assert lengths.train_rows_over([short], tiny_tokenizer, "text", 128) == []
    (train_msg,) = lengths.train_rows_over(loaded.questions, tiny_tokenizer, "text", 128)
    assert train_msg.startswith(f"{long_q.source}: ") and "over data.max_length 128" in train_msg
    assert "prompt tokens will be cut for training (the answer is kept)" in train_msg
    (eval_msg,) = lengths.eval_rows_over(loaded.questions, tiny_tokenizer, "cloze", 2048)
    assert eval_msg.startswith(f"{long_q.source}: ") and "2048-token context used for evaluation" in eval_msg
    cut = int(eval_msg.split("the first ")[1].split(" ")[0])
    assert cut > 100_000


def test_prepare_names_over_long_rows_in_both_files(tmp_path, tiny_model_dir, capsys):
    from pipeline.__main__ import main

    long_q = "Which drug class does lisinopril belong to? " + "detail " * 400
    train = _write(tmp_path, ("\n".join([_row(question="A?"), _row(question=long_q)]) + "\n").encode(), "t.jsonl")
    evals = _write(tmp_path, ("\n".join([_row(question="B?"), _row(question=long_q * 4)]) + "\n").encode(), "e.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: '{tiny_model_dir}'}}\n"
                      f"data: {{train: '{train}', eval: '{evals}', max_length: 128}}\n")
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {train}:2: " in out and "over data.max_length 128" in out
    assert f"warning: {evals}:2: " in out and "used for evaluation" in out


def _repeats(tmp_path: Path, count: int) -> Path:
    rows = [_row(question=f"Question {i % 3}?") for i in range(count)]  # every row after the third repeats one
    return _write(tmp_path, ("\n".join(rows) + "\n").encode(), "repeats.jsonl")


def test_many_warnings_show_the_first_few_a_count_and_where_all_are(tmp_path):
    messages = [f"warning: row {i}" for i in range(12)]
    full = tmp_path / "out" / "data-warnings.txt"
    shown = lengths.summarize(messages, 5, full)
    assert shown[:5] == messages[:5]
    assert shown[5] == f"... and 7 more such rows; all 12 in {full}"
    assert full.read_text().splitlines() == messages
    assert lengths.summarize(messages[:5], 5, tmp_path / "none.txt") == messages[:5]
    assert not (tmp_path / "none.txt").exists(), "a short list needs no file"


def test_prepare_summarises_repeats_and_lists_all_on_request(tmp_path, tiny_model_dir, capsys):
    from pipeline.__main__ import main

    train = _repeats(tmp_path, 40)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: '{tiny_model_dir}'}}\ndata: {{train: '{train}'}}\n")
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.count("repeats the question") == 5
    assert "... and 32 more such rows (--all-warnings lists them)" in out
    assert main(["prepare", "--recipe", str(recipe), "--all-warnings"]) == 0
    assert capsys.readouterr().out.count("repeats the question") == 37


def test_evaluate_writes_every_data_warning_beside_its_results(tmp_path, tiny_model_dir, capsys):
    from pipeline.__main__ import main

    data = _repeats(tmp_path, 12)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--limit", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("repeats the question") == 5 and f"all 9 in {out / 'data-warnings.txt'}" in err
    assert len((out / "data-warnings.txt").read_text().splitlines()) == 9


def test_library_noise_is_filtered_and_ours_is_not(caplog):
    import logging

    from pipeline.core.quiet import quiet_libraries

    quiet_libraries(interactive=True)
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "offline")
        bnb.warning("something else bitsandbytes says")
    assert [r.getMessage() for r in caplog.records] == ["something else bitsandbytes says"]
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_libraries(interactive=True)  # re-installs its filters in front of the default
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("our own deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["our own deprecation"]
