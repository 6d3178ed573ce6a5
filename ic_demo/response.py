"""Does the motion ControlNet use the trajectories? Its denoising error with and without them.

Sampling metrics (ObjMC) mix two questions: does the model respond to trajectories, and can it
draw a coherent video at all. This probe asks only the first. For clips whose true trajectories are
known, it noises the clip at a few timesteps (the same noise for every condition) and compares the
model's x0 estimate with the clean clip under five conditions of the motion ControlNet:

- ``own dense`` / ``own sparse``: the clip's own trajectory maps (every track / 1–8 tracks drawn
  as in training);
- ``zero maps``: the ControlNet on, with all-zero maps;
- ``off``: the ControlNet not called (the image-to-video base alone);
- ``other clip``: another clip's dense maps (a wrong trajectory).

Errors are mean squared differences in the scaled latent space on frames 1… (frame 0 is given),
over the whole frame and over ``moving``: the 10 % of latent positions per clip whose content
changes most from the previous frame. A model that uses trajectories has its own maps well below
``off`` and ``other clip`` on ``moving``; a model that ignores them has the five about equal.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ic_model.config import ModelConfig
from ic_model.models.codec import encode_video
from ic_model.models.components import frame_change
from ic_model.models.tokenizer import caption_ids
from ic_model.training.data import ClipStream
from ic_model.training.run import is_done, load_run_components, run_model_config

CONDITIONS = ("own dense", "own sparse", "zero maps", "off", "other clip")
MOVING_FRACTION = 0.1


def predicted_x0(scheduler, noisy: torch.Tensor, pred: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The clean-sample estimate behind a prediction of any ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return pred
    abar = scheduler.alphas_cumprod.to(noisy.device)[timesteps].to(noisy.dtype).view(-1, 1, 1, 1, 1)
    if kind == "epsilon":
        return (noisy - (1 - abar).sqrt() * pred) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * noisy - (1 - abar).sqrt() * pred
    raise ValueError(f"unknown prediction_type {kind!r}")


def moving_mask(latents: torch.Tensor, fraction: float = MOVING_FRACTION) -> torch.Tensor:
    """(B, 1, T-1, h, w) bool: per clip, the ``fraction`` of positions on frames 1… whose latent
    changes most from the previous frame (at least one position; exactly that many, ties broken
    by ``topk``)."""
    change = frame_change(latents)
    flat = change.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.view_as(change)


def _streams(shards, cfg: ModelConfig, batch_size: int, frame_stride: int, seed: int):
    """Dense and sparse streams over the same clips and frame windows: both draw the window
    first from the same per-sample generator, so only the track choice differs."""
    kw = dict(batch_size=batch_size, camera_only=False, frame_stride=frame_stride, seed=seed, shuffle_buffer=8)
    return ClipStream(shards, cfg, track_mode="dense", **kw), ClipStream(shards, cfg, track_mode="sparse", **kw)


@torch.no_grad()
def trajectory_response(
    run: str | os.PathLike,
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    num_samples: int = 32,
    timesteps: Sequence[int] = (900, 500),
    batch_size: int = 4,
    frame_stride: int = 4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """x0 error of ``run``'s motion ControlNet (its latest dense/sparse weights, no LoRA) under the
    five :data:`CONDITIONS` on ``num_samples`` clips with moving objects from ``shards``.

    Returns ``{"rows": [{"t", "condition", "whole", "moving"}...], "num_samples", "stage",
    "moving_gain": {t: 1 − moving(own dense) / moving(off)}}``. The networks run on ``device`` in fp32;
    the noise is drawn on the CPU, so a device changes the figures only by its arithmetic."""
    cfg = run_model_config(run)
    stage = next((s for s in ("sparse", "dense") if is_done(run, s)), None)
    if stage is None:
        raise ValueError(f"{run} has no trained motion ControlNet (neither 'dense' nor 'sparse' is done)")
    if batch_size < 2:
        raise ValueError("batch_size must be >= 2: 'other clip' pairs each clip with another one")
    comps = load_run_components(run, cfg)
    for module in comps.modules().values():
        if module is not None:
            module.to(device)
    den = comps.denoiser().eval()
    scheduler = comps.scheduler
    dense_stream, sparse_stream = _streams(shards, cfg, batch_size, frame_stride, seed)
    sums = {(t, c): np.zeros(2) for t in timesteps for c in CONDITIONS}
    seen = 0
    gen = torch.Generator().manual_seed(seed)
    for dense, sparse in zip(dense_stream, sparse_stream):
        if seen >= num_samples:
            break
        if dense.keys != sparse.keys or not torch.equal(dense.frame_indices, sparse.frame_indices):
            raise RuntimeError("dense and sparse streams drew different clips")  # ClipStream contract
        latents = encode_video(comps.vae, dense.pixels.to(device))
        ids = caption_ids(comps.tokenizer, dense.captions, cfg.max_text_tokens).to(device)
        text = comps.text_encoder(ids)[0]
        mask = moving_mask(latents)
        own, own_sparse = dense.flow.to(device), sparse.flow.to(device)
        flows = {"own dense": own, "own sparse": own_sparse, "zero maps": torch.zeros_like(own),
                 "off": None, "other clip": own.roll(1, dims=0)}
        for t in timesteps:
            ts = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=device)
            noise = torch.randn(latents.shape, generator=gen).to(device)
            noisy = scheduler.add_noise(latents, noise, ts)
            for c in CONDITIONS:
                pred = den(noisy, ts, text, latents[:, :, 0], flow=flows[c])
                err = ((predicted_x0(scheduler, noisy, pred, ts) - latents) ** 2)[:, :, 1:].mean(dim=1, keepdim=True)
                sums[(t, c)] += [err.mean().item(), (err[mask].mean()).item()]
        seen += latents.shape[0]
    steps = max(1, -(-seen // batch_size))
    rows = [{"t": int(t), "condition": c, "whole": round(float(sums[(t, c)][0]) / steps, 4),
             "moving": round(float(sums[(t, c)][1]) / steps, 4)} for t in timesteps for c in CONDITIONS]
    by = {(r["t"], r["condition"]): r for r in rows}
    gain = {str(t): round(1 - by[(t, "own dense")]["moving"] / by[(t, "off")]["moving"], 4) for t in timesteps}
    return {"rows": rows, "num_samples": seen, "stage": stage, "moving_gain": gain}


__all__ = ["CONDITIONS", "moving_mask", "predicted_x0", "trajectory_response"]
