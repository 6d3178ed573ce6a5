"""Trajectories: flow maps against hand-placed kernels, sparse sampling statistics, user files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage, stats

from ic_data.errors import TrajectoryError
from ic_data.trajectories import (
    dense_flow_maps,
    gaussian_kernel,
    load_trajectory_file,
    resample_trajectory,
    sample_sparse_tracks,
    track_motion_intensity,
    tracks_to_flow_maps,
    user_tracks_to_array,
    validate_trajectories,
)

H, W, K = 256, 384, 99
HALF = K // 2


def straight_track(start_xy, step_xy, num_frames):
    """(T, 1, 2) track moving by a constant step per frame."""
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    return (np.asarray(start_xy, float) + t * np.asarray(step_xy, float))[:, None, :]


def kernel_at(x, y, scale=1.0):
    """A (H, W) image with ``scale * kernel`` centred at pixel (x, y), built by slicing."""
    img = np.zeros((H, W), dtype=np.float64)
    img[y - HALF : y + HALF + 1, x - HALF : x + HALF + 1] = scale * gaussian_kernel(K, 10.0)
    return img


# --- kernel -----------------------------------------------------------------------------------


def test_gaussian_kernel_is_normalised_isotropic_and_peaked_at_centre():
    kernel = gaussian_kernel(99, 10.0)
    assert kernel.shape == (99, 99) and kernel.dtype == np.float32
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(kernel.argmax(), kernel.shape) == (49, 49)
    np.testing.assert_allclose(kernel, kernel.T)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
    # Ratio one sigma off-centre along an axis: exp(-1/2).
    assert kernel[49, 59] / kernel[49, 49] == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_gaussian_kernel_rejects_even_size():
    with pytest.raises(ValueError):
        gaussian_kernel(4, 1.0)


# --- flow maps --------------------------------------------------------------------------------


def test_flow_maps_track_moving_right_one_pixel_per_frame():
    num_frames = 8
    tracks = straight_track((100, 50), (1, 0), num_frames)
    maps = tracks_to_flow_maps(tracks)
    assert maps.shape == (2, num_frames, H, W) and maps.dtype == np.float32
    assert not maps[:, 0].any(), "frame 0 must be all zeros"
    np.testing.assert_allclose(maps[1], 0.0, atol=1e-6)
    for k in range(1, num_frames):
        x_prev, y_prev = tracks[k - 1, 0]
        expected = kernel_at(int(x_prev), int(y_prev))
        np.testing.assert_allclose(maps[0, k], expected, atol=1e-6)
        assert maps[0, k].sum() == pytest.approx(1.0, abs=1e-4)


def test_flow_maps_track_moving_down_three_pixels_gives_three_kernels():
    tracks = straight_track((200, 80), (0, 3), 6)
    maps = tracks_to_flow_maps(tracks)
    np.testing.assert_allclose(maps[0], 0.0, atol=1e-6)
    for k in range(1, 6):
        expected = kernel_at(200, 80 + 3 * (k - 1), scale=3.0)
        np.testing.assert_allclose(maps[1, k], expected, atol=1e-6)
        assert maps[1, k].sum() == pytest.approx(3.0, abs=1e-3)


def test_flow_maps_truncate_fractional_positions_and_keep_fractional_displacement():
    tracks = np.array([[[120.9, 60.7]], [[121.4, 61.2]]])  # step (0.5, 0.5)
    maps = tracks_to_flow_maps(tracks)
    np.testing.assert_allclose(maps[0, 1], kernel_at(120, 60, 0.5), atol=1e-6)
    np.testing.assert_allclose(maps[1, 1], kernel_at(120, 60, 0.5), atol=1e-6)


def test_flow_maps_near_border_match_reflect101_filter():
    # cv2's default border is BORDER_REFLECT_101, i.e. scipy's "mirror" mode.
    tracks = np.array([[[3.0, 2.0]], [[5.0, 1.0]]])
    maps = tracks_to_flow_maps(tracks)
    impulse = np.zeros((H, W))
    impulse[2, 3] = 1.0
    # The kernel is separable: two 1-D mirror-mode passes build the expected image independently.
    axis = np.arange(-HALF, HALF + 1)
    g = np.exp(-0.5 * axis**2 / 10.0**2)
    g /= g.sum()
    blurred = ndimage.correlate1d(impulse, g, axis=0, mode="mirror")
    blurred = ndimage.correlate1d(blurred, g, axis=1, mode="mirror")
    np.testing.assert_allclose(maps[0, 1], 2.0 * blurred, atol=1e-6)
    np.testing.assert_allclose(maps[1, 1], -1.0 * blurred, atol=1e-6)


def test_flow_maps_clamp_points_outside_the_image():
    outside = np.array([[[-7.5, 300.0]], [[-5.5, 299.0]]])  # dx=+2, dy=-1
    on_border = np.array([[[0.0, 255.0]], [[2.0, 254.0]]])  # same displacement, clamped pixel
    np.testing.assert_allclose(
        tracks_to_flow_maps(outside), tracks_to_flow_maps(on_border), atol=1e-7
    )


def test_flow_maps_with_visibility_leave_out_hidden_and_outside_steps():
    # Track 0 walks right 2 px a frame and is hidden at frame 2; track 1 walks off the left
    # edge (x = 4, 2, 0, -2, -4, -6) with the tracker calling it visible throughout.
    walker = straight_track((100, 50), (2, 0), 6)[:, 0]
    leaver = straight_track((4, 200), (-2, 1), 6)[:, 0]
    tracks = np.stack([walker, leaver], axis=1)
    vis = np.ones((6, 2), bool)
    vis[2, 0] = False
    maps = tracks_to_flow_maps(tracks, visibility=vis)

    def step(track, k):  # map frame 1 of that track's step k-1 → k alone
        return tracks_to_flow_maps(track[k - 1 : k + 1, None])[:, 1]

    kept = {0: [1, 4, 5], 1: [1, 2, 3]}  # walker: not the steps into or out of frame 2; leaver: x ≥ 0
    for k in range(1, 6):
        expected = sum((step(track, k) for n, track in enumerate((walker, leaver)) if k in kept[n]),
                       np.zeros((2, H, W), np.float32))
        np.testing.assert_allclose(maps[:, k], expected, atol=1e-6)
    assert np.abs(maps[:, 4:, 150:]).max() < 1e-6, "a point off the image writes nothing"
    # Without visibility every step is written, the off-image ones clamped onto the border.
    everything = tracks_to_flow_maps(tracks)
    assert np.abs(everything[:, 4:, 150:]).max() > 1e-3
    np.testing.assert_array_equal(tracks_to_flow_maps(tracks, visibility=np.ones((6, 2), bool))[:, :4],
                                  everything[:, :4])


def test_flow_maps_visibility_follows_the_chosen_indices():
    rng = np.random.default_rng(3)
    tracks = rng.uniform([20, 20], [W - 20, H - 20], (5, 4, 2))
    vis = rng.random((5, 4)) > 0.3
    indices = np.array([3, 1])
    np.testing.assert_array_equal(
        tracks_to_flow_maps(tracks, indices, visibility=vis),
        tracks_to_flow_maps(tracks[:, indices], visibility=vis[:, indices]),
    )
    with pytest.raises(TrajectoryError, match="visibility must have shape"):
        tracks_to_flow_maps(tracks, indices, visibility=vis[:, indices])


def test_flow_maps_later_track_overwrites_shared_pixel():
    first = np.array([[10.2, 20.0], [13.0, 20.0]])  # dx = 2.8 from pixel (10, 20)
    second = np.array([[10.9, 20.5], [10.9, 25.5]])  # dy = 5.0 from the same pixel
    both = np.stack([first, second], axis=1)
    maps = tracks_to_flow_maps(both)
    np.testing.assert_allclose(maps, tracks_to_flow_maps(second[:, None]), atol=1e-7)
    swapped = tracks_to_flow_maps(both, indices=np.array([1, 0]))
    np.testing.assert_allclose(swapped, tracks_to_flow_maps(first[:, None]), atol=1e-7)


def test_flow_maps_match_naive_official_loop_on_random_tracks():
    import cv2

    rng = np.random.default_rng(0)
    num_frames, num_tracks = 16, 12
    tracks = np.cumsum(rng.normal(0, 4, (num_frames, num_tracks, 2)), axis=0)
    tracks += rng.uniform([0, 0], [W, H], (1, num_tracks, 2))
    indices = np.array([1, 4, 5, 9])
    kernel = gaussian_kernel(K, 10.0)

    expected = np.zeros((num_frames, H, W, 2), dtype=np.float32)
    for n in indices:
        for i in range(num_frames - 1):
            x, y = tracks[i, n]
            col, row = int(min(max(x, 0), W - 1)), int(min(max(y, 0), H - 1))
            expected[i + 1, row, col] = tracks[i + 1, n] - tracks[i, n]
    for i in range(1, num_frames):
        expected[i] = cv2.filter2D(expected[i], -1, kernel)

    maps = tracks_to_flow_maps(tracks.astype(np.float32), indices)
    np.testing.assert_allclose(maps, expected.transpose(3, 0, 1, 2), atol=1e-6)


def test_dense_flow_maps_use_every_track():
    rng = np.random.default_rng(1)
    tracks = rng.uniform([0, 0], [W - 1, H - 1], (4, 5, 2))
    np.testing.assert_array_equal(
        dense_flow_maps(tracks, H, W), tracks_to_flow_maps(tracks, np.arange(5))
    )


def test_flow_maps_full_size_clip_shape():
    rng = np.random.default_rng(2)
    tracks = rng.uniform([0, 0], [W - 1, H - 1], (32, 256, 2)).astype(np.float32)
    maps = dense_flow_maps(tracks)
    assert maps.shape == (2, 32, H, W) and maps.dtype == np.float32
    assert np.isfinite(maps).all()


def test_flow_maps_reject_malformed_tracks():
    with pytest.raises(TrajectoryError):
        tracks_to_flow_maps(np.zeros((4, 3)))
    bad = np.zeros((4, 2, 2))
    bad[2, 1, 0] = np.nan
    with pytest.raises(TrajectoryError):
        tracks_to_flow_maps(bad)
    with pytest.raises(TrajectoryError):
        tracks_to_flow_maps(np.zeros((4, 2, 2)), indices=np.array([2]))


# --- motion intensity and sparse sampling -----------------------------------------------------


def test_motion_intensity_is_normalised_path_length():
    tracks = np.concatenate(
        [
            straight_track((10, 10), (3, 4), 5),  # 4 steps of length 5 -> 20
            straight_track((50, 50), (0, 0), 5),  # 0
            straight_track((90, 90), (-1, 0), 5),  # 4
        ],
        axis=1,
    )
    np.testing.assert_allclose(track_motion_intensity(tracks), [20 / 24, 0, 4 / 24])
    np.testing.assert_allclose(track_motion_intensity(tracks[:, 1:2].repeat(4, 1)), [0.25] * 4)


def test_motion_intensity_ignores_steps_with_occluded_ends():
    tracks = np.concatenate(
        [straight_track((0, 0), (1, 0), 4), straight_track((0, 0), (2, 0), 4)], axis=1
    )
    visibility = np.ones((4, 2), bool)
    visibility[1, 1] = False  # track 1 keeps only the step 2 -> 3
    np.testing.assert_allclose(track_motion_intensity(tracks, visibility), [3 / 5, 2 / 5])


def speeds_tracks(speeds, num_frames=8):
    return np.concatenate(
        [straight_track((100 + 5 * i, 100), (s, 0), num_frames) for i, s in enumerate(speeds)], 1
    )


def test_sparse_sample_sizes_cover_one_to_eight():
    tracks = speeds_tracks(np.linspace(0.5, 4, 16))
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(400):
        idx = sample_sparse_tracks(tracks, rng)
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0), "indices are sorted and distinct"
        assert idx.min() >= 0 and idx.max() < 16
        sizes.append(len(idx))
    assert set(sizes) == set(range(1, 9))


def test_sparse_sample_size_limited_by_number_of_tracks():
    tracks = speeds_tracks([1, 2, 3])
    rng = np.random.default_rng(0)
    sizes = {len(sample_sparse_tracks(tracks, rng, max_tracks=8, min_tracks=5)) for _ in range(50)}
    assert sizes == {3}


def test_sparse_sample_prefers_moving_tracks_and_fills_with_static_only_when_needed():
    moving, static = 4, 12
    tracks = speeds_tracks([2.0] * moving + [0.0] * static)
    rng = np.random.default_rng(1)
    moving_picks = total_picks = 0
    for _ in range(2000):
        idx = sample_sparse_tracks(tracks, rng)
        n_moving = int(np.sum(idx < moving))
        # Every moving track is used before any static one.
        assert n_moving == min(len(idx), moving)
        moving_picks += n_moving
        total_picks += len(idx)
    # Expected share: sum(min(n, 4)) / sum(n) over n = 1..8 = 26/36; static fills the rest.
    assert moving_picks / total_picks == pytest.approx(26 / 36, abs=0.03)


def test_sparse_sample_picks_moving_tracks_over_static_ones():
    tracks = speeds_tracks([3.0] * 8 + [0.0] * 8)
    rng = np.random.default_rng(2)
    picks = np.concatenate([sample_sparse_tracks(tracks, rng) for _ in range(2000)])
    assert np.mean(picks < 8) > 0.9


def test_sparse_sample_frequency_follows_speed():
    speeds = np.array([0.5, 1, 2, 4, 8, 16, 0.25, 3, 6, 12, 24, 1.5])
    tracks = speeds_tracks(speeds)
    rng = np.random.default_rng(3)
    counts = np.zeros(len(speeds))
    for _ in range(2000):
        counts[sample_sparse_tracks(tracks, rng, max_tracks=3)] += 1
    rho = stats.spearmanr(speeds, counts).statistic
    assert rho > 0.95
    assert counts[speeds.argmax()] > 3 * counts[speeds.argmin()]


def test_sparse_sample_is_deterministic_for_a_seed():
    tracks = speeds_tracks(np.linspace(0, 5, 20))
    a = [sample_sparse_tracks(tracks, np.random.default_rng(7)) for _ in range(3)]
    for other in a[1:]:
        np.testing.assert_array_equal(a[0], other)
    rng1, rng2 = np.random.default_rng(8), np.random.default_rng(8)
    for _ in range(20):
        np.testing.assert_array_equal(
            sample_sparse_tracks(tracks, rng1), sample_sparse_tracks(tracks, rng2)
        )


def test_sparse_sample_all_static_is_uniform_and_never_fails():
    tracks = speeds_tracks([0.0] * 10)
    rng = np.random.default_rng(4)
    counts = np.zeros(10)
    for _ in range(1000):
        counts[sample_sparse_tracks(tracks, rng)] += 1
    assert counts.min() > 0.7 * counts.mean()


# --- user trajectories ------------------------------------------------------------------------


def test_resample_single_point_is_the_official_stationary_point():
    """One click is the official demo's stationary point, [p, p + (1, 1)] interpolated: a
    straight line of 1 px each way over the clip (in the units of ``still_step``)."""
    out = resample_trajectory([[12.5, 40]], 16)
    assert out.shape == (16, 2) and out.dtype == np.float32
    steps = np.linspace(0, 1, 16)[:, None]
    np.testing.assert_allclose(out, [12.5, 40] + steps, atol=1e-5)
    quarter = resample_trajectory([[12.5, 40]], 16, still_step=(0.25, 0.25))  # the tiny preset's 96×64
    np.testing.assert_allclose(quarter, [12.5, 40] + 0.25 * steps, atol=1e-5)
    flow = tracks_to_flow_maps(user_tracks_to_array([np.array([[100.0, 50.0]])], 16))  # (2, T, H, W)
    assert flow[:, 1:].max() > 1e-5 and not flow[:, 0].any()  # a displacement (1/15 px a frame), not zeros


def test_resample_two_points_is_evenly_spaced_line():
    out = resample_trajectory([[10, 20], [40, 80]], 7)
    expected = np.stack([np.linspace(10, 40, 7), np.linspace(20, 80, 7)], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_resample_preserves_endpoints_and_monotonicity():
    points = [[0, 0], [5, 100], [6, 110], [200, 111], [383, 255]]
    out = resample_trajectory(points, 32)
    np.testing.assert_allclose(out[0], points[0])
    np.testing.assert_allclose(out[-1], points[-1])
    assert np.all(np.diff(out, axis=0) >= -1e-4), "PCHIP keeps monotone data monotone"


def test_resample_passes_through_clicks_at_their_times():
    points = [[10, 10], [50, 200], [300, 30]]
    out = resample_trajectory(points, 17)  # t = 0, 0.5, 1 are samples 0, 8, 16
    np.testing.assert_allclose(out[[0, 8, 16]], points, atol=1e-4)


def test_resample_handles_repeated_points():
    out = resample_trajectory([[10, 10], [10, 10], [10, 10], [50, 10]], 16)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:6], 10.0, atol=1e-4)  # t <= 2/3 stays at the repeated click
    np.testing.assert_allclose(out[-1], [50, 10])


def test_user_tracks_to_array_shape():
    tracks = validate_trajectories([[[1, 2]], [[3, 4], [30, 40], [60, 80]]], W, H)
    arr = user_tracks_to_array(tracks, 16)
    assert arr.shape == (16, 2, 2) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 0], [1, 2] + np.linspace(0, 1, 16)[:, None], atol=1e-5)  # a stationary point
    np.testing.assert_allclose(arr[-1, 1], [60, 80])


def test_validate_accepts_valid_input():
    obj = [[[0, 0], [383, 255]], [[10.5, 20.25]], [[1, 1], [2, 2], [3, 3]]]
    out = validate_trajectories(obj, W, H)
    assert [a.shape for a in out] == [(2, 2), (1, 2), (3, 2)]
    assert all(a.dtype.kind == "f" for a in out)
    np.testing.assert_array_equal(out[1], [[10.5, 20.25]])
    assert len(validate_trajectories([[[1, 1]]] * 20, W, H, max_tracks=None)) == 20
    assert [len(t) for t in validate_trajectories([[[1, 1]] * 1000] * 8, W, H)] == [1000] * 8
    assert len(validate_trajectories([[[1, 1]] * 5000], W, H, max_points=None)[0]) == 5000


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"tracks": []}, "list of tracks"),
        ([], "at least one track"),
        ([[[1, 1]], []], "track 1"),
        ([[[1, 1], [1, 2, 3]]], "track 0, point 1"),
        ([[[1, "2"]]], "track 0, point 0"),
        ([[[1, 1]], [[2, 2], [float("nan"), 3]]], "track 1, point 1"),
        ([[[float("inf"), 3]]], "not finite"),
        ([[[True, 3]]], "number"),
        ([[[1, 1], [384, 10]]], "track 0, point 1"),
        ([[[1, 1], [10, 256]]], "y"),
        ([[[-0.1, 10]]], "x"),
        ([[[1, 1]]] * 9, "too many tracks"),
        ([[5, 5]], "track 0, point 0"),
        ([[[1, 1]], "abc"], "track 1"),
        ([[[1, 10**400]]], "track 0, point 0: y is a 401-digit number, far outside the image"),
        ([[[1, 1]], [[2, 2]] * 1001], "track 1: 1,001 points, at most 1,000"),
    ],
)
def test_validate_rejects_bad_input(obj, message):
    with pytest.raises(TrajectoryError, match=message):
        validate_trajectories(obj, W, H, max_tracks=8)


def test_load_trajectory_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([[[10, 20], [30, 40]], [[100, 100]]]))
    out = load_trajectory_file(good, W, H)
    assert [a.shape for a in out] == [(2, 2), (1, 2)]

    broken = tmp_path / "broken.json"
    broken.write_text("[[[10, 20], [30, 40]")
    with pytest.raises(TrajectoryError, match="broken.json"):
        load_trajectory_file(broken, W, H)

    nan_file = tmp_path / "nan.json"
    nan_file.write_text("[[[NaN, 1]]]")  # Python's json accepts the NaN token
    with pytest.raises(TrajectoryError, match="nan.json.*track 0, point 0"):
        load_trajectory_file(nan_file, W, H)

    with pytest.raises(TrajectoryError, match="missing.json"):
        load_trajectory_file(tmp_path / "missing.json", W, H)

    deep = tmp_path / "deep.json"  # past the parser's recursion: was a bare RecursionError
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TrajectoryError, match=r"deep.json: malformed JSON \(nested too deeply"):
        load_trajectory_file(deep, W, H)


def test_arguments_of_the_wrong_kind_are_named():
    """Each used to end in a numpy error, or silently: grid_size 2.5 gave 9 points."""
    from ic_data.tracking import grid_points

    with pytest.raises(ValueError, match=r"^grid_points: grid_size must be a whole number, got 2.5$"):
        grid_points(grid_size=2.5)
    with pytest.raises(ValueError, match=r"^grid_points: width must be a whole number, got nan$"):
        grid_points(width=float("nan"))
    with pytest.raises(TrajectoryError, match=r"^tracks must be a \(T, N, 2\) array of numbers"):
        tracks_to_flow_maps([[[1, 2]], [[1, 2], [3, 4]]])  # ragged
    with pytest.raises(ValueError, match=r"^tracks_to_flow_maps: height must be a whole number, got 2.5$"):
        tracks_to_flow_maps(np.zeros((4, 1, 2)), height=2.5)
    with pytest.raises(ValueError, match=r"^sample_sparse_tracks: rng must be a numpy Generator"):
        sample_sparse_tracks(np.zeros((4, 3, 2)), 0)
