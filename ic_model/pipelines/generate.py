"""One request end to end: image file + prompt + trajectory file → video + preview."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from ic_data.errors import BadInputError
from ic_data.mp4 import write_mp4
from ic_data.preview import preview_gif
from ic_data.trajectories import load_trajectory_file, validate_trajectories
from ic_model.pipelines.image_conductor import (
    ImageConductorPipeline,
    prepare_image_and_tracks,
)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB (H, W, 3); one clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise BadInputError(f"cannot decode image {path} (not an image file?)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def generate_to_files(
    pipe: ImageConductorPipeline,
    image: str | os.PathLike,
    prompt: str,
    trajectories: str | os.PathLike | list,
    out: str | os.PathLike,
    mode: str = "object",
    trajs_scale: float = 1.0,
    guidance_scale: float = 8.5,
    steps: int = 25,
    seed: int = 0,
    trajectory_space: str = "image",
) -> dict:
    """Generate one video into ``out`` (.mp4, 8 fps) plus ``out`` with ``.gif`` (trajectories
    drawn over the video); return a small record of what was done. ``trajectory_space``: the
    trajectories' pixels are the image's ("image") or the model frame's ("model", e.g. the
    official example files, 384×256)."""
    rgb = read_image(image)
    h, w = rgb.shape[:2] if trajectory_space == "image" else (pipe.cfg.height, pipe.cfg.width)
    if isinstance(trajectories, (str, os.PathLike)):
        tracks = load_trajectory_file(trajectories, w, h)
    else:
        tracks = validate_trajectories(trajectories, w, h)
    prepared = prepare_image_and_tracks(rgb, [t.tolist() for t in tracks], pipe.cfg,
                                        trajectory_space=trajectory_space)
    t0 = time.perf_counter()
    frames = pipe(
        prepared.image, prompt, prepared.tracks, mode=mode, num_inference_steps=steps,
        guidance_scale=guidance_scale, trajs_scale=trajs_scale, seed=seed,
    )
    seconds = time.perf_counter() - t0
    out = Path(out)
    write_mp4(out, frames, fps=8.0)
    gif = preview_gif(frames, prepared.tracks, np.arange(prepared.tracks.shape[1]), out.with_suffix(".gif"),
                      scale=max(1.0, 384 / frames.shape[2]))
    record = {
        "video": str(out), "preview": str(gif), "mode": mode, "trajs_scale": trajs_scale,
        "guidance_scale": guidance_scale, "steps": steps, "seed": seed, "prompt": prompt,
        "num_frames": int(frames.shape[0]), "size": [int(frames.shape[2]), int(frames.shape[1])],
        "num_tracks": int(prepared.tracks.shape[1]), "seconds": round(seconds, 3),
        "trajectory_space": trajectory_space,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


__all__ = ["generate_to_files", "read_image"]
