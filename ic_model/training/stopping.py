"""Stopping a training stage between steps.

Ctrl-C (SIGINT) or a scheduler's SIGTERM (Slurm, Kubernetes and most batch systems send it some
time before they kill a job) used to end a stage wherever it was: every step since the last
checkpoint (``save_every``, 200 by default) was lost. While a stage trains, the first of these
signals now lets the step in progress finish, a checkpoint of it is saved, and then the signal
takes the effect it would have had (KeyboardInterrupt, or whatever handler was there before), so
rerunning the same command resumes from that very step. A second signal acts at once.
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopBetweenSteps"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopBetweenSteps:
    """A context manager: ``pending`` is the signal received (None until one is), ``deliver()``
    gives it its previous effect. Acts only in the main thread of the process that entered it
    (signal handlers can be set nowhere else), and leaves alone a signal that is ignored (a job
    started with ``nohup``) or handled outside Python; ``enabled=False`` makes it a no-op (the
    ranks of a multi-process run, which must all stop at the same step, do not use it)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.pending: int | None = None
        self._previous: dict[int, object] = {}
        self._owner = os.getpid()

    def __enter__(self) -> "StopBetweenSteps":
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._owner = os.getpid()
            for signum in SIGNALS:
                current = signal.getsignal(signum)
                if current is not None and current != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._owner or self.pending is not None:
            # A forked child (it has no steps to finish), or the second signal: act at once.
            self.pending = signum
            self.deliver()
            return
        self.pending = signum

    def deliver(self) -> None:
        """Put the previous handlers back and raise the pending signal through them."""
        signum = self.pending
        self._restore()
        if signum is not None:
            signal.raise_signal(signum)
