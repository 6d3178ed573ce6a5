"""Pictures of curated clips: frames with their sparse trajectories drawn on top."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

# Distinct colours (RGB) for up to 8 sparse tracks.
TRACK_COLOURS = [
    (255, 64, 64), (64, 200, 255), (255, 220, 0), (120, 255, 120),
    (255, 120, 255), (255, 160, 60), (160, 120, 255), (255, 255, 255),
]


def draw_tracks(frame: np.ndarray, tracks: np.ndarray, indices, upto: int | None = None) -> np.ndarray:
    """``frame`` (H, W, 3) RGB with each selected track drawn as a polyline ending in an arrow.

    tracks: (T, N, 2) pixel coordinates; ``upto`` draws only the first ``upto`` + 1 points.
    """
    out = np.ascontiguousarray(frame.copy())
    last = tracks.shape[0] - 1 if upto is None else min(upto, tracks.shape[0] - 1)
    for k, j in enumerate(np.asarray(indices).tolist()):
        colour = TRACK_COLOURS[k % len(TRACK_COLOURS)]
        pts = np.round(tracks[: last + 1, j] * 4).astype(np.int32)  # 2 fractional bits
        if len(pts) > 1:
            cv2.polylines(out, [pts[:-1].reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA, shift=2)
            cv2.arrowedLine(out, tuple(pts[-2]), tuple(pts[-1]), colour, 2, cv2.LINE_AA, shift=2, tipLength=0.6)
        cv2.circle(out, tuple(pts[0]), 3 * 4, colour, -1, cv2.LINE_AA, shift=2)
    return out


def preview_png(frames: np.ndarray, tracks: np.ndarray, indices, path: str | Path) -> Path:
    """First frame with the whole trajectories: the still picture of a clip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = draw_tracks(frames[0], tracks, indices)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def write_gif(frames, path: str | Path, fps: float = 8.0) -> Path:
    """Frames (each (H, W, 3) uint8 RGB, one size) as a looping animated GIF at ``fps``.

    One 256-colour palette serves the whole clip: a fast octree over up to 16 frames spread over
    it (the last included, where drawn trajectories are longest), each frame mapped to it without
    dithering. Colours that do not change between frames stay the same in the GIF (no palette
    flicker), and it costs a few ms a frame where Pillow's default, a median cut per frame, took
    about 60 ms at 192×128 (docs/benchmarks.md)."""
    from PIL import Image

    frames = [np.ascontiguousarray(f) for f in frames]
    if not frames:
        raise ValueError("write_gif: no frames")
    if any(f.dtype != np.uint8 or f.shape != frames[0].shape or f.ndim != 3 or f.shape[2] != 3 for f in frames):
        raise ValueError("write_gif: frames must be uint8 RGB arrays (H, W, 3) of one size")
    picked = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), 16)).round().astype(int))
    sample = Image.fromarray(np.concatenate([frames[i] for i in picked], axis=0))
    palette = sample.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    path.write_bytes(buf.getvalue())
    return path


def preview_gif(frames: np.ndarray, tracks: np.ndarray, indices, path: str | Path, fps: float = 8.0, scale: float = 0.5) -> Path:
    """An animated GIF of the clip with trajectories growing frame by frame."""
    images = []
    for t in range(len(frames)):
        img = draw_tracks(frames[t], tracks, indices, upto=t)
        if scale != 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        images.append(img)
    return write_gif(images, path, fps)
