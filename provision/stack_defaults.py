"""Defaults that follow the kit's stack file (stack.env): the ROCm release, the NVIDIA driver branch, GPU targets.

A host runs the images, so by default it gets the ROCm release and driver branch the images are built for, and its
GPUs are checked against the targets the images are compiled for. Host data may still choose another release or
narrow the targets; settings.py validates those against provision/pins.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))  # kit/ sits beside provision/; pyinfra may run us from any directory

from kit.stack import STACK_FILE, StackFileError, read_stack
from provision.host_data import ProvisionDataError


def stack_value(key: str, data_key: str, stack_file: Path | None = None) -> str:
    """stack.env's `key`, the default of host data `data_key`; a missing file or key is an error naming both."""
    path = stack_file or STACK_FILE
    try:
        if not Path(path).is_file():  # kit.stack's own message does not name the host data key it feeds
            raise FileNotFoundError(path)
        values = read_stack(path)
    except FileNotFoundError:
        raise ProvisionDataError(
            f"{path}: not found; it holds {key}, the default of {data_key}. Restore it from the repository "
            f"or set {data_key} in provision/group_data/all.py"
        ) from None
    except StackFileError as error:
        raise ProvisionDataError(str(error)) from None
    value = values.get(key, "")
    if not value:
        raise ProvisionDataError(
            f"{path}: no {key}= line, which is the default of {data_key}; add it there "
            f"or set {data_key} in provision/group_data/all.py"
        )
    return value


def stack_list(key: str, data_key: str, stack_file: Path | None = None) -> tuple[str, ...]:
    """A ';'-separated stack.env value (GPU target lists such as ROCM_GPU_ARCHS=gfx90a;gfx942) as a tuple."""
    return tuple(item for item in stack_value(key, data_key, stack_file).split(";") if item)
