"""The secret filter every writer of user-visible text applies (report files, progress lines).

In core rather than report: training's progress lines need it too, and train must not import report.
"""

from __future__ import annotations

import os
import re
from typing import Optional

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


def redact(text: str, environ: Optional[dict[str, str]] = None) -> str:
    """Replace the value of every secret-looking environment variable found in ``text``."""
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if _SECRET_NAME.search(name) and len(value) >= 6 and value in text:
            text = text.replace(value, f"<redacted ${name}>")
    return text
