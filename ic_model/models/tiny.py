"""The ``tiny`` preset's networks: the sd15 architecture classes at small widths, built from
scratch (reproducible from ``ModelConfig.init_seed``) so the whole method trains on CPU."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNetMotionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ic_model.config import ModelConfig
from ic_model.models.codec import SpaceToDepthCodec
from ic_model.models.components import Components, make_scheduler
from ic_model.models.frame_attention import use_first_frame_attention
from ic_model.models.motion_controlnet import (
    build_image_controlnet,
    build_motion_controlnet,
)
from ic_model.models.tokenizer import clip_tokenizer


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
        return SpaceToDepthCodec(factor=cfg.vae_scale_factor, scaling_factor=cfg.latent_scaling_factor)
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
        scaling_factor=cfg.latent_scaling_factor,
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


__all__ = ["build_tiny_components"]
