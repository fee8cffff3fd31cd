"""Ctrl-C and SIGTERM as exceptions where the command is: every atomic write removes its temporary and leaves the
previous output, or the complete new one. A signal that lands while Python runs a finaliser or a weakref callback
(the import system's module locks have one) raises there, where Python prints the exception and drops it; it is
delivered again instead, once that callback has returned."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is (exit 143). (A training run catches both itself: `train.stop`.)"""

    signum = signal.SIGTERM


_hooking = False  # the unraisable hook is running: a signal now is sent again rather than raised in it


def _raise(signum, frame):
    if _hooking:
        _send_again(signum)
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _send_again(signum: int) -> None:
    """Send `signum` to this process again shortly, from another thread: the main thread takes it at its next
    instruction after the callback that dropped it has returned."""
    def send():
        time.sleep(0.01)
        os.kill(os.getpid(), signum)

    threading.Thread(target=send, daemon=True).start()


@contextlib.contextmanager
def as_exceptions():
    """SIGTERM raises `Terminated`, Ctrl-C KeyboardInterrupt, and no interrupt is lost in a callback, for the `with`
    block. Only in the main thread (a caller running a command in a thread keeps its own signal handling); a
    signal the process ignores (SIGINT in a shell's background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise) for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) is not signal.SIG_IGN}
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        global _hooking
        _hooking = True
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _send_again(getattr(unraisable.exc_value, "signum", signal.SIGINT))
        else:
            previous_hook(unraisable)
        _hooking = False  # the last statement: no call after it, where a pending signal could be taken

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
