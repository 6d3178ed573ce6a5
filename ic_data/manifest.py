"""The curation manifest: ``OUT/manifest.parquet``, one row per INPUT video, whatever happened.

A video that was kept has ``status="ok"`` and points at its shard and sample key; a video that
was dropped (``filtered``: low motion, too short, …) or broke (``failed``: decode error, …) has
a ``reason`` code from ``ic_data.errors``. The schema is explicit so that an empty manifest and
all-null columns still read back with the right types.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "MANIFEST_SCHEMA",
    "ManifestRow",
    "STATUSES",
    "read_manifest",
    "reason_counts",
    "status_counts",
    "video_id_for",
    "printable_path",
    "write_manifest",
]

STATUSES = ("ok", "filtered", "failed")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("damage", pa.string()),
        pa.field("cuts", pa.list_(pa.int64())),
        pa.field("dissolves", pa.list_(pa.list_(pa.int64()))),
        pa.field("wipes", pa.list_(pa.list_(pa.int64()))),
        pa.field("flashes", pa.list_(pa.list_(pa.int64()))),
        pa.field("scene_start", pa.int64()),
        pa.field("scene_end", pa.int64()),
        pa.field("num_frames", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("bars", pa.list_(pa.int64())),
        pa.field("motion_score", pa.float64()),
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),
        pa.field("chunk", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("camera_only", pa.bool_()),
        pa.field("flow_backend", pa.string()),
        pa.field("tracker_backend", pa.string()),
    ]
)


@dataclass
class ManifestRow:
    """One input video's fate. Only ``video_id``, ``path`` and ``status`` are required."""

    video_id: str
    path: str
    status: str
    reason: str | None = None  # a stable code: decode_error, too_short, low_motion, …
    error: str | None = None  # the full message of a failure, for a human
    # What a damaged file lost in decoding (packets that failed, corrupt frames, an early end),
    # whatever its status: a clip from such a file never spans the frames lost.
    damage: str | None = None
    cuts: list[int] | None = None  # None: never decoded; []: decoded, no cuts
    # [start, end) frame ranges whose frames blend two shots (dissolves), left out of every scene.
    dissolves: list[list[int]] | None = None
    # Likewise the frames that show two shots either side of a line sweeping across (wipes).
    wipes: list[list[int]] | None = None
    # Likewise the frames a flash lit (a camera's flash, lightning, a strobe's beat): no cut.
    flashes: list[list[int]] | None = None
    scene_start: int | None = None
    scene_end: int | None = None
    num_frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    # Bars (black, or blurred copies of the picture) found around the clip's frames, [left, top,
    # right, bottom] in the pixels of the
    # frames as decoded, and cut off (or, too_small, leaving too little picture); []: none;
    # None: no clip was sampled.
    bars: list[int] | None = None
    motion_score: float | None = None
    shard: str | None = None
    key: str | None = None
    chunk: str | None = None
    caption: str | None = None
    camera_only: bool | None = None
    flow_backend: str | None = None
    tracker_backend: str | None = None


_COLUMNS = [f.name for f in dataclasses.fields(ManifestRow)]
_ADDED_LATER = {"damage", "bars", "dissolves", "wipes", "flashes"}  # a manifest written before them reads back with None there
assert _COLUMNS == MANIFEST_SCHEMA.names, "ManifestRow and MANIFEST_SCHEMA must list the same columns"


def _check_rows(rows: list[ManifestRow]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row.status not in STATUSES:
            raise ValueError(f"video {row.video_id!r}: unknown status {row.status!r}, expected one of {STATUSES}")
        if not row.video_id:
            raise ValueError(f"empty video_id for path {row.path!r}")
        if row.video_id in seen:
            raise ValueError(f"duplicate video_id {row.video_id!r} in manifest")
        seen.add(row.video_id)


def _column(rows: list[ManifestRow], name: str) -> list:
    values = [getattr(row, name) for row in rows]
    if name in ("cuts", "bars"):
        return [[int(c) for c in value] if value is not None else None for value in values]
    if name in ("dissolves", "wipes", "flashes"):
        return [[[int(c) for c in pair] for pair in value] if value is not None else None for value in values]
    if name in ("path", "error", "damage"):  # they name files, whose names need not be UTF-8
        return [printable_path(value) if value is not None else None for value in values]
    return values


def write_manifest(path: str | os.PathLike, rows: list[ManifestRow]) -> None:
    """Write ``rows`` (sorted by ``video_id``) to a parquet file atomically (tmp + ``os.replace``).

    Raises ``ValueError`` on a duplicate ``video_id`` or a status outside ``STATUSES``.
    """
    rows = sorted(rows, key=lambda row: row.video_id)
    _check_rows(rows)
    table = pa.table(
        {name: pa.array(_column(rows, name), type=MANIFEST_SCHEMA.field(name).type) for name in _COLUMNS},
        schema=MANIFEST_SCHEMA,
    )
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = path + ".tmp"
    try:
        pq.write_table(table, tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read a manifest written by ``write_manifest`` back into ``ManifestRow``s."""
    if os.path.isdir(path):  # pyarrow would read the folder's parquet files as one table
        raise ValueError(f"{path} is a folder, not a manifest file (the curation's is OUT/manifest.parquet)")
    table = pq.read_table(os.fspath(path))
    missing = [name for name in _COLUMNS if name not in table.column_names and name not in _ADDED_LATER]
    if missing:
        raise ValueError(f"{path} is not a manifest: columns {missing} are missing")
    present = [name for name in _COLUMNS if name in table.column_names]
    return [ManifestRow(**{name: record[name] for name in present}) for record in table.to_pylist()]


def status_counts(rows: list[ManifestRow]) -> dict[str, int]:
    """Number of videos per status, every status listed (zeros included)."""
    counts = Counter(row.status for row in rows)
    return {status: counts.get(status, 0) for status in STATUSES}


def reason_counts(rows: list[ManifestRow]) -> dict[str, int]:
    """Number of filtered or failed videos per reason code, most frequent first."""
    counts = Counter(row.reason or "unknown" for row in rows if row.status != "ok")
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: The longest readable part of a video id: with its hash and ".small.gif" a preview's name stays
#: well inside a file system's 255 bytes.
MAX_READABLE_ID = 160


def printable_path(path: str) -> str:
    """``path`` as UTF-8 text: a name the file system holds in another encoding (its bytes
    come through as surrogate escapes, which Parquet and JSON files cannot hold) shows its
    undecodable bytes as ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def video_id_for(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A stable, WebDataset-safe id for the video at ``path`` under the input ``root``.

    The relative path without extension, with every run of characters outside
    ``[A-Za-z0-9_-]`` replaced by ``_``, then ``-`` and the first 8 hex digits of the SHA-1 of the
    relative POSIX path (with extension). The hash keeps ids unique when sanitising collapses two
    paths together (``a b.mp4`` vs ``a_b.mp4``, ``x.mp4`` vs ``x.webm``); being relative, the id
    is the same on every machine that mounts the dataset elsewhere. A readable part longer than
    ``MAX_READABLE_ID`` characters keeps its start and end around ``__`` (a file system holds
    names of 255 bytes, and the id names the clip's staged file and its previews).
    """
    relative = os.path.relpath(os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(root)))
    if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        raise ValueError(f"{path} is not inside the input root {root}")
    relative_posix = PurePosixPath(*relative.split(os.sep))
    stem = str(relative_posix.with_suffix("")) if relative_posix.suffix else str(relative_posix)
    readable = _UNSAFE.sub("_", stem).strip("_") or "video"
    if len(readable) > MAX_READABLE_ID:
        head = MAX_READABLE_ID * 2 // 3
        readable = f"{readable[:head]}__{readable[head + 2 - MAX_READABLE_ID:]}"
    # A name that is not UTF-8 comes from the file system as surrogate escapes: hash its bytes.
    digest = hashlib.sha1(str(relative_posix).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{digest}"
