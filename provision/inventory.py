"""pyinfra inventory: the GPU nodes, grouped by platform, read from a hosts file.

The hosts file (YAML) is provision/hosts.yaml, or the file named by PROVISION_HOSTS. Copy hosts.example.yaml to
start. Each top-level key is a group: mi250, mi300x or nvidia. Each entry is a host name (any pyinfra target:
an SSH host, @docker/<container>, @chroot/<dir>) or a mapping {name: ..., data: {...}} for per-host data.
"""

import os
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))  # pyinfra runs this file from any directory; the helpers live here

from provision.hosts_file import read_hosts_file

_groups = read_hosts_file(Path(os.environ.get("PROVISION_HOSTS", Path(__file__).parent / "hosts.yaml")))

mi250 = _groups["mi250"]
mi300x = _groups["mi300x"]
nvidia = _groups["nvidia"]
