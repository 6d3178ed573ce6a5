import numpy as np
import pytest

from ic_data.clips import ClipGeometry, center_crop_box, resized_size, sample_clip_indices
from ic_data.errors import VideoTooShort, VideoTooSmall


@pytest.mark.parametrize(
    "src,expected",
    [((1920, 1080), (455, 256)), ((640, 360), (455, 256)), ((384, 256), (384, 256)),
     ((640, 480), (384, 288)), ((1080, 1920), (384, 683)), ((640, 272), (602, 256))],
)
def test_resized_size_fits_the_crop(src, expected):
    assert resized_size(*src) == expected
    w, h = expected
    assert w >= 384 and h >= 256


def test_too_small_rejected():
    with pytest.raises(VideoTooSmall):
        resized_size(160, 90)


def test_center_crop_box_is_centred():
    assert center_crop_box(455, 256) == (35, 0, 384, 256)
    assert center_crop_box(384, 683) == (0, 213, 384, 256)


def test_sampled_indices_fit_scene_and_have_constant_stride():
    rng = np.random.default_rng(0)
    strides = set()
    for _ in range(500):
        idx = sample_clip_indices((40, 400), rng)
        d = np.diff(idx)
        assert len(idx) == 32 and np.all(d == d[0])
        assert 1 <= d[0] <= 11  # (360 - 1) // 31 = 11 is the largest stride that fits
        assert idx[0] >= 40 and idx[-1] < 400
        strides.add(int(d[0]))
    assert strides == set(range(1, 12))


def test_stride_caps_at_16_and_short_scene_rejected():
    rng = np.random.default_rng(1)
    assert max(np.diff(sample_clip_indices((0, 5000), rng))[0] for _ in range(300)) == 16
    assert list(sample_clip_indices((3, 35), rng)) == list(range(3, 35))
    with pytest.raises(VideoTooShort):
        sample_clip_indices((0, 31), rng)


def test_same_seed_same_clip():
    a = sample_clip_indices((0, 300), np.random.default_rng(7))
    b = sample_clip_indices((0, 300), np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_geometry_round_trip_and_known_mapping():
    g = ClipGeometry(scale=(455 / 480, 256 / 270), crop=(35, 0, 384, 256))
    pts = np.array([[0.0, 0.0], [383.0, 255.0], [100.5, 20.25]])
    assert np.allclose(g.source_to_clip(g.clip_to_source(pts)), pts)
    # Clip (0, 0) is resized (35, 0); pixel centres scale about the half-pixel offset.
    assert np.allclose(g.clip_to_source([[0.0, 0.0]]), [[35.5 * 480 / 455 - 0.5, 0.5 * 270 / 256 - 0.5]])
