"""Components by preset: ``tiny`` from scratch, ``sd15`` from the configured local weights."""
from __future__ import annotations

import torch

from ic_model.config import ModelConfig
from ic_model.models.components import Components, make_scheduler, set_motion_norm
from ic_model.models.sd15 import load_sd15_components
from ic_model.models.tiny import build_tiny_components


def build_components(
    cfg: ModelConfig, torch_dtype: torch.dtype = torch.float32, base_dir=None
) -> Components:
    """The preset's components: tiny from scratch, sd15 from the configured local weights.

    ``torch_dtype``: what sd15's pretrained weights are read into (no fp32 copy first); the
    motion ControlNet, which is trained, is float32 whatever it is. The tiny preset's random
    weights start in float32. ``base_dir`` (sd15): a folder with ``unet.safetensors`` and
    ``image_controlnet.safetensors`` (a converted release) that replaces the AnimateDiff and
    SparseCtrl weights. The motion modules' norm follows ``cfg.motion_norm``."""
    if cfg.preset == "sd15":
        parts = load_sd15_components(cfg, torch_dtype, base_dir=base_dir)
        parts["scheduler"] = make_scheduler(cfg)
        comps = Components(cfg=cfg, **parts)
    else:
        comps = build_tiny_components(cfg)
    set_motion_norm((comps.unet, comps.image_controlnet, comps.motion_controlnet), cfg.motion_norm)
    return comps


__all__ = ["build_components"]
