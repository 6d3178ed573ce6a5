"""One request end to end: image file + prompt + trajectory file → video + preview."""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import time
from pathlib import Path

import numpy as np

from ic_data.errors import BadInputError
from ic_data.images import read_rgb
from ic_data.mp4 import write_mp4
from ic_data.preview import preview_gif
from ic_data.settings import MAX_PROMPT_CHARS, cannot_write_in, text
from ic_data.trajectories import load_trajectory_file, validate_trajectories
from ic_model.pipelines.image_conductor import (
    MODES,
    TRAJECTORY_SPACES,
    ImageConductorPipeline,
    prepare_image_and_tracks,
)

REQUIRED_KEYS = ("image", "prompt", "trajectories", "out")
OPTIONAL_KEYS = ("mode", "trajs_scale", "guidance_scale", "steps", "seed", "trajectory_space", "negative_prompt")


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
        beside = [path for path in output_paths(out)[1:] if path.is_dir()]  # the preview and the record
        if out.is_dir():
            problems.append(f"out {out} is a folder, not a file to write")
        elif beside:
            problems.append(f"out {out}: {' and '.join(map(str, beside))} is a folder, not a file to write")
        elif any(parent.exists() and not parent.is_dir() for parent in out.parents):
            problems.append(f"out {out}: a part of its folder is a file, not a folder")
        elif problem := cannot_write_in(out.parent):
            problems.append(f"out {out}: {problem}")
    for key in ("prompt", "negative_prompt"):
        if key in request and not isinstance(request[key], str):
            problems.append(f"{key} must be a string, got {type(request[key]).__name__}")
        elif key in request and (problem := text(key, request[key], longest=MAX_PROMPT_CHARS)):
            problems.append(problem)
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


def read_image(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3), upright; one clear error for a missing, unreadable, cut-short,
    unsupported or oversized file (:func:`ic_data.images.read_rgb`)."""
    return read_rgb(path, notes)


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
    negative_prompt: str = "",
) -> dict:
    """Generate one video into ``out`` (.mp4, 8 fps) plus ``out`` with ``.gif`` (trajectories
    drawn over the video); return a small record of what was done. ``trajectory_space``: the
    trajectories' pixels are the image's ("image") or the model frame's ("model", e.g. the
    official example files, 384×256). ``negative_prompt`` is the text of classifier-free
    guidance's unconditional branch (empty: the caption-dropout text training used; the
    official examples give "worst quality, low quality, letterboxed").

    Raises:
        BadInputError: a setting out of range (:func:`request_problems`), an unreadable image or
            malformed trajectories, before anything is generated.
    """
    problems = request_problems(
        dict(image=image, prompt=prompt, trajectories=trajectories, out=out, mode=mode, trajs_scale=trajs_scale,
             guidance_scale=guidance_scale, steps=steps, seed=seed, trajectory_space=trajectory_space,
             negative_prompt=negative_prompt),
        max_steps=pipe.cfg.num_train_timesteps,
    )
    if problems:
        raise BadInputError("; ".join(problems))
    notes: list[str] = []  # what was made of the input, beyond the obvious
    rgb = read_image(image, notes)
    for name, words in (("prompt", prompt), ("negative prompt", negative_prompt)):
        tokens = len(pipe.comps.tokenizer(words, verbose=False).input_ids)  # with the start and end tokens
        if tokens > pipe.cfg.max_text_tokens:
            notes.append(f"the {name} is {tokens} tokens long: the text encoder reads its first {pipe.cfg.max_text_tokens}")
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
        guidance_scale=guidance_scale, trajs_scale=trajs_scale, seed=seed, negative_prompt=negative_prompt,
    )
    seconds = time.perf_counter() - t0
    out = Path(out)
    video, preview, record_file = output_paths(out)
    record = {
        "video": str(video), "preview": str(preview), "mode": mode, "trajs_scale": trajs_scale,
        "guidance_scale": guidance_scale, "steps": steps, "seed": seed, "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_frames": int(frames.shape[0]), "size": [int(frames.shape[2]), int(frames.shape[1])],
        "num_tracks": int(prepared.tracks.shape[1]), "seconds": round(seconds, 3),
        "trajectory_space": trajectory_space,
        "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
        **({"notes": notes} if notes else {}),
    }
    written: list[Path] = []
    try:  # all three or none: a video without its record would pass for a finished one
        write_mp4(video, frames, fps=8.0)
        written.append(video)
        preview_gif(frames, prepared.tracks, np.arange(prepared.tracks.shape[1]), preview,
                    scale=max(1.0, 384 / frames.shape[2]))
        written.append(preview)
        record_file.write_text(json.dumps(record, indent=1))
    except OSError as err:  # the disk filled up, the folder went away or turned read-only
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise BadInputError(f"cannot write {err.filename or out} ({err.strerror or err}); nothing was kept") from err
    return record


def output_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """What one generation writes: the video ``out`` (.mp4), its preview (.gif, the trajectories
    drawn over it) and its record (.json)."""
    out = Path(out)
    return out, out.with_suffix(".gif"), out.with_suffix(".json")


__all__ = ["generate_to_files", "output_paths", "read_image", "request_problems"]
