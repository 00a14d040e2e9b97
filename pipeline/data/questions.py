"""Read and validate multiple-choice question files (MedQA JSONL and the SWAG-style layout).

Two layouts are accepted, one JSON object per line:

* MedQA as released (jind11/MedQA): ``question``, ``options`` (letter -> text, 4 or 5 of them), ``answer_idx``,
  optional ``answer`` (must equal the text of the option ``answer_idx`` names), optional ``meta_info``
  ("step1", "step2&3"), optional ``metamap_phrases`` (ignored).
* SWAG-style, the Hugging Face variant lm-evaluation-harness's ``medqa_4options`` task reads: ``sent1`` (the
  question), ``ending0``..``endingN`` (the options, in order A, B, ...) and an integer ``label``. Like lm-eval's
  ``doc_to_text``, only ``sent1`` and the endings are read; ``sent2``, ``id`` and other fields are ignored.

Every line is checked and every problem is collected, so one run names them all instead of failing on the first
(or, worse, training on a bad row). Blank lines (including the usual trailing newline) are skipped: they carry no
row, and editors and ``cat a b > c`` create them; everything else that is not a valid question is an error.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# DataError's message lists at most this many problems (all are kept in .problems): a wholly wrong file would
# otherwise print thousands of lines.
_MAX_LISTED = 30
_ENDING_KEY = re.compile(r"^ending(\d+)$")


@dataclass(frozen=True)
class Question:
    """One validated multiple-choice question; ``source`` ("path:line") leads back to the row it came from."""

    question: str
    options: dict[str, str]  # ordered, letter -> text, letters consecutive from "A"
    answer_idx: str
    meta_info: str | None
    source: str

    @property
    def answer(self) -> str:
        return self.options[self.answer_idx]

    @property
    def gold(self) -> int:
        return list(self.options).index(self.answer_idx)


class DataError(UserError, ValueError):
    """A data file has invalid rows; ``problems`` holds every one as "path:line: what is wrong, expected what"."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        listed = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(listed)
        text = f"{len(self.problems)} problem(s) in the data:\n" + "\n".join(listed)
        if more:
            text += f"\n... and {more} more"
        super().__init__(text)


@dataclass(frozen=True)
class LoadedFile:
    """A question file as it was read: its questions, and the sha256 and size of exactly the bytes parsed.

    The digest is taken from the bytes in memory, not by reading the file again later: a file replaced while
    the run was going (or between the load and the report) is then recorded as what was trained on.
    """

    path: Path
    sha256: str
    bytes: int
    questions: list[Question]
    warnings: list[str]

    def facts(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "rows": len(self.questions), "bytes": self.bytes}


def load_questions(path: str | Path) -> list[Question]:
    """Read every question of a MedQA or SWAG-style JSONL file; raise DataError listing all invalid lines."""
    loaded = read_questions(path)
    for warning in loaded.warnings:
        logger.warning("%s", warning)
    return loaded.questions


def read_questions(path: str | Path) -> LoadedFile:
    """``load_questions`` plus what was read: the sha256 of the parsed bytes and warnings (repeated questions)."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        problem = f"{where}: cannot read the file ({exc.strerror or exc}), expected a readable JSONL file"
        raise DataError([problem]) from exc
    digest = hashlib.sha256(raw).hexdigest()
    whole_file_problem = _whole_file_problem(raw, where)
    if whole_file_problem:
        raise DataError([whole_file_problem])
    # Notepad and Excel's "CSV UTF-8" put a byte order mark first; it is not part of the first row.
    body = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
    questions, problems = _parse_lines(body, where)
    if not problems and not questions:
        problems.append(f"{where}: no questions in the file, expected at least one JSON object line")
    if problems:
        raise DataError(problems)
    return LoadedFile(Path(path), digest, len(raw), questions, repeated_questions(questions))


def _parse_lines(body: bytes, where: str) -> tuple[list[Question], list[str]]:
    questions: list[Question] = []
    problems: list[str] = []
    for number, line_bytes in enumerate(body.split(b"\n"), start=1):
        loc = f"{where}:{number}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            where_bad = f"{exc.reason} at byte {exc.start + 1} of the line"
            problems.append(f"{loc}: not valid UTF-8 ({where_bad}), expected UTF-8 text")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{loc}: not valid JSON ({exc.msg} at column {exc.colno}), expected one JSON object a line")
            continue
        if not isinstance(row, dict):
            problems.append(f"{loc}: got a JSON {_json_type(row)}, expected a JSON object")
            continue
        if "question" in row:
            question, row_problems = _parse_medqa(row, loc)
        elif "sent1" in row:
            question, row_problems = _parse_swag(row, loc)
        else:
            question, row_problems = None, [
                f"{loc}: no 'question' or 'sent1' field, expected the MedQA layout (question, options, answer_idx) "
                "or the SWAG layout (sent1, ending0.., label)"
            ]
        problems.extend(row_problems)
        if question is not None:
            questions.append(question)
    return questions, problems


def _whole_file_problem(raw: bytes, where: str) -> str | None:
    """A file that is not JSON Lines at all gets one message saying what it is and how to convert it, instead of
    one "not valid UTF-8/JSON" per line."""
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (
        # UTF-16 without a byte order mark: ASCII text shows as every other byte zero.
        len(raw) >= 4 and raw[:200].count(0) >= len(raw[:200]) // 3
    )
    if utf16:
        return (f"{where}: the file is UTF-16 text (as Windows tools often save), expected UTF-8 JSON Lines; "
                f"convert it with: iconv -f UTF-16 -t UTF-8 '{where}' > converted.jsonl")
    text = raw.decode("utf-8-sig", errors="replace")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first.startswith(("[", "{")):
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    try:
        json.loads(first)
        first_is_whole = True
    except json.JSONDecodeError:
        first_is_whole = False
    if isinstance(document, list) or (first.startswith("[") and not first_is_whole):
        return (f"{where}: the file is one JSON array, expected JSON Lines (one JSON object per line, no enclosing "
                f"[ ]); convert it with: jq -c '.[]' '{where}' > converted.jsonl")
    if isinstance(document, dict) and not first_is_whole:
        return (f"{where}: the file is one JSON object spread over several lines, expected JSON Lines (each "
                f"question on one line); convert it with: jq -c . '{where}' > converted.jsonl")
    return None


def repeated_questions(questions: list[Question]) -> list[str]:
    """Warnings for questions that occur twice in one file (same text up to case and whitespace), naming both
    lines: a repeat is trained on twice (or scored twice) and is often a merge mistake."""
    first_seen: dict[str, Question] = {}
    warnings = []
    for q in questions:
        key = normalize_question(q.question)
        if key in first_seen:
            earlier = first_seen[key]
            same = "same" if earlier.options == q.options else "different"
            warnings.append(f"warning: {q.source}: repeats the question of line {earlier.source.rsplit(':', 1)[1]} "
                            f"({same} options)")
        else:
            first_seen[key] = q
    return warnings


def _parse_medqa(row: dict[str, Any], loc: str) -> tuple[Question | None, list[str]]:
    problems: list[str] = []
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(f"{loc}: 'question' is {_describe(question)}, expected non-empty text")
    options = row.get("options")
    options_ok = False
    if "options" not in row:
        problems.append(f"{loc}: no 'options' field, expected an object of letter -> option text")
        options = None
    elif not isinstance(options, dict):
        kind = _json_type(options)
        problems.append(f"{loc}: 'options' is a JSON {kind}, expected an object of letter -> option text")
        options = None
    else:
        option_problems = _check_options(options, loc)
        problems.extend(option_problems)
        options_ok = not option_problems
    meta_info = row.get("meta_info")
    if meta_info is not None and not isinstance(meta_info, str):
        problems.append(f"{loc}: 'meta_info' is {_describe(meta_info)}, expected text such as \"step1\" or no field")
    answer_idx = row.get("answer_idx")
    if options_ok:
        letters = ", ".join(options)
        if "answer_idx" not in row:
            problems.append(f"{loc}: no 'answer_idx' field, expected one of {letters}")
        elif not isinstance(answer_idx, str) or answer_idx not in options:
            got = _describe(answer_idx)
            problems.append(f"{loc}: 'answer_idx' is {got}, expected one of the option letters {letters}")
        elif "answer" in row and row["answer"] != options[answer_idx]:
            problems.append(
                f"{loc}: 'answer' is {_describe(row['answer'])} but option {answer_idx} is "
                f"{_describe(options[answer_idx])}, expected 'answer' to equal the text of option 'answer_idx'"
            )
    if problems:
        return None, problems
    return Question(question, dict(options), answer_idx, meta_info, loc), []


def _check_options(options: dict[str, Any], loc: str) -> list[str]:
    problems: list[str] = []
    if len(options) < 2:
        problems.append(f"{loc}: {len(options)} option(s), expected at least 2")
        return problems
    expected = list(LETTERS[: len(options)])
    if list(options) != expected:
        got = ", ".join(repr(k) for k in options)
        problems.append(f"{loc}: option letters are {got}, expected {', '.join(expected)} in that order")
    for letter, text in options.items():
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{loc}: option {letter!r} is {_describe(text)}, expected non-empty text")
    return problems


def _parse_swag(row: dict[str, Any], loc: str) -> tuple[Question | None, list[str]]:
    problems: list[str] = []
    question = row.get("sent1")
    if not isinstance(question, str) or not question.strip():
        problems.append(f"{loc}: 'sent1' is {_describe(question)}, expected non-empty question text")
    numbers = sorted(int(m.group(1)) for key in row if (m := _ENDING_KEY.match(key)))
    if len(numbers) < 2:
        problems.append(f"{loc}: {len(numbers)} 'endingN' field(s), expected at least ending0 and ending1")
    elif numbers != list(range(len(numbers))):
        got = ", ".join(f"ending{n}" for n in numbers)
        problems.append(f"{loc}: fields {got}, expected consecutive ending0..ending{len(numbers) - 1}")
    endings = [row[f"ending{n}"] for n in numbers]
    for n, text in zip(numbers, endings, strict=False):
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{loc}: 'ending{n}' is {_describe(text)}, expected non-empty option text")
    label = row.get("label")
    if "label" not in row:
        problems.append(f"{loc}: no 'label' field, expected an integer 0..{max(len(numbers) - 1, 0)}")
    elif isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < max(len(numbers), 1):
        problems.append(f"{loc}: 'label' is {_describe(label)}, expected an integer 0..{max(len(numbers) - 1, 0)}")
    if problems:
        return None, problems
    options = {LETTERS[i]: text for i, text in enumerate(endings)}
    return Question(question, options, LETTERS[label], None, loc), []


def normalize_question(text: str) -> str:
    """Case- and whitespace-insensitive form of a question, for spotting the same question in two files."""
    return " ".join(text.split()).casefold()


def find_overlap(train: list[Question], other: list[Question]) -> list[tuple[Question, Question]]:
    """Pairs (train question, other question) with the same question text; warns when there are any.

    A question that is trained on and then evaluated inflates accuracy (contamination). This compares question
    stems after normalizing case and whitespace, not options, because MedQA re-releases reorder options.
    """
    by_text: dict[str, list[Question]] = {}
    for q in train:
        by_text.setdefault(normalize_question(q.question), []).append(q)
    pairs = [(t, o) for o in other for t in by_text.get(normalize_question(o.question), [])]
    if pairs:
        examples = "; ".join(f"{t.source} = {o.source}" for t, o in pairs[:5])
        logger.warning(
            "%d question(s) occur in both the training and the evaluation data (contamination), e.g. %s",
            len(pairs),
            examples,
        )
    return pairs


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _describe(value: Any) -> str:
    """Short description of a bad value for an error message: missing, empty, or its type and a clipped repr."""
    if value is None:
        return "missing or null"
    if isinstance(value, str):
        if not value.strip():
            return "empty"
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    text = json.dumps(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} (a JSON {_json_type(value)})"
