"""The GIF writer behind every preview (curation, ic generate, ic evaluate, the demo report)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ic_data.preview import TRACK_COLOURS, preview_gif, write_gif
from ic_data.synthetic import CameraMotion, render_shot


def _read_gif(path):
    gif = Image.open(path)
    frames, durations = [], []
    for t in range(gif.n_frames):
        gif.seek(t)
        durations.append(gif.info["duration"])
        frames.append(np.asarray(gif.convert("RGB")))
    return np.stack(frames), durations


def _clip(seed: int, n: int = 12) -> np.ndarray:
    """A textured shot panning right on the left half, a still copy of frame 0 on the right half
    and a solid square of each track colour sliding down it: (n, 128, 192, 3)."""
    moving = render_shot(n, 96, 128, CameraMotion((2.0, 0.5)), texture_seed=seed).frames
    frames = np.concatenate([moving, np.repeat(moving[:1], n, axis=0)], axis=2).copy()
    for t in range(n):
        for k, colour in enumerate(TRACK_COLOURS):
            frames[t, 4 + 4 * t: 12 + 4 * t, 100 + 11 * k: 108 + 11 * k] = colour
    return frames


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gif_keeps_every_frame_its_colours_and_still_regions_still(tmp_path, seed):
    frames = _clip(seed)
    got, durations = _read_gif(write_gif(frames, tmp_path / "clip.gif", fps=8.0))
    assert got.shape == frames.shape
    assert len(set(durations)) == 1 and abs(durations[0] - 125) < 10  # GIF delays are in 1/100 s
    # Mean error of 256 colours over this textured picture: 4.5–5.8 grey levels over seeds 0–4
    # (a median cut per frame, Pillow's default, gave 5.2–6.6).
    err = np.abs(got.astype(float) - frames).mean()
    assert err < 8.0, err
    # The drawn colours come back: each solid square, in every frame.
    for t in range(len(frames)):
        for k, colour in enumerate(TRACK_COLOURS):
            patch = got[t, 6 + 4 * t: 10 + 4 * t, 102 + 11 * k: 106 + 11 * k].reshape(-1, 3).astype(int)
            assert np.abs(patch - colour).max() <= 8, (t, k, patch[0], colour)
    # One palette for the clip: what does not change between frames does not change in the GIF.
    still = got[:, 64:, 96:]
    assert (still == still[0]).all()


def test_preview_gif_draws_the_tracks_at_the_preview_scale(tmp_path):
    frames = render_shot(6, 128, 96, CameraMotion((1.0, 0.0)), texture_seed=3).frames
    tracks = np.stack([np.linspace([20.0, 20.0], [100.0, 70.0], 6), np.linspace([110.0, 80.0], [30.0, 40.0], 6)], 1)
    got, _ = _read_gif(preview_gif(frames, tracks, [0, 1], tmp_path / "p.gif", scale=0.5))
    assert got.shape == (6, 48, 64, 3)
    for j, colour in enumerate(TRACK_COLOURS[:2]):  # each track's start dot, in its colour
        x, y = (tracks[0, j] * 0.5).round().astype(int)
        assert np.abs(got[-1, y, x].astype(int) - colour).max() <= 24, (j, got[-1, y, x], colour)


def test_gif_of_no_frames_or_frames_it_cannot_show_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_gif([], tmp_path / "none.gif")
    frame = np.zeros((8, 8, 3), np.uint8)
    for bad in ([frame.astype(np.float32)], [frame, frame[:4]], [frame[..., 0]]):
        with pytest.raises(ValueError, match="uint8 RGB"):
            write_gif(bad, tmp_path / "none.gif")
    assert not (tmp_path / "none.gif").exists()
