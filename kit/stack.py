"""Read ``stack.env``: the one file that holds every version, ref, base image and GPU target of the kit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

STACK_FILE = Path(__file__).resolve().parent.parent / "stack.env"
_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S*)$")


class StackFileError(ValueError):
    """stack.env is malformed: the message names the file and line."""


def read_stack(path: Optional[Path] = None) -> dict[str, str]:
    """``{KEY: value}`` from ``stack.env`` (``KEY=value`` lines, ``#`` comments, blank lines)."""
    path = Path(path) if path is not None else STACK_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        # The images copy kit/ to /opt/kit/kit, so the default path there is /opt/kit/stack.env.
        where = (" (it belongs beside the kit/ folder: the repository root, or /opt/kit in the images; run from a "
                 "full checkout or an image that carries it)") if path == STACK_FILE else ""
        raise StackFileError(f"{path}: cannot read the stack file: {exc.strerror or exc}{where}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise StackFileError(f"{path}:{number}: expected KEY=value (upper-case key, no spaces), got {raw!r}")
        key, value = match.groups()
        if key in values:
            raise StackFileError(f"{path}:{number}: {key} is set twice")
        values[key] = value
    return values


def stack_value(key: str, path: Optional[Path] = None) -> str:
    """One value of ``stack.env``; a missing key is an error naming the file and the key."""
    values = read_stack(path)
    if key not in values:
        raise StackFileError(f"{path or STACK_FILE}: no {key}= line")
    return values[key]
