"""Synthetic videos whose motion is known exactly at every pixel.

A shot is a textured world seen through a camera that pans, zooms and shakes, with textured
objects moving on screen along given paths. Every frame is rendered from closed-form
transforms, so for any point of frame 0 the tests know where it is in every later frame and
whether it is visible there. Shots are concatenated into multi-shot videos with hard cuts at
known frames.

Conventions: pixel coordinates are (x, y) with the centre of the top-left pixel at (0, 0);
``scene_velocity_px`` is how far the background content moves on screen per frame (a camera
panning left makes the content move right: positive x).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from ic_data.settings import number, refuse, whole


def make_texture(height: int, width: int, seed: int, octaves: Sequence[int] = (3, 6, 12, 24)) -> np.ndarray:
    """A band-limited colour noise texture (float32, H×W×3, roughly 20..235).

    Summed octaves of bicubically upsampled noise: rich in corners at every scale (trackers and
    flow need texture) yet smooth enough that bilinear resampling stays accurate.
    """
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for i, cell in enumerate(octaves):
        small = rng.standard_normal((height // cell + 3, width // cell + 3, 3)).astype(np.float32)
        big = cv2.resize(small, (width + 3 * cell, height + 3 * cell), interpolation=cv2.INTER_CUBIC)
        acc += big[cell : cell + height, cell : cell + width] * (1.0 + 0.35 * i)
    tint = rng.uniform(0.6, 1.4, size=3).astype(np.float32)
    acc = (acc - acc.mean()) / (acc.std() + 1e-6) * 38.0 * tint + rng.uniform(90, 165)
    return np.clip(acc, 20, 235)


@dataclass(frozen=True)
class CameraMotion:
    """Camera motion of a shot, as seen on screen.

    scene_velocity_px: background displacement per frame at zoom 1 (x, y).
    zoom_per_frame: multiplicative zoom per frame about the screen centre (> 1 zooms in).
    shake_px / shake_period_frames: a sinusoidal hand-held shake added to the pan.
    rotation_deg_per_frame: a roll about the screen centre (degrees per frame; > 0 turns the
    picture clockwise on screen, y pointing down).
    """

    scene_velocity_px: tuple[float, float] = (0.0, 0.0)
    zoom_per_frame: float = 1.0
    shake_px: float = 0.0
    shake_period_frames: float = 7.0
    rotation_deg_per_frame: float = 0.0

    def matrices(self, num_frames: int, width: int, height: int) -> np.ndarray:
        """World→screen affine matrices (T, 2, 3); the world is frame 0's screen space."""
        t = np.arange(num_frames, dtype=np.float64)
        vx, vy = self.scene_velocity_px
        shake = self.shake_px * np.sin(2 * np.pi * t / self.shake_period_frames)
        # Position (world px) of the point that the screen centre looks at.
        cx = width / 2.0 - vx * t - shake
        cy = height / 2.0 - vy * t - 0.5 * shake
        s = self.zoom_per_frame ** t
        angle = np.deg2rad(self.rotation_deg_per_frame) * t
        cos, sin = s * np.cos(angle), s * np.sin(angle)
        m = np.zeros((num_frames, 2, 3))
        m[:, 0, 0], m[:, 0, 1] = cos, -sin
        m[:, 1, 0], m[:, 1, 1] = sin, cos
        # screen = centre + (s R) (world − c)
        m[:, 0, 2] = width / 2.0 - (cos * cx - sin * cy)
        m[:, 1, 2] = height / 2.0 - (sin * cx + cos * cy)
        return m


@dataclass(frozen=True)
class MovingObject:
    """A textured disc (or square) whose centre follows ``path_px`` (T, 2) in screen pixels.

    ``colour`` (RGB, 0–255), when given, is the object's mean colour: its texture keeps 60 % of
    its contrast around it, so the object stands out from the background by colour as well.
    """

    path_px: np.ndarray
    radius_px: float = 18.0
    texture_seed: int = 1
    shape: str = "disc"
    colour: tuple[float, float, float] | None = None

    def alpha(self, frame: int, width: int, height: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Coverage (H, W) float32 in [0, 1], anti-aliased over one pixel at the edge; with
        ``box`` = (x0, y0, x1, y1) only that part of the frame."""
        cx, cy = self.path_px[frame]
        x0, y0, x1, y1 = box or (0, 0, width, height)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        if self.shape == "disc":
            dist = np.hypot(xs - cx, ys - cy) - self.radius_px
        elif self.shape == "square":
            dist = np.maximum(np.abs(xs - cx), np.abs(ys - cy)) - self.radius_px
        else:
            raise ValueError(f"unknown object shape {self.shape!r}")
        return np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)

    def covers(self, points: np.ndarray, frame: int) -> np.ndarray:
        """Whether each (x, y) point lies inside the object at ``frame`` (N,) bool."""
        d = points - self.path_px[frame][None, :]
        if self.shape == "disc":
            return np.hypot(d[:, 0], d[:, 1]) < self.radius_px
        return np.maximum(np.abs(d[:, 0]), np.abs(d[:, 1])) < self.radius_px


@dataclass
class SyntheticShot:
    """Rendered frames plus everything needed to know the motion of any pixel."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    camera_matrices: np.ndarray  # (T, 2, 3) world (= frame-0 screen) → screen
    objects: list[MovingObject] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def track(self, points0: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Exact positions (T', N, 2) and visibility (T', N) of frame-``start`` points.

        A point belongs to the topmost object covering it at ``start``, else to the
        background. It is visible at frame t when inside the image and not covered by an
        object drawn above its own layer.
        """
        points0 = np.asarray(points0, np.float64).reshape(-1, 2)
        n, t_total = len(points0), self.num_frames
        h, w = self.frames.shape[1:3]
        layer = np.full(n, -1)  # -1: background, i: objects[i]
        for i, obj in enumerate(self.objects):
            layer[obj.covers(points0, start)] = i
        tracks = np.zeros((t_total - start, n, 2))
        a0 = self.camera_matrices[start]
        world = _apply_inverse_affine(a0, points0)
        for k, t in enumerate(range(start, t_total)):
            tracks[k] = _apply_affine(self.camera_matrices[t], world)
            for i, obj in enumerate(self.objects):
                sel = layer == i
                tracks[k, sel] = points0[sel] + (obj.path_px[t] - obj.path_px[start])
        visible = np.ones((t_total - start, n), bool)
        for k, t in enumerate(range(start, t_total)):
            p = tracks[k]
            visible[k] &= (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
            for i, obj in enumerate(self.objects):
                above = layer < i  # background (-1) and lower objects are hidden by object i
                visible[k] &= ~(above & obj.covers(p, t))
        return tracks.astype(np.float32), visible

    def mean_motion_px(self, grid: int = 16) -> float:
        """Mean per-frame displacement (px) of a grid of frame-0 points: the true motion."""
        h, w = self.frames.shape[1:3]
        xs = (np.arange(grid) + 0.5) * w / grid
        ys = (np.arange(grid) + 0.5) * h / grid
        pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
        tracks, _ = self.track(pts)
        if len(tracks) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(tracks, axis=0), axis=-1).mean())


def _apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _apply_inverse_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return (pts - m[:, 2]) @ np.linalg.inv(m[:, :2]).T


def render_shot(
    num_frames: int,
    width: int = 384,
    height: int = 256,
    camera: CameraMotion = CameraMotion(),
    objects: Sequence[MovingObject] = (),
    texture_seed: int = 0,
    background: np.ndarray | None = None,
    texture_octaves: Sequence[int] = (3, 6, 12, 24),
    saturation: float = 1.0,
    contrast: float = 1.0,
) -> SyntheticShot:
    """Render a shot: the world seen through ``camera`` with ``objects`` composited on top.

    ``background`` (H0×W0×3 uint8, e.g. a frame of a real video) replaces the noise texture;
    it is tiled by reflection wherever the camera sees beyond it. ``texture_octaves`` sets the
    noise cell sizes: the default is busy (good for trackers); coarser octaves look more like
    real footage, whose frame differences under a fast pan stay well below a cut's.
    ``saturation`` < 1 mutes the noise texture's colours towards grey (its luminance is kept);
    ``contrast`` < 1 pulls its values towards their mean.
    """
    refuse("render_shot", [whole("num_frames", num_frames, 1), whole("width", width, 1), whole("height", height, 1),
                           number("saturation", saturation, 0), number("contrast", contrast, 0)])
    mats = camera.matrices(num_frames, width, height)
    # World rectangle seen over the whole shot, plus a margin for interpolation.
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], np.float64)
    seen = np.concatenate([_apply_inverse_affine(m, corners) for m in mats])
    x0, y0 = np.floor(seen.min(0)) - 4
    x1, y1 = np.ceil(seen.max(0)) + 4
    tex_w, tex_h = int(x1 - x0), int(y1 - y0)
    if background is None:
        texture = make_texture(tex_h, tex_w, texture_seed, texture_octaves)
        if saturation != 1.0:
            grey = texture.mean(axis=2, keepdims=True)
            texture = grey + saturation * (texture - grey)
        if contrast != 1.0:
            texture = texture.mean() + contrast * (texture - texture.mean())
    else:
        bg = cv2.resize(background.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        pad_l, pad_t = int(-x0), int(-y0)
        texture = cv2.copyMakeBorder(
            bg, pad_t, tex_h - height - pad_t, pad_l, tex_w - width - pad_l, cv2.BORDER_REFLECT_101
        )
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        m = mats[t].copy()
        m[:, 2] += m[:, :2] @ np.array([x0, y0])  # texture pixel (0, 0) sits at world (x0, y0)
        img = cv2.warpAffine(texture, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        for obj in objects:
            img = _composite(img, obj, t, width, height)
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return SyntheticShot(frames=frames, camera_matrices=mats, objects=list(objects))


@functools.lru_cache(maxsize=64)
def _sprite(size: int, seed: int, colour: tuple[float, float, float] | None = None) -> np.ndarray:
    texture = make_texture(size, size, seed, octaves=(2, 4, 8))
    if colour is None:
        return texture
    grey = texture.mean(axis=2, keepdims=True)
    return np.clip(np.asarray(colour, np.float32) + 0.6 * (grey - grey.mean()), 0, 255).astype(np.float32)


# The vivid world's background: 30 % of its saturation and half its contrast. The tiny VAE (8×
# down, 4 channels) spends its capacity on a busy background first: at full contrast its
# reconstructions after 600 steps had no objects at all; at 0.4 contrast, 200 steps already
# gave every object as a coloured blob.
VIVID_BACKGROUND_SATURATION = 0.3
VIVID_BACKGROUND_CONTRAST = 0.5
# The demo's toy world draws objects this much larger than the default. The tiny model sees
# 96×64 pixels through an 8× VAE (a 12×8 latent): a default object (radius 5–12 % of the
# height) is about one latent cell wide there and its motion hardly reaches the loss.
TOY_OBJECT_SCALE = 1.75


def vivid_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated, bright colour (random hue): objects that differ from the background by colour."""
    hue = rng.uniform(0, 180)
    hsv = np.array([[[hue, rng.uniform(170, 255), rng.uniform(180, 255)]]], np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(float(c) for c in rgb)


def _composite(img: np.ndarray, obj: MovingObject, t: int, width: int, height: int) -> np.ndarray:
    size = int(np.ceil(obj.radius_px)) * 2 + 8
    sprite = _sprite(size, obj.texture_seed, obj.colour)
    cx, cy = obj.path_px[t]
    # Only the object's bounding box changes (coverage is 0 beyond radius + 0.5 px).
    reach = obj.radius_px + 2.0
    x0, y0 = max(0, int(np.floor(cx - reach))), max(0, int(np.floor(cy - reach)))
    x1, y1 = min(width, int(np.ceil(cx + reach)) + 1), min(height, int(np.ceil(cy + reach)) + 1)
    if x1 <= x0 or y1 <= y0:
        return img
    # Sprite pixel (size/2, size/2) lands on the object's centre, with sub-pixel accuracy.
    m = np.array([[1.0, 0.0, cx - size / 2.0 - x0], [0.0, 1.0, cy - size / 2.0 - y0]])
    colour = cv2.warpAffine(sprite, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    a = obj.alpha(t, width, height, box=(x0, y0, x1, y1))[..., None]
    out = img.copy()
    out[y0:y1, x0:x1] = a * colour + (1.0 - a) * img[y0:y1, x0:x1]
    return out


@dataclass
class SyntheticVideo:
    """A multi-shot video: frames, the frames where cuts happen, and the shots themselves."""

    frames: np.ndarray
    cuts: list[int]
    shots: list[SyntheticShot]


def concat_shots(shots: Sequence[SyntheticShot]) -> SyntheticVideo:
    """Join shots with hard cuts; ``cuts`` lists the first frame of every shot after the first."""
    frames = np.concatenate([s.frames for s in shots])
    cuts = list(np.cumsum([s.num_frames for s in shots])[:-1].astype(int).tolist())
    return SyntheticVideo(frames=frames, cuts=cuts, shots=list(shots))


# Paths for objects, in screen pixels.
def linear_path(start: tuple[float, float], velocity: tuple[float, float], num_frames: int) -> np.ndarray:
    t = np.arange(num_frames)[:, None]
    return np.asarray(start, np.float64)[None] + t * np.asarray(velocity, np.float64)[None]


def circular_path(
    centre: tuple[float, float], radius: float, period_frames: float, num_frames: int, phase: float = 0.0
) -> np.ndarray:
    ang = phase + 2 * np.pi * np.arange(num_frames) / period_frames
    return np.stack([centre[0] + radius * np.cos(ang), centre[1] + radius * np.sin(ang)], -1)


def sine_path(
    start: tuple[float, float],
    velocity: tuple[float, float],
    amplitude: float,
    period_frames: float,
    num_frames: int,
) -> np.ndarray:
    """A straight line with a sinusoidal wobble perpendicular to it ("shaking line")."""
    base = linear_path(start, velocity, num_frames)
    v = np.asarray(velocity, np.float64)
    normal = np.array([-v[1], v[0]]) / (np.linalg.norm(v) + 1e-9)
    wobble = amplitude * np.sin(2 * np.pi * np.arange(num_frames) / period_frames)
    return base + wobble[:, None] * normal[None]


def random_shot(
    rng: np.random.Generator, num_frames: int, width: int, height: int, kind: str = "mixed", vivid: bool = False,
    object_scale: float = 1.0,
) -> SyntheticShot:
    """A shot with random camera motion and, for ``kind="mixed"``, 1–3 moving objects.

    kind: "camera" (static scene, camera pans/zooms: RealEstate10K-like), "mixed" (objects move
    while the camera also moves: WebVid-like), "objects" (objects move, the camera stands still,
    as in much of WebVid) or "static" (nothing moves). ``vivid``: objects get saturated colours
    (:func:`vivid_colour`, drawn after everything else so the motion is unchanged) over a
    background muted to 30 % of its saturation and half its contrast. ``object_scale``
    multiplies the objects' radii (drawn all the same, so paths and camera do not change).
    """
    if kind not in ("camera", "mixed", "objects", "static"):
        raise ValueError(f"unknown shot kind {kind!r}")
    _check_rng("random_shot", rng)
    refuse("random_shot", [number("object_scale", object_scale, 0, above=True)])
    octaves = (6, 12, 24, 48)  # closer to natural images than the tracker-friendly default
    if kind == "static":
        return render_shot(num_frames, width, height, texture_seed=int(rng.integers(1 << 30)), texture_octaves=octaves)
    speed = rng.uniform(0.3, 4.0)
    angle = rng.uniform(0, 2 * np.pi)
    camera = CameraMotion(
        scene_velocity_px=(speed * np.cos(angle), speed * np.sin(angle)),
        zoom_per_frame=float(rng.choice([1.0, 1.0, rng.uniform(0.995, 1.006)])),
        shake_px=float(rng.choice([0.0, 0.0, rng.uniform(0.5, 2.0)])),
    )
    if kind == "objects":  # drawn above all the same, so "mixed" shots stay what they were
        camera = CameraMotion((0.0, 0.0))
    objects = []
    if kind in ("mixed", "objects"):
        for _ in range(int(rng.integers(1, 4))):
            start = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height)
            v = rng.uniform(-5, 5, size=2)
            path_kind = rng.choice(["line", "circle", "sine"])
            if path_kind == "line":
                path = linear_path(start, tuple(v), num_frames)
            elif path_kind == "circle":
                path = circular_path(start, rng.uniform(10, 50), rng.uniform(20, 60), num_frames, rng.uniform(0, 6.28))
            else:
                path = sine_path(start, tuple(v), rng.uniform(3, 15), rng.uniform(8, 24), num_frames)
            objects.append(
                MovingObject(
                    path_px=path,
                    radius_px=float(rng.uniform(0.05, 0.12) * height * object_scale),
                    texture_seed=int(rng.integers(1 << 30)),
                    shape=str(rng.choice(["disc", "square"])),
                )
            )
    texture_seed = int(rng.integers(1 << 30))
    if vivid:
        objects = [dataclasses.replace(o, colour=vivid_colour(rng)) for o in objects]
    return render_shot(num_frames, width, height, camera, objects, texture_seed=texture_seed, texture_octaves=octaves,
                       saturation=VIVID_BACKGROUND_SATURATION if vivid else 1.0,
                       contrast=VIVID_BACKGROUND_CONTRAST if vivid else 1.0)


def _check_rng(owner: str, rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{owner}: rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}")


def random_video(
    rng: np.random.Generator, width: int = 480, height: int = 270, kind: str = "mixed", shots: tuple[int, int] = (1, 3),
    vivid: bool = False, object_scale: float = 1.0,
) -> SyntheticVideo:
    """A multi-shot video of random shots (40–120 frames each) with hard cuts between them."""
    _check_rng("random_video", rng)
    if not (isinstance(shots, (tuple, list)) and len(shots) == 2 and not whole("shots", shots[0], 1)
            and not whole("shots", shots[1], shots[0])):
        raise ValueError(f"random_video: shots must be (least, most) whole numbers with 1 ≤ least ≤ most, "
                         f"got {shots!r}")
    n = int(rng.integers(shots[0], shots[1] + 1))
    return concat_shots([
        random_shot(rng, int(rng.integers(40, 121)), width, height, kind, vivid, object_scale) for _ in range(n)
    ])


def write_synthetic_shards(
    out: str | os.PathLike, num_mixed: int = 4, num_camera: int = 4, seed: int = 0, vivid: bool = False,
    object_scale: float = 1.0,
) -> Path:
    """Shards in the curation data contract from synthetic 32-frame 384×256 shots whose tracks
    are exact: ``num_mixed`` shots with moving objects, ``num_camera`` camera-only shots."""
    # Imported here: the shard writer and tracker grid build on this module, not the reverse.
    from ic_data.shards import ClipSample, clip_meta, write_shard
    from ic_data.tracking import grid_points
    from ic_data.trajectories import sample_sparse_tracks

    refuse("write_synthetic_shards", [whole("num_mixed", num_mixed, 0), whole("num_camera", num_camera, 0),
                                      whole("seed", seed, 0)])
    if num_mixed + num_camera == 0:
        raise ValueError("write_synthetic_shards: num_mixed + num_camera must be at least 1: no shards to write")
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = {"mixed": [], "camera": []}
    for kind, count in (("mixed", num_mixed), ("camera", num_camera)):
        for i in range(count):
            shot = random_shot(rng, 32, 384, 256, kind=kind, vivid=vivid, object_scale=object_scale)
            tracks, visible = shot.track(grid_points())
            key = f"synthetic_{kind}_{i:03d}"
            samples[kind].append(ClipSample(
                key=key,
                frames=shot.frames,
                tracks=tracks,
                visibility=visible,
                sparse=sample_sparse_tracks(tracks, rng=rng),
                caption=f"a synthetic {kind} shot number {i}",
                meta=clip_meta(
                    source_path=f"synthetic/{key}.mp4", video_id=key, fps=24.0,
                    frame_indices=range(32), scale=1.0, crop=(0, 0, 384, 256), motion_score=1.0,
                    camera_only=kind == "camera", flow_backend="exact", tracker_backend="exact",
                ),
            ))
    for kind, group in samples.items():
        if group:
            write_shard(out / f"{kind}-000000.tar", group)
    return out
