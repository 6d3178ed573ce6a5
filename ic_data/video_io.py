"""Video reading: PyAV first, decord as the fallback, one decode per video.

PyAV comes first for throughput: with one decoder thread it needs about half the CPU time per
frame of decord, whose reader runs its own conversion thread beside the decoder even at
``num_threads=1`` (measured on 640×360 H.264: 0.43 vs 0.85 CPU-seconds for 360 frames, with
RGB conversion). That matters when the pipeline runs one video per core. And PyAV hands over
the 4:2:0 planes, so a frame is converted to RGB only if it is read: cut detection works on
small thumbnails made from the planes, and only the clip's 32 frames are converted at the
analysis size (each plane resized, then converted with the matrix and range the stream
declares: BT.601 TV levels when it declares none, as swscale does).

``decode_video`` reads every frame once and returns them all, to be read at the analysis size
chosen by the caller; later stages (cut detection, clip sampling, motion scores, tracking) all
work from that and never reopen the file.

Frames are returned as players show them: turned by the container's display matrix, and
non-square pixels stretched to their sample aspect ratio.

Geometry convention: ``cv2.resize`` maps pixel centres, so a resized pixel (x, y) comes from
source pixel ((x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5).
"""
from __future__ import annotations

import errno
import functools
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, Collection

import cv2
import numpy as np

from ic_data.errors import CurationError, DecodeTimeout, VideoDecodeError

SizeFn = Callable[[int, int], tuple[int, int]]


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    backend: str  # "decord" or "pyav"
    # Degrees the stored frames were turned clockwise to show them upright (0, 90, 180 or 270):
    # a phone's portrait video is stored sideways with a display matrix. ``width``/``height``
    # are the upright frame's, and so are all pixel coordinates downstream.
    rotation: int = 0
    # Width of a stored pixel over its height (the stream's sample aspect ratio): 1 for square
    # pixels; e.g. 32/27 for a 720×480 DVD shown at 16:9. The size function is given the shown
    # size; ``scale`` then differs along x and y, so clip pixels still map to stored ones.
    sample_aspect: float = 1.0


@dataclass
class DecodedVideo:
    """Every frame of a video, to be read at the analysis size.

    Frames are kept as the decoder produced them (4:2:0 planes at the source size, or already
    resized when the source is much larger) and converted to RGB at the analysis size when read:
    the pipeline reads 32 of a few hundred. ``frames`` converts (and caches) all of them.
    """

    info: VideoInfo
    store: "_FrameStore"
    scale: tuple[float, float]  # (sx, sy): resized = source * scale (pixel-centre convention)
    truncated: bool = False  # True when max_frames stopped the decode early
    # uint8 (N, th, tw, 3) RGB copies ``thumbnail_width`` wide (for cut detection), made while
    # decoding; None when none were asked for or the frames are no wider.
    thumbnails: np.ndarray | None = None
    # A damaged file: positions (0 < p < num_frames) where frames were lost between p - 1 and p
    # (frames p - 1 and p are not neighbours in the source), and what was lost, for a human.
    breaks: tuple[int, ...] = ()
    damage: str | None = None

    @property
    def num_frames(self) -> int:
        return len(self.store)

    def select(self, indices, size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 (len(indices), h, w, 3) RGB frames at the analysis size, or at ``size`` (w, h):
        made from the source's own pixels where they are kept (:meth:`whole`), else from the
        analysis-size frames (bicubic where enlarged)."""
        return self.store.select(indices, size)

    def whole(self, indices) -> bool:
        """Whether these frames are kept at the size they were decoded at: 4:2:0 sources up to
        twice the analysis size in pixels, and any source decoded at its own size."""
        return all(self.store.whole(i) for i in indices)

    @functools.cached_property
    def frames(self) -> np.ndarray:
        """uint8 (N, h, w, 3) RGB at the analysis size: every frame."""
        return self.store.select(range(len(self.store)))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        if os.path.islink(path):  # the entry is there: where it leads is not
            try:
                os.stat(path)
            except OSError as exc:
                why = "loops back on itself" if exc.errno == errno.ELOOP else f"leads to {os.readlink(path)}, which is missing"
                raise VideoDecodeError(f"a symbolic link that {why}: {path}", reason="missing_file") from None
        raise VideoDecodeError(f"no such file: {path}", reason="missing_file")
    if os.path.isdir(path):  # a folder discovery could not list, or a link to one named like a video
        try:
            with os.scandir(path):
                pass
        except OSError as exc:
            raise VideoDecodeError(f"cannot list the folder {path} ({exc.strerror or exc}), so its videos "
                                   "are not curated", reason="unreadable") from exc
    if not os.path.isfile(path):
        raise VideoDecodeError(f"not a regular file: {path}", reason="not_a_file")
    try:
        with open(path, "rb"):  # the decoders would each say it in their own words
            pass
    except OSError as exc:
        raise VideoDecodeError(f"cannot read {path}: {exc.strerror or exc}", reason="unreadable") from exc
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"empty file: {path}", reason="empty_file")


def decoder_message(exc: BaseException) -> str:
    """What a decoder's exception says, the same in every process.

    PyAV appends FFmpeg's last logged error to its exceptions ("; last error log: …") only while
    its log callback is installed, which other libraries switch on when imported (torchvision ≤ 0.21
    does, for instance): the same file would then fail with other words in a worker process than in
    the main one, and the manifest would not be byte-identical. FFmpeg errors are told by their
    error text alone (the caller names the file).
    """
    strerror = getattr(exc, "strerror", None)
    if type(exc).__module__.startswith("av.") and isinstance(strerror, str) and strerror:
        return strerror
    if type(exc).__module__.startswith("decord"):
        # decord's log prefix: the wall-clock time and its source line ("[12:20:20] /…/video_reader.cc:151: ").
        return _DECORD_PREFIX.sub("", str(exc)).strip()
    return str(exc)


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] (\S+:\d+: )?")


def open_video_container(path: str):
    """``av.open(path)`` for reading, where metadata in a broken text encoding does not fail the
    file: PyAV before 19 raises on it unless told ``metadata_errors="ignore"``; PyAV 19 dropped
    that option (and takes no unknown keyword)."""
    import av

    try:
        return av.open(path, metadata_errors="ignore")
    except TypeError as exc:
        if "metadata_errors" not in str(exc):
            raise
        return av.open(path)


def _sized(size_fn: SizeFn | None, shown: tuple[int, int], upright: tuple[int, int], fps: float):
    """``size_fn(*shown)``; a size it refuses (``CurationError``) carries the upright frame's
    size and the frame rate, so the manifest's row for a too-small video still says what it is."""
    if size_fn is None:
        return None
    try:
        return size_fn(*shown)
    except CurationError as exc:
        exc.width, exc.height = (int(x) for x in upright)
        exc.fps = fps
        raise


def _interpolation(src_width: int, dst_width: int) -> int:
    # Bilinear is ~6x faster than area averaging and aliases little down to half size; below
    # that (e.g. 1080p sources) area averaging is needed. Both map pixel centres.
    return cv2.INTER_AREA if dst_width < 0.5 * src_width else cv2.INTER_LINEAR


def _decode_decord(path: str, size_fn: SizeFn | None, max_frames: int | None, thumb_width: int | None,
                   keep: frozenset[int] | None = None, batch: int = 64):
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
        raise VideoDecodeError(f"decord cannot open {path}: {decoder_message(exc)}") from exc
    n = len(vr)
    if n <= 0:
        raise VideoDecodeError(f"decord found no frames in {path}", reason="no_frames")
    h, w = vr[0].shape[:2]
    vr.seek(0)
    fps = float(vr.get_avg_fps() or 0.0)
    # decord (0.6) shows frames upright by the display matrix already; the turn is recorded.
    # It ignores the sample aspect ratio: that stretch is made here, as for PyAV.
    turns, sar = _pyav_display(path)
    shown = _shown_size(w, h, sar, turns % 2 == 1)
    size = _sized(size_fn, shown, (w, h), fps) or shown
    store = _FrameStore(size, thumbnail_size(*size, thumb_width), keep=keep)
    total = min(n, max_frames) if max_frames else n
    for start in range(0, total, batch):
        numbers = range(start, min(start + batch, total))
        if keep is not None and keep.isdisjoint(numbers):
            for _ in numbers:
                store.drop()
            continue
        for frame in vr.get_batch(list(numbers)).asnumpy():
            store.add_rgb(frame)
    info = VideoInfo(path=path, num_frames=n, fps=fps, width=w, height=h, backend="decord", rotation=90 * turns,
                     sample_aspect=sar)
    return info, store, total < n, None


@dataclass(frozen=True)
class YuvColour:
    """How a stream's Y'CbCr becomes RGB: the matrix's luma weights and the value range."""

    kr: float = 0.299
    kb: float = 0.114
    full_range: bool = False  # False: "TV" levels (luma 16–235, chroma 16–240)


BT601_TV = YuvColour()  # what H.264 streams mostly carry, and what swscale assumes when untagged
# The matrices a stream may declare (FFmpeg's AVColorSpace numbers); an untagged or unknown one
# is read as BT.601, as swscale does; decord (through swscale) honours the same tags.
_MATRICES = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 6: (0.299, 0.114), 7: (0.212, 0.087),
             9: (0.2627, 0.0593)}


def frame_colour(frame) -> YuvColour:
    """The colour matrix and range a decoded PyAV frame declares (BT.601 TV when it says none)."""
    kr, kb = _MATRICES.get(int(getattr(frame, "colorspace", 2) or 2), (0.299, 0.114))
    full = frame.format.name == "yuvj420p" or int(getattr(frame, "color_range", 0) or 0) == 2
    return YuvColour(kr, kb, full)


def _frame_i420(frame) -> np.ndarray | None:
    """A plain 8-bit 4:2:0 frame (even size) as one fresh flat I420 array (Y, then U, then V,
    each row-major without padding), else None."""
    if frame.format.name not in ("yuv420p", "yuvj420p") or frame.width % 2 or frame.height % 2:
        return None
    return frame.to_ndarray().reshape(-1)


def _resize_plane(src: np.ndarray, size: tuple[int, int], dst: np.ndarray, enlarge: int = cv2.INTER_LINEAR) -> None:
    """Resize one plane into ``dst``. Far downscales (thumbnails) halve with bilinear first:
    at exactly half size bilinear sampling is the 2×2 box average, and it is several times
    faster than OpenCV's area filter. ``enlarge``: the interpolation where ``size`` is larger
    than the plane both ways."""
    w, h = size
    while src.shape[1] >= 4 * w and src.shape[0] >= 4 * h:
        src = cv2.resize(src, (src.shape[1] // 2, src.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    larger = w >= src.shape[1] and h >= src.shape[0]
    cv2.resize(src, size, dst=dst, interpolation=enlarge if larger else _interpolation(src.shape[1], w))


# BT.601 limited range ("TV" levels: luma 16–235, chroma 16–240, what H.264 streams carry and
# swscale assumes by default) stretched to full range, after which OpenCV's YCrCb conversion
# (full-range BT.601) gives the same RGB as the limited-range formulas.
_LUMA_LUT = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_CHROMA_LUT = np.clip(np.round((np.arange(256) - 128) * 255 / 224 + 128), 0, 255).astype(np.uint8)


def _yuv444_resized(y: np.ndarray, u: np.ndarray, v: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (3, h, w): the Y, U and V planes each resized to ``size`` (w, h)."""
    w, h = size
    out = np.empty((3, h, w), np.uint8)
    for plane, dst in zip((y, u, v), out):
        _resize_plane(plane, size, dst)
    return out


def _yuv_matrix(colour: YuvColour) -> np.ndarray:
    """3×4: (R, G, B) from full-range (Y, Cb, Cr, 1), the Cb/Cr offset of 128 folded in."""
    kr, kb = colour.kr, colour.kb
    kg = 1.0 - kr - kb
    cr_r, cb_b = 2 * (1 - kr), 2 * (1 - kb)
    cb_g, cr_g = -cb_b * kb / kg, -cr_r * kr / kg
    return np.array(
        [[1, 0, cr_r, -128 * cr_r], [1, cb_g, cr_g, -128 * (cb_g + cr_g)], [1, cb_b, 0, -128 * cb_b]], np.float64
    )


def _i420_rgb(
    y: np.ndarray, u: np.ndarray, v: np.ndarray, size: tuple[int, int], out: np.ndarray, colour: YuvColour = BT601_TV,
    enlarge: int = cv2.INTER_LINEAR,
) -> None:
    """4:2:0 planes → RGB of ``size`` (w, h) into ``out``.

    Each plane is resized straight to the output size (pixel-centre mapping, the module's
    convention: chroma therefore lands where centre-sited samples belong, and is interpolated,
    not repeated in 2×2 blocks), then converted with the stream's matrix and range: TV levels
    are stretched to full range first, after which BT.601 is OpenCV's YCrCb conversion and any
    other matrix one affine transform per pixel.
    """
    w, h = size
    planes = []
    for plane, lut in ((y, _LUMA_LUT), (v, _CHROMA_LUT), (u, _CHROMA_LUT)):
        if plane.shape != (h, w):
            resized = np.empty((h, w), np.uint8)
            _resize_plane(plane, (w, h), resized, enlarge)
            plane = resized
        planes.append(plane if colour.full_range else cv2.LUT(plane, lut))
    if (colour.kr, colour.kb) == (BT601_TV.kr, BT601_TV.kb):
        out[:] = cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YCrCb2RGB)
    else:
        luma, cr, cb = planes
        out[:] = cv2.transform(cv2.merge([luma, cb, cr]), _yuv_matrix(colour))


def frame_rgb(frame) -> np.ndarray:
    """A decoded PyAV frame as uint8 RGB at its own size: 8-bit 4:2:0 through this module's
    conversion (with the matrix and range the frame declares), other pixel formats through
    swscale."""
    flat = _frame_i420(frame)
    if flat is None:
        return frame.to_ndarray(format="rgb24")
    rgb = np.empty((frame.height, frame.width, 3), np.uint8)
    _i420_rgb(*_split_i420(flat, frame.width, frame.height), (frame.width, frame.height), rgb, frame_colour(frame))
    return rgb


def display_quarter_turns(frame) -> int:
    """Clockwise quarter turns (0–3) that show a decoded PyAV frame upright, from the display
    matrix the container carries (ffmpeg's ``displaymatrix`` side data; what its players'
    autorotate applies). Angles that are not a multiple of 90° are ignored, as ffmpeg does."""
    angle = getattr(frame, "rotation", 0) or 0  # counter-clockwise degrees; PyAV >= 13
    turns = round(-float(angle) / 90.0)
    if abs(-float(angle) - 90.0 * turns) > 1.0:
        return 0
    return turns % 4


def sample_aspect(stream) -> float:
    """A PyAV video stream's sample aspect ratio (stored pixel width / height); 1 when it
    declares none or an implausible one."""
    sar = getattr(stream, "sample_aspect_ratio", None)
    try:
        value = float(sar) if sar else 1.0
    except (TypeError, ValueError, ZeroDivisionError):
        return 1.0
    return value if 0.2 <= value <= 5.0 else 1.0


def _shown_size(width: int, height: int, sar: float, turned: bool) -> tuple[int, int]:
    """The size a player shows an upright ``width``×``height`` pixel grid at: the stored rows'
    pixels are ``sar`` wide, and after a quarter turn the stored rows are the columns."""
    if sar == 1.0:
        return width, height
    if turned:
        return width, max(1, round(height * sar))
    return max(1, round(width * sar)), height


def _pyav_display(path: str) -> tuple[int, float]:
    """(``display_quarter_turns`` of the first frame, ``sample_aspect``), read with PyAV;
    (0, 1.0) when PyAV cannot read them."""
    try:
        with open_video_container(path) as container:
            stream = video_stream(container)
            stream.codec_context.thread_count = 1
            return display_quarter_turns(next(container.decode(stream))), sample_aspect(stream)
    except Exception:  # noqa: BLE001 - nothing to be had: show the frames as stored
        return 0, 1.0


def video_stream(container):
    """The container's main video stream, as FFmpeg's players pick it (``av_find_best_stream``):
    not an attached cover picture or thumbnail track that may come first."""
    try:
        return container.streams.best("video") or container.streams.video[0]
    except AttributeError:  # a PyAV without ``best``
        return container.streams.video[0]


_CV2_TURNS = {1: cv2.ROTATE_90_CLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _rotate_i420(flat: np.ndarray, w: int, h: int, turns: int) -> tuple[np.ndarray, int, int]:
    """An I420 frame turned ``turns`` (1–3) quarter turns clockwise: (a fresh flat array,
    width, height). OpenCV's rotate writes each plane straight into its place."""
    rw, rh = (h, w) if turns % 2 else (w, h)
    out = np.empty_like(flat)
    for src, dst in zip(_split_i420(flat, w, h), _split_i420(out, rw, rh)):
        cv2.rotate(src, _CV2_TURNS[turns], dst=dst)
    return out, rw, rh


def _split_i420(flat: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cw, ch = w // 2, h // 2
    return (
        flat[: w * h].reshape(h, w),
        flat[w * h : w * h + cw * ch].reshape(ch, cw),
        flat[w * h + cw * ch :].reshape(ch, cw),
    )


def shrink_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average an RGB frame down to ``size``; via a bilinear step to twice the size when
    that is smaller than the frame, because OpenCV's area filter is ~4x slower at non-integer
    ratios."""
    w, h = size
    if frame.shape[1] > 2 * w and frame.shape[0] > 2 * h:
        frame = cv2.resize(frame, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def thumbnail_size(width: int, height: int, thumb_width: int | None) -> tuple[int, int] | None:
    """(w, h) of a ``thumb_width``-wide copy (aspect kept), or None when the frame is no wider."""
    if not thumb_width or width <= thumb_width:
        return None
    return thumb_width, max(1, round(height * thumb_width / width))


class _FrameStore:
    """Decoded frames, converted to RGB at ``size`` (w, h) only when read.

    Each frame is kept in the cheapest faithful form: the decoder's own 4:2:0 planes when the
    source is at most twice the analysis size in pixels (then no larger than the RGB frame it
    becomes), else its three planes resized to the analysis size (as many bytes as RGB, but the
    colour conversion is left for the frames that are read); and RGB at the analysis size for
    frames that come as RGB (decord, other pixel formats).
    Thumbnails for cut detection are made on the way in.
    ``keep``: only these frames (numbers) are kept; the others are counted and dropped.
    """

    def __init__(self, size: tuple[int, int], thumb: tuple[int, int] | None, colour: YuvColour = BT601_TV,
                 keep: frozenset[int] | None = None):
        self.size, self.thumb, self.colour, self.keep = size, thumb, colour, keep
        # (kind, data, width, height): the frame's size as decoded; its data are at that size
        # ("planes") or at ``size`` ("yuv444", "rgb"), or there are none ("dropped").
        self._items: list[tuple[str, np.ndarray | None, int, int]] = []
        self._thumbs: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._items)

    def drop(self) -> None:
        """Count a frame that is not kept."""
        self._items.append(("dropped", None, 0, 0))

    def _dropped(self) -> bool:
        """Whether the frame arriving now is not to be kept (then counted as dropped)."""
        if self.keep is None or len(self._items) in self.keep:
            return False
        self.drop()
        return True

    def add_i420(self, flat: np.ndarray, w: int, h: int) -> None:
        if self._dropped():
            return
        y, u, v = _split_i420(flat, w, h)
        if self.thumb:
            thumb = np.empty((self.thumb[1], self.thumb[0], 3), np.uint8)
            _i420_rgb(y, u, v, self.thumb, thumb, self.colour)
            self._thumbs.append(thumb)
        aw, ah = self.size
        if w * h <= 2 * aw * ah:
            self._items.append(("planes", flat, w, h))
        else:  # resized now (colour kept at the analysis resolution), converted when read
            self._items.append(("yuv444", _yuv444_resized(y, u, v, self.size), w, h))

    def add_rgb(self, rgb: np.ndarray) -> None:
        if self._dropped():
            return
        w, h = self.size
        decoded = rgb.shape[1], rgb.shape[0]
        if decoded != (w, h):
            rgb = cv2.resize(rgb, self.size, interpolation=_interpolation(rgb.shape[1], w))
        else:
            rgb = rgb.copy()
        if self.thumb:
            self._thumbs.append(shrink_frame(rgb, self.thumb))
        self._items.append(("rgb", rgb, *decoded))

    def whole(self, i: int) -> bool:
        """Whether frame ``i`` is kept at the size it was decoded at (the source's pixels)."""
        kind, _, w, h = self._items[int(i)]
        return kind == "planes" or (kind == "rgb" and (w, h) == self.size)

    def select(self, indices, size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB at the analysis size, or at ``size``: from the decoder's planes straight to it
        where they are kept (bicubic where enlarged), else from the analysis-size copy."""
        indices = [int(i) for i in indices]
        size = tuple(size or self.size)
        w, h = size
        # The analysis frames as they always were (bilinear where a small source is enlarged).
        enlarge = cv2.INTER_LINEAR if size == self.size else cv2.INTER_CUBIC
        out = np.empty((len(indices), h, w, 3), np.uint8)
        frame = np.empty((self.size[1], self.size[0], 3), np.uint8)
        for k, i in enumerate(indices):
            if not -len(self) <= i < len(self):
                raise IndexError(f"frame {i} out of range for {len(self)} frames")
            kind, data, fw, fh = self._items[i]
            if kind == "dropped":
                raise IndexError(f"frame {i} was not kept")
            if kind == "planes":
                _i420_rgb(*_split_i420(data, fw, fh), size, out[k], self.colour, enlarge)
                continue
            at_size = out[k] if size == self.size else frame  # the analysis-size RGB
            if kind == "yuv444":
                _i420_rgb(data[0], data[1], data[2], self.size, at_size, self.colour)
            else:
                at_size[:] = data
            if size != self.size:
                larger = w >= self.size[0] and h >= self.size[1]
                cv2.resize(frame, size, dst=out[k], interpolation=enlarge if larger else _interpolation(self.size[0], w))
        return out

    def thumbnails(self) -> np.ndarray | None:
        return np.stack(self._thumbs) if self.thumb and self._thumbs else None


def _decode_pyav(path: str, size_fn: SizeFn | None, max_frames: int | None, thumb_width: int | None,
                 keep: frozenset[int] | None = None):
    try:
        container = open_video_container(path)
    except Exception as exc:
        raise VideoDecodeError(f"PyAV cannot open {path}: {decoder_message(exc)}") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}", reason="no_video_stream")
        stream = video_stream(container)
        # One decoder thread: the curation pipeline runs one video per worker, and frame
        # threading would only compete with the other workers for the same cores.
        stream.codec_context.thread_count = 1
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        declared_frames = stream.frames  # PyAV 19 answers nothing of a closed container's streams
        track_seconds, track_start = _track_seconds(stream) if not declared_frames else (0.0, 0.0)
        store: _FrameStore | None = None
        turns, sar, size, truncated = 0, 1.0, None, False
        damage = _Damage(declared_frames, track_seconds, track_start, fps)
        try:
            for frame in _decoded_frames(container, stream, damage):
                if store is None:  # the first frame says how the video is to be shown
                    turns, sar = display_quarter_turns(frame), sample_aspect(stream)
                    shown = _shown_size(*((h, w) if turns % 2 else (w, h)), sar, turns % 2 == 1)
                    size = _sized(size_fn, shown, (h, w) if turns % 2 else (w, h), fps)
                    out_size = size or shown
                    store = _FrameStore(out_size, thumbnail_size(*out_size, thumb_width), frame_colour(frame), keep)
                if max_frames and len(store) >= max_frames:
                    truncated = True
                    break
                if (frame.width, frame.height) != (w, h) and size is None and sar == 1.0:
                    raise VideoDecodeError(
                        f"{path}: frame size changed mid-stream from {w}x{h} to {frame.width}x{frame.height}"
                    )
                flat = _frame_i420(frame) if frame_colour(frame) == store.colour else None
                if flat is not None:
                    fw, fh = frame.width, frame.height
                    if turns:
                        flat, fw, fh = _rotate_i420(flat, fw, fh, turns)
                    store.add_i420(flat, fw, fh)
                else:  # other pixel formats (4:4:4, 10-bit, odd sizes, ...) or colours: swscale
                    rgb = frame.to_ndarray(format="rgb24")
                    store.add_rgb(np.ascontiguousarray(np.rot90(rgb, -turns)) if turns else rgb)
        except CurationError:  # ours (a size change, a size the caller refuses): as raised
            raise
        except Exception as exc:  # not the packets' damage (that is recorded): the decoder itself
            damage.stop(exc)
    if store is None or not len(store):
        if damage.first_error is not None:
            raise VideoDecodeError(f"PyAV failed to decode {path}: {damage.first_error}")
        raise VideoDecodeError(f"no decodable frames in {path}", reason="no_frames")
    n = len(store) if not truncated else max(declared_frames, len(store))
    if turns % 2:
        w, h = h, w
    info = VideoInfo(path=path, num_frames=n, fps=fps, width=w, height=h, backend="pyav", rotation=90 * turns,
                     sample_aspect=sar)
    if truncated:  # stopping at max_frames loses nothing: the rest is not to be counted as lost
        damage.declared, damage.declared_seconds = 0, 0.0
    return info, store, truncated, damage


# Packets in a row that fail to decode before the rest of a file is given up on.
MAX_FAILED_PACKETS_IN_A_ROW = 64
# A damaged file's frame times that go backwards at more than this share of their steps are
# in decode order (B-frames: a third of the steps or more), not a few frames out of place
# around a loss: no clue to where frames were lost.
REORDERED_STEPS = 0.25


class _Damage:
    """What decoding a damaged file lost, recorded as it goes: packets the decoder refused,
    frames it marked corrupt (decoded with the errors concealed), where the rest of the file
    became unreachable, and where frames were lost between two kept ones (``breaks``).

    declared: the frames the container says it holds (0: it does not say); declared_seconds:
    else the track's duration where it says exactly (Matroska, WebM), counted from
    ``start_seconds``; fps: the stream's rate, the step of a single frame.
    """

    def __init__(self, declared: int = 0, declared_seconds: float = 0.0, start_seconds: float = 0.0,
                 fps: float = 0.0):
        self.declared, self.declared_seconds, self.start_seconds, self.fps = declared, declared_seconds, start_seconds, fps
        self.failed_packets = 0
        self.corrupt_frames = 0
        self.packets = 0  # read from the file (and the one PyAV adds at its end to flush the decoder)
        self.first_error: str | None = None
        self.first_at = 0  # frames kept before the first loss
        self.stopped: str | None = None
        self.breaks: list[int] = []  # where a loss was met, in frames kept
        self.times: list[float | None] = []  # presentation time of each frame kept
        self._lost_since_kept = False

    def _lost(self, what: str) -> None:
        if self.first_error is None:
            self.first_error, self.first_at = what, len(self.times)
        self._lost_since_kept = True

    def packet_failed(self, exc: BaseException) -> None:
        self.failed_packets += 1
        self._lost(decoder_message(exc))

    def corrupt_frame(self) -> None:
        self.corrupt_frames += 1
        self._lost("a frame decoded with errors")

    def stop(self, exc: BaseException | str) -> None:
        self.stopped = exc if isinstance(exc, str) else decoder_message(exc)
        self._lost(self.stopped)

    def keep(self, time: float | None) -> None:
        """A frame is kept: after a loss, it starts a new run of neighbouring frames."""
        if self._lost_since_kept and self.times:
            self.breaks.append(len(self.times))
        self._lost_since_kept = False
        self.times.append(time)

    def _steps(self, n: int) -> tuple[np.ndarray, float]:
        """The first ``n`` kept frames' steps in presentation time (empty where a frame has
        none), and the typical (median forward) step, or 1 / fps without one."""
        times = self.times[:n]
        steps = np.diff(np.asarray(times, np.float64)) if None not in times else np.zeros(0)
        forward = steps[steps > 0]
        return steps, float(np.median(forward)) if len(forward) else 1.0 / self.fps if self.fps > 0 else 0.0

    def all_breaks(self, n: int) -> tuple[int, ...]:
        """Where frames were lost among the first ``n`` kept: where a loss was met, and, since a
        decoder hands frames out in display order a few packets after it reads them, wherever
        the kept frames' presentation times jump by over 1.5 frame steps or go backwards.

        Times that go backwards before any loss, or at over ``REORDERED_STEPS`` of the steps,
        are the frames' decode order, not their display order (an AVI of H.264 with B-frames
        stamps each frame with its packet's time): they say nothing of where a gap is, and only
        the losses met count."""
        found = {b for b in self.breaks if 0 < b < n}
        if self.first_error is not None:
            steps, typical = self._steps(n)
            clean = steps[: max(self.first_at - 1, 0)]  # between frames kept before the first loss
            reordered = len(steps) and ((clean <= 0).any() or (steps <= 0).mean() > REORDERED_STEPS)
            if (steps > 0).any() and not reordered:  # times that never move forward say nothing either
                found |= {i + 1 for i, step in enumerate(steps) if step <= 0 or step > 1.5 * typical}
        return tuple(sorted(found))

    def describe(self, n: int) -> str | None:
        """One line for the manifest of a decode that kept ``n`` frames; None for a clean
        decode of every declared frame."""
        parts = []
        losses = [f"{count} {what}{'s' * (count != 1)}{how}" for count, what, how in (
            (self.failed_packets, "packet", " failed to decode"),
            (self.corrupt_frames, "frame", " decoded with errors (dropped)"),
        ) if count]
        if losses:
            parts.append(f"{', '.join(losses)}, the first after frame {self.first_at}: {self.first_error}")
        if self.stopped is not None:
            parts.append(f"nothing after frame {n} could be read ({self.stopped})")
        # Fewer packets than the container declares: the file ends early (a cut-off download).
        # Packets, not frames: frames before an edit list's start are read and decoded but not
        # shown (a cut made by copying the stream from the keyframe before it), and that is no
        # damage. A count off by one or two is a container's rounding (or PyAV's flush packet).
        declared = self.declared
        if declared > self.packets + max(2, declared // 100):
            parts.append(f"the file ends after {self.packets} of its {declared} declared frames")
        known = [t for t in self.times[:n] if t is not None]
        if known and not declared and self.declared_seconds:
            _, step = self._steps(n)
            end = max(known) + step - self.start_seconds  # when the last frame kept ends
            if self.declared_seconds - end > max(2 * step, self.declared_seconds / 100):
                parts.append(f"it ends at {end:.2f} s of its declared {self.declared_seconds:.2f} s")
        return "damaged: " + "; ".join(parts) if parts else None


def _track_seconds(stream) -> tuple[float, float]:
    """The video track's duration as its container declares it, exactly: the ``DURATION`` tag
    Matroska/WebM muxers write per track (0.0 without one; other containers' durations may be
    estimates from the bitrate, an MPEG-TS's for one), and its first presentation time, which
    that duration counts from."""
    try:
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", str(stream.metadata.get("DURATION", "")).strip())
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
    except Exception:  # a damaged header: no duration to go by
        return 0.0, 0.0
    return (int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else 0.0), start


def _decoded_frames(container, stream, damage: _Damage):
    """The stream's frames as ``container.decode(stream)`` gives them, going on past damage as a
    player does: a packet the decoder refuses is skipped and a frame it marks corrupt dropped,
    both recorded in ``damage``. The demuxer failing ends the stream (what follows cannot be
    reached), and so do ``MAX_FAILED_PACKETS_IN_A_ROW`` refused packets. Every frame yielded
    is counted as kept; the caller says how many it stored (``all_breaks(n)``, ``describe(n)``)."""
    packets = container.demux(stream)
    failed_in_a_row = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except Exception as exc:
            damage.stop(exc)
            return
        damage.packets += 1  # empty ones too: an AVI's null frames (a repeated frame) count in its declared total
        try:
            frames = packet.decode()
        except Exception as exc:
            damage.packet_failed(exc)
            failed_in_a_row += 1
            if failed_in_a_row >= MAX_FAILED_PACKETS_IN_A_ROW:
                damage.stop(f"{failed_in_a_row} packets in a row failed to decode")
                return
            continue
        failed_in_a_row = 0
        for frame in frames:
            if frame.is_corrupt:
                damage.corrupt_frame()
                continue
            damage.keep(frame.time)
            yield frame


def _with_timeout(fn, timeout_s: float | None, path: str, backend: str):
    if not timeout_s:
        return fn()
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    # A hung native decoder cannot be interrupted from Python; the daemon thread is abandoned
    # and the caller moves on (to the fallback backend or a recorded failure).
    th = threading.Thread(target=run, name=f"decode-{backend}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise DecodeTimeout(f"{backend} did not finish decoding {path} within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def decode_video(
    path: str | os.PathLike,
    size_fn: SizeFn | None = None,
    *,
    max_frames: int | None = None,
    backend: str = "auto",
    timeout_s: float | None = 300.0,
    thumbnail_width: int | None = None,
    keep: Collection[int] | None = None,
) -> DecodedVideo:
    """Decode every frame of ``path`` once, upright, resized to ``size_fn(width, height)``.

    Upright: a video whose container carries a display matrix (a phone's portrait video, stored
    sideways) is turned as players show it, and ``width``/``height``, the size function and
    every pixel coordinate downstream are the upright frame's (``info.rotation`` says by how
    much). PyAV's frames are turned here; decord (0.6) turns them itself. Non-square pixels
    (``info.sample_aspect``) are stretched likewise: the size function gets the shown size.

    A damaged file is read past what it lost, as a player reads it (PyAV): a packet the decoder
    refuses is skipped, a frame it marks corrupt dropped, and ``breaks``/``damage`` say where
    frames are missing and what was lost (also a file ending before its declared frame count).
    Frame numbers after a loss count decoded frames, not the source's.

    backend: "pyav", "decord", or "auto" (PyAV, then decord if PyAV fails or hangs).
    max_frames: stop after this many frames (a memory guard for very long videos).
    thumbnail_width: also keep a copy of every frame this many pixels wide (``thumbnails``),
      made from the decoded planes at a fraction of the cost of shrinking the RGB frames later.
    keep: only these frame numbers are kept (every frame is still decoded and counted): how
      curation decodes a clip's frames again, at the larger size its black bars ask for,
      without holding the rest.
    Raises VideoDecodeError (reason: missing_file, empty_file, decode_error, no_frames, ...)
    or DecodeTimeout; never returns an empty video.
    """
    path = os.fspath(path)
    if keep is not None and thumbnail_width:
        raise ValueError("thumbnails are made of every frame: not with keep")
    keep = None if keep is None else frozenset(int(i) for i in keep)
    _check_file(path)
    order = {"auto": ["pyav", "decord"], "decord": ["decord"], "pyav": ["pyav"]}.get(backend)
    if order is None:
        raise ValueError(f"unknown video backend {backend!r}; expected auto, decord or pyav")
    errors: list[Exception] = []
    for name in order:
        fn = {"decord": _decode_decord, "pyav": _decode_pyav}[name]
        try:
            info, store, truncated, damage = _with_timeout(
                lambda: fn(path, size_fn, max_frames, thumbnail_width, keep), timeout_s, path, name
            )
        except VideoDecodeError as exc:
            errors.append(exc)
            continue
        except CurationError:  # e.g. the size function rejected the resolution: not a decoder issue
            raise
        except Exception as exc:  # any other decoder failure is still a property of the file
            errors.append(VideoDecodeError(f"{name} failed on {path}: {decoder_message(exc)}"))
            continue
        if info.width <= 0 or info.height <= 0:
            errors.append(VideoDecodeError(f"{name} reports no frame size for {path}"))
            continue
        sx = store.size[0] / info.width
        sy = store.size[1] / info.height
        lost = damage.describe(len(store)) if damage is not None else None
        return DecodedVideo(info=info, store=store, scale=(sx, sy), truncated=truncated, thumbnails=store.thumbnails(),
                            breaks=damage.all_breaks(len(store)) if damage is not None else (), damage=lost)
    # Report the most specific error: a timeout, then a named reason ("no_video_stream",
    # "no_frames") beat a generic open failure, whichever decoder met it.
    for exc in errors:
        if isinstance(exc, DecodeTimeout):
            raise exc
    specific = [e for e in errors if e.reason != VideoDecodeError.reason]
    chosen = specific[0] if specific else errors[-1]
    # The chosen error's words first (its reason leads the whole), then each other decoder's,
    # with its reason where that is another; before them, what the file's structure tells.
    others = [Exception.__str__(e) if e.reason == chosen.reason else str(e) for e in errors if e is not chosen]
    # An index cut short hides the stream: the file is damaged, its video not missing.
    index = missing_mp4_index(path) if chosen.reason in (VideoDecodeError.reason, "no_video_stream") else None
    detail = " | ".join(([f"{path}: {index}"] if index else []) + [Exception.__str__(chosen)] + others)
    if index and chosen.reason == "no_video_stream":
        raise VideoDecodeError(detail)
    raise type(chosen)(detail, reason=chosen.reason)


_BOX_TYPES = (b"ftyp", b"mdat", b"moov", b"free", b"skip", b"wide", b"pnot", b"uuid", b"meta")


def missing_mp4_index(path: str) -> str | None:
    """Why an MP4/MOV cannot be opened, where its top-level boxes tell: the index of its samples
    (the ``moov`` box) is missing, or cut short. Most often the file was cut off while its media
    data (or the index itself) was being written or downloaded, before the index that comes
    after it. None for any other file.
    """
    try:
        size = os.path.getsize(path)
        kinds, position, cut = [], 0, None  # cut: the kind of box the file ends inside
        with open(path, "rb") as f:
            while position + 8 <= size and len(kinds) < 4096:
                f.seek(position)
                head = f.read(16)
                length, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if length == 1 and len(head) == 16:  # a 64-bit size follows the type
                    length = int.from_bytes(head[8:16], "big")
                elif length == 0:  # the box runs to the end of the file
                    length = size - position
                if length < 8 or not all(32 <= b < 127 for b in kind):
                    return None  # not a box: some other format, or damage we cannot name
                kinds.append(kind)
                if position + length > size:
                    cut = kind
                    break
                position += length
    except OSError:
        return None
    if kinds and kinds[0] in _BOX_TYPES and cut == b"moov":
        return ("an MP4/MOV file cut off in the index of its frames (the moov box, "
                f"{size - position:,} of its {length:,} bytes there): an interrupted download or recording")
    if not kinds or kinds[0] not in _BOX_TYPES or b"mdat" not in kinds or b"moov" in kinds:
        return None
    if cut:
        return ("an MP4/MOV file cut off in its media data, before the index of its frames (the moov box, "
                "written after them): an interrupted download or recording; no frame can be located")
    return "an MP4/MOV file without the index of its frames (no moov box): no frame can be located"


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and upright resolution, decoding only the first frame (for the display
    matrix): decord, then PyAV."""
    path = os.fspath(path)
    _check_file(path)
    try:
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        h, w = vr[0].shape[:2]  # upright already (see _decode_decord)
        turns, sar = _pyav_display(path)
        return VideoInfo(path, len(vr), float(vr.get_avg_fps() or 0.0), w, h, "decord", 90 * turns, sar)
    except Exception:
        pass
    try:
        with open_video_container(path) as c:
            if not c.streams.video:
                raise VideoDecodeError(f"no video stream in {path}", reason="no_video_stream")
            s = video_stream(c)
            rate = s.average_rate or s.guessed_rate
            n, fps, w, h = int(s.frames), float(rate) if rate else 0.0, s.codec_context.width, s.codec_context.height
        turns, sar = _pyav_display(path)
        if turns % 2:
            w, h = h, w
        return VideoInfo(path, n, fps, w, h, "pyav", 90 * turns, sar)
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"cannot probe {path}: {decoder_message(exc)}") from exc
