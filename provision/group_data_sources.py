"""Which file a host's setting came from, so an error names the file to edit, and group data no host can use.

pyinfra merges group data from provision/group_data/ and from every `--group-data PATH` on its command line (a
folder of <group>.py files, or one such file), later paths overriding earlier ones, a group's file overriding
all.py. It ignores a path that does not exist and data for a group no host is in; this kit refuses both.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from provision.data_errors import GROUP_DATA, ProvisionDataError
from provision.pins import PLATFORM_BY_GROUP


def cli_group_data_paths(argv: Sequence[str] | None = None) -> tuple[Path, ...]:
    """The --group-data values of a pyinfra command line (default: this process's, as pyinfra runs our files
    in its own process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    paths = []
    for index, arg in enumerate(args):
        if arg == "--group-data" and index + 1 < len(args):
            paths.append(Path(args[index + 1]))
        elif arg.startswith("--group-data="):
            paths.append(Path(arg.split("=", 1)[1]))
    return tuple(paths)


def group_files(path: Path) -> dict[str, Path]:
    """group name -> file, for one --group-data path, as pyinfra reads it (every *.py is a group's data)."""
    if path.is_file():
        return {path.stem: path} if path.suffix == ".py" else {}
    if path.is_dir():
        return {file.stem: file for file in sorted(path.glob("*.py"))}
    return {}


@lru_cache(maxsize=64)
def defined_names(path: Path) -> frozenset[str]:
    """Top-level names a group data file assigns (read, not executed: the file may need pyinfra's context)."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError):
        return frozenset()  # pyinfra itself reports an unreadable or broken file when it loads it
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return frozenset(names)


def defining_file(key: str, group: str, extra_paths: Sequence[Path]) -> Path | None:
    """The file whose value of `key` a host of `group` gets, or None when no file defines it."""
    folders = (GROUP_DATA, *extra_paths)
    for stem in (group, "all"):  # a group's data wins over all.py, whichever folder either is in
        for folder in reversed(folders):  # later --group-data paths override earlier ones
            file = group_files(folder).get(stem)
            if file is not None and key in defined_names(file):
                return file
    return None


def check_group_data_paths(extra_paths: Sequence[Path]) -> None:
    """Refuse --group-data paths pyinfra would silently ignore: missing ones, and data for a group that no host
    can be in (a typo such as mi250x.py would otherwise leave every setting in it unused)."""
    known = {*PLATFORM_BY_GROUP, "all"}
    for path in extra_paths:
        if not path.exists():
            raise ProvisionDataError(f"--group-data {path}: no such file or folder")
        unknown = {group: file for group, file in group_files(path).items() if group not in known}
        if unknown:
            group, file = sorted(unknown.items())[0]
            raise ProvisionDataError(
                f"--group-data {path}: {file} is data for group {group!r}, which does not exist; group data files "
                f"are named after a group: {', '.join(sorted(known))} (.py)"
            )
