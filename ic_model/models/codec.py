"""Between pixels and the diffusion grid: the VAE's encode/decode, and a lossless stand-in.

``encode_video`` / ``decode_latents`` work with any ``AutoencoderKL`` (SD 1.5's, or the tiny
preset's) and with :class:`SpaceToDepthCodec`, the tiny preset's optional codec.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import (
    DecoderOutput,
    DiagonalGaussianDistribution,
)
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from torch import nn


class SpaceToDepthCodec(nn.Module):
    """A lossless stand-in for the VAE: each factor×factor pixel block becomes 3·factor² channels
    (``pixel_unshuffle``), and decoding puts the pixels back. Same latent grid as a VAE of the same
    factor, nothing to train, nothing lost.

    The tiny preset's optional codec (``ModelConfig.codec = "space_to_depth"``): a from-scratch
    VAE small enough to train on CPU blurred small objects away, so the diffusion model never saw
    them. It answers the calls the rest of the code makes of an ``AutoencoderKL``:
    ``encode(x).latent_dist`` (a posterior with zero variance), ``decode(z).sample``,
    ``config.scaling_factor`` and ``dtype``."""

    def __init__(self, factor: int = 8, scaling_factor: float = 1.0):
        super().__init__()
        self.config = SimpleNamespace(factor=factor, scaling_factor=scaling_factor)
        # No weights; a buffer gives the module a dtype and a device.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def register_to_config(self, **values) -> None:
        for key, value in values.items():
            setattr(self.config, key, value)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_unshuffle(x, self.config.factor)
        # DiagonalGaussianDistribution takes mean ‖ log-variance; −30 makes std ≈ 3e-7.
        posterior = DiagonalGaussianDistribution(torch.cat([z, torch.full_like(z, -30.0)], dim=1))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        x = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)


@torch.no_grad()
def encode_video(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] → scaled latents (B, C, T, h, w).

    Posterior means, not samples: the frozen VAE then gives the same latents for the same clip
    in training and at inference (the first-frame condition especially)."""
    b, _, t, h, w = pixels.shape
    frames = pixels.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w).to(vae.dtype)
    latents = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
    return latents.reshape(b, t, *latents.shape[1:]).permute(0, 2, 1, 3, 4)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """(B, C, T, h, w) scaled latents → (B, 3, T, H, W) pixels in [-1, 1].

    ``chunk_size``: frames decoded at a time (each frame is decoded alone, so the result is the
    same); SD's VAE decoder needs ~1 GB of activations per 384×256 frame, so a 16-frame clip
    decoded at once would set the pipeline's peak memory."""
    b, c, t, h, w = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / vae.config.scaling_factor
    step = chunk_size or flat.shape[0]
    frames = torch.cat([vae.decode(part.to(vae.dtype)).sample for part in flat.split(step)]).clamp(-1, 1)
    return frames.reshape(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


__all__ = ["SpaceToDepthCodec", "decode_latents", "encode_video"]
