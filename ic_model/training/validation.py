"""Validation samples while a stage trains: one fixed held-out case, generated and scored.

At step 0 (the untrained model) and every ``TrainConfig.validate_every`` steps, the first case of
the paper's evaluation set that fits the stage is generated from the weights being trained, with
the same code and settings as the evaluate flow (:func:`~ic_model.evaluation.evaluate.evaluate_set`
with ``max_cases=1``), so its ObjMC / CamMC is the evaluate flow's for that case and seed:

- ``base``: the object set with the motion ControlNet off (``base``);
- ``dense`` / ``sparse``: the object set with the motion ControlNet, no LoRA (``none``);
- ``camera``: the camera set with the camera adapter;
- ``object``: the object set with the object adapter, at λ_trajs 1.0 and with camera-free
  guidance (λ_trajs 1.3).

Files go to ``RUN/STAGE/validation/step-N/`` (metrics.json, the MP4 and a GIF with the requested
and tracked paths). The modules are shared with training: they are put in eval mode and back,
nothing is cast, and under mixed precision the sampling runs under the same autocast.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ic_model.evaluation.evaluate import EvalSettings, evaluate_set
from ic_model.models import lora
from ic_model.models.components import Components

# stage → (evaluation set, pipeline mode, λ_trajs values)
VALIDATION = {
    "base": ("object", "base", (1.0,)),
    "dense": ("object", "none", (1.0,)),
    "sparse": ("object", "none", (1.0,)),
    "camera": ("camera", "camera", (1.0,)),
    "object": ("object", "object", (1.0, 1.3)),
}
VALIDATION_STEPS = 10  # DDIM steps of a validation sample
VALIDATION_SEED = 0


def validation_settings(train_cfg, mode: str, trajs_scale: float) -> EvalSettings:
    """The evaluate flow's settings that reproduce a validation sample (``ic evaluate SET
    --mode MODE --max-cases 1 --steps 10 --cfg 1.0 --trajs-scale λ``)."""
    return EvalSettings(steps=VALIDATION_STEPS, guidance_scale=train_cfg.validation_guidance_scale,
                        trajs_scale=trajs_scale, seed=VALIDATION_SEED, mode=mode, max_cases=1)


@torch.no_grad()
def validate(module, out_dir: Path, step: int, device: torch.device, autocast_dtype: torch.dtype | None) -> list[dict]:
    """Generate and score the stage's validation case(s) with ``module``'s current weights."""
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    if module.stage not in VALIDATION:
        return []
    set_name, mode, scales = VALIDATION[module.stage]
    comps = Components(
        cfg=module.cfg, vae=module.vae, text_encoder=module.text_encoder, tokenizer=module.tokenizer,
        unet=module.denoiser.unet, image_controlnet=module.denoiser.image_controlnet,
        motion_controlnet=module.motion_controlnet, scheduler=module.scheduler,
    )
    was_training = module.training
    mc = module.motion_controlnet
    active = lora.active_adapters(mc) if lora.adapter_names(mc) else []
    module.eval()
    results = []
    try:
        pipe = ImageConductorPipeline(comps, device=device, cast=False)
        pipe.set_progress_bar_config(disable=True)
        for scale in scales:
            out = out_dir / "validation" / f"step-{step:07d}" / (f"trajs{scale:g}" if len(scales) > 1 else "")
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                metrics = evaluate_set(pipe, set_name, out, validation_settings(module.train_cfg, mode, scale))
            name = "CamMC" if set_name == "camera" else "ObjMC"
            case = metrics["cases"][0]
            results.append({
                "step": step, "set": set_name, "mode": mode, "trajs_scale": scale, "metric": name,
                "value": metrics[name], "case": case["case"], "background_motion_px": case.get("background_motion_px"),
                "video": str(out / "videos" / f"{case['case']}.mp4"), "gif": str(out / case["gif"]),
            })
    finally:
        if active:
            lora.set_active_adapters(mc, active)
        module.train(was_training)
    return results


def filmstrip(video: Path, frames: int = 8) -> np.ndarray:
    """(H, W·n, 3) uint8: ``frames`` evenly spaced frames of an MP4 side by side (TensorBoard's
    own video needs moviepy; a strip shows the motion as well)."""
    from ic_data.mp4 import decode_mp4

    clip = decode_mp4(Path(video).read_bytes())
    picks = np.unique(np.linspace(0, len(clip) - 1, frames).round().astype(int))
    return np.concatenate(list(clip[picks]), axis=1)


__all__ = ["VALIDATION", "filmstrip", "validate", "validation_settings"]
