"""The trajectory-response probe: x0 recovery identities, the moving mask, and the probe on runs
whose motion ControlNet is known to be inert or trained."""
from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from ic_model.models.presets import build_components
from ic_model.models.motion_controlnet import copy_unet_encoder
from ic_demo.response import CONDITIONS, moving_mask, predicted_x0, trajectory_response
from ic_model.training.run import load_module, run_model_config, save_module, stage_dir


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_inverts_each_parameterisation(kind):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 5, 6, generator=g), torch.randn(3, 4, 2, 5, 6, generator=g)
    t = torch.tensor([10, 500, 990])
    noisy = sched.add_noise(x0, noise, t)
    pred = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t), "sample": x0}[kind]
    torch.testing.assert_close(predicted_x0(sched, noisy, pred, t), x0, atol=2e-4, rtol=1e-4)


def test_moving_mask_marks_what_changes():
    latents = torch.zeros(2, 3, 4, 8, 10)
    latents[0, :, 2:, 1:3, 4:6] = 1.0  # clip 0: a 2×2 block appears at frame 2
    latents[1, :, 3, 5, 7] = 2.0  # clip 1: one position at frame 3 only
    mask = moving_mask(latents, fraction=4 / (3 * 8 * 10))
    assert mask.shape == (2, 1, 3, 8, 10)
    assert mask[0, 0, 1, 1:3, 4:6].all() and mask[0].sum() == 4  # frame 2 is index 1 of frames 1…
    assert mask[1, 0, 2, 5, 7] and mask[1].sum() == 4  # the one change, then 3 of the ties
    assert moving_mask(latents, fraction=0.0).sum() == 2  # at least one position per clip


def test_an_inert_motion_controlnet_responds_to_nothing(tmp_path, tiny_run, training_shards):
    """A freshly initialised motion ControlNet (zero convs) adds nothing, so all five conditions
    must give the same error: same clips, same noise, same timesteps."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    cfg = run_model_config(run)
    comps = build_components(cfg)
    load_module(comps.unet, stage_dir(run, "base") / "unet.safetensors")
    copy_unet_encoder(comps.unet, comps.motion_controlnet)
    for stage in ("dense", "sparse"):
        save_module(comps.motion_controlnet, stage_dir(run, stage) / "motion_controlnet.safetensors")
    out = trajectory_response(run, training_shards, num_samples=4, timesteps=(900,), batch_size=2)
    assert out["num_samples"] == 4 and out["stage"] == "sparse"
    assert [r["condition"] for r in out["rows"]] == list(CONDITIONS)
    whole = {r["whole"] for r in out["rows"]}
    moving = {r["moving"] for r in out["rows"]}
    assert len(whole) == 1 and len(moving) == 1, out["rows"]
    assert out["moving_gain"] == {"900": 0.0}


def test_a_trained_motion_controlnet_changes_the_error(tiny_run, training_shards):
    out = trajectory_response(tiny_run[0], training_shards, num_samples=4, timesteps=(900, 300), batch_size=2)
    by = {(r["t"], r["condition"]): r for r in out["rows"]}
    assert len(by) == 10
    for t in (900, 300):
        assert by[(t, "own dense")]["whole"] != by[(t, "off")]["whole"]
        assert all(0 < r["whole"] < 10 for r in out["rows"])
    with pytest.raises(ValueError, match="batch_size"):
        trajectory_response(tiny_run[0], training_shards, batch_size=1)
