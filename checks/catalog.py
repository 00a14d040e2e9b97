"""The full list of checks, in the table's order.

Kept out of ``checks.core`` on purpose: every check module imports core (for ``@check`` and ``Result``), so the
module that imports every check module to fill the registry must be another one, or core and the checks would
import each other.
"""

from __future__ import annotations

from checks import access, collectives, numerics, pipeline_check, platform_check, triton_check  # noqa: F401
from checks.core import REGISTRY, Check

GROUP_ORDER = ("platform", "access", "numerics", "collectives", "pipeline")  # the table's order, top to bottom


def all_checks() -> list[Check]:
    """Every check in table order: by group, then in the order its module defines them."""
    rank = {group: i for i, group in enumerate(GROUP_ORDER)}
    return sorted(REGISTRY.values(), key=lambda c: rank.get(c.group, len(rank)))
