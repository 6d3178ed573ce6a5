"""ModelConfig.first_frame_latent "clean": frame 0 is the input's latent at every noise level, the
model's x0 for it is that latent, only frames 1… are learned, and the output's frame 0 is the input."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ic_model.models.codec import encode_video
from ic_model.models.tiny import build_tiny_components
from ic_model.config import TrainConfig, preset_config, tiny_config

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FRAMES = 4
S2D = {"codec": "space_to_depth", "latent_scaling_factor": 4.0, "num_frames": FRAMES}


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_size
    noisy = torch.randn(2, cfg.latent_channels, FRAMES, h, w, generator=g)
    first = torch.randn(2, cfg.latent_channels, h, w, generator=g)
    text = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    return noisy, torch.tensor([700, 300]), text, first


@torch.no_grad()
def test_denoiser_ignores_the_noisy_frame0_and_predicts_the_input_for_it():
    torch.manual_seed(0)
    clean = build_tiny_components(tiny_config(**S2D, first_frame_latent="clean")).denoiser().eval()
    torch.manual_seed(0)
    plain = build_tiny_components(tiny_config(**S2D)).denoiser().eval()
    noisy, t, text, first = _inputs(tiny_config(**S2D))
    other = noisy.clone()
    other[:, :, 0] += 3.0  # another draw of frame 0's noise
    out, out_other = clean(noisy, t, text, first), clean(other, t, text, first)
    assert torch.equal(out[:, :, 0], first)
    assert torch.equal(out, out_other)  # frame 0's noise never reaches the prediction
    # Frames 1… are exactly the plain model's prediction with frame 0 replaced by the input.
    given = torch.cat([first[:, :, None], noisy[:, :, 1:]], dim=2)
    torch.testing.assert_close(out[:, :, 1:], plain(given, t, text, first)[:, :, 1:])
    # The plain model does read frame 0's noise (so the check above can fail).
    assert not torch.allclose(plain(noisy, t, text, first)[:, :, 1:], plain(other, t, text, first)[:, :, 1:])


@torch.no_grad()
def test_loss_is_taken_over_frames_after_the_first():
    from ic_model.training.loop import StageModule

    cfg = tiny_config(**S2D, first_frame_latent="clean")
    torch.manual_seed(0)
    module = StageModule(build_tiny_components(cfg), "base", TrainConfig(stage="base"))
    pixels = torch.rand(2, 3, FRAMES, cfg.height, cfg.width) * 2 - 1
    flow = torch.zeros(2, 2, FRAMES, cfg.height, cfg.width)
    h, w = cfg.latent_size
    noise = torch.randn(2, cfg.latent_channels, FRAMES, h, w)
    ids, t = torch.zeros(2, 77, dtype=torch.long), torch.tensor([900, 100])
    losses = module(pixels, flow, ids, noise, t)
    latents = encode_video(module.vae, pixels)
    text = module.text_encoder(ids)[0]
    pred = module.denoiser(module.scheduler.add_noise(latents, noise, t), t, text, latents[:, :, 0])
    expected = ((pred - latents) ** 2)[:, :, 1:].mean()
    torch.testing.assert_close(losses["mse"], expected)
    assert float(((pred - latents) ** 2)[:, :, 0].max()) == 0.0  # frame 0 is given, nothing to learn


def test_generated_video_starts_with_the_input_image_exactly():
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    torch.manual_seed(0)
    comps = build_tiny_components(tiny_config(**S2D, first_frame_latent="clean", image_condition="every_frame"))
    pipe = ImageConductorPipeline(comps)
    cfg = pipe.cfg
    image = np.random.default_rng(1).integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8)
    tracks = np.stack([np.linspace([20, 30], [60, 30], FRAMES)], axis=1).astype(np.float32)
    video = pipe(image, "a disc", tracks, mode="base", num_inference_steps=3, guidance_scale=1.0)
    np.testing.assert_array_equal(video[0], image)  # the codec is lossless
    assert not np.array_equal(video[1], image)  # later frames are generated


def test_config_accepts_clean_only_for_x0_prediction_on_the_tiny_preset():
    assert tiny_config().first_frame_latent == "noisy"
    with pytest.raises(ValueError, match="first_frame_latent must be 'noisy' or 'clean'"):
        tiny_config(first_frame_latent="blank")
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        tiny_config(first_frame_latent="clean", prediction_type="epsilon")
    with pytest.raises(ValueError, match="tiny preset"):
        preset_config("sd15", first_frame_latent="clean")


@pytest.mark.parametrize("first_frame_latent", ["noisy", "clean"])
@torch.no_grad()
def test_camera_free_guidance_batch_equals_three_separate_predictions(first_frame_latent):
    """Denoiser.camera_free_guidance shares the image ControlNet and batches the UNet; its three
    predictions are those of three forward calls (∅ and c without LoRA, c with the object adapter)."""
    from ic_model.models import lora
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    cfg = tiny_config(**S2D, first_frame_latent=first_frame_latent, prediction_type="sample")
    torch.manual_seed(0)
    comps = build_tiny_components(cfg)
    mc = comps.motion_controlnet
    for net in (comps.image_controlnet, mc):  # zero-initialised outputs would hide a mixed-up row
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.data.normal_(0, 0.05)
    lora.add_lora_adapter(mc, "object", rank=4, alpha=4)
    for p in lora.lora_parameters(mc, "object").values():  # B starts at zero: make the adapter matter
        p.data.normal_(0, 0.2)
    den = comps.denoiser().eval()
    noisy, _, text, first = _inputs(cfg)
    noisy, first = noisy[:1], first[:1]
    h, w = cfg.height, cfg.width
    flow = torch.randn(1, 2, FRAMES, h, w, generator=torch.Generator().manual_seed(1)) * 3
    t = torch.tensor(600)

    adapter = ImageConductorPipeline(comps, cast=False)._use_adapter  # the switch the sampling loop uses
    got = den.camera_free_guidance(noisy, t, text, first, flow, adapter)
    with lora.adapters_disabled(mc):
        e_u = den(noisy, t[None], text[:1], first, flow=flow)
        e_c = den(noisy, t[None], text[1:], first, flow=flow)
    lora.set_active_adapters(mc, ["object"])
    e_obj = den(noisy, t[None], text[1:], first, flow=flow)
    assert not torch.allclose(e_obj, e_c, atol=1e-3)  # the adapter changes the prediction
    for a, b in zip(got, (e_u, e_c, e_obj)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
