"""The check registry and runner: what a check is, how one is selected, run, timed and turned into a result.

A check is a function ``fn(ctx: Context) -> Result``, registered with ``@check("group.name")``. It measures one
thing, says pass/warn/fail/skip, gives the measured value, and on warn or fail a hint that tells the user what
to do. The runner times each check and turns an exception escaping a check into a ``fail`` carrying the
exception's message, so a broken check never hides the rest of the table.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)


@dataclass
class Result:
    name: str
    status: str
    value: str = ""  # the measured value, short: "2 x NVIDIA H200 (sm_90)", "787 TFLOP/s"
    detail: str = ""  # what was compared against what, or why it was skipped
    hint: str = ""  # what to do about a warn or fail
    duration: float = 0.0  # seconds
    data: dict[str, Any] = field(default_factory=dict)  # structured measurements for --json readers

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """What every check may read; built once per run so torch is imported and probed once."""

    require_gpu: bool = False  # CI on GPU runners: "no GPU" is a failure, not a skip
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cache: dict[str, Any] = field(default_factory=dict)  # probes shared between checks (see gpu.probe)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


CheckFn = Callable[[Context], Result]


@dataclass(frozen=True)
class Check:
    name: str  # "group.short", e.g. "numerics.matmul_bf16"
    fn: CheckFn
    summary: str

    @property
    def group(self) -> str:
        return self.name.split(".", 1)[0]


REGISTRY: dict[str, Check] = {}


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check ``name`` (``group.short``); its docstring's first line is its summary."""
    if name.count(".") != 1:
        raise ValueError(f"check name {name!r} must be 'group.short'")

    def register(fn: CheckFn) -> CheckFn:
        if name in REGISTRY:
            raise ValueError(f"check {name!r} registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        REGISTRY[name] = Check(name=name, fn=fn, summary=summary)
        return fn

    return register


class SelectionError(ValueError):
    """--only/--skip named something that is neither a check nor a group."""


def _expand(names: Iterable[str], checks: list[Check]) -> set[str]:
    known = {c.name for c in checks}
    groups = {c.group for c in checks}
    picked: set[str] = set()
    for raw in names:
        for name in (n.strip() for n in raw.split(",")):
            if not name:
                continue
            if name in known:
                picked.add(name)
            elif name in groups:
                picked.update(c.name for c in checks if c.group == name)
            else:
                raise SelectionError(
                    f"unknown check or group {name!r}; groups: {', '.join(sorted(groups))}; "
                    f"checks: {', '.join(sorted(known))}"
                )
    return picked


def select(checks: list[Check], only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[Check]:
    """Checks in registry order, narrowed by ``only`` and then ``skip`` (both accept check and group names)."""
    only_set = _expand(only, checks)
    skip_set = _expand(skip, checks)
    return [c for c in checks if (not only_set or c.name in only_set) and c.name not in skip_set]


def run_check(chk: Check, ctx: Context) -> Result:
    start = time.perf_counter()
    try:
        result = chk.fn(ctx)
        if not isinstance(result, Result):
            raise TypeError(f"check returned {type(result).__name__}, expected Result")
    except Exception as exc:  # a crashing check is a failed check, and the run goes on
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
        result = Result(
            name=chk.name,
            status=FAIL,
            value=type(exc).__name__,
            detail=f"{exc}{where}",
            hint="the check itself raised: the message above is what the library said",
        )
    result.name = chk.name
    result.duration = round(time.perf_counter() - start, 3)
    return result


def run_checks(
    checks: list[Check], ctx: Context, on_result: Optional[Callable[[Result], None]] = None
) -> list[Result]:
    results = []
    for chk in checks:
        res = run_check(chk, ctx)
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results


def exit_code(results: list[Result]) -> int:
    """0 only when nothing failed: warnings and skips do not fail a run."""
    return 1 if any(r.status == FAIL for r in results) else 0
