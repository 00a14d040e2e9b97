"""Where the kit's group data lives, and the error every host-data check raises.

In a module of its own so that host_data.py and group_data_sources.py, which use each other's answers, both
import it instead of each other.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra.api.exceptions import PyinfraError

GROUP_DATA = Path(__file__).resolve().parent / "group_data"
GROUP_DATA_DIR = "provision/group_data"


class ProvisionDataError(PyinfraError, ValueError):
    """Host data that cannot be provisioned; the message names the key and what it should be.

    A PyinfraError, so the pyinfra CLI prints the message alone instead of a traceback."""
