"""Provision one GPU node (pyinfra runs this once per host, all hosts in parallel).

    pyinfra provision/inventory.py provision/deploy.py          # or: make provision
    pyinfra provision/inventory.py provision/deploy.py --dry    # the plan, nothing changed

Everything a site decides is data (provision/group_data/, hosts file); this file only orders the deploys.
"""

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))  # pyinfra runs this file from any directory; the deploys live here

from pyinfra import host

from provision import settings as node_settings
from provision.deploys.apt_repo import apt_sources
from provision.deploys.base import base_packages
from provision.deploys.docker import docker_engine
from provision.deploys.nvidia import (
    nvidia_container_toolkit,
    nvidia_driver,
    nvidia_fabricmanager_running,
)
from provision.deploys.rocm import rocm
from provision.deploys.tuning import instinct_tuning
from provision.deploys.verify import reboot_if_needed, verify
from provision.facts import settings_facts
from provision.group_data_sources import check_group_data_paths, cli_group_data_paths
from provision.preflight import check_gpu_vendor, check_privilege, check_urls_reachable, check_users_exist

# Checked while pyinfra plans, before it changes anything: bad data, missing privileges, GPUs of the wrong vendor or
# an unreachable URL stop the whole run here.
extra_group_data = cli_group_data_paths()
check_group_data_paths(extra_group_data)
check_privilege(host)
settings = node_settings.resolve(
    host.name, host.groups, host.data, facts=settings_facts(host), extra_group_data=extra_group_data
)
check_gpu_vendor(host, settings)
check_users_exist(host, settings)
check_urls_reachable(host, settings)

# Every vendor source is written (or fixed) before apt reads any of them.
apt_sources(settings.apt_repos, settings.apt_arch, settings.apt_cache_time)
base_packages(settings)
if settings.platform == "rocm":
    reboot_changes = [rocm(settings)]
    reboot_changes += instinct_tuning(settings)
    docker_engine(settings)
else:
    reboot_changes = [nvidia_driver(settings)]
    docker_engine(settings)
    nvidia_container_toolkit(settings)
reboot_if_needed(settings, reboot_changes)
if settings.platform == "cuda":
    nvidia_fabricmanager_running(settings)
verify(settings)
