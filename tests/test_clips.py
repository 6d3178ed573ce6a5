import cv2
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


def test_picture_box_finds_black_bars_and_leaves_dark_shots_whole():
    from ic_data.clips import BAR_LEVEL, picture_box

    rng = np.random.default_rng(0)
    frames = rng.integers(0, BAR_LEVEL + 1, (4, 256, 455, 3), dtype=np.uint8)  # bars: black with noise
    frames[:, 31:225, 20:440] = rng.integers(0, 256, (4, 194, 420, 3), dtype=np.uint8)
    assert picture_box(frames) == (20, 31, 420, 194)
    # A small bright logo in the bottom bar is cut off with it, as is a caption across 60 % of
    # it in every frame (the top bar's twin); lit along most of its width down to the frame's
    # edge in every frame, the band is no bar, but the other bars are.
    logo = frames.copy()
    logo[2, 240:246, 30:60] = 200
    assert picture_box(logo) == (20, 31, 420, 194)
    logo[:, 240:246, 100:350] = 200
    assert picture_box(logo) == (20, 31, 420, 194)
    logo[:, 232:, 40:400] = 200
    assert picture_box(logo) == (20, 31, 420, 225)
    # A black night sky above a straight lit horizon: a few stars keep it (a bar's stray pixels
    # are dim, or within BAR_RING of the picture); without them it is a bar to this test.
    sky = rng.integers(BAR_LEVEL + 1, 256, (3, 256, 455, 3), dtype=np.uint8)
    sky[:, :60] = rng.integers(0, 10, (3, 60, 455, 3), dtype=np.uint8)
    assert picture_box(sky) == (0, 60, 455, 196)
    sky[:, 12:14, 100:102] = sky[:, 31:33, 300:302] = 220
    assert picture_box(sky) == (0, 0, 455, 256)
    # The same with the sides: a logo in the right bar in one frame of four.
    logo = frames.copy()
    logo[3, 100:180, 445:450] = 200
    assert picture_box(logo) == (20, 31, 420, 194)
    # No bars; a dark shot whose light covers less than half the frame is not letterboxed.
    assert picture_box(rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)) == (0, 0, 96, 64)
    night = np.zeros((3, 256, 455, 3), np.uint8)
    night[:, 100:200, 150:300] = 180
    assert picture_box(night) == (0, 0, 455, 256)
    # A lit disc over most of a night shot: its bounding box is no picture inside bars.
    yy, xx = np.mgrid[:256, :455]
    night[:] = 0
    night[:, (yy - 128) ** 2 + ((xx - 227) / 1.6) ** 2 < 110**2] = 150
    assert picture_box(night) == (0, 0, 455, 256)
    assert picture_box(np.zeros((2, 32, 48, 3), np.uint8)) == (0, 0, 48, 32)
    # A dark line or two at an edge is left in: no reason to enlarge the picture.
    lined = rng.integers(BAR_LEVEL + 1, 256, (2, 256, 455, 3), dtype=np.uint8)
    lined[:, :2] = 0
    lined[:, :, -4:] = 0
    assert picture_box(lined) == (0, 0, 455, 256)
    lined[:, :, :10] = 0  # 10 of 455 columns: a bar
    assert picture_box(lined) == (10, 0, 445, 256)


@pytest.mark.parametrize("black", [0, 16])
@pytest.mark.parametrize("framing", ["letterbox", "pillarbox", "subtitled", "captioned"])
def test_picture_box_of_decoded_footage_in_bars_of_any_black(tmp_path, black, framing):
    """Real footage in bars of RGB 0 or 16 (video black), with sensor noise over the whole
    frame, through the H.264 encoder and our decoder: the bars come back within 2 px. The
    encoder's ringing lifts rows of a video-black bar beside the bright picture above
    ``BAR_LEVEL`` in 2–16 % of their pixels, up to its block's border: before, one such pixel
    ended the bar, the edge found was not straight, and the bars were kept. Subtitles in the
    bottom bar (two lines of text, one after the other through the 32 frames; or one long line
    through them all, lit along half of some rows) kept that bar before too."""
    from ic_data.clips import picture_box
    from ic_data.synthetic import CameraMotion, render_shot
    from ic_data.video_io import decode_video
    from tests.conftest import in_black_frame, real_frame, write_video

    cv2 = pytest.importorskip("cv2")
    picture = real_frame("bigbuckbunny.mp4", 40)
    width, height, side, top = (480, 360, 80, 0) if framing == "pillarbox" else (640, 272, 0, 44)
    shot = render_shot(32, width, height, camera=CameraMotion((2.0, 0.5)), background=picture)
    frames = in_black_frame(shot.frames, height + 2 * top, width + 2 * side, black).astype(np.float64)
    noise = np.random.default_rng(black).normal(0.0, 2.0, frames.shape)
    frames = np.clip(np.rint(frames + noise), 0, 255).astype(np.uint8)
    lines = {"subtitled": [(0, 18, "Where did you put the map?"), (14, 32, "Under the bridge, I think.")],
             "captioned": [(0, 32, "Where did you put the map? Over there.")]}
    for first, end, line in lines.get(framing, []):
        for frame in frames[first:end]:
            cv2.putText(frame, line, (20, 345), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (235, 235, 235), 2, cv2.LINE_AA)
    decoded = decode_video(write_video(tmp_path / "boxed.mp4", frames)).frames
    assert decoded.shape == frames.shape
    assert np.abs(np.subtract(picture_box(decoded), [side, top, width, height])).max() <= 2, picture_box(decoded)


def test_crop_plan_keeps_the_crop_inside_the_picture():
    from ic_data.clips import crop_plan

    frames = np.zeros((2, 256, 455, 3), np.uint8)
    frames[:, 31:225] = 255  # a letterbox: the picture is 455x194
    # Wide enough: no resize, the crop is centred on the picture.
    size, factors, box = crop_plan(455, 256, (0, 0, 455, 256))
    assert size is None and factors == (1.0, 1.0) and box == center_crop_box(455, 256)
    # Too low for 256 rows: enlarged, and every pixel of the crop lies in the picture.
    size, factors, box = crop_plan(455, 256, (0, 31, 455, 194))
    x0, y0, w, h = box
    assert (w, h) == (384, 256) and factors[0] > 256 / 194 and abs(factors[0] - factors[1]) < 0.01
    assert size == (round(455 * factors[0]), round(256 * factors[1]))
    out = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames])
    assert out[:, y0 : y0 + h, x0 : x0 + w].min() >= 250
    # The geometry of the enlarged frames maps the crop's corners into the picture's rows.
    geometry = ClipGeometry(scale=factors, crop=box)
    corners = geometry.clip_to_source(np.array([[-0.5, -0.5], [383.5, 255.5]]))
    assert corners[0, 1] >= 31 - 0.5 and corners[1, 1] <= 225 - 0.5


def _between_blurred_copies(pictures: np.ndarray, width: int, height: int, sigma: float) -> np.ndarray:
    """``pictures`` (T, h, w, 3) centred in ``width``x``height`` frames (as tall, or as wide)
    whose rest is each picture enlarged to fill the frame, blurred and dimmed: social video."""
    out = np.empty((len(pictures), height, width, 3), np.uint8)
    h, w = pictures.shape[1:3]
    scale = max(width / w, height / h)
    for frame, picture in zip(out, pictures):
        big = cv2.resize(picture, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
        y, x = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
        frame[:] = np.clip(cv2.GaussianBlur(big[y : y + height, x : x + width], (0, 0), sigma) * 0.7, 0, 255)
        fit = min(width / w, height / h)
        small = cv2.resize(picture, (round(w * fit), round(h * fit)), interpolation=cv2.INTER_AREA)
        y, x = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
        frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


@pytest.mark.parametrize("picture", [("bikes.mp4", 10), ("bigbuckbunny.mp4", 40), ("carphone_pristine.mp4", 5)])
def test_blurred_box_finds_a_picture_between_blurred_copies_of_itself(picture):
    """Portrait, square and 4:3 pictures under a pan between blurred copies (sigma 8-40 px at
    720p), at the analysis size: the picture's box within 2 px. Measured: 35 of 36 found over
    4 pictures, 3 widths and 3 blurs (the miss: a low-contrast picture under the lightest blur).
    Also a wide picture between copies above and below (a landscape video in a portrait frame)."""
    from ic_data.clips import blurred_box
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame

    for w, sigma in ((405, 20), (720, 40), (960, 20)):
        background = cv2.resize(real_frame(*picture), (w + 200, 820))
        shot = render_shot(12, w, 720, CameraMotion((2.0, 0.5)), background=background).frames
        frames = np.stack([cv2.resize(f, (455, 256), interpolation=cv2.INTER_AREA)
                           for f in _between_blurred_copies(shot, 1280, 720, sigma)])
        side = (1280 - w) / 2 * 455 / 1280
        box = blurred_box(frames)
        assert box is not None and box[1] == 0 and box[3] == 256, (w, sigma, box)
        assert abs(box[0] - side) <= 2 and abs(455 - box[0] - box[2] - side) <= 2, (w, sigma, box, side)
    shot = render_shot(12, 720, 405, CameraMotion((2.0, 0.5)), background=cv2.resize(real_frame(*picture), (920, 505))).frames
    frames = np.stack([cv2.resize(f, (384, 683), interpolation=cv2.INTER_AREA)
                       for f in _between_blurred_copies(shot, 720, 1280, 20)])
    box = blurred_box(frames)
    top = (1280 - 405) / 2 * 683 / 1280
    assert box is not None and box[0] == 0 and box[2] == 384 and abs(box[1] - top) <= 2, (box, top)


def test_blurred_box_finds_none_in_pictures_without_them():
    """Real pictures, sharp and blurred, still or moving; and a doorway (a picture between two
    plain walls: straight edges at the same place on both sides, little detail beside them)."""
    from ic_data.clips import blurred_box
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame

    for name, index in (("bikes.mp4", 120), ("bigbuckbunny.mp4", 40)):
        for sigma in (0, 4):
            picture = real_frame(name, index)
            picture = cv2.GaussianBlur(picture, (0, 0), sigma) if sigma else picture
            for camera in (CameraMotion(), CameraMotion((3.0, 1.0)), CameraMotion(zoom_per_frame=1.01)):
                frames = render_shot(32, 455, 256, camera=camera, background=picture).frames
                assert blurred_box(frames) is None, (name, sigma, camera)
    door = render_shot(32, 455, 256, CameraMotion(), background=real_frame("bikes.mp4", 120)).frames.copy()
    door[:, :, :100], door[:, :, -100:] = 120, 200
    assert blurred_box(door) is None
