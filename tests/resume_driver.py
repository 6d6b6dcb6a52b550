"""``cola-opt finetune`` in a subprocess that pauses at a chosen point, so that a test can kill it there.

    python tests/resume_driver.py PAUSE <cola-opt finetune options>

PAUSE is one of:

- ``none``: run to the end.
- ``knot``: inside the first knot this process ties, after the first site's weight is
  merged and before the others are (the worst moment: the weights are half merged).
- ``pointer``: the first checkpoint this process writes is complete on disk, but
  ``latest.json`` does not point at it yet.
- ``forward:<n>``: at the n-th training forward pass of this process; waits there until
  the trainer has noted a SIGINT or SIGTERM, then goes on.

At the pause the driver prints ``PAUSED <what>`` on stdout and waits (at most 120 s).
Deterministic CPU settings: one thread, ``torch.use_deterministic_algorithms(True)``.
"""

import sys
import time

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from cola_opt.llm.cli import main
from cola_opt.llm import (
    checkpoint,
    trainer,
)
from cola_opt.chain.sites import Site


def _pause(what: str, until=lambda: False) -> None:
    print(f"PAUSED {what}", flush=True)
    deadline = time.time() + 120
    while not until() and time.time() < deadline:
        time.sleep(0.01)


def _install(pause: str) -> None:
    if pause == "knot":
        merge = Site.merge

        def merge_then_pause(self, update):
            merge(self, update)
            _pause("knot")

        Site.merge = merge_then_pause
    elif pause == "pointer":
        write_pointer = checkpoint._write_pointer

        def pause_then_point(root, name, step, **kw):
            _pause(f"pointer {name}")
            write_pointer(root, name, step, **kw)

        checkpoint._write_pointer = pause_then_point
    elif pause.startswith("forward:"):
        n = int(pause.split(":")[1])
        calls = [0]
        live = []
        enter = checkpoint.DeferredInterrupt.__enter__

        def remember(self):
            live.append(self)
            return enter(self)

        checkpoint.DeferredInterrupt.__enter__ = remember
        loss = trainer.classification_loss

        def counting_loss(scores, labels):
            calls[0] += 1
            if calls[0] == n:
                _pause(f"forward {n}", until=lambda: bool(live) and live[-1].requested is not None)
            return loss(scores, labels)

        trainer.classification_loss = counting_loss
    elif pause != "none":
        raise SystemExit(f"unknown pause {pause!r}")


if __name__ == "__main__":
    _install(sys.argv[1])
    sys.exit(main(["finetune", *sys.argv[2:]]))
