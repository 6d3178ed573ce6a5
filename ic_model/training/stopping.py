"""Stopping a training stage between steps.

Ctrl-C (SIGINT) or a scheduler's SIGTERM (Slurm, Kubernetes and most batch systems send it some
time before they kill a job) used to end a stage wherever it was: every step since the last
checkpoint (``save_every``, 200 by default) was lost. While a stage trains, the first of these
signals now lets the step in progress finish, a checkpoint of it is saved, and then the signal
takes the effect it would have had (KeyboardInterrupt, or whatever handler was there before), so
rerunning the same command resumes from that very step. A second signal acts at once.

The ranks of a multi-process (DDP) run must all stop after the same step, or the checkpoint would
hold one rank's weights at one step and the others would wait forever in a collective. They agree
at the end of every step (``StopAgreement``: one all-reduce of a CPU integer, over gloo, so no GPU
synchronisation), and stop together when any of them has been signalled. There, a repeated signal
does not act at once: a launcher passes on to its ranks the signal it got (PyTorch's elastic agent
does, and kills them itself 30 s later), and a batch scheduler signals the ranks as well, so every
rank usually sees the same stop twice.
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopAgreement", "StopBetweenSteps"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopBetweenSteps:
    """A context manager: ``pending`` is the signal received (None until one is), ``deliver()``
    gives it its previous effect. Acts only in the main thread of the process that entered it
    (signal handlers can be set nowhere else), and leaves alone a signal that is ignored (a job
    started with ``nohup``) or handled outside Python.
    ``repeat_acts=False`` (the ranks of a multi-process run): a repeated signal is recorded, not
    acted on, since the launcher forwards the one its job got."""

    def __init__(self, repeat_acts: bool = True):
        self.repeat_acts = repeat_acts
        self.pending: int | None = None
        self._previous: dict[int, object] = {}
        self._owner = os.getpid()

    def __enter__(self) -> "StopBetweenSteps":
        if threading.current_thread() is threading.main_thread():
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
        if os.getpid() != self._owner or (self.pending is not None and self.repeat_acts):
            # A forked child (it has no steps to finish), or the second signal: act at once.
            self.pending = signum
            self.deliver()
            return
        if self.pending is None:
            self.pending = signum

    def deliver(self) -> None:
        """Put the previous handlers back and raise the pending signal through them."""
        signum, self.pending = self.pending, None
        self._restore()
        if signum is not None:
            signal.raise_signal(signum)


class StopAgreement:
    """Which signal every rank stops for after this step. ``world`` 1: the process's own. Several
    ranks: the largest signal number any of them holds (SIGTERM over SIGINT), 0 meaning none,
    reduced over a gloo group (the default group when it is gloo already; a new one beside NCCL),
    so the flag never touches the GPU. Every rank must make it, and ask it after every step."""

    def __init__(self, world: int):
        self.world = world
        self.group = None
        if world > 1:
            import torch.distributed as dist

            if dist.get_backend() != "gloo":
                self.group = dist.new_group(backend="gloo")

    def __call__(self, pending: int | None) -> int | None:
        if self.world == 1:
            return pending
        import torch
        import torch.distributed as dist

        flag = torch.tensor([pending or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item()) or None
