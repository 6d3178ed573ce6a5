"""One request end to end: image file + prompt + trajectory file → video + preview."""
from __future__ import annotations

import json
import math
import numbers
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
    MODES,
    TRAJECTORY_SPACES,
    ImageConductorPipeline,
    prepare_image_and_tracks,
)

REQUIRED_KEYS = ("image", "prompt", "trajectories", "out")
OPTIONAL_KEYS = ("mode", "trajs_scale", "guidance_scale", "steps", "seed", "trajectory_space")


def request_problems(request, max_steps: int = 1000) -> list[str]:
    """What is wrong with one generation request (a dict of :func:`generate_to_files`'s
    arguments), one line each: unknown or missing keys, a wrong type, a value out of range.
    The trajectories' points and the image's contents are checked when they are read."""
    if not isinstance(request, dict):
        return [f"a request must be a mapping of {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}, got {type(request).__name__}"]
    problems = []
    unknown = sorted(set(request) - set(REQUIRED_KEYS + OPTIONAL_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {unknown}; a request has {list(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in request]
    if missing:
        problems.append(f"missing {missing}")

    def real(value) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    def whole(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    for key in ("image", "out"):
        if key in request and not (isinstance(request[key], (str, os.PathLike)) and str(request[key])):
            problems.append(f"{key} must be a path, got {request[key]!r}")
    if isinstance(request.get("out"), (str, os.PathLike)) and Path(request["out"]).suffix.lower() != ".mp4":
        problems.append(f"out must be an .mp4 file (its .gif preview and .json record go beside it), got {request['out']}")
    elif isinstance(request.get("out"), (str, os.PathLike)) and str(request["out"]):
        # Found now, not when the video is written after sampling.
        out = Path(request["out"])
        if out.is_dir():
            problems.append(f"out {out} is a folder, not a file to write")
        elif any(parent.exists() and not parent.is_dir() for parent in out.parents):
            problems.append(f"out {out}: a part of its folder is a file, not a folder")
    if "prompt" in request and not isinstance(request["prompt"], str):
        problems.append(f"prompt must be a string, got {type(request['prompt']).__name__}")
    if "trajectories" in request and not isinstance(request["trajectories"], (str, os.PathLike, list)):
        problems.append(f"trajectories must be a file path or a list of tracks, got {type(request['trajectories']).__name__}")
    if request.get("mode", "object") not in MODES:
        problems.append(f"mode must be one of {list(MODES)}, got {request['mode']!r}")
    if request.get("trajectory_space", "image") not in TRAJECTORY_SPACES:
        problems.append(f"trajectory_space must be one of {list(TRAJECTORY_SPACES)}, got {request['trajectory_space']!r}")
    for key in ("trajs_scale", "guidance_scale"):
        if key in request and not (real(request[key]) and request[key] >= 0):
            problems.append(f"{key} must be a finite number ≥ 0, got {request[key]!r}")
    if "steps" in request and not (whole(request["steps"]) and 1 <= request["steps"] <= max_steps):
        problems.append(f"steps must be a whole number from 1 to {max_steps}, got {request['steps']!r}")
    if "seed" in request and not (whole(request["seed"]) and 0 <= request["seed"] < 2**63):
        problems.append(f"seed must be a whole number from 0 to 2**63 - 1, got {request['seed']!r}")
    return problems


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB (H, W, 3), upright (EXIF orientation applied); one clear error for a missing,
    unreadable or cut-short file (OpenCV reads a JPEG cut short as grey with a warning)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"image not found: {path}")
    try:
        with Image.open(path) as whole:
            whole.load()
    except Exception as err:  # noqa: BLE001 - PIL's many decoder errors: the file is the problem
        raise BadInputError(f"cannot decode image {path} ({err})") from err
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
    official example files, 384×256).

    Raises:
        BadInputError: a setting out of range (:func:`request_problems`), an unreadable image or
            malformed trajectories, before anything is generated.
    """
    problems = request_problems(
        dict(image=image, prompt=prompt, trajectories=trajectories, out=out, mode=mode, trajs_scale=trajs_scale,
             guidance_scale=guidance_scale, steps=steps, seed=seed, trajectory_space=trajectory_space),
        max_steps=pipe.cfg.num_train_timesteps,
    )
    if problems:
        raise BadInputError("; ".join(problems))
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
        "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


__all__ = ["generate_to_files", "read_image", "request_problems"]
