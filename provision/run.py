"""`make provision`: pyinfra on the kit's inventory and deploy, safe to run unattended.

    python -m provision.run [pyinfra options]     # what `make provision PROVISION_ARGS="..."` runs

What this adds to a plain `pyinfra provision/inventory.py provision/deploy.py [options]`:

- A --limit pattern that matches no host of the inventory is refused (pyinfra warns, plans nothing and exits 0,
  which reads as success).
- Without a terminal on stdin (CI, `</dev/null`) `-y` is added: pyinfra's "Press enter to execute" prompt would
  otherwise end the run with EOFError. PROVISION_YES=1 adds it on a terminal too.
- pyinfra writes pyinfra-debug.log into the current directory after an internal error; it is moved to
  PROVISION_LOG_DIR (default .cache/provision/, ignored by git) and its new place is printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
INVENTORY = REPO_ROOT / "provision" / "inventory.py"
DEPLOY = REPO_ROOT / "provision" / "deploy.py"
DEBUG_LOG = "pyinfra-debug.log"


def option_values(args: Sequence[str], option: str) -> list[str]:
    """Every value of a repeatable pyinfra option, given as `--option VALUE` or `--option=VALUE`."""
    values = []
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(f"{option}="):
            values.append(arg.split("=", 1)[1])
    return values


def unmatched_limits(args: Sequence[str]) -> list[str]:
    """--limit patterns that match no host, matched as pyinfra does: a group's name, else fnmatch on host names."""
    patterns = option_values(args, "--limit")
    if not patterns:
        return []
    from pyinfra.api import State
    from pyinfra.api.exceptions import NoGroupError
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    ctx_state.set(State())  # pyinfra reads the inventory and group data files inside a state, as its CLI does
    inventory = make_inventory(
        str(INVENTORY), cwd=os.getcwd(), group_data_directories=option_values(args, "--group-data")
    )
    unmatched = []
    for pattern in patterns:
        try:
            hosts = inventory.get_group(pattern)
        except NoGroupError:
            hosts = [host for host in inventory if fnmatch(host.name, pattern)]
        if not hosts:
            unmatched.append(pattern)
    return unmatched


def limit_error(unmatched: Sequence[str]) -> str:
    hosts_file = os.environ.get("PROVISION_HOSTS", str(INVENTORY.parent / "hosts.yaml"))
    return (
        f"provision: --limit {', '.join(unmatched)} matches no host in {hosts_file}; nothing was run. A --limit "
        "names a host as listed there (wildcards allowed: 'gpu-mi300x-*') or a group (mi250, mi300x, nvidia)"
    )


def pyinfra_command(args: Sequence[str], interactive: bool) -> list[str]:
    # Not with --dry: pyinfra then asks nothing, and -y would make it skip the plan it shows.
    answer = [] if interactive or {"-y", "--yes", "--dry"} & set(args) else ["-y"]
    return [str(Path(sys.executable).with_name("pyinfra")), *answer, str(INVENTORY), str(DEPLOY), *args]


def keep_debug_log_out_of_the_tree(started: float) -> None:
    """Move a pyinfra-debug.log this run wrote in the current directory (the repository root under make)."""
    log = Path.cwd() / DEBUG_LOG
    if not log.is_file() or log.stat().st_mtime < started:
        return
    target_dir = Path(os.environ.get("PROVISION_LOG_DIR", REPO_ROOT / ".cache" / "provision"))
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / DEBUG_LOG
    shutil.move(str(log), target)
    print(f"provision: pyinfra's traceback log is {target}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        unmatched = unmatched_limits(args)
    except Exception:  # noqa: BLE001 - a broken inventory is pyinfra's to report, with its own message
        unmatched = []
    if unmatched:
        print(limit_error(unmatched), file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty() and os.environ.get("PROVISION_YES", "") != "1"
    started = time.time() - 1  # file systems with coarse timestamps
    try:
        return subprocess.run(pyinfra_command(args, interactive), check=False).returncode
    finally:
        keep_debug_log_out_of_the_tree(started)


if __name__ == "__main__":
    sys.exit(main())
