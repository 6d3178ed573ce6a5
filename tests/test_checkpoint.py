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


def _checkpointed(tmp_path, steps: int):
    """A module whose weights are the step number after each step, checkpointed at every step."""
    from ic_model.training.checkpoint import save_checkpoint

    module = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in range(1, steps + 1):
        with torch.no_grad():
            module.weight.fill_(step)
        save_checkpoint(tmp_path, step, module, opt, sched, keep=steps)
    return module, opt, sched


def test_a_damaged_state_file_is_one_error_naming_it(tmp_path):
    from ic_model.training.checkpoint import CheckpointError

    torch.save({"step": 1, "x": torch.zeros(100)}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert read_state(tmp_path / "whole.pt")["step"] == 1
    for name, why in [("cut.pt", "not a readable checkpoint state (not a whole torch.save archive)"),
                      ("text.pt", "not a readable checkpoint state (not a whole torch.save archive)"),
                      ("none.pt", "no such checkpoint state file")]:
        with pytest.raises(CheckpointError) as err:
            read_state(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}: {why}"


def test_resume_skips_damaged_checkpoints_and_stops_when_none_reads(tmp_path):
    """Newest first: a cut state file or weights file is passed over (moved aside by the main
    process only, with a warning), the newest whole checkpoint loads; none whole is an error
    that moves nothing."""
    from ic_model.training.checkpoint import CheckpointError, list_checkpoints, resume

    module, opt, sched = _checkpointed(tmp_path, 3)
    root = tmp_path / "checkpoints"
    (root / "step-0000003" / "state.pt").write_bytes(b"")
    weights = root / "step-0000002" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])

    with pytest.warns(RuntimeWarning) as caught:
        step, notes = resume(tmp_path, module, opt, sched, move_aside=False)  # another rank: moves nothing
    assert step == 1 and module.weight.eq(1).all() and len(caught) == 2
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001", "step-0000002", "step-0000003"]
    with pytest.warns(RuntimeWarning):
        step, notes = resume(tmp_path, module, opt, sched)
    assert step == 1 and [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert sorted(p.name for p in root.iterdir()) == ["damaged-step-0000002", "damaged-step-0000003", "step-0000001"]
    assert notes[0].startswith("checkpoint step-0000003 cannot be used (") and notes[0].endswith(
        f"); resumed from step-0000001, the unusable one moved to {root / 'damaged-step-0000003'}")
    assert f"{root / 'step-0000002' / 'trainable.safetensors'}: not a readable safetensors file" in notes[1]

    (root / "step-0000001" / "state.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"^no checkpoint of .* can be used: .*step-0000001/state.pt: "):
        resume(tmp_path, module, opt, sched)
    assert (root / "step-0000001").is_dir()
    assert resume(tmp_path / "elsewhere", module, opt, sched) == (0, [])  # no checkpoints: a fresh start


def test_a_checkpoint_whose_state_would_run_code_is_passed_over_unrun(tmp_path):
    from ic_model.training.checkpoint import resume

    module, opt, sched = _checkpointed(tmp_path, 2)
    marker = tmp_path / "ran"
    torch.save({"step": 2, "rng": _Payload(marker)}, tmp_path / "checkpoints" / "step-0000002" / "state.pt")
    with pytest.warns(RuntimeWarning, match="refusing to load a checkpoint state that holds more than tensors"):
        assert resume(tmp_path, module, opt, sched)[0] == 1
    assert not marker.exists() and module.weight.eq(1).all()
