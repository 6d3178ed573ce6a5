"""Stopping between steps: the signal bookkeeping and the ranks' agreement (training itself is
stopped in tests/test_train.py)."""
from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from ic_model.training.stopping import StopAgreement, StopBetweenSteps


def test_a_repeated_signal_is_recorded_not_acted_on_where_a_launcher_forwards_it(python_sigint):
    """A rank of a multi-process run sees its job's SIGINT twice (from the terminal or scheduler,
    and from the launcher that passes it on): it still finishes the step. Its first signal is the
    one delivered."""
    with StopBetweenSteps(repeat_acts=False) as stops:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.pending == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stops.deliver()
        assert stops.pending is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_one_process_agrees_with_itself():
    agree = StopAgreement(1)
    assert agree(None) is None and agree(signal.SIGINT) == signal.SIGINT


def _rank(rank: int, store: str, pendings: list, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        agree = StopAgreement(2)
        results.put((rank, [agree(p) for p in pendings]))
    finally:
        dist.destroy_process_group()


def test_the_ranks_stop_together_when_any_of_them_is_signalled(tmp_path):
    """Step by step, the signal both ranks stop for: none, rank 1's alone, rank 0's alone, and
    SIGTERM over SIGINT when they differ (a scheduler's stop outranks a terminal's)."""
    per_rank = {0: [None, None, signal.SIGINT, signal.SIGINT],
                1: [None, signal.SIGTERM, None, signal.SIGTERM]}
    expected = [None, signal.SIGTERM, signal.SIGINT, signal.SIGTERM]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "store"), per_rank[r], results)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert got == {0: expected, 1: expected}
    assert [p.exitcode for p in procs] == [0, 0]
