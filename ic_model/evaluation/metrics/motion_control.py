"""CamMC and ObjMC (appendix C.2): how closely a generated video follows the requested motion.

Both are the same measurement on different trajectory sets: track the generated video from the
requested trajectories' first points and average the Euclidean distance between requested and
tracked positions over points and frames, in pixels of a 384×256 frame (so numbers from the tiny
preset's 96×64 videos compare with the paper's). The tracker backend is the curation one
(CoTracker when configured, pyramidal LK offline) and is reported with the value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ic_data.clips import CLIP_HEIGHT, CLIP_WIDTH
from ic_data.tracking import Tracker, make_tracker


@dataclass
class MotionControlResult:
    error_px: float  # mean distance in 384×256 pixels
    per_track_px: list[float]
    tracked: np.ndarray  # float32 (T, N, 2) in the video's pixels
    tracker: str


def trajectory_error_px(requested: np.ndarray, tracked: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per-(frame, track) Euclidean distance, with both given in a ``width``×``height`` frame and
    measured in 384×256 pixels. Returns (T, N)."""
    requested = np.asarray(requested, np.float64)
    tracked = np.asarray(tracked, np.float64)
    if requested.shape != tracked.shape or requested.ndim != 3 or requested.shape[2] != 2:
        raise ValueError(f"trajectories must both be (T, N, 2), got {requested.shape} and {tracked.shape}")
    scale = np.array([CLIP_WIDTH / width, CLIP_HEIGHT / height])
    return np.linalg.norm((requested - tracked) * scale, axis=-1)


def motion_control_error(
    frames: np.ndarray, requested: np.ndarray, tracker: Tracker | str = "lk"
) -> MotionControlResult:
    """Track ``frames`` (uint8 (T, H, W, 3)) from ``requested[0]`` and compare with ``requested``
    (float (T, N, 2) in the video's pixels): ``error_px`` is the mean distance over every frame
    and track, frame 0 included. Tracking starts at the requested points, so frame 0's distance
    is 0 and a constant miss of d pixels from frame 1 on scores d·(T - 1)/T (the paper's "Euclidean
    distance between the predicted and ground truth trajectories" names no frames; ratios of
    two scores over the same T do not move)."""
    frames = np.asarray(frames)
    requested = np.asarray(requested, np.float32)
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if requested.ndim != 3 or requested.shape[0] != frames.shape[0] or requested.shape[2] != 2:
        raise ValueError(f"requested trajectories must be ({frames.shape[0]}, N, 2), got {requested.shape}")
    backend = make_tracker(tracker) if isinstance(tracker, str) else tracker
    tracked, _ = backend.track(frames, requested[0])
    height, width = frames.shape[1:3]
    dist = trajectory_error_px(requested, tracked, width, height)
    return MotionControlResult(
        error_px=float(dist.mean()),
        per_track_px=[float(x) for x in dist.mean(axis=0)],
        tracked=tracked,
        tracker=getattr(backend, "name", type(backend).__name__),
    )


# The paper's names: the same measurement on its camera and object evaluation sets.
cam_mc = motion_control_error
obj_mc = motion_control_error

__all__ = ["MotionControlResult", "cam_mc", "motion_control_error", "obj_mc", "trajectory_error_px"]
