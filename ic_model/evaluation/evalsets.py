"""Evaluation sets: the paper's two (appendix C.2), shipped as data files, and your own.

``eval_sets/camera.json``: 10 camera trajectories (pans left/right/up/down, zoom in/out and
combinations), each six tracks of the scene's motion. ``eval_sets/object.json``: 10 object
trajectories (straight lines, curves, shaking lines, combinations), one or two tracks each.
Coordinates are pixels of a 384×256 first frame. For the tiny world, :func:`synthetic_first_frame`
renders a matching first frame (a textured scene, with a textured object at each object track's
start); with real models, pass your own images.

A set file of your own has the same form (:func:`read_eval_set` checks every field)::

    {"kind": "object",                     # "camera" (CamMC) or "object" (ObjMC + background motion)
     "frame_size": [1280, 720],            # the pixels the trajectories are drawn in
     "cases": [{"id": "dog-left",          # letters, digits, '.', '_', '-': it names the case's files
                "prompt": "a dog runs to the left",
                "trajectories": [[[900, 400], [700, 410], [500, 400]]],   # 1-8 tracks of [x, y]
                "image": "images/dog.jpg"}]}   # optional, relative to the file; else --images or synthetic

A case's ``prompt`` may be left out (an empty prompt); a ``description`` (text) may sit beside
``kind`` and in each case. The set's name is the file's stem
(``my-set.json`` → ``my-set``: ``RUN/eval/my-set/``). Each first frame is resized to
``frame_size`` (the trajectories' pixels) before the model's centre crop, so an image and its
trajectories always move together; every point must lie in the part of the frame that crop
keeps (:func:`visible_box`), or it could not be tracked.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ic_data.clips import visible_box  # re-exported: the box an eval set's points must lie in
from ic_data.errors import BadInputError, TrajectoryError
from ic_data.images import read_rgb
from ic_data.settings import MAX_PROMPT_CHARS, text, unique_keys
from ic_data.synthetic import (
    TOY_OBJECT_SCALE,
    VIVID_BACKGROUND_CONTRAST,
    VIVID_BACKGROUND_SATURATION,
    CameraMotion,
    MovingObject,
    render_shot,
    vivid_colour,
)
from ic_data.trajectories import require_in_view, validate_trajectories

SETS = ("camera", "object")  # the shipped sets; each is also the kind of its cases
_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_SET_KEYS = {"kind", "frame_size", "description", "cases"}
_CASE_KEYS = {"id", "prompt", "trajectories", "image", "description"}


class EvalSetError(BadInputError):
    """A set file that cannot be read, or a field of it that is wrong (named in the message)."""


@dataclass(frozen=True)
class EvalCase:
    id: str
    prompt: str
    trajectories: list  # JSON form: tracks of [x, y] in frame_size pixels
    kind: str  # "camera" | "object"
    index: int
    frame_size: tuple[int, int] = (384, 256)  # (width, height) the trajectories are drawn in
    image: str | None = None  # the case's own first frame (an absolute path), if the set names one


@dataclass(frozen=True)
class EvalSet:
    name: str
    kind: str
    frame_size: tuple[int, int]
    cases: list[EvalCase]
    path: str | None = None  # the set file; None for a shipped set


def read_eval_set(spec: str) -> EvalSet:
    """``spec``: ``camera``, ``object`` (the paper's sets) or the path of a set file.

    Raises:
        EvalSetError: naming the file and the field (and case) at fault.
    """
    if spec in SETS:
        text = (resources.files("ic_model.evaluation") / "eval_sets" / f"{spec}.json").read_text()
        return _parse(json.loads(text), spec, None)
    path = Path(spec)
    if not path.is_file():
        raise EvalSetError(f"evaluation set {spec!r}: give {' or '.join(SETS)}, or the path of a set file (JSON); "
                           f"{'it is a folder' if path.is_dir() else 'no such file'}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON, a key twice, an integer of 4300+ digits
        raise EvalSetError(f"evaluation set {path}: not a readable JSON file ({err})") from None
    except RecursionError:
        raise EvalSetError(f"evaluation set {path}: not a readable JSON file (nested too deeply)") from None
    return _parse(data, path.stem, path)


def load_eval_set(spec: str) -> list[EvalCase]:
    """The cases of :func:`read_eval_set`."""
    return read_eval_set(spec).cases


def _parse(data, name: str, path: Path | None) -> EvalSet:
    where = f"evaluation set {path or name}"
    if not isinstance(data, dict):
        raise EvalSetError(f"{where}: must be a JSON object with 'kind', 'frame_size' and 'cases', "
                           f"got {type(data).__name__}")
    unknown = sorted(set(data) - _SET_KEYS)
    if unknown:
        raise EvalSetError(f"{where}: unknown key(s) {unknown}; a set has {sorted(_SET_KEYS)}")
    missing = [k for k in ("kind", "frame_size", "cases") if k not in data]
    if missing:
        raise EvalSetError(f"{where}: missing {missing}")
    if not isinstance(data.get("description", ""), str):
        raise EvalSetError(f"{where}: 'description' must be text, got {type(data['description']).__name__}")
    kind = data["kind"]
    if kind not in SETS:
        raise EvalSetError(f"{where}: 'kind' must be one of {list(SETS)}, got {kind!r}")
    size = data["frame_size"]
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 16384 for v in size)):
        raise EvalSetError(f"{where}: 'frame_size' must be [width, height], whole numbers of pixels from 32 "
                           f"to 16384, got {size!r}")
    width, height = size
    cases_data = data["cases"]
    if not isinstance(cases_data, list) or not cases_data:
        raise EvalSetError(f"{where}: 'cases' must be a non-empty list of cases")
    cases, seen = [], set()
    for i, case in enumerate(cases_data):
        cwhere = f"{where}, case {i}"
        if not isinstance(case, dict):
            raise EvalSetError(f"{cwhere}: must be an object with 'id' and 'trajectories' (and, if wanted, 'prompt', "
                               f"'image', 'description'), got {type(case).__name__}")
        unknown = sorted(set(case) - _CASE_KEYS)
        if unknown:
            raise EvalSetError(f"{cwhere}: unknown key(s) {unknown}; a case has {sorted(_CASE_KEYS)}")
        cid = case.get("id")
        if not isinstance(cid, str) or not _CASE_ID.fullmatch(cid):
            raise EvalSetError(f"{cwhere}: 'id' must be 1-100 letters, digits, '.', '_' or '-' (not starting "
                               f"with '.'; it names the case's files), got {cid!r}")
        if cid in seen:
            raise EvalSetError(f"{cwhere}: id {cid!r} is used twice")
        seen.add(cid)
        cwhere = f"{where}, case {cid!r}"
        if not isinstance(case.get("description", ""), str):
            raise EvalSetError(f"{cwhere}: 'description' must be text, got {type(case['description']).__name__}")
        prompt = case.get("prompt", "")
        if not isinstance(prompt, str):
            raise EvalSetError(f"{cwhere}: 'prompt' must be a string, got {type(prompt).__name__}")
        if problem := text("'prompt'", prompt, longest=MAX_PROMPT_CHARS):
            raise EvalSetError(f"{cwhere}: {problem}")
        if "trajectories" not in case:
            raise EvalSetError(f"{cwhere}: missing 'trajectories'")
        try:
            validate_trajectories(case["trajectories"], width, height, max_tracks=8)
        except TrajectoryError as err:
            raise EvalSetError(f"{cwhere}: {err} (frame_size {width}×{height})") from None
        try:
            require_in_view(case["trajectories"], width, height)
        except TrajectoryError as err:
            raise EvalSetError(f"{cwhere}: {err}: it could not be tracked") from None
        image = case.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise EvalSetError(f"{cwhere}: 'image' must be a path, got {image!r}")
            resolved = Path(image) if path is None else path.parent / image
            if resolved.is_dir():
                raise EvalSetError(f"{cwhere}: image {image!r} is a folder, not an image file ({resolved})")
            if not resolved.is_file():
                raise EvalSetError(f"{cwhere}: image {image!r} not found (looked at {resolved})")
            try:  # decoded now, not after the weights have loaded and the cases before it have run
                read_rgb(resolved)
            except BadInputError as err:
                raise EvalSetError(f"{cwhere}: image {image!r}: {err}") from None
            image = str(resolved.resolve())
        cases.append(EvalCase(cid, prompt, case["trajectories"], kind, i, (width, height), image))
    return EvalSet(name, kind, (width, height), cases, None if path is None else str(path))


def eval_set_name(spec: str) -> str:
    """The set's name (without reading it): ``camera``/``object``, or a set file's stem."""
    return spec if spec in SETS else Path(spec).stem


def synthetic_first_frame(case: EvalCase, width: int | None = None, height: int | None = None,
                          seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3), default the case's ``frame_size``: a textured scene; object cases
    get an object at each track start, textured around a saturated colour over a muted background
    and sized like the toy world's (``random_shot(vivid=True, object_scale=TOY_OBJECT_SCALE)``)."""
    width = width or case.frame_size[0]
    height = height or case.frame_size[1]
    objects = []
    if case.kind == "object":
        rng = np.random.default_rng([seed, case.index])
        for j, track in enumerate(case.trajectories):
            x, y = track[0]
            start = np.array([[x * width / case.frame_size[0], y * height / case.frame_size[1]]])
            radius = 0.09 * height * TOY_OBJECT_SCALE
            objects.append(MovingObject(start, radius_px=radius, texture_seed=1000 + 17 * case.index + j,
                                        colour=vivid_colour(rng)))
    shot = render_shot(1, width, height, CameraMotion((0.0, 0.0)), objects,
                       texture_seed=seed * 1000 + case.index, texture_octaves=(6, 12, 24, 48),
                       saturation=VIVID_BACKGROUND_SATURATION, contrast=VIVID_BACKGROUND_CONTRAST)
    return shot.frames[0]


__all__ = ["SETS", "EvalCase", "EvalSet", "EvalSetError", "eval_set_name", "load_eval_set", "read_eval_set",
           "synthetic_first_frame", "visible_box"]
