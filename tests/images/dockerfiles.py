"""Small Dockerfile reader for the image tests: instructions, build-arg defaults, stages, FROM references.

Only what the tests need: joins continuation lines, drops comments, resolves ``${ARG}`` (and ``${ARG:?message}``)
in FROM lines from stack.env: the Dockerfiles declare no defaults, the Makefile passes stack.env's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kit.stack import read_stack

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {vendor: ROOT / f"Dockerfile.{vendor}" for vendor in ("rocm", "cuda", "cpu")}
APP_DOCKERFILE = ROOT / "Dockerfile.app"
STACK = read_stack()
# stack.env's ROCm torch switch (ROCM_TORCH): position -> the torch version the image then carries (the Makefile
# passes ROCM_TORCH_PREBUILT_VERSION as ROCM_TORCH_VERSION for prebuilt).
ROCM_TORCH_VERSIONS = {"source": STACK["ROCM_TORCH_VERSION"], "prebuilt": STACK["ROCM_TORCH_PREBUILT_VERSION"]}


def rocm_torch_hip_release(position: str) -> str:
    """torch.version.hip's major.minor in each position: a source build's is the dev base's ROCm (it is compiled
    against it); PyTorch's wheel names its ROCm release in its local version (+rocmX.Y)."""
    if position == "source":
        return ".".join(STACK["ROCM_VERSION"].split(".")[:2])
    return re.search(r"\+rocm(\d+\.\d+)$", ROCM_TORCH_VERSIONS["prebuilt"]).group(1)
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PLACEHOLDER_DIGEST = "@sha256:" + "0" * 64


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line of the instruction's first line
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by the parser too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    return out


def global_args(items: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM (the only ones FROM lines can use)."""
    defaults: dict[str, str] = {}
    for item in items:
        if item.keyword == "FROM":
            break
        if item.keyword == "ARG" and "=" in item.args:
            name, _, value = item.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


@dataclass(frozen=True)
class FromLine:
    line: int
    reference: str  # as written
    resolved: str  # ${ARG} replaced by its default
    stage: str | None


def from_lines(text: str, values: dict[str, str] | None = None) -> list[FromLine]:
    """FROM lines with ``${ARG}`` resolved from ``values`` (stack.env's by default), then from ARG defaults."""
    items = instructions(text)
    defaults = {**global_args(items), **(STACK if values is None else values)}
    out = []
    for item in items:
        if item.keyword != "FROM":
            continue
        words = [w for w in item.args.split() if not w.startswith("--")]
        reference = words[0]
        stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
        resolved = re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}|\$(\w+)",
                          lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), reference)
        out.append(FromLine(item.line, reference, resolved, stage))
    return out


def unpinned_bases(text: str, allow_placeholder: bool = False, values: dict[str, str] | None = None) -> list[str]:
    """FROM references that are neither an earlier stage, scratch, nor pinned by a sha256 digest."""
    problems = []
    stages: set[str] = set()
    for item in from_lines(text, values):
        if item.resolved in stages or item.resolved == "scratch":
            pass
        elif "$" in item.resolved:
            problems.append(f"line {item.line}: {item.reference} has no default to check")
        elif not DIGEST.search(item.resolved):
            problems.append(f"line {item.line}: {item.resolved} is not pinned by digest")
        elif item.resolved.endswith(PLACEHOLDER_DIGEST) and not allow_placeholder:
            problems.append(f"line {item.line}: {item.resolved} carries the placeholder digest")
        if item.stage:
            stages.add(item.stage)
    return problems
