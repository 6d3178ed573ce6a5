"""Clip sampling and cropping (paper §2.2): 32 frames, temporal stride 1–16, 384×256 centre crop.

The exact mapping from clip pixels back to source pixels is kept: the source frame numbers,
the resize factor and the crop box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ic_data.errors import VideoTooShort, VideoTooSmall

CLIP_WIDTH = 384
CLIP_HEIGHT = 256
CLIP_FRAMES = 32
MAX_STRIDE = 16


def resized_size(
    width: int, height: int, out_width: int = CLIP_WIDTH, out_height: int = CLIP_HEIGHT, max_upscale: float = 2.0
) -> tuple[int, int]:
    """Size after resizing so that an ``out_width``×``out_height`` centre crop fits.

    For landscape videos of aspect ≥ 3:2 this is the paper's "shorter side to 256"; narrower or
    portrait videos are scaled so the width reaches 384 (the crop would not fit otherwise).
    Sources needing more than ``max_upscale``× enlargement are rejected as too small.
    """
    if width <= 0 or height <= 0:
        raise VideoTooSmall(f"invalid frame size {width}x{height}")
    s = max(out_height / height, out_width / width)
    if s > max_upscale:
        raise VideoTooSmall(
            f"{width}x{height} would need {s:.2f}x upscaling for a {out_width}x{out_height} crop "
            f"(limit {max_upscale}x)"
        )
    return max(out_width, int(round(width * s))), max(out_height, int(round(height * s)))


def center_crop_box(width: int, height: int, out_width: int = CLIP_WIDTH, out_height: int = CLIP_HEIGHT) -> tuple[int, int, int, int]:
    """[x0, y0, w, h] of the centred crop, in the resized frame's pixels."""
    if width < out_width or height < out_height:
        raise VideoTooSmall(f"{width}x{height} is smaller than the {out_width}x{out_height} crop")
    return (width - out_width) // 2, (height - out_height) // 2, out_width, out_height


#: The brightest value (of any channel, 0–255) a black bar reaches: compression noise.
BAR_LEVEL = 24
#: The thinnest bar cut off, as a share of the frame's side (5 of 256 rows).
MIN_BAR = 0.02
#: The largest share of a bar's row (column) that may rise above ``BAR_LEVEL``: noise, and the
#: encoder's ringing beside a bright picture edge. A bar of video black (16) next to a bright
#: picture decodes with rows of 2–16 % of their pixels at 25–34. Beyond ``BAR_RING`` of the
#: picture, none may pass twice ``BAR_LEVEL``.
BAR_STRAY = 0.1
#: How far into the frame from a bar's last stray pixels the picture's edge may start: the
#: encoder's ringing reaches to its block's border (rows 317–319 of a picture ending at 316).
BAR_RING = 8


def picture_box(frames: np.ndarray, level: int = BAR_LEVEL) -> tuple[int, int, int, int]:
    """[x0, y0, w, h] of the picture inside black bars (letterbox, pillarbox, both) of uint8
    frames (T, H, W, 3): the rows and columns at the edges that stay at or below ``level`` in
    every frame and channel (but for ``BAR_STRAY`` of their pixels, dim or near the picture),
    and end in a straight edge (the picture's first rows or columns beside them lit along at
    least half their length, in some frame). Where one bar of a pair is found so, the other side's band of about the same
    width is its twin unless it is lit along 3/4 of its length in every frame: subtitles or a
    logo in it do not keep it. A bar thinner than ``MIN_BAR`` of the frame's side is left
    in (a dark line at an edge, as encoders' padding leaves, is no reason to enlarge the
    picture); the whole frame is kept where there are no bars, and where what would be left is
    less than half the frame either way (a dark or black shot, not bars)."""
    frames = np.asarray(frames)
    height, width = frames.shape[1:3]
    # (H, W): the brightest each pixel gets (over time first: 4 ms a clip, 80 ms both at once)
    peak = frames.max(axis=0).max(axis=-1)
    lit, bright = peak > level, peak > 2 * level
    rows = np.flatnonzero(lit.mean(axis=1) > BAR_STRAY)
    cols = np.flatnonzero(lit.mean(axis=0) > BAR_STRAY)
    if rows.size == 0 or cols.size == 0:
        return 0, 0, width, height
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if 2 * (y1 - y0) < height or 2 * (x1 - x0) < width:
        return 0, 0, width, height
    # A bar ends in a straight edge: the picture's first rows (columns) beside it are lit across
    # most of their length, at most BAR_RING lines in from where the bar's stray pixels stop.
    # Where they are not, what looked like a bar is a dark part of the shot (a night sky above
    # a lit blob) and stays.
    edge = 3

    def edge_in(lines: np.ndarray) -> int | None:
        """How many lines in from the first of ``lines`` (each line's lit share, outside in)
        the picture's straight edge starts (a line lit along half its length, and the next
        ones too on average); None if it does not start within BAR_RING."""
        for k in range(min(BAR_RING, len(lines) - edge) + 1):
            if lines[k] >= 0.5 and lines[k : k + edge].mean() >= 0.5:
                return k
        return None

    def twin(band: np.ndarray, mirror: int, side: int) -> int | None:
        """The bar across ``band`` (T, lines, length, 3), read outside in along its lines from
        the darkest each pixel gets: its thickness where the first line lit along 3/4 of its
        length starts a straight edge within BAR_RING of ``mirror`` lines (and not under
        MIN_BAR of the ``side``). Lines before it may be lit along less in every frame: a line
        of subtitles through the whole clip lights 40–55 % of a row of the bar."""
        shares = (band.min(axis=0).max(axis=-1) > level).mean(axis=1)
        solid = np.flatnonzero(shares >= 0.75)
        k = int(solid[0]) if solid.size else -1
        if k < MIN_BAR * side or abs(k - mirror) > BAR_RING or shares[k : k + edge].mean() < 0.75:
            return None
        return k

    def reach(bar: int) -> int:
        """How many lines of the other side's band to read for a twin of ``bar``."""
        return bar + 2 * BAR_RING + edge

    def unpaired(a: int, b: int) -> bool:
        """Whether bars of ``a`` and ``b`` lines on opposite sides are no pair: one found and
        not the other, or one much thinner (ending at a wide caption in the bar, not at the
        picture)."""
        return (a > 0) != (b > 0) or abs(a - b) > BAR_RING

    # What a bar's stray pixels may be: dim (noise) anywhere, brighter only within BAR_RING of
    # the picture (ringing). A bright light further out (a star over a black night sky, a
    # logo, subtitles) is no bar's: it keeps the band, unless the band is a found bar's twin.
    top = edge_in(lit[y0:y1, x0:x1].mean(axis=1))
    top = None if top is None or bright[: max(0, y0 + top - BAR_RING)].any() else top
    y0 = y0 + top if y0 >= MIN_BAR * height and top is not None else 0
    bottom = edge_in(lit[y0:y1, x0:x1].mean(axis=1)[::-1])
    bottom = None if bottom is None or bright[y1 - bottom + BAR_RING :].any() else bottom
    y1 = y1 - bottom if height - y1 >= MIN_BAR * height and bottom is not None else height
    # Bars come in pairs. Where one of a pair is found and the other is not (or is much
    # thinner), because something lit crosses it (subtitles, a logo), the band of the same
    # width on the other side is a bar too where the picture ends straight beside it there,
    # and the band, at each pixel's darkest over the frames, is lit along less than 3/4 of
    # every line.
    if unpaired(y0, height - y1):
        if y0 > height - y1:
            bar = twin(frames[:, max(y0, height - reach(y0)) :, x0:x1][:, ::-1], y0, height)
            y1 = height - bar if bar else y1
        else:
            bar = twin(frames[:, : min(y1, reach(height - y1)), x0:x1], height - y1, height)
            y0 = bar or y0
    left = edge_in(lit[y0:y1, x0:x1].mean(axis=0))
    left = None if left is None or bright[y0:y1, : max(0, x0 + left - BAR_RING)].any() else left
    x0 = x0 + left if x0 >= MIN_BAR * width and left is not None else 0
    right = edge_in(lit[y0:y1, x0:x1].mean(axis=0)[::-1])
    right = None if right is None or bright[y0:y1, x1 - right + BAR_RING :].any() else right
    x1 = x1 - right if width - x1 >= MIN_BAR * width and right is not None else width
    if unpaired(x0, width - x1):
        if x0 > width - x1:
            bar = twin(frames[:, y0:y1, max(x0, width - reach(x0)) :][:, :, ::-1].swapaxes(1, 2), x0, width)
            x1 = width - bar if bar else x1
        else:
            bar = twin(frames[:, y0:y1, : min(x1, reach(width - x1))].swapaxes(1, 2), width - x1, width)
            x0 = bar or x0
    return x0, y0, x1 - x0, y1 - y0


#: Blurred bars (a narrower video shown between blurred, enlarged copies of itself): the share of
#: a clip's rows, over its frames, across which the picture's edge is a step standing out from
#: the steps beside it, on both sides at once. Measured: blurred bars at 0.66-1.0 (4 real
#: pictures, 3 widths, blur sigma 8-40 px at 720p); 873 windows of real and synthetic videos
#: and 120 moving real pictures, sharp and blurred, at most 0.35.
BLUR_EDGE = 0.6
#: ... the bars' detail (mean vertical step) at most this share of the picture's, in 90 % of
#: the frames and beside the edge ...
BLUR_DETAIL = 0.5
#: ... and the bars, blurred further, correlate with the picture enlarged to fill the frame and
#: blurred alike at least this much (measured 0.86-1.0; plain walls either side of a doorway
#: whose edges pass the first two tests, 0.1).
BLUR_COPY = 0.6


def blurred_box(frames: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x0, y0, w, h] of a picture shown between blurred, enlarged copies of itself (a portrait
    or 4:3 video in a wider frame, as social video is; or a wide one between copies above and
    below) in uint8 frames (T, H, W, 3); None where there are none. The bars come in pairs of
    the same width, each ends in a straight edge down the whole frame, holds little detail
    beside the picture's, and is the picture enlarged and blurred."""
    import cv2

    # Grey, every fourth frame (the bars change slowly; 8 of a clip's 32 are plenty).
    grey = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames[::4]])
    for turned in (False, True):
        found = _blurred_sides(grey.transpose(0, 2, 1) if turned else grey)
        if found is not None:
            width = frames.shape[1 if turned else 2]
            left, right = found
            return (0, left, frames.shape[2], width - left - right) if turned else \
                (left, 0, width - left - right, frames.shape[1])
    return None


def _blurred_sides(grey: np.ndarray) -> tuple[int, int] | None:
    """(left, right) widths of blurred bars at the sides of grey uint8 frames (T, H, W), or None."""
    import cv2

    _, height, width = grey.shape
    if height < 16 or width < 16:
        return None
    rows = grey[:, ::2].astype(np.float32)  # every other row: an edge down the frame is in all
    across = np.abs(np.diff(rows, axis=2))  # (T, H / 2, W - 1): the step from column x to x + 1
    detail = np.abs(np.diff(rows, axis=1)).mean(axis=1)  # (T, W): along each column
    # A step standing out (3x) from the steps 2-6 columns away on the calmer side, in how many
    # (frame, row) pairs.
    sums = np.cumsum(np.pad(across, ((0, 0), (0, 0), (7, 7)), mode="edge"), axis=2)
    n = width - 1  # column x of ``across`` is column x + 7 of the padded sums
    beside = np.minimum(sums[:, :, 5 : 5 + n] - sums[:, :, :n], sums[:, :, 13 : 13 + n] - sums[:, :, 8 : 8 + n]) / 5.0
    share = (across > np.maximum(3.0, 3.0 * beside)).mean(axis=(0, 1))
    # The picture starts at column ``bar`` (a step between bar - 1 and bar); on the right it
    # ends ``bar`` columns (give or take one) from the edge.
    bars = np.arange(max(2, int(np.ceil(MIN_BAR * width))), int(0.45 * width))
    if bars.size == 0 or share.max() < BLUR_EDGE:
        return None
    ends = np.clip(width - 1 - bars[:, None] - np.array([-1, 0, 1]), 0, width - 2)  # (bars, 3)
    k = share[ends].argmax(axis=1)
    scores = np.minimum(share[bars - 1], share[ends[np.arange(len(bars)), k]])
    best = int(scores.argmax())
    if scores[best] < BLUR_EDGE:
        return None
    left, right = int(bars[best]), int(bars[best] + k[best] - 1)
    band = np.concatenate([detail[:, : left - 1], detail[:, width - right + 1 :]], axis=1).mean(axis=1)
    picture = detail[:, left + 1 : width - right - 1].mean(axis=1) + 1e-3
    near_bars = np.concatenate([detail[:, max(0, left - 9) : left - 1], detail[:, width - right + 1 : width - right + 9]], axis=1)
    near_picture = np.concatenate([detail[:, left + 1 : left + 9], detail[:, width - right - 9 : width - right - 1]], axis=1)
    if (band > BLUR_DETAIL * picture).mean() > 0.1 or \
            np.median(near_bars.mean(axis=1) / (near_picture.mean(axis=1) + 1e-3)) > BLUR_DETAIL:
        return None
    # The bars are the picture enlarged to fill the frame (centred), and blurred.
    inside = width - left - right
    outside = np.r_[0 : max(1, left - 3), width - right + 3 : width]
    tall = int(round(height * width / inside))
    scores = []
    for frame in grey[:: max(1, len(grey) // 4)].astype(np.float32):
        filled = cv2.resize(frame[:, left : width - right], (width, tall), interpolation=cv2.INTER_AREA)
        top = (tall - height) // 2
        a = cv2.GaussianBlur(filled[top : top + height], (0, 0), 4.0)[:, outside].ravel()
        b = cv2.GaussianBlur(frame, (0, 0), 4.0)[:, outside].ravel()
        scores.append(float(np.corrcoef(a, b)[0, 1]) if a.std() > 1e-3 and b.std() > 1e-3 else 0.0)
    return (left, right) if np.median(scores) >= BLUR_COPY else None


def crop_plan(
    width: int, height: int, picture: tuple[int, int, int, int], out_width: int = CLIP_WIDTH,
    out_height: int = CLIP_HEIGHT,
) -> tuple[tuple[int, int] | None, tuple[float, float], tuple[int, int, int, int]]:
    """How to cut an ``out_width``×``out_height`` crop, centred on the ``picture`` box
    (:func:`picture_box`, :func:`blurred_box`), from frames ``width``×``height``: enlarged first where the picture is
    too small for it.

    Returns ``(size, factors, box)``: the (w, h) the frames must be enlarged to (None: they fit
    as they are), the per-axis factors of that resize (multiply a clip's source-to-frame scale
    by them), and the crop's ``[x0, y0, w, h]`` in the frames of that size.
    """
    x0, y0, w, h = picture
    size, factors = None, (1.0, 1.0)
    if w < out_width or h < out_height:
        # A pixel to spare each way: the enlarged picture's edge pixels are taken inwards.
        grow = max(1.0, (out_width + 1) / max(w - 1, 1), (out_height + 1) / max(h - 1, 1))
        size = (int(np.ceil(width * grow)), int(np.ceil(height * grow)))
        factors = (size[0] / width, size[1] / height)
        # The picture's edges in the enlarged frames (pixel-centre convention), taken inwards.
        left, top = int(np.ceil((x0 + 0.5) * factors[0] - 0.5)), int(np.ceil((y0 + 0.5) * factors[1] - 0.5))
        right = int(np.floor((x0 + w - 0.5) * factors[0] - 0.5)) + 1
        bottom = int(np.floor((y0 + h - 0.5) * factors[1] - 0.5)) + 1
        x0, y0, w, h = left, top, max(out_width, right - left), max(out_height, bottom - top)
        x0, y0 = min(x0, size[0] - w), min(y0, size[1] - h)
    return size, factors, (x0 + (w - out_width) // 2, y0 + (h - out_height) // 2, out_width, out_height)


def crop_frames(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, w, h = box
    return np.ascontiguousarray(frames[:, y0 : y0 + h, x0 : x0 + w])


def sample_clip_indices(
    scene: tuple[int, int],
    rng: np.random.Generator,
    clip_frames: int = CLIP_FRAMES,
    max_stride: int = MAX_STRIDE,
) -> np.ndarray:
    """Frame numbers of a random ``clip_frames`` window with a random stride inside ``scene``.

    The stride is drawn uniformly from the strides in 1..max_stride that fit in the scene, then
    the start uniformly from the positions where the whole window fits.
    """
    start, end = int(scene[0]), int(scene[1])
    length = end - start
    if length < clip_frames:
        raise VideoTooShort(f"longest scene has {length} frames, a clip needs {clip_frames}")
    fits = min(max_stride, (length - 1) // (clip_frames - 1)) if clip_frames > 1 else max_stride
    stride = int(rng.integers(1, fits + 1))
    span = (clip_frames - 1) * stride + 1
    offset = int(rng.integers(0, length - span + 1))
    return start + offset + stride * np.arange(clip_frames, dtype=np.int64)


def resize_points(xy, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Points ``xy`` (..., 2) in pixels of a ``from_size`` (width, height) frame → the same
    points of the picture in that frame resized to ``to_size``: float64, pixel centres mapped
    to pixel centres, as ``cv2.resize`` lays out its grid (so a clip's tracks land where its
    frames, resized to the model's size, show what they follow)."""
    factor = np.asarray(to_size, np.float64) / np.asarray(from_size, np.float64)
    return (np.asarray(xy, np.float64) + 0.5) * factor - 0.5


@dataclass(frozen=True)
class ClipGeometry:
    """How clip pixels relate to source pixels (pixel-centre convention).

    resized = source × scale; clip = resized − crop origin. Source pixels are the upright
    frame's, as a player shows it (a clip's ``source_rotation`` says how the stored frames
    were turned; see ``ic_data.video_io``).
    """

    scale: tuple[float, float]
    crop: tuple[int, int, int, int]

    def clip_to_source(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        resized = xy + np.array(self.crop[:2], np.float64)
        return (resized + 0.5) / np.array(self.scale) - 0.5

    def source_to_clip(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        resized = (xy + 0.5) * np.array(self.scale) - 0.5
        return resized - np.array(self.crop[:2], np.float64)


def visible_box(width: int, height: int, max_upscale: float = 16.0) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the part of a ``width``×``height`` frame, in its pixels, that the resize
    and centre crop to the model's 3:2 frame keep (as generation crops every first frame and its
    trajectories). Two decimals, rounded inwards: every point of the box is seen."""
    import math

    rw, rh = resized_size(width, height, max_upscale=max_upscale)
    geometry = ClipGeometry(scale=(rw / width, rh / height), crop=center_crop_box(rw, rh))
    (x0, y0), (x1, y1) = geometry.clip_to_source(np.array([[-0.5, -0.5], [CLIP_WIDTH - 0.5, CLIP_HEIGHT - 0.5]]))
    return (max(0.0, math.ceil(x0 * 100) / 100), max(0.0, math.ceil(y0 * 100) / 100),
            min(width - 1.0, math.floor(x1 * 100) / 100), min(height - 1.0, math.floor(y1 * 100) / 100))

