"""Video reading: PyAV first, decord as the fallback, one decode per video.

PyAV comes first for throughput: with one decoder thread and OpenCV's 4:2:0 conversion it needs
about half the CPU time per frame of decord, whose reader runs its own conversion thread beside
the decoder even at ``num_threads=1`` (measured on 640×360 H.264: 0.43 vs 0.85 CPU-seconds for
360 frames). That matters when the pipeline runs one video per core.

``decode_video`` reads every frame once, resizes it on the fly to the analysis size chosen by
the caller, and returns the whole (resized) frame array; later stages (cut detection, clip
sampling, motion scores, tracking) all work from that array and never reopen the file.

Geometry convention: ``cv2.resize`` maps pixel centres, so a resized pixel (x, y) comes from
source pixel ((x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable

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


@dataclass
class DecodedVideo:
    info: VideoInfo
    frames: np.ndarray  # uint8 (N, h, w, 3) RGB at the analysis size
    scale: tuple[float, float]  # (sx, sy): resized = source * scale (pixel-centre convention)
    truncated: bool = False  # True when max_frames stopped the decode early
    # uint8 (N, th, tw, 3) RGB copies ``thumbnail_width`` wide (for cut detection), made while
    # decoding; None when none were asked for or the frames are no wider.
    thumbnails: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoDecodeError(f"no such file: {path}", reason="missing_file")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"not a regular file: {path}", reason="not_a_file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"empty file: {path}", reason="empty_file")


def _interpolation(src_width: int, dst_width: int) -> int:
    # Bilinear is ~6x faster than area averaging and aliases little down to half size; below
    # that (e.g. 1080p sources) area averaging is needed. Both map pixel centres.
    return cv2.INTER_AREA if dst_width < 0.5 * src_width else cv2.INTER_LINEAR


def _decode_decord(path: str, size_fn: SizeFn | None, max_frames: int | None, thumb_width: int | None, batch: int = 64):
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
        raise VideoDecodeError(f"decord cannot open {path}: {exc}") from exc
    n = len(vr)
    if n <= 0:
        raise VideoDecodeError(f"decord found no frames in {path}", reason="no_frames")
    h, w = vr[0].shape[:2]
    vr.seek(0)
    fps = float(vr.get_avg_fps() or 0.0)
    size = (size_fn(w, h) if size_fn else None) or (w, h)
    sink = _FrameSink(size, thumbnail_size(*size, thumb_width), batch)
    total = min(n, max_frames) if max_frames else n
    for start in range(0, total, batch):
        for frame in vr.get_batch(list(range(start, min(start + batch, total)))).asnumpy():
            sink.add_rgb(frame)
    frames, thumbs = sink.arrays()
    info = VideoInfo(path=path, num_frames=n, fps=fps, width=w, height=h, backend="decord")
    return info, frames, thumbs, total < n


def _planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The Y, U, V planes of a plain 8-bit 4:2:0 frame (even size), else None."""
    if frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2:
        return None
    w, h = frame.width, frame.height
    flat = frame.to_ndarray().reshape(-1)  # Y, then U, then V, each row-major without padding
    cw, ch = w // 2, h // 2
    y = flat[: w * h].reshape(h, w)
    u = flat[w * h : w * h + cw * ch].reshape(ch, cw)
    v = flat[w * h + cw * ch :].reshape(ch, cw)
    return y, u, v


def _resize_plane(src: np.ndarray, size: tuple[int, int], dst: np.ndarray) -> None:
    """Resize one plane into ``dst``. Far downscales (thumbnails) halve with bilinear first:
    at exactly half size bilinear sampling is the 2×2 box average, and it is several times
    faster than OpenCV's area filter."""
    w, h = size
    while src.shape[1] >= 4 * w and src.shape[0] >= 4 * h:
        src = cv2.resize(src, (src.shape[1] // 2, src.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    cv2.resize(src, size, dst=dst, interpolation=_interpolation(src.shape[1], w))


def _i420_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, size: tuple[int, int], out: np.ndarray) -> None:
    """4:2:0 planes → RGB of ``size`` (w, h) into ``out``, resizing the planes, not the RGB.

    Luma is resized with ``cv2.resize`` (pixel-centre mapping, the module's convention); chroma
    to half the size rounded up, and an odd size is padded by one replicated row/column before
    OpenCV's I420 conversion (BT.601 limited range, the coefficients swscale uses by default)
    and cropped after it. Resizing 1.5 bytes per pixel instead of 3, and converting only the
    output pixels, is about twice as fast as converting first; chroma, which 4:2:0 samples at
    half resolution anyway, lands within one output pixel of where an RGB resize puts it.
    """
    w, h = size
    ew, eh = w + w % 2, h + h % 2
    buf = np.empty((eh * 3 // 2, ew), np.uint8)
    luma = buf[:eh]
    if y.shape != (h, w):
        _resize_plane(y, (w, h), luma[:h, :w])
    else:
        luma[:h, :w] = y
    if ew != w:
        luma[:h, w] = luma[:h, w - 1]
    if eh != h:
        luma[h] = luma[h - 1]
    chroma = buf[eh:].reshape(-1)
    cw, ch = ew // 2, eh // 2
    for k, plane in enumerate((u, v)):
        dst = chroma[k * cw * ch : (k + 1) * cw * ch].reshape(ch, cw)
        if plane.shape != (ch, cw):
            _resize_plane(plane, (cw, ch), dst)
        else:
            dst[:] = plane
    rgb = cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_I420)
    out[:] = rgb[:h, :w]


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


class _FrameSink:
    """Collects frames at the analysis size (and thumbnails) in batches of preallocated arrays."""

    def __init__(self, size: tuple[int, int], thumb: tuple[int, int] | None, batch: int = 64):
        self.size, self.thumb, self.batch, self.count = size, thumb, batch, 0
        self.chunks: list[np.ndarray] = []
        self.thumb_chunks: list[np.ndarray] = []
        if thumb:
            self.tscratch = np.empty((2 * thumb[1], 2 * thumb[0], 3), np.uint8)
        self._new()

    def _new(self) -> None:
        w, h = self.size
        self.buf = np.empty((self.batch, h, w, 3), np.uint8)
        self.tbuf = np.empty((self.batch, self.thumb[1], self.thumb[0], 3), np.uint8) if self.thumb else None

    def add_planes(self, y, u, v) -> None:
        k = self.count % self.batch
        _i420_rgb(y, u, v, self.size, self.buf[k])
        if self.thumb:
            # Converted at twice the size and halved (bilinear at exactly half size is the 2×2
            # box average), so the thumbnail's colour is as sharp as its luma.
            tw, th = self.thumb
            _i420_rgb(y, u, v, (2 * tw, 2 * th), self.tscratch)
            cv2.resize(self.tscratch, self.thumb, dst=self.tbuf[k], interpolation=cv2.INTER_LINEAR)
        self._advance()

    def add_rgb(self, rgb: np.ndarray) -> None:
        k = self.count % self.batch
        w, h = self.size
        if rgb.shape[:2] == (h, w):
            self.buf[k] = rgb
        else:
            cv2.resize(rgb, self.size, dst=self.buf[k], interpolation=_interpolation(rgb.shape[1], w))
        if self.thumb:
            self.tbuf[k] = shrink_frame(self.buf[k], self.thumb)
        self._advance()

    def _advance(self) -> None:
        self.count += 1
        if self.count % self.batch == 0:
            self.chunks.append(self.buf)
            if self.thumb:
                self.thumb_chunks.append(self.tbuf)
            self._new()

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        rest = self.count % self.batch
        chunks = self.chunks + ([self.buf[:rest]] if rest else [])
        tchunks = self.thumb_chunks + ([self.tbuf[:rest]] if rest and self.thumb else [])
        frames = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        thumbs = None
        if self.thumb:
            thumbs = np.concatenate(tchunks) if len(tchunks) > 1 else tchunks[0]
        return frames, thumbs


def _decode_pyav(path: str, size_fn: SizeFn | None, max_frames: int | None, thumb_width: int | None):
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:
        raise VideoDecodeError(f"PyAV cannot open {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}", reason="no_video_stream")
        stream = container.streams.video[0]
        # One decoder thread: the curation pipeline runs one video per worker, and frame
        # threading would only compete with the other workers for the same cores.
        stream.codec_context.thread_count = 1
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        size = size_fn(w, h) if size_fn else None
        out_size = size or (w, h)
        sink = _FrameSink(out_size, thumbnail_size(*out_size, thumb_width))
        truncated = False
        try:
            for frame in container.decode(stream):
                if max_frames and sink.count >= max_frames:
                    truncated = True
                    break
                if size is None and (frame.width, frame.height) != (w, h):
                    raise VideoDecodeError(
                        f"{path}: frame size changed mid-stream from {w}x{h} to {frame.width}x{frame.height}"
                    )
                planes = _planes(frame)
                if planes is not None:
                    sink.add_planes(*planes)
                else:  # other pixel formats (4:4:4, 10-bit, odd sizes, ...): swscale
                    sink.add_rgb(frame.to_ndarray(format="rgb24"))
        except VideoDecodeError:
            raise
        except Exception as exc:
            # A truncated file decodes up to the damage; keep what was read if anything was.
            if not sink.count:
                raise VideoDecodeError(f"PyAV failed to decode {path}: {exc}") from exc
    if not sink.count:
        raise VideoDecodeError(f"no decodable frames in {path}", reason="no_frames")
    frames, thumbs = sink.arrays()
    n = sink.count if not truncated else max(stream.frames, sink.count)
    info = VideoInfo(path=path, num_frames=n, fps=fps, width=w, height=h, backend="pyav")
    return info, frames, thumbs, truncated


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
) -> DecodedVideo:
    """Decode every frame of ``path`` once, resized to ``size_fn(width, height)``.

    backend: "pyav", "decord", or "auto" (PyAV, then decord if PyAV fails or hangs).
    max_frames: stop after this many frames (a memory guard for very long videos).
    thumbnail_width: also keep a copy of every frame this many pixels wide (``thumbnails``),
      made from the decoded planes at a fraction of the cost of shrinking the RGB frames later.
    Raises VideoDecodeError (reason: missing_file, empty_file, decode_error, no_frames, ...)
    or DecodeTimeout; never returns an empty video.
    """
    path = os.fspath(path)
    _check_file(path)
    order = {"auto": ["pyav", "decord"], "decord": ["decord"], "pyav": ["pyav"]}.get(backend)
    if order is None:
        raise ValueError(f"unknown video backend {backend!r}; expected auto, decord or pyav")
    errors: list[Exception] = []
    for name in order:
        fn = {"decord": _decode_decord, "pyav": _decode_pyav}[name]
        try:
            info, frames, thumbs, truncated = _with_timeout(
                lambda: fn(path, size_fn, max_frames, thumbnail_width), timeout_s, path, name
            )
        except VideoDecodeError as exc:
            errors.append(exc)
            continue
        except CurationError:  # e.g. the size function rejected the resolution: not a decoder issue
            raise
        except Exception as exc:  # any other decoder failure is still a property of the file
            errors.append(VideoDecodeError(f"{name} failed on {path}: {exc}"))
            continue
        if info.width <= 0 or info.height <= 0:
            errors.append(VideoDecodeError(f"{name} reports no frame size for {path}"))
            continue
        sx = frames.shape[2] / info.width
        sy = frames.shape[1] / info.height
        return DecodedVideo(info=info, frames=frames, scale=(sx, sy), truncated=truncated, thumbnails=thumbs)
    # Report the most specific error: a timeout or a "no frames" beats a generic open failure.
    for exc in errors:
        if isinstance(exc, DecodeTimeout):
            raise exc
    last = errors[-1]
    detail = " | ".join(str(e) for e in errors)
    raise type(last)(detail, reason=last.reason)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and resolution without decoding the frames (decord, then PyAV)."""
    path = os.fspath(path)
    _check_file(path)
    try:
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        h, w = vr[0].shape[:2]
        return VideoInfo(path, len(vr), float(vr.get_avg_fps() or 0.0), w, h, "decord")
    except Exception:
        pass
    import av

    try:
        with av.open(path, metadata_errors="ignore") as c:
            if not c.streams.video:
                raise VideoDecodeError(f"no video stream in {path}", reason="no_video_stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate
            return VideoInfo(path, int(s.frames), float(rate) if rate else 0.0, s.codec_context.width, s.codec_context.height, "pyav")
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"cannot probe {path}: {exc}") from exc
