"""One studio request: checks, the `generate` Prefect flow, then ObjMC/CamMC and an overlay video.

The request runs through the same flow as `ic generate` and the `generate/batch` deployment, so
it shows up in the Prefect UI with its parameters. The motion-control error is the evaluation's
measurement (:func:`ic_model.evaluation.metrics.motion_control.motion_control_error`): the saved video is
tracked from the requested first points and compared with the requested tracks, in pixels of a
384×256 frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ic_data.mp4 import decode_mp4, write_mp4
from ic_data.preview import TRACK_COLOURS, draw_tracks
from ic_model.config import ModelConfig
from ic_model.evaluation.metrics.motion_control import MotionControlResult, motion_control_error
from ic_model.training.run import is_done

from .model_view import DISPLAY_HEIGHT, DISPLAY_WIDTH

STUDIO_MODES = ("object", "camera", "none", "base")  # base: motion ControlNet off, the baseline
TRACKER = "lk"  # offline; the evaluation's default


class StudioError(RuntimeError):
    """A problem to show on the page as a message (bad input, missing weights, a failed run)."""


def missing_stages(run: str | os.PathLike, cfg: ModelConfig, mode: str) -> list[str]:
    """The trained stages ``mode`` needs that ``run`` has not finished."""
    needed = [s for s in ("vae", "base") if s in cfg.stages]
    missing = [s for s in needed if not is_done(run, s)]
    if mode != "base" and not (is_done(run, "sparse") or is_done(run, "dense")):
        missing.append("sparse")
    if mode in ("camera", "object") and not is_done(run, mode):
        missing.append(mode)
    return missing


def check_run_for_mode(run: str | os.PathLike, cfg: ModelConfig, mode: str) -> None:
    if mode not in STUDIO_MODES:
        raise StudioError(f"unknown mode {mode!r}; choose one of {', '.join(STUDIO_MODES)}")
    missing = missing_stages(run, cfg, mode)
    if not missing:
        return
    what = f"{mode} adapter" if missing == [mode] else "stages " + ", ".join(missing)
    raise StudioError(
        f"The run {run} has no trained {what} ({Path(run) / missing[-1] / 'done.json'} is missing), "
        f"which the {mode} mode needs. Train it with `ic train {missing[0]} --run {run} --shards …`"
        + (", or pick another mode." if mode != "none" else ".")
    )


@dataclass
class FlowResult:
    record: dict  # what generate_to_files returned: video, preview, seconds, …
    flow_run_name: str
    flow_run_id: str


def run_generate_flow(run: str, request: dict, device: str, flow_run_name: str, dtype: str = "fp32") -> FlowResult:
    """Run ``request`` as the `generate` flow; a failed run becomes a StudioError with its reason."""
    from flows.generate import generate

    state = generate.with_options(flow_run_name=flow_run_name)(
        run=str(run), requests=[request], device=device, dtype=dtype, return_state=True
    )
    flow_run_id = str(state.state_details.flow_run_id)
    if not state.is_completed():
        # The task reports "N of M requests failed:\n<Type>: <reason>"; the reason is what matters.
        reason = (state.message or state.name or "failed").strip().splitlines()[-1]
        raise StudioError(f"The generate flow run {flow_run_name} ended {state.name}: {reason}")
    return FlowResult(state.result()[0], flow_run_name, flow_run_id)


def measure_motion_control(video: str | os.PathLike, requested: np.ndarray) -> tuple[np.ndarray, MotionControlResult]:
    """Decode the generated mp4 and track it from ``requested[0]`` (model pixels, (T, N, 2))."""
    frames = decode_mp4(Path(video).read_bytes())
    return frames, motion_control_error(frames, requested, TRACKER)


def draw_tracked(frame: np.ndarray, tracked: np.ndarray, upto: int) -> np.ndarray:
    """Tracked positions as thin lines ending in a ring, in each track's colour."""
    out = np.ascontiguousarray(frame.copy())
    for j in range(tracked.shape[1]):
        colour = TRACK_COLOURS[j % len(TRACK_COLOURS)]
        pts = np.round(tracked[: upto + 1, j] * 4).astype(np.int32)
        if len(pts) > 1:
            cv2.polylines(out, [pts.reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA, shift=2)
        cv2.circle(out, tuple(pts[-1]), 6 * 4, colour, 1, cv2.LINE_AA, shift=2)
    return out


def overlay_video(frames: np.ndarray, requested: np.ndarray, tracked: np.ndarray, path: str | os.PathLike) -> Path:
    """The generated frames at 384×256 with the requested (thick, arrow) and the tracked (thin,
    ring) trajectories growing frame by frame; H.264 so the browser plays it."""
    h, w = frames.shape[1:3]
    scale = np.array([DISPLAY_WIDTH / w, DISPLAY_HEIGHT / h])
    # Model pixels → display pixels, pixel centres kept.
    req = (requested + 0.5) * scale - 0.5
    trk = (tracked + 0.5) * scale - 0.5
    out = []
    for t, frame in enumerate(frames):
        big = cv2.resize(frame, (DISPLAY_WIDTH, DISPLAY_HEIGHT), interpolation=cv2.INTER_NEAREST)
        big = draw_tracks(big, req, np.arange(req.shape[1]), upto=t)
        out.append(draw_tracked(big, trk, t))
    path = Path(path)
    write_mp4(path, np.stack(out), fps=8.0)
    return path


__all__ = [
    "FlowResult", "STUDIO_MODES", "StudioError", "check_run_for_mode", "measure_motion_control",
    "missing_stages", "overlay_video", "run_generate_flow",
]
