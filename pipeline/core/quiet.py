"""Library noise that says nothing about the user's run, silenced once at the command line's start.

A user learns to skip warnings when most of them are noise; ours (data problems, fallbacks) must stay readable.
Each silenced item names why it is noise here. Nothing of ours is filtered.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# bitsandbytes >= 0.49 tries, at import on CPUs with AVX512-BF16, to fetch an optional gemm kernel from the
# Hugging Face hub (kernels-community) and logs a warning when it cannot: never reachable on an air-gapped node,
# and its own CPU kernel is used instead.
_BNB_HUB_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_libraries(interactive: bool | None = None) -> None:
    """Install the filters; progress bars of weight loading only where a person watches a terminal."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessage(_BNB_HUB_KERNEL))
    # peft (0.21) reads the base model's is_gradient_checkpointing, which transformers 5.x deprecates under a new
    # name: a message for peft's maintainers, not for someone fine-tuning (our own reads go through compat.py).
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if interactive is None:
        interactive = sys.stderr.isatty()
    if not interactive:
        # transformers' "Loading weights" / "Loading checkpoint shards" bars are carriage-return art in a log file.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # the checks run before transformers is known to import; nothing to silence then
            pass
