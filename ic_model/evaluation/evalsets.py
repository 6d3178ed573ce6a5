"""The paper's two evaluation sets (appendix C.2), shipped as data files.

``eval_sets/camera.json``: 10 camera trajectories (pans left/right/up/down, zoom in/out and
combinations), each six tracks of the scene's motion. ``eval_sets/object.json``: 10 object
trajectories (straight lines, curves, shaking lines, combinations), one or two tracks each.
Coordinates are pixels of a 384×256 first frame. For the tiny world, :func:`synthetic_first_frame`
renders a matching first frame (a textured scene, with a textured object at each object track's
start); with real models, pass your own images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ic_data.synthetic import (
    TOY_OBJECT_SCALE,
    VIVID_BACKGROUND_CONTRAST,
    VIVID_BACKGROUND_SATURATION,
    CameraMotion,
    MovingObject,
    render_shot,
    vivid_colour,
)
from ic_data.trajectories import validate_trajectories

SETS = ("camera", "object")


@dataclass(frozen=True)
class EvalCase:
    id: str
    prompt: str
    trajectories: list  # JSON form: tracks of [x, y] in 384×256 pixels
    kind: str  # "camera" | "object"
    index: int


def load_eval_set(name: str) -> list[EvalCase]:
    if name not in SETS:
        raise ValueError(f"unknown evaluation set {name!r}; choose one of {SETS}")
    data = json.loads((resources.files("ic_model.evaluation") / "eval_sets" / f"{name}.json").read_text())
    width, height = data["frame_size"]
    cases = []
    for i, case in enumerate(data["cases"]):
        validate_trajectories(case["trajectories"], width, height, max_tracks=8)
        cases.append(EvalCase(case["id"], case["prompt"], case["trajectories"], data["kind"], i))
    return cases


def synthetic_first_frame(case: EvalCase, width: int = 384, height: int = 256, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3): a textured scene; object cases get an object at each track start,
    textured around a saturated colour over a muted background and sized like the toy world's
    (``random_shot(vivid=True, object_scale=TOY_OBJECT_SCALE)``)."""
    objects = []
    if case.kind == "object":
        rng = np.random.default_rng([seed, case.index])
        for j, track in enumerate(case.trajectories):
            x, y = track[0]
            start = np.array([[x * width / 384, y * height / 256]])
            radius = 0.09 * height * TOY_OBJECT_SCALE
            objects.append(MovingObject(start, radius_px=radius, texture_seed=1000 + 17 * case.index + j,
                                        colour=vivid_colour(rng)))
    shot = render_shot(1, width, height, CameraMotion((0.0, 0.0)), objects,
                       texture_seed=seed * 1000 + case.index, texture_octaves=(6, 12, 24, 48),
                       saturation=VIVID_BACKGROUND_SATURATION, contrast=VIVID_BACKGROUND_CONTRAST)
    return shot.frames[0]


__all__ = ["SETS", "EvalCase", "load_eval_set", "synthetic_first_frame"]
