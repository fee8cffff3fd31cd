"""Stopping a run on Ctrl-C or SIGTERM without losing it (nanoGPT-style runs lose everything since the last save).

1. The first SIGINT or SIGTERM only records the request; the step in flight finishes.
2. After each step every process says whether it was asked (one all-reduce of a flag: the maximum), so all of
   them stop after the same step, whichever received the signal (torchrun forwards it to each).
3. The loop then saves a checkpoint of that step (atomically, as every checkpoint), prints where it is and the
   command that resumes it, and raises `Stopped` (the command exits 130, or 143 for SIGTERM).
4. A second signal aborts at once (KeyboardInterrupt), as a user pressing Ctrl-C twice expects.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal after saving step `step`."""

    def __init__(self, signum: int, step: int, checkpoint):
        super().__init__(f"stopped at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class StopRequest:
    """Installed around the training loop (in the main thread; elsewhere it never fires)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: abort now
            raise KeyboardInterrupt()
        self.signum = signum
        if self.announce:
            print(f"\ndualtower train: {signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                  "(again to abort at once)", file=sys.stderr, flush=True)

    def agreed(self, d) -> int | None:
        """The signal any process received (SIGTERM over SIGINT), the same on every process; None if none."""
        local = self.signum or 0
        if not d.enabled:
            return local or None
        flag = torch.tensor([local], dtype=torch.int64, device=d.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # SIGTERM (15) > SIGINT (2)
        return int(flag.item()) or None
