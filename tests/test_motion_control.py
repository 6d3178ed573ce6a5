"""CamMC / ObjMC against videos whose motion is known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from ic_data.synthetic import CameraMotion, MovingObject, linear_path, render_shot
from ic_model.evaluation.metrics.motion_control import motion_control_error, trajectory_error_px

T = 16


def _pan_video(width=384, height=256):
    shot = render_shot(T, width, height, CameraMotion((2.0, 1.0)), texture_seed=11)
    points = np.array([[100.0, 80.0], [200.0, 150.0], [300.0, 60.0]])
    tracks, _ = shot.track(points)
    return shot.frames, tracks


def test_video_that_follows_the_trajectory_scores_near_zero():
    frames, exact = _pan_video()
    result = motion_control_error(frames, exact)
    assert result.tracker == "lk"
    assert result.error_px < 0.1


def test_object_trajectory_on_a_moving_object():
    path = linear_path((120, 128), (6.0, -2.0), T)
    shot = render_shot(T, 384, 256, CameraMotion((0.0, 0.0)), [MovingObject(path, 40, texture_seed=5)], texture_seed=2)
    requested = path[:, None, :].astype(np.float32)
    assert motion_control_error(shot.frames, requested).error_px < 0.25


@pytest.mark.parametrize("offset", [(3.0, 4.0), (-6.0, 0.0)])
def test_known_offset_scores_that_offset(offset):
    """Requested = true motion + a constant offset from frame 1 on: error = |offset|·(T−1)/T."""
    frames, exact = _pan_video()
    requested = exact.copy()
    requested[1:] += np.array(offset, np.float32)
    expected = np.hypot(*offset) * (T - 1) / T
    assert motion_control_error(frames, requested).error_px == pytest.approx(expected, abs=0.1)


def test_small_videos_are_measured_in_384x256_pixels():
    """The same motion on a 96×64 video: errors are scaled ×4 into 384×256 pixels."""
    req = np.zeros((2, 1, 2))
    got = np.array([[[0, 0]], [[1.0, 0.5]]])
    d = trajectory_error_px(req, got, 96, 64)
    assert d[1, 0] == pytest.approx(np.hypot(4.0, 2.0))
    assert d[0, 0] == 0


def test_shapes_are_checked():
    frames, exact = _pan_video()
    with pytest.raises(ValueError, match="requested"):
        motion_control_error(frames, exact[:5])
