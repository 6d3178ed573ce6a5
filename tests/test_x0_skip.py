"""ModelConfig.x0_skip_sigma_data: x0 = c · x_t/√ᾱ + √(1 − c) · UNet with c = s²/(σ² + s²)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ic_model.components import build_tiny_components
from ic_model.config import preset_config, tiny_config
from ic_model.response import predicted_x0

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FRAMES = 4
S2D = {"codec": "space_to_depth", "vae_scaling_factor": 4.0, "num_frames": FRAMES}


def _denoiser(skip: float):
    torch.manual_seed(0)
    comps = build_tiny_components(tiny_config(**S2D, x0_skip_sigma_data=skip))
    return comps, comps.denoiser().eval()


def _inputs(cfg, timesteps, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_size
    n = len(timesteps)
    noisy = torch.randn(n, cfg.latent_channels, FRAMES, h, w, generator=g)
    first = torch.randn(n, cfg.latent_channels, h, w, generator=g)
    text = torch.randn(n, 77, cfg.cross_attention_dim, generator=g)
    return noisy, torch.tensor(timesteps), text, first


def test_the_skip_follows_its_formula_in_float64():
    comps, den = _denoiser(0.5)
    t = [1, 250, 500, 999]
    noisy, ts, _, _ = _inputs(comps.cfg, t)
    out = torch.randn_like(noisy)
    got = den.x0_with_skip(noisy, out, ts).double().numpy()
    abar = comps.scheduler.alphas_cumprod.double().numpy()[t].reshape(-1, 1, 1, 1, 1)
    c = 0.25 / ((1 - abar) / abar + 0.25)
    want = c * noisy.double().numpy() / np.sqrt(abar) + np.sqrt(1 - c) * out.double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_clean_inputs_pass_through_and_noisy_ones_leave_the_output():
    comps, den = _denoiser(0.5)
    g = torch.Generator().manual_seed(1)
    h, w = comps.cfg.latent_size
    x0 = torch.randn(1, comps.cfg.latent_channels, FRAMES, h, w, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    out = torch.randn(x0.shape, generator=g)
    for t, near_x0, near_out in ((1, True, False), (999, False, True)):
        ts = torch.tensor([t])
        noisy = comps.scheduler.add_noise(x0, eps, ts)
        got = den.x0_with_skip(noisy, out, ts)
        # t = 1: the noisy latent is x0 up to 3 % noise, and the skip hands it on (whatever the UNet says).
        assert bool((got - x0).pow(2).mean() < 0.01) == near_x0
        # t = 999: the input is noise, and the UNet's output is the estimate.
        assert bool((got - out).pow(2).mean() < 1e-3) == near_out


def test_unit_sigma_data_is_v_prediction():
    """With s = 1, c = ᾱ and √(1 − c) = √(1 − ᾱ): x0 = √ᾱ·x_t − √(1 − ᾱ)·v for v = −output."""
    comps, den = _denoiser(1.0)
    v_sched = build_tiny_components(tiny_config(**S2D, prediction_type="v_prediction")).scheduler
    noisy, ts, _, _ = _inputs(comps.cfg, [10, 400, 800])
    out = torch.randn_like(noisy)
    torch.testing.assert_close(den.x0_with_skip(noisy, out, ts), predicted_x0(v_sched, noisy, -out, ts))


@torch.no_grad()
def test_the_denoiser_applies_the_skip_to_the_plain_unet_output():
    comps, den = _denoiser(0.5)
    _, plain = _denoiser(0.0)  # the same weights: one init seed
    noisy, ts, text, first = _inputs(comps.cfg, [100, 700])
    flow = torch.randn(2, 2, FRAMES, comps.cfg.height, comps.cfg.width) * 0.1
    want = den.x0_with_skip(noisy, plain(noisy, ts, text, first, flow=flow), ts)
    torch.testing.assert_close(den(noisy, ts, text, first, flow=flow), want)
    # The plain model's output is not already that (so the check above can fail).
    assert not torch.allclose(plain(noisy, ts, text, first, flow=flow), want)


def test_config_refuses_a_skip_it_cannot_use():
    with pytest.raises(ValueError, match="x0_skip_sigma_data must be >= 0"):
        tiny_config(**S2D, x0_skip_sigma_data=-0.5)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        tiny_config(**S2D, x0_skip_sigma_data=0.5, prediction_type="epsilon")
    with pytest.raises(ValueError, match="tiny preset"):
        preset_config("sd15", x0_skip_sigma_data=0.5)
    assert tiny_config(**S2D).x0_skip_sigma_data == 0.0  # off unless asked for
