"""Stopping a run cleanly: SIGINT/SIGTERM during the training loop end it after the current step, with a checkpoint."""

from __future__ import annotations

import os
import signal
import threading


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after its checkpoint was written; `summary` says where.
    A KeyboardInterrupt, so callers that stop on Ctrl-C (the demo, scripts) still stop."""

    def __init__(self, summary: dict):
        super().__init__(summary["interrupted"])
        self.summary = summary


class GracefulStop:
    """While `armed` (the training loop), SIGINT/SIGTERM only set `signal`: the loop finishes its step,
    checkpoints and returns. Unarmed (decoding data, calibrating), or on a second signal, the previous
    handler runs as usual (a second Ctrl-C interrupts at once; the checkpoint on disk stays valid)."""

    def __init__(self):
        self.signal: str | None = None
        self.armed = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.armed and self.signal is None:
            self.signal = signal.Signals(signum).name
            return
        previous = self._previous[signum]
        if self.armed:  # a second signal: from now on the usual behaviour
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)  # Python's SIGINT handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:  # the default action (for SIGTERM: end the process), re-delivered
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def signum(self) -> int:
        """The signal received while armed, as a number (0: none), as the ranks agree on it."""
        return signal.Signals[self.signal].value if self.signal else 0
