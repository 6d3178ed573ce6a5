"""First-frame attention for the tiny UNet's spatial self-attention (an option of the tiny preset).

A UNet's spatial self-attention sees one frame at a time, so a frame can take an object's
appearance only from where the image condition shows it in that frame. When a trajectory moves
the object elsewhere, a small base trained from scratch draws *a* blob at the new place, often in
another colour (README, "Measured"). With this processor each frame's queries attend to its own
tokens and to frame 0's (a variant of cross-frame attention: Text2Video-Zero attends to frame 0
only, Tune-A-Video to frame 0 and the previous frame), so the
appearance of frame 0 is one attention step away from every position of every frame.

No weights are added: frame 0's keys and values come from the same projections. For frame 0
itself the result is exactly ordinary self-attention (its keys appear twice, which leaves the
softmax-weighted sum unchanged).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FirstFrameAttnProcessor:
    """Self-attention over a frame's own tokens and frame 0's. Needs ``num_frames``: set by the
    forward pre-hook that :func:`use_first_frame_attention` puts on the UNet."""

    def __init__(self) -> None:
        self.num_frames: int | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("FirstFrameAttnProcessor is for self-attention without a mask (a UNet's attn1)")
        if any(getattr(attn, n, None) is not None for n in ("spatial_norm", "group_norm", "norm_q", "norm_k")):
            raise ValueError("FirstFrameAttnProcessor does not apply spatial/group/q/k norms; this attention has one")
        if hidden_states.ndim != 3:
            raise ValueError(f"expected (batch·frames, tokens, channels), got shape {tuple(hidden_states.shape)}")
        frames = self.num_frames
        bf, tokens, _ = hidden_states.shape
        if not frames or bf % frames:
            raise ValueError(f"batch·frames {bf} is not a multiple of num_frames {frames}")
        residual = hidden_states
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)

        def with_first(x: torch.Tensor) -> torch.Tensor:  # (B·F, N, D) → (B·F, 2N, D)
            first = x.view(bf // frames, frames, tokens, -1)[:, :1].expand(-1, frames, -1, -1)
            return torch.cat([x, first.reshape(bf, tokens, -1)], dim=1)

        key, value = with_first(key), with_first(value)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(bf, -1, attn.heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
        out = out.transpose(1, 2).reshape(bf, tokens, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _spatial_self_attentions(unet: nn.Module):
    """The ``attn1`` of every spatial transformer block (not the motion modules' temporal ones)."""
    for name, module in unet.named_modules():
        if name.endswith(".attn1") and ".attentions." in name and "motion_modules" not in name:
            yield name, module


def use_first_frame_attention(unet: nn.Module) -> int:
    """Give every spatial self-attention of a UNetMotionModel first-frame attention; returns how
    many were changed. A forward pre-hook tells the processors the number of frames."""
    changed = 0
    for _, module in _spatial_self_attentions(unet):
        module.set_processor(FirstFrameAttnProcessor())
        changed += 1
    if not changed:
        raise ValueError("this UNet has no spatial self-attention to change")
    unet.register_forward_pre_hook(_set_num_frames, with_kwargs=True)
    return changed


def _set_num_frames(unet: nn.Module, args, kwargs) -> None:
    """Forward pre-hook: tell the processors of *this* module (a copy of the UNet has its own)
    how many frames the sample (B, C, F, H, W) has."""
    sample = args[0] if args else kwargs["sample"]
    for _, module in _spatial_self_attentions(unet):
        if isinstance(module.processor, FirstFrameAttnProcessor):
            module.processor.num_frames = sample.shape[2]


__all__ = ["FirstFrameAttnProcessor", "use_first_frame_attention"]
