"""Model assembly: the frozen base, the two ControlNets, and the denoiser that wires them.

Paper Fig. 2a: a 3D UNet (SD 1.5 + AnimateDiff motion module) denoises; the image ControlNet
(SparseCtrl RGB: first-frame latent + mask) carries appearance and the motion ControlNet carries
trajectories. Both ControlNets' residuals are summed and added to the UNet's skip connections.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, SparseControlNetModel, UNetMotionModel
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .config import ModelConfig
from .frame_attention import use_first_frame_attention
from .motion_controlnet import build_image_controlnet, build_motion_controlnet, flow_to_controlnet_cond
from .tokenizer import caption_ids, clip_tokenizer


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


def _tiny_unet(cfg: ModelConfig) -> UNetMotionModel:
    n = len(cfg.block_out_channels)
    unet = UNetMotionModel(
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlockMotion",) * (n - 1) + ("DownBlockMotion",),
        up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * (n - 1),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.cross_attention_dim,
        num_attention_heads=cfg.attention_head_dim,
        motion_num_attention_heads=cfg.motion_num_attention_heads,
        motion_max_seq_length=32,
    )
    if cfg.spatial_attention == "first_frame":
        use_first_frame_attention(unet)
    return unet


def _tiny_vae(cfg: ModelConfig) -> AutoencoderKL | SpaceToDepthCodec:
    if cfg.codec == "space_to_depth":
        return SpaceToDepthCodec(factor=cfg.vae_scale_factor, scaling_factor=cfg.vae_scaling_factor)
    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=cfg.vae_layers_per_block,
        norm_num_groups=cfg.vae_norm_num_groups,
        latent_channels=cfg.latent_channels,
        sample_size=max(cfg.width, cfg.height),
        scaling_factor=cfg.vae_scaling_factor,
    )


def _tiny_text_encoder(cfg: ModelConfig, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden_size,
            intermediate_size=cfg.text_intermediate_size,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_text_tokens,
            projection_dim=cfg.text_hidden_size,
        )
    )


def build_tiny_components(cfg: ModelConfig) -> Components:
    """Random-initialised tiny components, reproducible from ``cfg.init_seed``."""
    if cfg.text_hidden_size != cfg.cross_attention_dim:
        raise ValueError("tiny preset: text_hidden_size must equal cross_attention_dim")
    tokenizer = clip_tokenizer(cfg.max_text_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        vae = _tiny_vae(cfg)
        text_encoder = _tiny_text_encoder(cfg, len(tokenizer))
        unet = _tiny_unet(cfg)
        image_controlnet = build_image_controlnet(unet, cfg.latent_channels)
        motion_controlnet = build_motion_controlnet(unet, cfg.vae_scale_factor)
    return Components(
        cfg=cfg,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        image_controlnet=image_controlnet,
        motion_controlnet=motion_controlnet,
        scheduler=make_scheduler(cfg),
    )


def build_components(cfg: ModelConfig) -> Components:
    """The preset's components: tiny from scratch, sd15 from the configured local weights."""
    if cfg.preset == "sd15":
        from .sd15 import load_sd15_components

        parts = load_sd15_components(cfg)
        parts["scheduler"] = make_scheduler(cfg)
        return Components(cfg=cfg, **parts)
    return build_tiny_components(cfg)


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
        num_frames = noisy.shape[2]
        if self.clean_first_frame:
            clean = first_latent.to(noisy.dtype)[:, :, None]
            noisy = torch.cat([clean, noisy[:, :, 1:]], dim=2)
        encoder_states = text_embeddings.repeat_interleave(num_frames, dim=0)
        cond, mask = first_frame_condition(first_latent.to(noisy.dtype), num_frames, self.image_every_frame)
        down, mid = self.image_controlnet(
            noisy,
            timesteps,
            encoder_states,
            cond,
            conditioning_mask=mask,
            conditioning_scale=image_scale,
            return_dict=False,
        )
        if flow is not None:
            motion_down, motion_mid = self.motion_residuals(
                noisy, timesteps, encoder_states, flow, motion_scale
            )
            down = [a + b for a, b in zip(down, motion_down)]
            mid = mid + motion_mid
        pred = self.unet(
            noisy,
            timesteps,
            encoder_states,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        if self.clean_first_frame:
            pred = torch.cat([clean.to(pred.dtype), pred[:, :, 1:]], dim=2)
        return pred


def encode_text(components: Components, captions: list[str], device) -> torch.Tensor:
    tokens = caption_ids(components.tokenizer, captions, components.cfg.max_text_tokens).to(device)
    return components.text_encoder(tokens)[0]


@torch.no_grad()
def encode_video(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] → scaled latents (B, C, T, h, w).

    Posterior means, not samples: the frozen VAE then gives the same latents for the same clip
    in training and at inference (the first-frame condition especially)."""
    b, _, t, h, w = pixels.shape
    frames = pixels.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w).to(vae.dtype)
    latents = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
    return latents.reshape(b, t, *latents.shape[1:]).permute(0, 2, 1, 3, 4)


def frame_change(latents: torch.Tensor) -> torch.Tensor:
    """(B, 1, T-1, h, w): mean absolute change of each latent position from the previous frame."""
    return (latents[:, :, 1:] - latents[:, :, :-1]).abs().mean(dim=1, keepdim=True)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) scaled latents → (B, 3, T, H, W) pixels in [-1, 1]."""
    b, c, t, h, w = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / vae.config.scaling_factor
    frames = vae.decode(flat.to(vae.dtype)).sample.clamp(-1, 1)
    return frames.reshape(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Components",
    "Denoiser",
    "SpaceToDepthCodec",
    "build_components",
    "build_tiny_components",
    "decode_latents",
    "encode_text",
    "encode_video",
    "first_frame_condition",
    "frame_change",
    "make_scheduler",
    "parameter_count",
]
