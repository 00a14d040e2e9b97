"""The image manifest: what is in an image, written at build time, read by every run report.

Written by Dockerfile.app as /opt/kit/manifest.json (stdlib only: it runs in the image's Python before anything is
imported from the pipeline). It records the source revision, the vendor, the stack keys the build used (versions,
refs, base images with their digests, GPU targets: the values make passed, command-line overrides included), the
sha256 of every lock file the build installed from, and every installed distribution with its version. The same
stack keys are image labels (``docker inspect``); the file holds the rest.

    python -m kit.manifest --vendor cpu --stack "CPU_BASE=... CPU_TORCH_VERSION=..." --revision abc \\
        --lock-dir requirements --output /opt/kit/manifest.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional

from kit import atomic
from kit.digest import sha256_file

DEFAULT_PATH = Path("/opt/kit/manifest.json")
SCHEMA = 1


def parse_stack_arg(text: str) -> dict[str, str]:
    """``KEY=value KEY=value`` (make's one-line form; no value holds a space) -> dict; a bad item is named."""
    stack: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--stack item {item!r}: expected KEY=value")
        stack[key] = value
    return stack


def base_digests(stack: Mapping[str, str]) -> dict[str, Optional[str]]:
    """Every *_BASE key -> its pinned digest (None: a tag only, e.g. a locally made base; not reproducible)."""
    return {key: (value.split("@", 1)[1] if "@" in value else None)
            for key, value in stack.items() if key.endswith("_BASE")}


def installed_distributions() -> dict[str, str]:
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower().replace("_", "-")] = dist.version
    return dict(sorted(found.items()))


def revision_state(revision: str) -> dict[str, Any]:
    """``abc123`` or ``abc123-dirty-<12 hex>`` (the Makefile's VCS_REF: the tree had uncommitted changes, and the
    hex is the start of the sha256 of that diff) -> {"commit", "dirty", "diff_sha256"}: a report built on this
    manifest then never claims a commit whose code it did not run."""
    commit, sep, diff = revision.partition("-dirty-")
    if not sep:
        commit, dirty_suffix = (revision[:-len("-dirty")], True) if revision.endswith("-dirty") else (revision, False)
        return {"commit": commit, "dirty": dirty_suffix, "diff_sha256": None}
    return {"commit": commit, "dirty": True, "diff_sha256": diff or None}


def build_manifest(vendor: str, stack: Mapping[str, str], locks: list[Path], revision: str,
                   source: str = "unknown") -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "vendor": vendor,
        "revision": revision,
        "revision_state": revision_state(revision),
        "source": source,
        "python": platform.python_version(),
        "stack": dict(stack),
        "base_digests": base_digests(stack),
        "locks": {path.name: sha256_file(path) for path in sorted(locks, key=lambda p: p.name)},
        "packages": installed_distributions(),
    }


def manifest_path(environ: Optional[Mapping[str, str]] = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("KIT_IMAGE_MANIFEST") or DEFAULT_PATH)


def image_facts(environ: Optional[Mapping[str, str]] = None) -> Optional[dict[str, Any]]:
    """What a run report records about the image it ran in; None outside an image (no manifest file).

    The image ID cannot be seen from inside a container: compose passes it as KIT_IMAGE_ID when it knows it. The
    manifest's sha256 identifies the build's content either way.
    """
    environ = os.environ if environ is None else environ
    path = manifest_path(environ)
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        manifest = {"error": f"{path}: not valid JSON ({exc})"}
    return {"manifest_path": str(path), "manifest_sha256": hashlib.sha256(text.encode()).hexdigest(),
            # compose passes an empty KIT_IMAGE_ID when the image was not in the engine at `make env`: unknown.
            "image_id": environ.get("KIT_IMAGE_ID") or None, "manifest": manifest}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.manifest", description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", required=True)
    parser.add_argument("--stack", default="", help='"KEY=value KEY=value": the stack keys the build used')
    parser.add_argument("--lock", action="append", type=Path, default=[], help="a lock file installed from")
    parser.add_argument("--lock-dir", type=Path, help="record every image-*.lock in this folder")
    parser.add_argument("--revision", default="unknown")
    parser.add_argument("--source", default="unknown")
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    try:
        stack = parse_stack_arg(args.stack)
    except ValueError as exc:
        parser.error(str(exc))
    if args.lock_dir is not None:
        args.lock += sorted(args.lock_dir.glob("image-*.lock"))
    for lock in args.lock:
        if not lock.is_file():
            parser.error(f"--lock {lock}: no such file")
    manifest = build_manifest(args.vendor, stack, args.lock, args.revision, args.source)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.output, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(args.output, 0o644)  # the image's runs are any UID (compose runs as the caller): world-readable
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
