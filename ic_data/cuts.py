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
"""
from __future__ import annotations

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
#: Beside black frames, the frames dimmer than this share of their scene's median brightness
#: are the fade itself (in from black, or out to it).
FADE_SHARE = 0.5


@dataclass(frozen=True)
class SceneCuts:
    """Where a video's scenes start and end.

    cuts: first frame of every scene after the first, ascending (0 never appears).
    scenes: (start, end) frame ranges, end exclusive, tiling [0, num_frames) in order.
    detector: the detector that produced them ("adaptive" or "content").
    brightness: each frame's mean over its picture (inside bars) and channels, 0–255, and
    highlights: the share of those values above 48: what :func:`lit_scenes` takes fades from.
    """

    cuts: list[int]
    scenes: list[tuple[int, int]]
    detector: str
    brightness: list[float]
    highlights: list[float]

    def black(self) -> np.ndarray:
        """Which frames are black (bool, one per frame): see ``FADE_LEVEL``."""
        return black_frames(self.brightness, self.highlights)

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


def _make_detector(detector: str, threshold: float | None, min_scene_len: int):
    if detector not in DETECTORS:
        raise ValueError(f"unknown cut detector {detector!r}; expected one of {', '.join(DETECTORS)}")
    threshold = DEFAULT_THRESHOLDS[detector] if threshold is None else float(threshold)
    if detector == "adaptive":
        return _FlushingAdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_scene_len)
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
      robust to fast camera motion) or "content" (ContentDetector: absolute HSV change).
    analysis_width: frames wider than this are downscaled to it (aspect kept, INTER_AREA).
    threshold: the detector's threshold (adaptive ratio, default 3.0; content score, default
      27.0); None keeps PySceneDetect's default.
    min_scene_len: frames that must pass after a cut before another is accepted.
    fps: only used for the detectors' timecodes; fps <= 0, NaN or missing means 25.
    inside_bars: score only the picture inside black bars that stay through the whole video
      (:func:`ic_data.clips.picture_box`). The detectors' scores are means over the frame, and
      a bar never changes: bars over 40 % of a 4:3 frame (a 2.35:1 film in it) scale every
      score by 0.6, and a fixed threshold then misses most cuts.
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
    start = FrameTimecode(0, _sanitize_fps(fps))  # scenedetect turns 29.97 into 30000/1001 once
    size = thumbnail_size(frames.shape[2], frames.shape[1], analysis_width)
    if size is not None:
        frames = np.stack([shrink_frame(frame, size) for frame in frames])
    if inside_bars:
        x0, y0, w, h = picture_box(frames)
        frames = frames[:, y0 : y0 + h, x0 : x0 + w]

    found: list[FrameTimecode] = []
    timecode = start
    for i in range(num_frames):
        timecode = FrameTimecode(i, start)  # the rate is copied, not re-parsed
        found += scene_detector.process_frame(timecode, cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
    found += scene_detector.post_process(timecode)

    cuts = sorted({tc.frame_num for tc in found} - {0})
    cuts = [c for c in cuts if 0 < c < num_frames]
    values = frames.reshape(num_frames, -1)
    count = values.shape[1]  # (integer sums: 1.7x faster than float means over a video's thumbnails)
    return SceneCuts(cuts=cuts, scenes=scenes_from_cuts(cuts, num_frames), detector=detector,
                     brightness=[float(b) / count for b in values.sum(axis=1, dtype=np.uint64)],
                     highlights=[float(h) / count for h in np.count_nonzero(values > 48, axis=1)])


def black_frames(brightness, highlights=None) -> np.ndarray:
    """Which frames are black (bool array): mean under ``FADE_LEVEL`` and (where ``highlights``
    are given) no more than ``FADE_HIGHLIGHTS`` of their values above 48."""
    black = np.asarray(brightness, np.float64) < FADE_LEVEL
    if highlights is not None:
        black &= np.asarray(highlights, np.float64) <= FADE_HIGHLIGHTS
    return black


def lit_scenes(scenes: list[tuple[int, int]], brightness, highlights=None) -> list[tuple[int, int]]:
    """``scenes`` without their black frames and the fades beside them.

    A black frame (:func:`black_frames`: a fade's dark end, a black screen between shots)
    belongs to no scene; a scene with black frames inside it is split there. From each part,
    the frames at an end next to a black frame (in its scene, or the last of the scene before
    or the first of the one after) are dropped while they are dimmer than ``FADE_SHARE`` of
    the part's median brightness: the fade in or out itself, whose first frame would otherwise
    open a clip nearly black. Parts left empty are dropped.
    """
    light = ~black_frames(brightness, highlights)
    brightness = np.asarray(brightness, np.float64)
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
            floor = FADE_SHARE * float(np.median(brightness[lo:hi]))
            if lo > 0 and not light[lo - 1]:  # after black: a fade in
                while lo < hi and brightness[lo] < floor:
                    lo += 1
            if hi < len(light) and not light[hi]:  # before black: a fade out
                while hi > lo and brightness[hi - 1] < floor:
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
