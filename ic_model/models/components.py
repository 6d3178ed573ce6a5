"""Model assembly: the frozen base, the two ControlNets, and the denoiser that wires them.

Paper Fig. 2a: a 3D UNet (SD 1.5 + AnimateDiff motion module) denoises; the image ControlNet
(SparseCtrl RGB: first-frame latent + mask) carries appearance and the motion ControlNet carries
trajectories. Both ControlNets' residuals are summed and added to the UNet's skip connections.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    SparseControlNetModel,
    UNetMotionModel,
)
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn
from transformers import CLIPTextModel

from ic_model.config import ModelConfig
from ic_model.models.codec import SpaceToDepthCodec
from ic_model.models.motion_controlnet import flow_to_controlnet_cond
from ic_model.models.tokenizer import caption_ids


@dataclass
class Components:
    cfg: ModelConfig
    vae: AutoencoderKL | SpaceToDepthCodec
    text_encoder: CLIPTextModel
    tokenizer: Any
    unet: UNetMotionModel
    image_controlnet: SparseControlNetModel
    motion_controlnet: SparseControlNetModel
    scheduler: DDPMScheduler

    def denoiser(self) -> "Denoiser":
        """The UNet and both ControlNets wired as the config says."""
        return Denoiser(
            self.unet, self.image_controlnet, self.motion_controlnet, self.cfg.vae_scale_factor,
            image_every_frame=self.cfg.image_condition == "every_frame", flow_gain=self.cfg.flow_gain,
            clean_first_frame=self.cfg.first_frame_latent == "clean",
        )

    def modules(self) -> dict[str, nn.Module]:
        return {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "image_controlnet": self.image_controlnet,
            "motion_controlnet": self.motion_controlnet,
        }


def make_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """The training noise schedule: linear betas 0.00085–0.012 over 1000 steps (AnimateDiff)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def first_frame_condition(
    latent0: torch.Tensor, num_frames: int, every_frame: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseCtrl RGB input: the first frame's latent at frame 0, zeros elsewhere, and a mask
    that marks frame 0 as the only conditioned frame. latent0: (B, C, h, w).

    ``every_frame``: the latent at every frame position instead (the mask still marks frame 0),
    so each frame sees the first frame's content where it is (the tiny preset's option)."""
    b, c, h, w = latent0.shape
    if every_frame:
        cond = latent0[:, :, None].expand(b, c, num_frames, h, w).contiguous()
    else:
        cond = latent0.new_zeros(b, c, num_frames, h, w)
        cond[:, :, 0] = latent0
    mask = latent0.new_zeros(b, 1, num_frames, h, w)
    mask[:, :, 0] = 1
    return cond, mask


class Denoiser(nn.Module):
    """UNet + image ControlNet (+ motion ControlNet when trajectories are given).

    ``forward`` returns the UNet's prediction (ε, x0 or v, per the preset) for noisy latents
    (B, C, T, h, w). ``text_embeddings`` are per video (B, L, D); they are repeated per frame here
    because the diffusers motion UNet and ControlNets attend frame by frame.

    With ``clean_first_frame`` (ModelConfig.first_frame_latent "clean", x0 prediction), frame 0
    of the input is replaced by ``first_latent`` whatever its noise, and frame 0 of the
    prediction is ``first_latent``: the model only denoises frames 1….
    """

    def __init__(self, unet, image_controlnet, motion_controlnet, vae_scale_factor: int,
                 image_every_frame: bool = False, flow_gain: float = 1.0, clean_first_frame: bool = False):
        super().__init__()
        self.unet = unet
        self.image_controlnet = image_controlnet
        self.motion_controlnet = motion_controlnet
        self.vae_scale_factor = vae_scale_factor
        self.image_every_frame = image_every_frame  # see first_frame_condition
        self.flow_gain = flow_gain  # see ModelConfig.flow_gain
        self.clean_first_frame = clean_first_frame

    def motion_residuals(self, noisy, timesteps, encoder_states, flow, scale: float = 1.0):
        cond = flow_to_controlnet_cond(flow.to(noisy.dtype) * self.flow_gain, self.vae_scale_factor)
        return self.motion_controlnet(
            noisy, timesteps, encoder_states, cond, conditioning_scale=scale, return_dict=False
        )

    def image_residuals(self, noisy, timesteps, encoder_states, first_latent, scale: float = 1.0):
        cond, mask = first_frame_condition(first_latent.to(noisy.dtype), noisy.shape[2], self.image_every_frame)
        return self.image_controlnet(
            noisy, timesteps, encoder_states, cond, conditioning_mask=mask, conditioning_scale=scale,
            return_dict=False,
        )

    def _inputs(self, noisy, text_embeddings, first_latent):
        """The UNet's input (frame 0 made clean where the preset asks) and per-frame text states."""
        if self.clean_first_frame:
            noisy = torch.cat([first_latent.to(noisy.dtype)[:, :, None], noisy[:, :, 1:]], dim=2)
        return noisy, text_embeddings.repeat_interleave(noisy.shape[2], dim=0)

    def _predict(self, noisy, timesteps, encoder_states, first_latent, down, mid):
        pred = self.unet(
            noisy, timesteps, encoder_states,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample
        if self.clean_first_frame:
            pred = torch.cat([first_latent.to(pred.dtype)[:, :, None], pred[:, :, 1:]], dim=2)
        return pred

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        first_latent: torch.Tensor,
        flow: torch.Tensor | None = None,
        motion_scale: float = 1.0,
        image_scale: float = 1.0,
    ) -> torch.Tensor:
        noisy, encoder_states = self._inputs(noisy, text_embeddings, first_latent)
        down, mid = self.image_residuals(noisy, timesteps, encoder_states, first_latent, image_scale)
        if flow is not None:
            motion_down, motion_mid = self.motion_residuals(noisy, timesteps, encoder_states, flow, motion_scale)
            down = [a + b for a, b in zip(down, motion_down)]
            mid = mid + motion_mid
        return self._predict(noisy, timesteps, encoder_states, first_latent, down, mid)

    def camera_free_guidance(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        first_latent: torch.Tensor,
        flow: torch.Tensor,
        adapter: Callable[[str], contextlib.AbstractContextManager],
        motion_scale: float = 1.0,
        image_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three predictions of camera-free guidance (paper eq. 5) for one video: ε_θ0(∅),
        ε_θ0(c) and ε_θobj(c), the same as three ``forward`` calls, at less cost.

        ``noisy`` (1, C, T, h, w), ``text_embeddings`` (2, L, D) for ∅ and c; ``adapter(name)`` is a
        context in which the motion ControlNet runs as θ_name ("none": no LoRA, "object"). Only the
        motion ControlNet differs between θ0 and θobj, so it runs twice (a batch of 2 without LoRA, 1
        with the object adapter); the image ControlNet runs once for (∅, c), and its c residuals
        serve both c rows; the UNet takes the three rows as one batch.
        """
        f = noisy.shape[2]
        noisy, states = self._inputs(noisy, text_embeddings, first_latent)
        pair, t_pair = noisy.expand(2, -1, -1, -1, -1), timestep.reshape(1).expand(2)
        with adapter("none"):
            motion_down, motion_mid = self.motion_residuals(pair, t_pair, states, flow.expand(2, -1, -1, -1, -1),
                                                            motion_scale)
        with adapter("object"):
            obj_down, obj_mid = self.motion_residuals(noisy, t_pair[:1], states[f:], flow, motion_scale)
        image_down, image_mid = self.image_residuals(pair, t_pair, states, first_latent.expand(2, -1, -1, -1),
                                                     image_scale)
        # Residuals are per frame, (B·T, C, h, w): rows f:2f are the c video's.
        down = [torch.cat([i + m, i[f:] + o]) for i, m, o in zip(image_down, motion_down, obj_down)]
        mid = torch.cat([image_mid + motion_mid, image_mid[f:] + obj_mid])
        pred = self._predict(noisy.expand(3, -1, -1, -1, -1), timestep.reshape(1).expand(3),
                             torch.cat([states, states[f:]]), first_latent.expand(3, -1, -1, -1), down, mid)
        return pred.chunk(3)


def encode_text(components: Components, captions: list[str], device) -> torch.Tensor:
    tokens = caption_ids(components.tokenizer, captions, components.cfg.max_text_tokens).to(device)
    return components.text_encoder(tokens)[0]


def frame_change(latents: torch.Tensor) -> torch.Tensor:
    """(B, 1, T-1, h, w): mean absolute change of each latent position from the previous frame."""
    return (latents[:, :, 1:] - latents[:, :, :-1]).abs().mean(dim=1, keepdim=True)


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm of a (B, C, F, H, W) tensor with statistics per frame, as AnimateDiff's own
    motion modules compute it (``b c f h w -> (b f) c h w`` before the norm). diffusers'
    ``AnimateDiffTransformer3D`` normalises over all frames at once. Same parameters and keys as
    ``nn.GroupNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        y = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(b, f, c, h, w).transpose(1, 2)


def set_motion_norm(modules, mode: str) -> int:
    """Make every motion module's temporal GroupNorm in ``modules`` normalise ``"per_frame"``
    (AnimateDiff's and Image Conductor's own code) or ``"joint"`` (diffusers). Weights and keys are
    untouched. Returns the number of norms set."""
    if mode not in ("joint", "per_frame"):
        raise ValueError(f"unknown motion_norm {mode!r}; choose 'joint' or 'per_frame'")
    cls = PerFrameGroupNorm if mode == "per_frame" else nn.GroupNorm
    count = 0
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, AnimateDiffTransformer3D) and isinstance(sub.norm, nn.GroupNorm):
                sub.norm.__class__ = cls
                count += 1
    return count


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Components",
    "Denoiser",
    "PerFrameGroupNorm",
    "encode_text",
    "first_frame_condition",
    "frame_change",
    "make_scheduler",
    "parameter_count",
    "set_motion_norm",
]
