"""Every file a Dockerfile takes from the build context is in the build context.

The context is computed with Docker's own .dockerignore semantics (the docker SDK's PatternMatcher, a port of the
engine's rules: last match wins, `!` re-includes, `**`), over the files git tracks. The sources are every COPY/ADD
without --from and every `RUN --mount=type=bind` without from= in every Dockerfile. Issue 20: the GPU Dockerfiles
copied docker/wheelhouse-source.sh, which .dockerignore's allow-list left out, so every compile-stage build stopped
with "not found"; the tests that replaced the compile stage could not see it.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from docker.utils.build import exclude_paths

from .dockerfiles import APP_DOCKERFILE, DOCKERFILES, ROOT, instructions

ALL = {**{f"Dockerfile.{v}": p for v, p in DOCKERFILES.items()}, "Dockerfile.app": APP_DOCKERFILE}
# Build args that name context files, with every value the Makefile passes (Dockerfile.app: IMAGE_LOCK).
CONTEXT_ARGS = {"IMAGE_LOCK": [f"image-{vendor}.lock" for vendor in sorted(DOCKERFILES)]}
# A folder bind-mounted from the context is read, not copied: what the command reads from it. Any other folder
# mount must have all of its files in the context. Dockerfile.app: `kit.manifest --lock-dir` records image-*.lock.
BIND_READS = {"requirements": "requirements/image-*.lock"}


def context_files() -> set[str]:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    kept = exclude_paths(str(ROOT), patterns)
    return {path for path in tracked_files() if path in kept}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def expand(source: str) -> list[str]:
    names = re.findall(r"\$\{?(\w+)", source)
    unknown = [n for n in names if n not in CONTEXT_ARGS]
    assert not unknown, f"{source}: add the values of {unknown} to CONTEXT_ARGS"
    if not names:
        return [source]
    (name,) = set(names)
    return [re.sub(r"\$\{?\w+(?::\?[^}]*)?\}?", value, source) for value in CONTEXT_ARGS[name]]


def context_sources(text: str) -> list[tuple[int, str]]:
    """(line, path) for every path an instruction reads from the build context."""
    out = []
    for item in instructions(text):
        if item.keyword in ("COPY", "ADD"):
            words = shlex.split(item.args)
            if any(w.startswith("--from") for w in words):
                continue
            paths = [w for w in words if not w.startswith("--")]
            out += [(item.line, path) for source in paths[:-1] for path in expand(source)]
        elif item.keyword == "RUN":
            for mount in re.findall(r"--mount=(\S+)", item.args):
                options = dict(part.partition("=")[::2] for part in mount.split(","))
                if options.get("type") == "bind" and "from" not in options:
                    source = options.get("source", ".").strip("/")
                    out += [(item.line, path) for path in expand(BIND_READS.get(source, source))]
    return out


def missing_from_context(source: str, tracked: list[str], context: set[str]) -> list[str]:
    """The repository files under ``source`` (a file, a folder or a glob) that the context leaves out."""
    source = source.strip("/").removeprefix("./")
    if any(ch in source for ch in "*?["):
        pattern = re.compile(re.escape(source).replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")
        wanted = [path for path in tracked if pattern.match(path)]
    elif source in ("", "."):
        wanted = []
    else:
        wanted = [path for path in tracked if path == source or path.startswith(source + "/")]
    assert wanted, f"{source}: no such file in the repository"
    return [path for path in wanted if path not in context and "__pycache__" not in path]


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_context_source_of_the_dockerfile_is_in_the_build_context(name):
    tracked, context = tracked_files(), context_files()
    sources = context_sources(ALL[name].read_text())
    assert sources, f"{name}: no COPY/ADD source found; the reader is broken"
    left_out = {f"line {line}: {source} ({', '.join(missing)})"
                for line, source in sources if (missing := missing_from_context(source, tracked, context))}
    assert not left_out, f"{name} reads files that .dockerignore keeps out of the build context: {sorted(left_out)}"


def test_the_reader_sees_what_the_issue_saw():
    # The reader must find the compile-stage COPY that broke (issue 20), and the app's bind mount of requirements/.
    rocm = [source for _, source in context_sources(DOCKERFILES["rocm"].read_text())]
    app = [source for _, source in context_sources(APP_DOCKERFILE.read_text())]
    assert "docker/wheelhouse-source.sh" in rocm
    assert "requirements/image-*.lock" in app and "requirements/image-rocm.lock" in app
