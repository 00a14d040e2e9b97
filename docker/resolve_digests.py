"""Pin every base image in stack.env to its registry digest, once, where a registry is reachable.

    python3 docker/resolve_digests.py [--docker docker] [stack.env]      (make resolve-digests)

For each ``*_BASE=<name>:<tag>[@sha256:...]`` line, asks the registry for the tag's current digest
(``docker buildx imagetools inspect <name>:<tag> --format '{{json .Manifest.Digest}}'``, the index digest, so
every platform resolves) and rewrites the line as ``<name>:<tag>@sha256:<digest>``. Builds then use only the
recorded digests (the Makefile refuses the all-zero placeholder), and a moved tag shows up as a diff of stack.env.
The file is rewritten atomically, and not at all if any lookup fails. Stdlib and kit/ only.
"""

from __future__ import annotations

import argparse
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


def resolve(text: str, inspect: Callable[[str], str], source: str = "stack.env") -> tuple[str, list[str]]:
    """The new text with every *_BASE line pinned, and one line per change for the user."""
    lines, changes = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        match = BASE_LINE.match(line.strip())
        if match is None:
            lines.append(line)
            continue
        key, ref = match.group("key"), match.group("ref")
        digest = inspect(ref)
        if not isinstance(digest, str) or not DIGEST.match(digest) or digest == "sha256:" + "0" * 64:
            raise DigestError(f"{source}:{number}: {key}: {ref} resolved to {digest!r}, expected sha256:<64 hex>")
        pinned = f"{key}={ref}@{digest}"
        if pinned != line.strip():
            changes.append(f"{key}: {line.strip().partition('=')[2]} -> {ref}@{digest}")
        lines.append(pinned)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else ""), changes


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_stack = Path(__file__).resolve().parent.parent / "stack.env"
    parser.add_argument("stack_file", nargs="?", type=Path, default=default_stack)
    parser.add_argument("--docker", default="docker", help="the docker CLI (with the buildx plugin)")
    args = parser.parse_args(argv)
    try:
        text, changes = resolve(args.stack_file.read_text(encoding="utf-8"), inspect_with(args.docker),
                                str(args.stack_file))
    except DigestError as error:
        print(f"resolve-digests: {error}; {args.stack_file} is unchanged", file=sys.stderr)
        return 1
    write_text(args.stack_file, text)
    for change in changes:
        print(f"resolve-digests: {change}")
    print(f"resolve-digests: {len(changes)} base digest(s) changed in {args.stack_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
