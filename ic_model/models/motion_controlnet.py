"""The motion ControlNet: trajectory flow maps → residuals for the video UNet.

A SparseCtrl-style ControlNet (the noisy latent is ignored: ``SparseControlNetModel`` zeroes its
``sample``). The (B, 2, T, H, W) flow maps are pixel-unshuffled by the VAE factor f into
(B, 2·f², T, H/f, W/f) — 128 channels for f = 8 — and enter through a zero-initialised conv, so a
freshly built ControlNet changes nothing until it is trained. Its encoder's spatial layers are
initialised from the UNet encoder, as the paper does; its motion modules start fresh with a zero
output projection (each an identity), as the official ``from_unet`` leaves them: it skips every
``motion_modules.`` tensor, and its temporal modules are zero-initialised. The UNet's AnimateDiff
v3 modules hold two temporal attentions a block to the ControlNet's one, so a copy would start it
from half a module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import SparseControlNetModel, UNetMotionModel


def flow_to_controlnet_cond(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 2, T, H, W) flow maps → (B, 2·factor², T, H/factor, W/factor)."""
    if flow.ndim != 5 or flow.shape[1] != 2:
        raise ValueError(f"flow maps must be (B, 2, T, H, W), got {tuple(flow.shape)}")
    b, c, t, h, w = flow.shape
    if h % factor or w % factor:
        raise ValueError(f"flow map size {h}×{w} is not divisible by {factor}")
    frames = flow.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.pixel_unshuffle(frames, factor)
    return frames.reshape(b, t, c * factor * factor, h // factor, w // factor).permute(0, 2, 1, 3, 4)


def sparse_controlnet_kwargs(unet: UNetMotionModel) -> dict:
    """Constructor arguments a SparseControlNetModel needs to mirror ``unet``'s encoder."""
    cfg = unet.config
    down_types = tuple(
        "CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion"
        for t in cfg.down_block_types
    )
    heads = cfg.num_attention_heads
    return dict(
        in_channels=cfg.in_channels,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=down_types,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        downsample_padding=cfg.downsample_padding,
        mid_block_scale_factor=cfg.mid_block_scale_factor,
        act_fn=cfg.act_fn,
        norm_num_groups=cfg.norm_num_groups,
        norm_eps=cfg.norm_eps,
        cross_attention_dim=cfg.cross_attention_dim,
        transformer_layers_per_block=cfg.transformer_layers_per_block,
        attention_head_dim=heads,
        num_attention_heads=heads,
        use_linear_projection=cfg.use_linear_projection,
        motion_max_seq_length=cfg.motion_max_seq_length,
        motion_num_attention_heads=cfg.motion_num_attention_heads,
    )


def build_motion_controlnet(
    unet: UNetMotionModel, vae_scale_factor: int = 8, load_weights_from_unet: bool = True
) -> SparseControlNetModel:
    """A motion ControlNet whose encoder copies ``unet``'s spatial layers (conv_in, time embedding,
    down and mid blocks); the conditioning conv, the zero-convs and the motion modules' output
    projections start at zero."""
    controlnet = SparseControlNetModel(
        **sparse_controlnet_kwargs(unet),
        conditioning_channels=2 * vae_scale_factor**2,
        concat_conditioning_mask=False,
        use_simplified_condition_embedding=True,
    )
    zero_motion_outputs(controlnet)
    if load_weights_from_unet:
        copy_unet_encoder(unet, controlnet)
    return controlnet


def build_image_controlnet(unet: UNetMotionModel, latent_channels: int = 4) -> SparseControlNetModel:
    """The SparseCtrl RGB image ControlNet shape: first-frame VAE latent + a mask channel."""
    return SparseControlNetModel(
        **sparse_controlnet_kwargs(unet),
        conditioning_channels=latent_channels,
        concat_conditioning_mask=True,
        use_simplified_condition_embedding=True,
    )


MOTION_MODULES = ".motion_modules."


@torch.no_grad()
def zero_motion_outputs(controlnet: SparseControlNetModel) -> int:
    """Zero the output projection of every motion module (a residual temporal transformer), so
    each passes its input through unchanged; returns how many were zeroed."""
    zeroed = 0
    for name, module in controlnet.named_modules():
        if MOTION_MODULES in f".{name}" and name.endswith(".proj_out"):
            for tensor in module.parameters(recurse=False):
                tensor.zero_()
            zeroed += 1
    return zeroed


@torch.no_grad()
def copy_unet_encoder(unet: UNetMotionModel, controlnet: SparseControlNetModel) -> None:
    """Copy every spatial encoder tensor the two models share by name and shape (not the motion
    modules, which stay as built); fail if any is missing."""
    target = controlnet.state_dict()
    source = {n: t for n, t in unet.state_dict().items() if MOTION_MODULES not in n}
    copied = 0
    for prefix in ("conv_in.", "time_embedding.", "down_blocks.", "mid_block."):
        for name, tensor in source.items():
            if not name.startswith(prefix):
                continue
            if name in target and target[name].shape == tensor.shape:
                target[name].copy_(tensor)
                copied += 1
    encoder = [n for n in target
               if n.startswith(("down_blocks.", "mid_block.", "conv_in.")) and MOTION_MODULES not in n]
    missing = [n for n in encoder if n not in source]
    if missing:
        raise ValueError(
            f"UNet encoder does not cover the ControlNet: {len(missing)} tensors missing, "
            f"e.g. {missing[:3]}"
        )
    if copied == 0:
        raise ValueError("no tensor copied from the UNet encoder")


__all__ = [
    "build_image_controlnet",
    "build_motion_controlnet",
    "copy_unet_encoder",
    "flow_to_controlnet_cond",
    "sparse_controlnet_kwargs",
    "zero_motion_outputs",
]
