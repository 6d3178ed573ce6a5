"""The tiny preset's lossless space-to-depth codec: exact round trips, the stage list it implies,
and a run without a `vae` stage from base training to a generated video."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ic_model.models.codec import SpaceToDepthCodec, decode_latents, encode_video
from ic_model.models.tiny import build_tiny_components
from ic_model.config import ModelConfig, preset_config, tiny_config
from ic_model.training.run import MissingPrerequisiteError, check_prerequisite, run_model_config

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from conftest import TEST_FRAMES, overfit_config  # noqa: E402

S2D = {"codec": "space_to_depth", "latent_scaling_factor": 4.0}


def test_codec_round_trip_is_exact_and_cells_hold_their_pixels():
    codec = SpaceToDepthCodec(factor=8, scaling_factor=4.0)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 5, 64, 96, generator=g) * 2 - 1
    latents = encode_video(codec, video)
    assert latents.shape == (2, 192, 5, 8, 12)
    # channel c·64 + dy·8 + dx of cell (i, j) is pixel (8i + dy, 8j + dx) of colour c, times the scale
    assert latents[1, 2 * 64 + 3 * 8 + 5, 4, 2, 7] == 4.0 * video[1, 2, 4, 16 + 3, 56 + 5]
    assert torch.equal(decode_latents(codec, latents), video)
    posterior = codec.encode(video[:, :, 0]).latent_dist
    assert float(posterior.std.max()) < 1e-6  # deterministic: the mode is the sample
    assert list(codec.state_dict()) == []  # nothing to train or save


def test_config_sets_channels_and_drops_the_vae_stage():
    cfg = tiny_config(**S2D)
    assert cfg.latent_channels == 192 and cfg.vae_scale_factor == 8 and cfg.latent_size == (8, 12)
    assert cfg.stages == ("base", "dense", "sparse", "camera", "object")
    assert tiny_config(codec="space_to_depth", space_to_depth_factor=4).latent_channels == 48
    assert tiny_config().stages[0] == "vae"  # the default keeps the trained tiny VAE
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="192 latent channels, not latent_channels=4"):
        tiny_config(codec="space_to_depth", latent_channels=4)
    with pytest.raises(ValueError, match="codec must be 'vae' or 'space_to_depth'"):
        tiny_config(codec="jpeg")
    with pytest.raises(ValueError, match="SD 1.5's VAE"):
        preset_config("sd15", codec="space_to_depth")


def test_image_condition_every_frame_repeats_the_first_latent():
    from ic_model.models.components import first_frame_condition

    latent0 = torch.randn(2, 192, 8, 12)
    cond, mask = first_frame_condition(latent0, 5, every_frame=True)
    assert cond.shape == (2, 192, 5, 8, 12) and all(torch.equal(cond[:, :, t], latent0) for t in range(5))
    sparse, sparse_mask = first_frame_condition(latent0, 5)
    assert torch.equal(sparse[:, :, 0], latent0) and not sparse[:, :, 1:].any()
    assert torch.equal(mask, sparse_mask) and mask[:, :, 0].all() and not mask[:, :, 1:].any()
    comps = build_tiny_components(tiny_config(**S2D, image_condition="every_frame"))
    assert comps.denoiser().image_every_frame and not build_tiny_components(tiny_config()).denoiser().image_every_frame
    with pytest.raises(ValueError, match="image_condition must be 'first_frame' or 'every_frame'"):
        tiny_config(image_condition="last")
    with pytest.raises(ValueError, match="SparseCtrl's first-frame condition"):
        preset_config("sd15", image_condition="every_frame")


def test_components_are_wired_for_192_channels():
    comps = build_tiny_components(tiny_config(**S2D))
    assert isinstance(comps.vae, SpaceToDepthCodec)
    assert comps.unet.config.in_channels == comps.unet.config.out_channels == 192
    assert comps.image_controlnet.config.conditioning_channels == 192
    assert comps.motion_controlnet.config.conditioning_channels == 128


def test_run_without_vae_stage_trains_and_generates(tmp_path, training_shards):
    from ic_model.pipelines.image_conductor import ImageConductorPipeline
    from ic_model.training.loop import train_stage

    run = tmp_path / "run"
    cfg = run_model_config(run, "tiny", num_frames=TEST_FRAMES, **S2D, image_condition="every_frame")
    check_prerequisite(run, cfg, "base")  # base is first: nothing before it
    with pytest.raises(MissingPrerequisiteError, match="'base'"):
        check_prerequisite(run, cfg, "dense")
    summary = train_stage("base", str(training_shards), run, overfit_config("base", steps=30), cfg)
    assert summary["outputs"] == ["image_controlnet.safetensors", "text_encoder.safetensors", "unet.safetensors"]
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    assert not (run / "vae").exists()
    summary = train_stage("dense", str(training_shards), run, overfit_config("dense", steps=2), cfg)
    assert np.isfinite(summary["final_loss"])

    pipe = ImageConductorPipeline.from_run(run)
    image = np.random.default_rng(0).integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8)
    tracks = np.stack([np.linspace([20, 30], [60, 30], TEST_FRAMES)], axis=1).astype(np.float32)
    video = pipe(image, "a disc", tracks, mode="none", num_inference_steps=2, guidance_scale=1.0)
    assert video.shape == (TEST_FRAMES, cfg.height, cfg.width, 3) and video.dtype == np.uint8
