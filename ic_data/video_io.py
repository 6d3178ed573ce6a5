"""Video reading: decord first, PyAV as the fallback, one decode per video.

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


def _resize_batch(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (frames.shape[2], frames.shape[1]) == tuple(size):
        return np.ascontiguousarray(frames)
    out = np.empty((len(frames), size[1], size[0], 3), np.uint8)
    # Bilinear is ~6x faster than area averaging and aliases little down to half size; below
    # that (e.g. 1080p sources) area averaging is needed. Both map pixel centres.
    interp = cv2.INTER_AREA if size[0] < 0.5 * frames.shape[2] else cv2.INTER_LINEAR
    for i, f in enumerate(frames):
        cv2.resize(f, size, dst=out[i], interpolation=interp)
    return out


def _decode_decord(path: str, size_fn: SizeFn | None, max_frames: int | None, batch: int = 64):
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
    size = size_fn(w, h) if size_fn else None
    total = min(n, max_frames) if max_frames else n
    chunks = []
    for start in range(0, total, batch):
        idx = list(range(start, min(start + batch, total)))
        chunks.append(_resize_batch(vr.get_batch(idx).asnumpy(), size))
    info = VideoInfo(path=path, num_frames=n, fps=fps, width=w, height=h, backend="decord")
    return info, np.concatenate(chunks), size, total < n


def _decode_pyav(path: str, size_fn: SizeFn | None, max_frames: int | None):
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:
        raise VideoDecodeError(f"PyAV cannot open {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}", reason="no_video_stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        size = size_fn(w, h) if size_fn else None
        frames = []
        truncated = False
        try:
            for frame in container.decode(stream):
                if max_frames and len(frames) >= max_frames:
                    truncated = True
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
        except Exception as exc:
            # A truncated file decodes up to the damage; keep what was read if anything was.
            if not frames:
                raise VideoDecodeError(f"PyAV failed to decode {path}: {exc}") from exc
    if not frames:
        raise VideoDecodeError(f"no decodable frames in {path}", reason="no_frames")
    arr = _resize_batch(np.stack(frames), size)
    n = len(frames) if not truncated else max(stream.frames, len(frames))
    info = VideoInfo(path=path, num_frames=n, fps=fps, width=w, height=h, backend="pyav")
    return info, arr, size, truncated


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
) -> DecodedVideo:
    """Decode every frame of ``path`` once, resized to ``size_fn(width, height)``.

    backend: "decord", "pyav", or "auto" (decord, then PyAV if decord fails or hangs).
    max_frames: stop after this many frames (a memory guard for very long videos).
    Raises VideoDecodeError (reason: missing_file, empty_file, decode_error, no_frames, ...)
    or DecodeTimeout; never returns an empty video.
    """
    path = os.fspath(path)
    _check_file(path)
    order = {"auto": ["decord", "pyav"], "decord": ["decord"], "pyav": ["pyav"]}.get(backend)
    if order is None:
        raise ValueError(f"unknown video backend {backend!r}; expected auto, decord or pyav")
    errors: list[Exception] = []
    for name in order:
        fn = {"decord": _decode_decord, "pyav": _decode_pyav}[name]
        try:
            info, frames, size, truncated = _with_timeout(
                lambda: fn(path, size_fn, max_frames), timeout_s, path, name
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
        return DecodedVideo(info=info, frames=frames, scale=(sx, sy), truncated=truncated)
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
