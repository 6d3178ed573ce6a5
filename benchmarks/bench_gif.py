"""What the preview GIFs cost: ``write_gif`` (one octree palette per clip) against Pillow's
default (a median-cut palette per frame), on the same frames, in one run.

The frames are what the pipeline writes: a curated clip's preview (32 frames at 192×128, the
trajectories drawn on top) and an ``ic generate``/``ic evaluate`` preview (16 frames at 384×256).
Prints seconds per GIF each way, their ratio and each way's mean colour error (grey levels).

    python benchmarks/bench_gif.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ic_data.preview import draw_tracks, write_gif
from ic_data.synthetic import CameraMotion, MovingObject, linear_path, render_shot


def _pillow_default(frames, path: Path, fps: float) -> Path:
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    path.write_bytes(buf.getvalue())
    return path


def _error(path: Path, frames) -> float:
    gif, errs = Image.open(path), []
    for t, f in enumerate(frames):
        gif.seek(t)
        errs.append(np.abs(np.asarray(gif.convert("RGB"), dtype=np.float64) - f).mean())
    return float(np.mean(errs))


def _clip(num_frames: int, scale: float) -> list[np.ndarray]:
    shot = render_shot(num_frames, 384, 256, CameraMotion((2.0, 0.5)),
                       [MovingObject(linear_path((120, 130), (3.0, -1.0), num_frames), 22, texture_seed=5)],
                       texture_seed=3)
    rng = np.random.default_rng(0)
    tracks = np.cumsum(rng.normal(size=(num_frames, 4, 2)), axis=0) * 3 + [[190.0, 120.0]]
    out = []
    for t in range(num_frames):
        img = draw_tracks(shot.frames[t], tracks, range(4), upto=t)
        out.append(img if scale == 1.0 else cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed repeats of each (the fastest counts)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    tmp = Path(tempfile.mkdtemp())
    print(f"{'clip':<28} {'Pillow default s':>16} {'write_gif s':>11} {'ratio':>6} {'error default':>13} {'error new':>9}")
    for name, frames in (("curation preview 32×192×128", _clip(32, 0.5)), ("generate preview 16×384×256", _clip(16, 1.0))):
        timed = {}
        for label, fn in (("default", _pillow_default), ("write_gif", write_gif)):
            best = float("inf")
            for _ in range(args.rounds):
                t = time.perf_counter()
                path = fn(frames, tmp / f"{label}.gif", 8.0)
                best = min(best, time.perf_counter() - t)
            timed[label] = (best, _error(path, frames))
        (d, ed), (w, ew) = timed["default"], timed["write_gif"]
        print(f"{name:<28} {d:>16.3f} {w:>11.3f} {d / w:>5.1f}× {ed:>13.2f} {ew:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
