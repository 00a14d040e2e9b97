"""``python -m pipeline ...`` with one node stalled inside a step, so a test can kill that node mid-step.

    torchrun ... -m tests.multinode.stall finetune --recipe R ...

With KIT_TEST_STALL_NODE=N and KIT_TEST_STALL_STEP=S in the environment, the ranks of node N (torchrun's
GROUP_RANK) touch KIT_TEST_STALL_MARK and sleep inside optimizer step S, before their forward pass: the other
node's ranks are then inside the same step, waiting in its first collective, when the test kills node N.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    from pipeline.__main__ import main as pipeline_main
    from pipeline.train import loop

    node, step = int(os.environ["KIT_TEST_STALL_NODE"]), int(os.environ["KIT_TEST_STALL_STEP"])
    mark = Path(os.environ["KIT_TEST_STALL_MARK"])
    original = loop.Trainer.step
    calls = {"n": 0}

    def step_then_stall(self):  # noqa: ANN001, ANN202 - mirrors Trainer.step
        calls["n"] += 1
        # Once per test: ranks started again (a restarted group) find the mark and run on.
        if int(os.environ.get("GROUP_RANK", "0")) == node and calls["n"] == step and not mark.exists():
            mark.touch()
            time.sleep(600)  # killed long before
        return original(self)

    loop.Trainer.step = step_then_stall
    return pipeline_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
