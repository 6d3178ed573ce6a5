"""WebDataset shards of trajectory-annotated clips: the sample schema of DESIGN.md's data contract.

One sample per kept clip, six members per sample inside a plain tar::

    {key}.mp4             the clip, H.264 (T frames, H×W; 32 × 256×384 in the pipeline)
    {key}.tracks.npy      float32 (T, N, 2): x, y pixel coordinates in the clip
    {key}.visibility.npy  bool (T, N)
    {key}.sparse.npy      int64 (n,), 1 ≤ n ≤ 8: indices into the N tracks (one intensity-
                          weighted draw over the clip, for previews; training draws its own
                          for each 16-frame window)
    {key}.txt             caption, UTF-8
    {key}.json            metadata (see ``REQUIRED_META_KEYS``)

Shards are written atomically (``path + ".tmp"`` then ``os.replace``) and deterministically: the
same samples give a byte-identical tar (fixed member order, mtime, owner and mode; sorted JSON;
bit-exact MP4 encoding), so a rerun of curation can be checked with a checksum.
"""
from __future__ import annotations

import glob
import io
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import av
import numpy as np

from ic_data.errors import MissingInputError, ShardError
from ic_data.mp4 import decode_mp4, encode_mp4
from ic_data.video_io import decoder_message

__all__ = [
    "shard_paths",
    "npy_load",
    "ClipSample",
    "MAX_SPARSE_TRACKS",
    "MEMBER_SUFFIXES",
    "REQUIRED_META_KEYS",
    "clip_meta",
    "iter_shards",
    "read_shard",
    "unreadable_shard",
    "webdataset_shard_handler",
    "webdataset_pipeline",
    "write_shard",
]

MAX_SPARSE_TRACKS = 8

# Member order inside the tar for each sample; webdataset groups consecutive members by key.
MEMBER_SUFFIXES = ("mp4", "tracks.npy", "visibility.npy", "sparse.npy", "txt", "json")

REQUIRED_META_KEYS = (
    "source_path",
    "video_id",
    "fps",
    "frame_indices",
    "scale",
    "crop",
    "motion_score",
    "camera_only",
    "backends",
    "versions",
)

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")

# Fixed tar member attributes: nothing depends on the machine, the user or the clock.
_TAR_MTIME = 0
_TAR_MODE = 0o644
_TAR_OWNER = "ic"


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays through ``json.dumps`` as plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _meta_json(meta: dict) -> str:
    try:
        return json.dumps(
            meta, sort_keys=True, allow_nan=False, ensure_ascii=False, default=_json_default
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta is not JSON serialisable: {error}") from error


def clip_meta(
    *,
    source_path: str,
    video_id: str,
    fps: float,
    frame_indices: Iterable[int],
    scale: float | tuple[float, float],
    crop: tuple[int, int, int, int],
    motion_score: float,
    camera_only: bool,
    flow_backend: str,
    tracker_backend: str,
    versions: dict[str, str] | None = None,
    **extra: Any,
) -> dict:
    """Build the ``json`` metadata of one clip with plain Python types (numpy values converted).

    ``scale`` (one factor or ``[sx, sy]``) and ``crop = [x0, y0, w, h]`` record how source pixels
    map to clip pixels; ``extra`` keyword arguments are stored as further top-level keys.
    """
    if np.ndim(scale) == 0:
        scale_value: float | list[float] = float(scale)
    else:
        scale_value = [float(s) for s in scale]
    meta = {
        "source_path": str(source_path),
        "video_id": str(video_id),
        "fps": float(fps),
        "frame_indices": [int(i) for i in frame_indices],
        "scale": scale_value,
        "crop": [int(c) for c in crop],
        "motion_score": float(motion_score),
        "camera_only": bool(camera_only),
        "backends": {"flow": str(flow_backend), "tracker": str(tracker_backend)},
        "versions": dict(versions or {}),
    }
    meta.update(extra)
    return json.loads(_meta_json(meta))


def _probe_mp4(data: bytes) -> tuple[int, int, int]:
    """(frame count, height, width) of an MP4 from its header, without decoding."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("mp4 bytes hold no video stream")
            stream = container.streams.video[0]
            num_frames = stream.frames
            height, width = stream.codec_context.height, stream.codec_context.width
            if num_frames == 0:  # no frame count in the header: count packets instead
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as error:
        raise ValueError(f"mp4 bytes are not a readable video: {decoder_message(error)}") from error
    return num_frames, height, width


@dataclass
class ClipSample:
    """One curated clip. Give ``frames`` (uint8 (T, H, W, 3) RGB) or already-encoded ``mp4``.

    Construction validates the sample against the data contract and raises ``ValueError`` with
    the offending field; T, N and the clip size are taken from the arrays and checked against
    each other, not hard-coded.
    """

    key: str
    tracks: np.ndarray
    visibility: np.ndarray
    sparse: np.ndarray
    caption: str
    meta: dict
    frames: np.ndarray | None = field(default=None, repr=False)
    mp4: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_frames(self) -> int:
        return int(self.tracks.shape[0])

    @property
    def num_tracks(self) -> int:
        return int(self.tracks.shape[1])

    def decode_frames(self) -> np.ndarray:
        """The clip as uint8 (T, H, W, 3) RGB: ``frames`` if held, else the decoded ``mp4``."""
        if self.frames is not None:
            return self.frames
        return decode_mp4(self.mp4)

    def mp4_bytes(self, fps: float = 8.0, crf: int = 18) -> bytes:
        """The clip as MP4 bytes: ``mp4`` if held, else ``frames`` encoded at ``fps``."""
        if self.mp4 is not None:
            return bytes(self.mp4)
        return encode_mp4(self.frames, fps, crf=crf)

    def validate(self) -> None:
        if not isinstance(self.key, str) or not _KEY_PATTERN.match(self.key):
            raise ValueError(
                f"key must be a non-empty string of [A-Za-z0-9_-] (no dots: webdataset splits "
                f"the key at the first dot), got {self.key!r}"
            )
        tracks, visibility, sparse = self.tracks, self.visibility, self.sparse
        for name, value in (("tracks", tracks), ("visibility", visibility), ("sparse", sparse)):
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")

        if tracks.dtype != np.float32:
            raise ValueError(f"tracks must be float32, got {tracks.dtype}")
        if tracks.ndim != 3 or tracks.shape[2] != 2 or tracks.shape[0] < 1 or tracks.shape[1] < 1:
            raise ValueError(f"tracks must have shape (T, N, 2) with T, N >= 1, got {tracks.shape}")
        if not np.isfinite(tracks).all():
            raise ValueError("tracks hold NaN or infinite coordinates")
        num_frames, num_tracks = tracks.shape[:2]

        if visibility.dtype != np.bool_:
            raise ValueError(f"visibility must be bool, got {visibility.dtype}")
        if visibility.shape != (num_frames, num_tracks):
            raise ValueError(
                f"visibility must have shape (T, N) = {(num_frames, num_tracks)} to match tracks, "
                f"got {visibility.shape}"
            )

        if sparse.dtype != np.int64:
            raise ValueError(f"sparse must be int64, got {sparse.dtype}")
        if sparse.ndim != 1 or not 1 <= sparse.shape[0] <= MAX_SPARSE_TRACKS:
            raise ValueError(
                f"sparse must have shape (n,) with 1 <= n <= {MAX_SPARSE_TRACKS}, got {sparse.shape}"
            )
        if sparse.min() < 0 or sparse.max() >= num_tracks:
            raise ValueError(f"sparse indices must lie in [0, {num_tracks}), got {sparse.tolist()}")
        if len(np.unique(sparse)) != len(sparse):
            raise ValueError(f"sparse indices must be distinct, got {sparse.tolist()}")

        if not isinstance(self.caption, str):
            raise ValueError(f"caption must be a str, got {type(self.caption).__name__}")
        self._validate_meta(num_frames)
        self._validate_video(num_frames)

    def _validate_meta(self, num_frames: int) -> None:
        meta = self.meta
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        missing = [name for name in REQUIRED_META_KEYS if name not in meta]
        if missing:
            raise ValueError(f"meta lacks required keys: {missing}")
        if len(meta["frame_indices"]) != num_frames:
            raise ValueError(
                f"meta['frame_indices'] must list T = {num_frames} source frames, "
                f"got {len(meta['frame_indices'])}"
            )
        if len(meta["crop"]) != 4:
            raise ValueError(f"meta['crop'] must be [x0, y0, w, h], got {meta['crop']!r}")
        backends = meta["backends"]
        if not isinstance(backends, dict) or not {"flow", "tracker"} <= set(backends):
            raise ValueError(f"meta['backends'] must name 'flow' and 'tracker', got {backends!r}")
        _meta_json(meta)

    def _validate_video(self, num_frames: int) -> None:
        if (self.frames is None) == (self.mp4 is None):
            raise ValueError("give exactly one of frames (uint8 array) or mp4 (encoded bytes)")
        if self.frames is not None:
            frames = self.frames
            if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
                raise ValueError(f"frames must be a uint8 array, got {getattr(frames, 'dtype', type(frames))}")
            if frames.ndim != 4 or frames.shape[3] != 3:
                raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
            count, height, width = frames.shape[:3]
        else:
            if not isinstance(self.mp4, (bytes, bytearray, memoryview)):
                raise ValueError(f"mp4 must be bytes, got {type(self.mp4).__name__}")
            count, height, width = _probe_mp4(bytes(self.mp4))
        if count != num_frames:
            raise ValueError(f"the clip has {count} frames but tracks have T = {num_frames}")
        if height % 2 or width % 2:
            raise ValueError(f"clip width and height must be even for H.264, got {width}x{height}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    """An ``.npy`` member's array, never unpickled. ``ValueError`` for one whose header is not
    ``.npy``'s or declares more data than the member holds (a header of 20 billion floats would
    otherwise be allocated before its bytes are found missing)."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:  # 3.0 (a UTF-8 header): numpy itself reads it, below
            return np.load(io.BytesIO(data), allow_pickle=False)
        shape, _, dtype = read_header[version](buffer)
    except (ValueError, SyntaxError, TypeError) as error:  # not an .npy, or a header that does not parse
        raise ValueError(f"not a .npy array ({error})") from None
    needed = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and needed > len(data) - buffer.tell():
        raise ValueError(f"its header declares a {dtype} array of shape {shape} ({needed:,} bytes), "
                         f"the member holds {len(data) - buffer.tell():,}")
    return np.load(io.BytesIO(data), allow_pickle=False)


def _sample_members(sample: ClipSample, fps: float, crf: int) -> list[tuple[str, bytes]]:
    payloads = {
        "mp4": sample.mp4_bytes(fps=fps, crf=crf),
        "tracks.npy": _npy_bytes(sample.tracks),
        "visibility.npy": _npy_bytes(sample.visibility),
        "sparse.npy": _npy_bytes(sample.sparse),
        "txt": sample.caption.encode("utf-8"),
        "json": _meta_json(sample.meta).encode("utf-8"),
    }
    return [(f"{sample.key}.{suffix}", payloads[suffix]) for suffix in MEMBER_SUFFIXES]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = _TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = _TAR_OWNER
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    path: str | os.PathLike, samples: Iterable[ClipSample], *, fps: float = 8.0, crf: int = 18
) -> list[str]:
    """Write ``samples`` into one WebDataset tar at ``path``; return their keys in order.

    Samples holding ``frames`` are encoded at ``fps`` (clips are played at the paper's 8 fps;
    the source rate and frame numbers are in the metadata). The tar is written to
    ``path + ".tmp"`` and renamed into place, so an interrupted run never leaves a partial
    shard under the final name. Duplicate keys raise ``ValueError``.
    """
    path = os.fspath(path)
    tmp_path = path + ".tmp"
    keys: list[str] = []
    seen: set[str] = set()
    try:
        with open(tmp_path, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for sample in samples:
                    sample.validate()
                    if sample.key in seen:
                        raise ValueError(f"duplicate sample key {sample.key!r} in shard {path}")
                    seen.add(sample.key)
                    for name, data in _sample_members(sample, fps, crf):
                        _add_member(tar, name, data)
                    keys.append(sample.key)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return keys


def unreadable_shard(path: str, error: BaseException) -> ShardError:
    """``shard PATH: not a readable tar file (ReadError: …)``, on one line."""
    if isinstance(error, OSError) and error.strerror:
        problem = error.strerror
    else:  # webdataset appends " @ <file object>" to the message
        problem = " ".join(str(error.args[0] if error.args else error).split(" @ <")[0].split())
        tried = re.search(r"method tar: \w+\('([^']*)'\)", problem)  # tarfile lists each compression it tried
        problem = tried.group(1) if tried else problem
    return ShardError(f"shard {path}: not a readable tar file ({type(error).__name__}: {problem})")


class _ShardReadPending(Exception):
    """A tar error raised below the level of webdataset's reader that knows the shard's url."""


def webdataset_shard_handler(error: BaseException) -> bool:
    """webdataset's handler for a shard it cannot open or expand: one ``ShardError`` naming it.

    webdataset calls it at several levels. The innermost (reading members) marks the message
    with " @ <file object>" and knows no url: its error goes up once more, to the level that
    appends the shard's url to the error's args.
    """
    if error.args and " @ <" in str(error.args[0]):
        raise _ShardReadPending() from error
    url = error.args[-1] if len(error.args) > 1 and isinstance(error.args[-1], str) else "(unknown)"
    original = error.__cause__ if isinstance(error, _ShardReadPending) else error
    raise unreadable_shard(url, original) from original


def _split_member_name(name: str, path: str) -> tuple[str, str]:
    base = os.path.basename(name)
    key, dot, suffix = base.partition(".")
    if not dot:
        raise ShardError(f"shard {path}: tar member {name!r} has no extension")
    return key, suffix


def _sample_from_members(key: str, members: dict[str, bytes], path: str) -> ClipSample:
    missing = [suffix for suffix in MEMBER_SUFFIXES if suffix not in members]
    if missing:
        raise ShardError(f"shard {path}, sample {key!r}: lacks members {missing}")
    try:
        return ClipSample(
            key=key,
            tracks=npy_load(members["tracks.npy"]),
            visibility=npy_load(members["visibility.npy"]),
            sparse=npy_load(members["sparse.npy"]),
            caption=members["txt"].decode("utf-8"),
            meta=json.loads(members["json"].decode("utf-8")),
            mp4=members["mp4"],
        )
    except ValueError as error:  # a bad .npy, a caption or json that is not UTF-8 (JSON)
        raise ShardError(f"shard {path}, sample {key!r}: malformed ({type(error).__name__}: {error})") from error


def read_shard(path: str | os.PathLike) -> Iterator[ClipSample]:
    """Yield the samples of one shard in order, with ``mp4`` kept as bytes (see ``decode_frames``).
    A damaged shard raises ``ShardError`` naming it."""
    path = os.fspath(path)
    current_key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, suffix = _split_member_name(info.name, path)
                if key != current_key:
                    if current_key is not None:
                        yield _sample_from_members(current_key, members, path)
                    current_key, members = key, {}
                members[suffix] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError) as error:
        raise unreadable_shard(path, error) from error
    if current_key is not None:
        yield _sample_from_members(current_key, members, path)


def iter_shards(paths: Iterable[str | os.PathLike]) -> Iterator[ClipSample]:
    """Yield the samples of several shards, shard by shard, in the given order."""
    for path in paths:
        yield from read_shard(path)


def _decode_field(key: str, data: bytes) -> Any:
    """webdataset decoder: npy/json/txt decoded, anything else (the mp4) left as bytes."""
    suffix = key.lower()
    if suffix.endswith("npy"):
        return npy_load(data)
    if suffix.endswith("json"):
        return json.loads(data.decode("utf-8"))
    if suffix.endswith("txt"):
        return data.decode("utf-8")
    return None


def webdataset_pipeline(urls: str | list[str]):
    """A plain ``webdataset.WebDataset`` over our shards, yielding dicts keyed like the tar.

    Each item has ``__key__``, ``mp4`` (bytes), ``tracks.npy``, ``visibility.npy``, ``sparse.npy``
    (numpy arrays), ``txt`` (str) and ``json`` (dict). Shards are read in order (no shuffling).
    """
    import webdataset as wds

    return wds.WebDataset(urls, shardshuffle=False).decode(_decode_field)


def shard_paths(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolve ``urls`` to a list of shard paths.

    A directory gives its ``*.tar`` files sorted by name, a pattern with ``*?[`` its sorted
    matches, a single file itself, and a list or tuple each entry in order. Raises
    ``FileNotFoundError`` naming the path when nothing (or a missing file) is found.
    """
    if isinstance(urls, (list, tuple)):
        if not urls:
            raise MissingInputError("no shards: the list of shard paths is empty")
        return [path for url in urls for path in shard_paths(url)]
    url = os.fspath(urls)
    if os.path.isdir(url):
        paths = sorted(glob.glob(os.path.join(glob.escape(url), "*.tar")))
        if not paths:
            raise MissingInputError(f"no *.tar shards in directory {url}")
        return paths
    if glob.has_magic(url):
        paths = sorted(glob.glob(url))
        if not paths:
            raise MissingInputError(f"no shards match {url}")
        return paths
    if not os.path.isfile(url):
        raise MissingInputError(f"shard {url} does not exist")
    return [url]
