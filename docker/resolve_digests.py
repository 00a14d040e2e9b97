"""Pin base images in stack.env to their registry digests, where a registry is reachable.

    python3 docker/resolve_digests.py [--docker docker] [--refresh] [stack.env]   (make resolve-digests [REFRESH=1])

By default only the ``*_BASE`` lines that pin nothing yet (the all-zero placeholder digest, or no digest) are
looked up: a recorded digest is a decision (reviewed, tested, committed) and is never moved as a side effect of
filling another. ``--refresh`` looks up every ``*_BASE`` line, to take the tags' current images on purpose.
Each lookup asks the registry for the tag's digest (``docker buildx imagetools inspect <name>:<tag> --format
'{{json .Manifest.Digest}}'``, the index digest, so every platform resolves) and writes ``<name>:<tag>@sha256:<d>``.
Prints a unified diff of what changed. Builds use only recorded digests (the Makefile refuses the placeholder).
The file is rewritten atomically, and not at all if any lookup fails. Stdlib and kit/ only.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kit.atomic import write_text  # noqa: E402  (the kit's one atomic writer; run from a checkout)

BASE_LINE = re.compile(r"^(?P<key>[A-Z][A-Z0-9_]*_BASE)=(?P<ref>[^@\s]+)(?:@sha256:[0-9a-f]{64})?$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
PLACEHOLDER = "sha256:" + "0" * 64


class DigestError(RuntimeError):
    """A lookup failed or returned something that is not a digest: the message names the key and tag."""


def inspect_with(docker: str) -> Callable[[str], str]:
    def inspect(ref: str) -> str:
        command = [docker, "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest.Digest}}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise DigestError(f"{ref}: docker buildx imagetools inspect failed: {result.stderr.strip()[-400:]}")
        return json.loads(result.stdout.strip() or '""')
    return inspect


def needs_lookup(line: str, refresh: bool) -> bool:
    """Whether a ``*_BASE`` line is looked up: every one with ``refresh``, else only those that pin nothing yet."""
    return refresh or "@sha256:" not in line or line.endswith("@" + PLACEHOLDER)


def resolve(text: str, inspect: Callable[[str], str], source: str = "stack.env",
            refresh: bool = False) -> tuple[str, list[str]]:
    """The new text with the chosen *_BASE lines pinned (see needs_lookup), and one line per change for the user."""
    lines, changes = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        match = BASE_LINE.match(line.strip())
        if match is None or not needs_lookup(line.strip(), refresh):
            lines.append(line)
            continue
        key, ref = match.group("key"), match.group("ref")
        digest = inspect(ref)
        if not isinstance(digest, str) or not DIGEST.match(digest) or digest == PLACEHOLDER:
            raise DigestError(f"{source}:{number}: {key}: {ref} resolved to {digest!r}, expected sha256:<64 hex>")
        pinned = f"{key}={ref}@{digest}"
        if pinned != line.strip():
            changes.append(f"{key}: {line.strip().partition('=')[2]} -> {ref}@{digest}")
        lines.append(pinned)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else ""), changes


def unified_diff(old: str, new: str, name: str) -> str:
    """What the rewrite changed, as ``git diff`` would show it (printed even outside a git checkout)."""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"a/{name}", f"b/{name}"))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_stack = Path(__file__).resolve().parent.parent / "stack.env"
    parser.add_argument("stack_file", nargs="?", type=Path, default=default_stack)
    parser.add_argument("--docker", default="docker", help="the docker CLI (with the buildx plugin)")
    parser.add_argument("--refresh", action="store_true",
                        help="look up every *_BASE line, not only the placeholders (make resolve-digests REFRESH=1)")
    args = parser.parse_args(argv)
    old = args.stack_file.read_text(encoding="utf-8")
    try:
        text, changes = resolve(old, inspect_with(args.docker), str(args.stack_file), refresh=args.refresh)
    except DigestError as error:
        print(f"resolve-digests: {error}; {args.stack_file} is unchanged", file=sys.stderr)
        return 1
    if text != old:
        write_text(args.stack_file, text)
        print(unified_diff(old, text, args.stack_file.name), end="")
    for change in changes:
        print(f"resolve-digests: {change}")
    scope = "every base" if args.refresh else "placeholder bases only (REFRESH=1 / --refresh looks up every base)"
    print(f"resolve-digests: {len(changes)} base digest(s) changed in {args.stack_file}; looked up {scope}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
