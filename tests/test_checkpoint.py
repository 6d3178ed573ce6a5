"""Checkpoint state is plain data: read with the weights-only unpickler, exact RNG round trip,
and a tampered file is refused without running its payload."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ic_model.training.checkpoint import read_state, rng_state, set_rng_state


def _draws():
    return np.random.rand(4), random.random(), torch.rand(3)


def _same(a, b) -> bool:
    return np.array_equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    np.random.seed(3)
    random.seed(4)
    torch.manual_seed(5)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": rng_state()}, tmp_path / "state.pt")
    expected = _draws()
    torch.load(tmp_path / "state.pt", weights_only=True)  # plain data: no allow-list needed
    set_rng_state(read_state(tmp_path / "state.pt")["rng"])
    assert _same(_draws(), expected)


def test_a_state_written_with_numpy_arrays_still_resumes(tmp_path):
    np.random.seed(7)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"rng": legacy}, tmp_path / "state.pt")
    expected = _draws()
    set_rng_state(read_state(tmp_path / "state.pt")["rng"])
    assert _same(_draws(), expected)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_state_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"step": 1, "rng": _Payload(marker)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="refusing to load"):
        read_state(tmp_path / "state.pt")
    assert not marker.exists()


def test_the_fp16_loss_scaler_resumes_exactly(tmp_path):
    """fp16 training's GradScaler (scale, growth tracker) is part of the checkpoint."""
    from torch.amp import GradScaler

    from ic_model.training.checkpoint import load_checkpoint, save_checkpoint

    module = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(module.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for _ in range(4):  # grow the scale once and leave the tracker mid-interval
        scaler.scale(module(torch.ones(1, 3)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    path = save_checkpoint(tmp_path, 4, module, opt, sched, scaler=scaler)
    fresh = GradScaler("cpu", init_scale=1.0, growth_interval=3)
    assert load_checkpoint(path, module, opt, sched, scaler=fresh) == 4
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 2.0**11
