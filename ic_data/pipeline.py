"""The curation chain as library functions over chunks of videos (paper §2.2, Fig. 2b).

    discover → chunks → [per chunk] decode once → cuts → longest scene → clip sampling →
    black bars → motion score → centre crop → staged clip  ║ barrier: dataset-wide motion threshold ║
    [per chunk] tracking → sparse sampling → captions → shard  → manifest

Stage 1 and stage 2 each persist one small JSON result per chunk under ``OUT/work/``; a chunk
whose result exists is not recomputed, so an interrupted run resumes where it stopped and a
repeated run is a no-op. Results are written atomically (temp file + rename). Orchestrators
(the Prefect flows, or ``curate`` below for plain Python) call these functions; frames never
leave a stage: stage 1 hands stage 2 the path of an H.264 clip it staged, the clip that ends
up in the shard.

Every input video ends in exactly one manifest row: ``ok``, ``filtered`` (below the motion
threshold) or ``failed`` (with the reason of the stage that rejected it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ic_data import clips as clipmod
from ic_data.errors import CurationError, VideoDecodeError, VideoTooShort, VideoTooSmall
from ic_data.settings import empty_path, number, one_of, refuse, text, truth, whole
from ic_data.workers import DEFAULT_MAX_DECODE_FRAMES, run_in_workers

#: What curation takes for a video, by the file's extension (any case); PyAV reads each (an animated
#: GIF too). The other files of the input folder are counted in the summary (``other_files``).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts",
                    ".m2ts", ".mts", ".3gp", ".ogv", ".mxf", ".y4m", ".gif")
STAGE1_DIR = "work/scores"
STAGE2_DIR = "work/rows"
STAGING_DIR = "work/clips"
SHARD_DIR = "shards"
OUTPUT_DIRS = ("work", SHARD_DIR, "previews")  # the folders a curation writes under OUT
#: Written into OUT before a curation analyses its first video: a folder holding it (or a
#: manifest) is a curation's output, even one interrupted before its manifest was written,
#: and its staged clips are no inputs to another.
OUT_MARKER = "work/curation-output"
#: Changes whenever the choice of a video's clip changes (which frames: cut detection, scenes;
#: which part of them: black bars; how they are made), so that chunks analysed before are
#: analysed again. 2: cut detection inside black bars, black frames and fades left out, bars
#: through ringing, subtitles and logos. 3: dissolves left out. 4: white frames and the fades to
#: white left out; frames enlarged for their bars from the source's own pixels; blurred bars.
#: 5: frames of one flat colour (a dip to grey or red between shots) and the fades to them;
#: wipes left out. 6: cuts found on brightness alone too (dithered GIFs, grainy footage).
#: 7: flashes are no cuts, and their frames are left out; a damaged file's frame times in decode
#: order place no gaps.
CLIP_CHOICE_VERSION = "7"
#: A clip's frames decoded again (at the size its bars ask for) are the frames chosen when
#: each is within this mean absolute difference (of 255) of the first decode's, both shrunk to a
#: quarter of the analysis width. Measured on 720p and 1080p noise textures and real pictures
#: under pans, PyAV and decord: at most 0.6; the next frame instead, 0.3 (a soft picture under a
#: pan of 1 px a frame, where it hardly matters) to 11.
SAME_FRAME = 1.0


@dataclass(frozen=True)
class CurationConfig:
    """Everything that decides the output of a curation run (its fingerprint keys the chunks)."""

    source: str = "webvid"  # webvid (mixed motion) | realestate10k (camera only)
    camera_only: bool = False
    seed: int = 0
    flow: str = "dis"  # dis | raft
    tracker: str = "lk"  # lk | cotracker
    cut_detector: str = "adaptive"  # adaptive | content
    drop_fraction: float = 0.25
    motion_pairs: int = 8  # adjacent pairs (evenly spaced) the motion score averages over
    clip_frames: int = clipmod.CLIP_FRAMES
    clip_width: int = clipmod.CLIP_WIDTH
    clip_height: int = clipmod.CLIP_HEIGHT
    max_stride: int = clipmod.MAX_STRIDE
    grid_size: int = 16
    max_tracks: int = 8
    max_upscale: float = 2.0
    max_decode_frames: int = DEFAULT_MAX_DECODE_FRAMES
    captions_csv: str | None = None
    captioner: str = "none"  # none | blip2
    flow_options: dict = field(default_factory=dict)
    tracker_options: dict = field(default_factory=dict)
    # Not part of the fingerprint: they change how, not what, is computed.
    decode_timeout_s: float = 300.0
    # Worker processes for the per-video work of a chunk (0: in the calling thread). Threads
    # alone leave cores idle: the tracker and the cut detector run many small NumPy and Python
    # steps under the GIL. One pool per process, shared by every chunk running in it.
    processes: int = 0

    def __post_init__(self):
        from ic_data.cuts import DETECTORS
        from ic_data.motion import FLOW_BACKENDS
        from ic_data.tracking import TRACKERS

        # Refused here, not as a failed row per video (numpy's generators take no negative seed,
        # a clip of 0 frames has no flow) or an exception after every video was scored.
        refuse("CurationConfig", [
            text("source", self.source, empty=False),
            truth("camera_only", self.camera_only),
            whole("seed", self.seed, 0, 2**63 - 1),
            text("flow", self.flow) or one_of("flow", self.flow.lower(), FLOW_BACKENDS),
            one_of("tracker", self.tracker, TRACKERS),
            one_of("cut_detector", self.cut_detector, DETECTORS),
            number("drop_fraction", self.drop_fraction, 0, 1)
            or (f"drop_fraction must be in [0, 1), got {self.drop_fraction!r}" if self.drop_fraction == 1 else None),
            whole("motion_pairs", self.motion_pairs, 1),
            whole("clip_frames", self.clip_frames, 2),
            whole("clip_width", self.clip_width, 8),
            whole("clip_height", self.clip_height, 8),
            whole("max_stride", self.max_stride, 1),
            whole("grid_size", self.grid_size, 1),
            whole("max_tracks", self.max_tracks, 1, 8),  # the paper samples 1–8 sparse tracks
            number("max_upscale", self.max_upscale, 1),
            whole("max_decode_frames", self.max_decode_frames, 2),
            None if self.captions_csv is None else text("captions_csv", self.captions_csv, empty=False),
            one_of("captioner", self.captioner, ("none", "blip2")),
            None if isinstance(self.flow_options, dict) else f"flow_options must be a mapping, got {self.flow_options!r}",
            None if isinstance(self.tracker_options, dict)
            else f"tracker_options must be a mapping, got {self.tracker_options!r}",
            number("decode_timeout_s", self.decode_timeout_s, 0, above=True),
            whole("processes", self.processes, 0),
        ])

    def fingerprint(self) -> str:
        """A hash of everything that decides a chunk's outputs: the settings, the version of
        how a clip is chosen (``CLIP_CHOICE_VERSION``) and the offline tracker's algorithm
        version, so a rerun after an upgrade that changed either analyses again instead of
        keeping the earlier results. (CoTracker's weights are named by the settings that
        locate them.)"""
        from ic_data.tracking.lk import LKTracker

        d = dataclasses.asdict(self)
        d.pop("decode_timeout_s")
        d.pop("processes")
        d["clip_choice_version"] = CLIP_CHOICE_VERSION
        if self.tracker == "lk":
            d["tracker_version"] = self.tracker_options.get("version", LKTracker.version)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Chunk:
    """A batch of videos processed by one task; ``key`` is deterministic in (videos, config)."""

    key: str
    videos: tuple[tuple[str, str], ...]  # (video_id, path)
    captions: tuple[tuple[str, str], ...] = ()  # (video_id, WebVid caption) of the videos the CSV names


@dataclass
class Candidate:
    """What stage 1 learnt about one video (JSON-serialisable, small)."""

    video_id: str
    path: str
    status: str = "scored"  # scored | failed
    reason: str | None = None
    error: str | None = None
    num_frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None  # upright (after the display matrix's turn)
    rotation: int = 0  # clockwise degrees the stored frames were turned to show them upright
    decoder: str | None = None
    truncated: bool = False
    damage: str | None = None  # what a damaged file lost in decoding (see video_io.DecodedVideo)
    cuts: list[int] = field(default_factory=list)
    dissolves: list[list[int]] = field(default_factory=list)  # [start, end) of frames blending two shots
    wipes: list[list[int]] = field(default_factory=list)  # [start, end) of frames with two shots side by side
    flashes: list[list[int]] = field(default_factory=list)  # [start, end) of frames a flash lit
    scene_start: int | None = None
    scene_end: int | None = None
    frame_indices: list[int] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    crop: list[int] = field(default_factory=list)
    # Bars around the picture (black, or blurred copies of it), cut off: [left, top, right,
    # bottom] in the pixels of the frames as decoded (before any enlargement); empty where there
    # are none, None before a clip is sampled.
    bars: list[int] | None = None
    motion_score: float | None = None
    flow_backend: str | None = None
    flow_version: str | None = None
    staged_clip: str | None = None  # relative to the output folder
    clip_fps: float | None = None
    caption: str | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # for benchmarks and logs


# ----------------------------------------------------------------------------- discovery


def discover_videos(
    root: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS, out_dir: str | os.PathLike | None = None,
    others: Counter | None = None,
) -> list[tuple[str, str]]:
    """(video_id, absolute path) of every entry under ``root`` whose suffix looks like a video.

    Entries are matched by extension only, so a corrupt or fake ``.mp4`` is still an input and
    gets its ``failed`` row, and so does one that is no regular file (a FIFO, a device, a link to
    one): only folders are walked into rather than listed. A folder below ``root`` that cannot be
    listed (no permission) is an entry itself, so its ``failed`` row says its videos were not
    curated; ``root`` itself unlistable is a ``BadInputError``. A symbolic link is listed by its
    own path (its name is the WebVid id its caption is looked up by), not its target's, and a
    linked folder is not walked into. With ``out_dir`` inside ``root``, the curation's own files
    there (staged clips, shards, previews) are not inputs, nor are those of any other curation's
    OUT found there (a folder holding ``manifest.parquet`` or, written before its first video,
    ``OUT_MARKER``: one interrupted). Sorted by video id.

    ``others``: counts the files left out, by extension (lower case; ``""`` for none), so that a
    summary can say what was passed by; hidden files (``.DS_Store``) and whatever is inside
    ``out_dir`` are not counted.
    """
    from ic_data.errors import BadInputError, MissingInputError
    from ic_data.manifest import video_id_for

    problem = empty_path("the video folder", root)
    if problem:
        raise BadInputError(problem)
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"video folder not found: {root}")
    exts = {e.lower() for e in extensions}
    own = set() if out_dir is None else {os.path.realpath(Path(out_dir) / d) for d in OUTPUT_DIRS}
    out = None if out_dir is None else os.path.realpath(out_dir)
    inside = os.path.realpath(root)
    if any(_within(inside, d) for d in own):
        return []  # ``root`` is one of OUT's own folders
    unlisted: list[OSError] = []
    found = []
    for folder, dirs, files in os.walk(root, onerror=unlisted.append):  # links to folders: in dirs, not walked
        if own:  # OUT's own folders (and what is below them) are never walked into
            dirs[:] = [d for d in dirs if os.path.islink(os.path.join(folder, d))
                       or os.path.realpath(os.path.join(folder, d)) not in own]
        if "manifest.parquet" in files or os.path.isfile(os.path.join(folder, OUT_MARKER)):
            # An earlier curation's OUT, finished or not: its clips and previews are no inputs,
            # and its manifest and summary no files passed by.
            dirs[:] = [d for d in dirs if d not in OUTPUT_DIRS]
            files = [f for f in files if f not in ("manifest.parquet", "summary.json")]
        count = others is not None and not (out and _within(os.path.realpath(folder), out))
        for k, name in enumerate(dirs + files):
            p = Path(folder, name)
            if p.suffix.lower() in exts and (p.is_symlink() or not p.is_dir()):
                found.append((video_id_for(str(p), str(root)), os.path.abspath(p)))  # ".." folded, links kept
            elif count and k >= len(dirs) and not name.startswith("."):
                others[p.suffix.lower()] += 1
    for err in unlisted:
        where = Path(err.filename) if err.filename else root
        if where == root:
            raise BadInputError(f"cannot list the video folder {root}: {err.strerror or err}")
        found.append((video_id_for(str(where), str(root)), os.path.abspath(where)))
    return sorted(found)  # ids embed a hash of the relative path: unique per input


def mark_output(out_dir: str | os.PathLike) -> None:
    """Mark ``out_dir`` as a curation's output (``OUT_MARKER``), once."""
    marker = Path(out_dir) / OUT_MARKER
    if marker.is_file():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:  # chunks scored at once may each get here first: the first to create it writes it
        with open(marker, "x", encoding="utf-8") as handle:
            handle.write("This folder is the output of `ic curate`: no curation takes its files for inputs.\n")
    except FileExistsError:
        pass


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (both real paths)."""
    return path == folder or path.startswith(folder + os.sep)


def other_files_line(others: Counter, most: int = 5) -> str:
    """``others`` (see :func:`discover_videos`) in words, the commonest extensions first (ties
    by name, files without one last): "12 .png, 2 .txt, 1 without an extension"."""
    ranked = sorted(others.items(), key=lambda item: (-item[1], item[0] == "", item[0]))
    words = [f"{n} {ext or 'without an extension'}" for ext, n in ranked[:most]]
    rest = sum(n for _, n in ranked[most:])
    return ", ".join(words + ([f"{rest} more"] if rest else []))


def plan_chunks(videos: Sequence[tuple[str, str]], config: CurationConfig, chunk_size: int = 32) -> list[Chunk]:
    """Split the sorted inputs into chunks; a chunk's key hashes the config, its videos' ids and
    sizes in bytes, and their captions: a file replaced by another copy (a truncated download
    fetched again) or a caption edited in the CSV gets its chunk curated anew on a rerun, where
    the ids alone would reuse the earlier result. (Not the modification times: a copy of the same
    inputs elsewhere keeps its keys, and so its byte-identical shards and manifest.)

    With ``captions_csv`` the CSV is read here, once, keeping only the captions of these videos:
    each chunk carries its own, so no worker holds WebVid's millions of rows.
    """
    from ic_data.captions import caption_for, load_webvid_captions

    if chunk_size < 1:
        raise ValueError("chunk_size must be ≥ 1")
    captions = {}
    if config.captions_csv:
        captions = load_webvid_captions(config.captions_csv, only={Path(p).stem for _, p in videos})
    fp = config.fingerprint()
    chunks = []
    for i in range(0, len(videos), chunk_size):
        part = tuple(sorted(videos[i : i + chunk_size]))
        named = tuple((v, c) for v, c in ((v, caption_for(p, captions)) for v, p in part) if c is not None)
        listed = "\n".join([f"{v}\t{_size(p)}" for v, p in part] + [f"{v}\t{c}" for v, c in named])
        digest = hashlib.sha1((fp + "\n" + listed).encode()).hexdigest()[:10]
        chunks.append(Chunk(key=f"chunk-{i // chunk_size:05d}-{digest}", videos=part, captions=named))
    return chunks


def uncaptioned_line(chunks: Sequence[Chunk], config: CurationConfig, most: int = 3) -> str | None:
    """With a captions CSV, the videos it has no row for (curated with an empty caption, or
    BLIP-2's), in one line; None when it names every video or there is no CSV."""
    if not config.captions_csv:
        return None
    missing = []
    for chunk in chunks:
        named = {v for v, _ in chunk.captions}
        missing += [v for v, _ in chunk.videos if v not in named]
    if not missing:
        return None
    total = sum(len(c.videos) for c in chunks)
    then = "BLIP-2 captions them" if config.captioner == "blip2" else "their clips get an empty caption"
    more = f", … ({len(missing) - most} more)" if len(missing) > most else ""
    return (f"{len(missing)} of {total} videos have no row in {config.captions_csv} ({then}): "
            f"{', '.join(missing[:most])}{more}")


def _size(path: str) -> int:
    """Bytes in the file at ``path`` (links followed); -1 where it cannot be read (its row says why)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


# ----------------------------------------------------------------------------- helpers


def video_rng(seed: int, video_id: str, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, video, purpose): independent of chunking/order."""
    h = int(hashlib.sha1(video_id.encode()).hexdigest()[:12], 16)
    return np.random.default_rng([seed, h, stream])


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _failure(c: Candidate, exc: BaseException) -> Candidate:
    c.status = "failed"
    if isinstance(exc, CurationError):
        c.reason = exc.reason
        c.error = str(exc)
        # A refusal of the size (too_small) comes before the decoder's info: it carries the size.
        for name in ("width", "height", "fps"):
            if getattr(c, name) is None and getattr(exc, name, None) is not None:
                setattr(c, name, getattr(exc, name))
    else:  # an unexpected error (a bug, an odd file) is still recorded against the video
        c.reason = f"error_{type(exc).__name__}"
        c.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return c


def library_versions() -> dict[str, str]:
    import cv2
    import scenedetect

    from importlib.metadata import PackageNotFoundError, version

    out = {"opencv": cv2.__version__, "scenedetect": scenedetect.__version__, "numpy": np.__version__}
    for pkg in ("image-conductor", "decord", "av"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class _Laps:
    """Accumulates wall time per stage into a dict: ``lap("cuts")`` closes the current lap."""

    def __init__(self, sink: dict[str, float]):
        self.sink, self.t = sink, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.sink[name] = self.sink.get(name, 0.0) + now - self.t
        self.t = now


# ----------------------------------------------------------------------------- stage 1


class Stage1:
    """Per-video analysis up to the motion score; holds the flow backend across videos."""

    def __init__(self, config: CurationConfig, out_dir: str | os.PathLike):
        from ic_data.motion import make_flow_backend

        self.config = config
        self.out_dir = Path(out_dir)
        self.flow = make_flow_backend(config.flow, **config.flow_options)

    def analyse(self, video_id: str, path: str) -> Candidate:
        from ic_data.cuts import (
            ANALYSIS_WIDTH, FADE_LEVEL, FLAT_LEVEL, WHITE_LEVEL, detect_cuts, lit_scenes, longest_scene,
            scenes_from_cuts, without,
        )
        from ic_data.motion import motion_score
        from ic_data.mp4 import MAX_FPS, MIN_FPS, write_mp4
        from ic_data.video_io import decode_video

        cfg = self.config
        c = Candidate(video_id=video_id, path=path, flow_backend=self.flow.name, flow_version=self.flow.version)
        t0 = time.perf_counter()
        laps = _Laps(c.stage_seconds)
        try:
            video = decode_video(
                path,
                lambda w, h: clipmod.resized_size(w, h, cfg.clip_width, cfg.clip_height, cfg.max_upscale),
                max_frames=cfg.max_decode_frames,
                timeout_s=cfg.decode_timeout_s,
                thumbnail_width=ANALYSIS_WIDTH,
            )
            info = video.info
            c.num_frames, c.fps, c.width, c.height = video.num_frames, info.fps, info.width, info.height
            c.decoder, c.truncated, c.scale = info.backend, video.truncated, [float(s) for s in video.scale]
            c.rotation, c.damage = info.rotation, video.damage
            laps.lap("decode")
            thumbs = video.thumbnails if video.thumbnails is not None else video.frames  # already narrow
            found = detect_cuts(thumbs, info.fps, detector=cfg.cut_detector)
            laps.lap("cuts")
            c.cuts = [int(x) for x in found.cuts]
            c.dissolves = [[int(s), int(e)] for s, e in found.dissolves]
            c.wipes = [[int(s), int(e)] for s, e in found.wipes]
            c.flashes = [[int(s), int(e)] for s, e in found.flashes]
            # Where a damaged file lost frames, the frames either side are not neighbours: a
            # clip never spans that gap, as it never spans a cut. Black, white or other flat
            # frames and the fades beside them are no scene's: a clip opening on one would start
            # nearly black (or washed out), and a dip to a colour joins two shots without a cut.
            # Nor are a dissolve's or a wipe's frames, two shots at once, or a flash's.
            bounds = sorted(set(c.cuts) | set(video.breaks))
            scenes = lit_scenes(scenes_from_cuts(bounds, video.num_frames), found.brightness, found.highlights,
                                found.shadows, found.contrast)
            scenes = without(scenes, found.dissolves + found.wipes + found.flashes) or [(0, 0)]
            c.scene_start, c.scene_end = (int(x) for x in longest_scene(scenes))
            try:
                idx = clipmod.sample_clip_indices(
                    (c.scene_start, c.scene_end), video_rng(cfg.seed, video_id, 0), cfg.clip_frames, cfg.max_stride
                )
            except VideoTooShort as exc:
                black, white, flat = (int(found.black().sum()), int(found.white().sum()), int(found.flat().sum()))
                blended = sum(e - s for s, e in found.dissolves)
                wiped = sum(e - s for s, e in found.wipes)
                lit = sum(e - s for s, e in found.flashes)
                if video.damage is None and (black or white or flat or blended or wiped or lit):
                    n = video.num_frames
                    left = [f"{black} of {n} frames are black: mean under {FADE_LEVEL:g} of 255"] * bool(black)
                    left += [f"{white} of {n} frames are white: mean over {WHITE_LEVEL:g}"] * bool(white)
                    left += [f"{flat} of {n} frames are one flat colour: contrast under {FLAT_LEVEL:g}"] * bool(flat)
                    left += [f"{blended} frames blend two shots in {len(found.dissolves)} dissolve(s)"] * bool(blended)
                    left += [f"{wiped} frames show two shots in {len(found.wipes)} wipe(s)"] * bool(wiped)
                    left += [f"{lit} frames are lit by {len(found.flashes)} flash(es)"] * bool(lit)
                    raise VideoTooShort(f"{Exception.__str__(exc)}, once black, white and flat frames, fades, "
                                        f"dissolves, wipes and flashes are left out ({'; '.join(left)})") from exc
                if video.damage is None:
                    raise
                # Too short because the file is damaged: that is the failure to report.
                raise VideoDecodeError(
                    f"{path}: {video.damage}; what decodes unbroken is too short: {Exception.__str__(exc)}"
                ) from exc
            c.frame_indices = [int(i) for i in idx]
            frames = video.select(idx)
            # Black bars (letterbox, pillarbox), and bars that are blurred copies of the picture
            # (a portrait video in a landscape frame), are no part of it: the motion is scored
            # and the clip cropped inside them, enlarging the frames where the picture is
            # narrower than the clip (within max_upscale of the source, as any video). The
            # enlarged frames are made from the source's own pixels: those the decoder kept
            # (sources up to twice the analysis size), else the clip's frames decoded again.
            # Enlarging the analysis-size frames instead would blur away the source's detail.
            height, width = frames.shape[1:3]
            picture = clipmod.picture_box(frames)
            if picture == (0, 0, width, height):  # no black bars: blurred copies of the picture?
                picture = clipmod.blurred_box(frames) or picture
            px, py, pw, ph = picture
            c.bars = [px, py, width - px - pw, height - py - ph] if (pw, ph) != (width, height) else []
            size, factors, box = clipmod.crop_plan(width, height, picture, cfg.clip_width, cfg.clip_height)
            c.scale = [c.scale[0] * factors[0], c.scale[1] * factors[1]]
            if size is not None and max(c.scale) > cfg.max_upscale:  # enlarged for its bars
                raise VideoTooSmall(
                    f"the picture inside its bars ({pw}x{ph} of {width}x{height}) would need "
                    f"{max(c.scale):.2f}x upscaling for a {cfg.clip_width}x{cfg.clip_height} crop "
                    f"(limit {cfg.max_upscale}x)")
            whole = size is not None and video.whole(idx)
            enlarged = video.select(idx, size) if whole else frames
            del video  # the full decoded video is the largest thing in memory: drop it early
            if size is not None and not whole:  # a larger source: its frames were kept small
                enlarged = self._whole_frames(path, idx, size, info.backend, frames)
            laps.lap("clip")
            c.motion_score = float(motion_score(frames[:, py : py + ph, px : px + pw], self.flow, cfg.motion_pairs))
            laps.lap("motion")
            c.crop = [int(b) for b in box]
            stride = int(idx[1] - idx[0]) if len(idx) > 1 else 1
            # Within what an MP4 written here may hold (a timelapse's 0.1 fps at stride 16 is below it).
            c.clip_fps = min(MAX_FPS, max(MIN_FPS, float(info.fps / stride))) if info.fps > 0 else 8.0
            clip = clipmod.crop_frames(enlarged, box)
        except Exception as exc:  # a property of this video: recorded, the chunk goes on
            _failure(c, exc)
        else:
            # Writing our own output is outside the try: an I/O error there is transient and
            # must reach the orchestrator (which retries the chunk), not become a failed row.
            c.staged_clip = f"{STAGING_DIR}/{video_id}.mp4"
            staged = self.out_dir / c.staged_clip
            staged.parent.mkdir(parents=True, exist_ok=True)
            write_mp4(staged, clip, fps=c.clip_fps)
            laps.lap("encode")
        c.seconds = time.perf_counter() - t0
        return c

    def _whole_frames(self, path: str, indices, size: tuple[int, int], backend: str, frames: np.ndarray) -> np.ndarray:
        """Frames ``indices`` of ``path`` made at ``size`` from the source's own pixels: decoded
        again by the same backend, keeping only them. Where that decode fails, or a frame it
        gives is not the one ``frames`` (the same at the analysis size) holds, ``frames``
        enlarged (bicubic), as all were before."""
        import cv2

        from ic_data.video_io import decode_video

        quarter = (max(1, frames.shape[2] // 4), max(1, frames.shape[1] // 4))

        def coarse(frame: np.ndarray) -> np.ndarray:
            return cv2.resize(frame, quarter, interpolation=cv2.INTER_AREA).astype(np.int16)

        try:
            again = decode_video(path, lambda w, h: size, max_frames=int(max(indices)) + 1, backend=backend,
                                 timeout_s=self.config.decode_timeout_s, keep=indices).select(indices)
        except (CurationError, IndexError):
            again = None
        if again is not None and max(np.abs(coarse(a) - coarse(f)).mean() for a, f in zip(again, frames)) <= SAME_FRAME:
            return again
        return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames])


def stage1_result_path(out_dir: str | os.PathLike, chunk: Chunk) -> Path:
    return Path(out_dir) / STAGE1_DIR / f"{chunk.key}.json"


def run_stage1_chunk(chunk: Chunk, config: CurationConfig, out_dir: str | os.PathLike, stage: Stage1 | None = None) -> Path:
    """Analyse every video of a chunk (or reuse the saved result) and return the result's path."""
    result = stage1_result_path(out_dir, chunk)
    if result.exists():
        return result
    mark_output(out_dir)
    if config.processes > 0 and stage is None:
        jobs = [(_analyse_in_worker, (config, str(out_dir), vid, path)) for vid, path in chunk.videos]
        done = run_in_workers(jobs, config.processes)
        found = [c if not isinstance(c, BaseException) else _failure(Candidate(vid, path), c)
                 for (vid, path), c in zip(chunk.videos, done)]
    else:
        stage = stage or Stage1(config, out_dir)
        found = [stage.analyse(vid, path) for vid, path in chunk.videos]
    captions = dict(chunk.captions)
    for c in found:
        if c.status == "scored":
            c.caption = captions.get(c.video_id)
    cands = [dataclasses.asdict(c) for c in found]
    _atomic_write_text(result, json.dumps({"chunk": chunk.key, "candidates": cands}, indent=1, sort_keys=True))
    return result


def load_candidates(path: str | os.PathLike) -> list[Candidate]:
    data = json.loads(Path(path).read_text())
    return [Candidate(**c) for c in data["candidates"]]


# ----------------------------------------------------------------------------- barrier


@dataclass(frozen=True)
class MotionDecision:
    threshold: float
    num_scored: int
    num_kept: int


def decide_motion_threshold(stage1_results: Iterable[str | os.PathLike], drop_fraction: float) -> MotionDecision:
    """The dataset-wide bottom-``drop_fraction`` threshold over every scored video."""
    from ic_data.motion import motion_filter

    scores = [c.motion_score for p in stage1_results for c in load_candidates(p) if c.status == "scored"]
    threshold, keep = motion_filter(scores, drop_fraction)
    return MotionDecision(float(threshold), len(scores), int(np.sum(keep)))


def is_kept(score: float, threshold: float) -> bool:
    """The rule ``motion_filter`` applies, for one score: strictly above the threshold."""
    return bool(np.isnan(threshold) or score > threshold)


# ----------------------------------------------------------------------------- stage 2


class Stage2:
    """Tracking, sparse sampling, captions and shard writing for the survivors of a chunk."""

    def __init__(self, config: CurationConfig, out_dir: str | os.PathLike):
        from ic_data.tracking import make_tracker

        self.config = config
        self.out_dir = Path(out_dir)
        self.tracker = make_tracker(config.tracker, **config.tracker_options)
        self._captioner = None
        self.versions = library_versions()
        self.stage_seconds: dict[str, float] = {}

    def captioner(self):
        if self._captioner is None and self.config.captioner == "blip2":
            from ic_data.captions import Blip2Captioner

            self._captioner = Blip2Captioner()
        return self._captioner

    def sample(self, c: Candidate, shard_name: str):
        """Build the shard sample of a kept candidate (raises on failure)."""
        from ic_data.manifest import printable_path
        from ic_data.mp4 import decode_mp4
        from ic_data.shards import ClipSample
        from ic_data.tracking import grid_points
        from ic_data.trajectories import sample_sparse_tracks

        cfg = self.config
        laps = _Laps(self.stage_seconds)
        mp4_bytes = (self.out_dir / c.staged_clip).read_bytes()
        frames = decode_mp4(mp4_bytes)  # exactly the pixels stored in the shard
        laps.lap("clip_decode")
        points = grid_points(cfg.clip_width, cfg.clip_height, cfg.grid_size)
        tracks, visibility = self.tracker.track(frames, points)
        laps.lap("tracking")
        sparse = sample_sparse_tracks(tracks, video_rng(cfg.seed, c.video_id, 1), cfg.max_tracks, visibility=visibility)
        caption = c.caption
        if not caption and self.captioner() is not None:
            caption = self.captioner().caption(frames)
        laps.lap("sparse_caption")
        meta = {
            "source_path": printable_path(c.path),
            "video_id": c.video_id,
            "fps": c.fps,
            "clip_fps": c.clip_fps,
            "frame_indices": c.frame_indices,
            "scale": c.scale,
            "crop": c.crop,
            "bars": c.bars,
            "source_size": [c.width, c.height],
            "source_rotation": c.rotation,
            "scene": [c.scene_start, c.scene_end],
            "motion_score": c.motion_score,
            "camera_only": cfg.camera_only,
            "source": cfg.source,
            "backends": {
                "flow": c.flow_backend,
                "tracker": self.tracker.name,
                "decoder": c.decoder,
                "cut_detector": cfg.cut_detector,
            },
            "versions": {**self.versions, "flow": c.flow_version, "tracker": self.tracker.version},
            "shard": shard_name,
        }
        if c.damage is not None:  # frames were lost before the clip: frame_indices count decoded frames
            meta["damage"] = c.damage
        return ClipSample(
            key=c.video_id,
            mp4=mp4_bytes,
            tracks=tracks.astype(np.float32),
            visibility=visibility.astype(bool),
            sparse=np.asarray(sparse, np.int64),
            caption=caption or "",
            meta=meta,
        )


class _PendingSample:
    """One survivor's shard sample: built at once in the calling thread, or submitted to the
    worker pool and collected by ``sample``. A failure is recorded on the candidate (None)."""

    def __init__(self, c: Candidate, shard_name: str, config: CurationConfig, out_dir: Path):
        self.c, self.shard_name = c, shard_name
        self.job = (_sample_in_worker, (config, str(out_dir), c, shard_name)) if config.processes > 0 else None
        self.done = None  # the worker's answer, set by ``run_stage2_chunk``

    def sample(self, stage: Stage2):
        if self.job is None:
            try:
                return stage.sample(self.c, self.shard_name)
            except Exception as exc:
                _failure(self.c, exc)
                return None
        if isinstance(self.done, BaseException):
            _failure(self.c, self.done)
            return None
        sample, failure, seconds = self.done
        for k, v in seconds.items():
            stage.stage_seconds[k] = stage.stage_seconds.get(k, 0.0) + v
        if failure is not None:
            self.c.status, self.c.reason, self.c.error = "failed", *failure
        return sample


# ----------------------------------------------------------------------------- worker processes
# What a worker runs (the pool itself is in ic_data.workers): each worker keeps one stage per
# configuration, so the flow backend and the tracker load once per process.

_WORKER_STAGES: dict[tuple, Any] = {}


def _worker_stage(cls, config: CurationConfig, out_dir: str):
    key = (cls.__name__, config.fingerprint(), config.decode_timeout_s, out_dir)
    stage = _WORKER_STAGES.get(key)
    if stage is None:
        stage = _WORKER_STAGES[key] = cls(config, out_dir)
    return stage


def _analyse_in_worker(config: CurationConfig, out_dir: str, video_id: str, path: str) -> Candidate:
    return _worker_stage(Stage1, config, out_dir).analyse(video_id, path)


def _sample_in_worker(config: CurationConfig, out_dir: str, c: Candidate, shard_name: str):
    """(sample, None, stage seconds), or (None, (reason, error), stage seconds) on failure:
    the failure travels as text because custom exceptions do not always survive pickling."""
    stage = _worker_stage(Stage2, config, out_dir)
    stage.stage_seconds = {}
    try:
        sample = stage.sample(c, shard_name)
    except Exception as exc:
        failed = _failure(dataclasses.replace(c), exc)
        return None, (failed.reason, failed.error), stage.stage_seconds
    return sample, None, stage.stage_seconds


def stage2_result_path(out_dir: str | os.PathLike, chunk: Chunk) -> Path:
    return Path(out_dir) / STAGE2_DIR / f"{chunk.key}.json"


def run_stage2_chunk(
    chunk: Chunk,
    threshold: float,
    config: CurationConfig,
    out_dir: str | os.PathLike,
    stage: Stage2 | None = None,
) -> Path:
    """Finish a chunk: survivors get tracks and go into one shard; every video gets its row."""
    from ic_data.manifest import ManifestRow
    from ic_data.shards import write_shard

    out_dir = Path(out_dir)
    result = stage2_result_path(out_dir, chunk)
    if result.exists():
        saved = json.loads(result.read_text())
        shards = {r["shard"] for r in saved["rows"] if r["status"] == "ok"}
        if saved.get("threshold") == _json_float(threshold) and all((out_dir / s).is_file() for s in shards):
            # Finished by an earlier run with the same dataset-wide decision. (A run between may
            # have removed its shard as stale, if it split the videos into other chunks.)
            return result
    stage = stage or Stage2(config, out_dir)
    shard_name = f"{chunk.key}.tar"
    rows, samples = [], []
    candidates = load_candidates(stage1_result_path(out_dir, chunk))
    if any(c.status == "scored" and is_kept(c.motion_score, threshold) and not (out_dir / c.staged_clip).exists() for c in candidates):
        # A finished earlier run cleaned its staged clips and the decision has changed since:
        # redo stage 1 for this chunk (deterministic, so the scores are the same).
        stage1_result_path(out_dir, chunk).unlink()
        candidates = load_candidates(run_stage1_chunk(chunk, config, out_dir))
    # Every survivor's sample is started before the rows are built, so that with worker
    # processes the videos of the chunk run in parallel.
    pending = {
        c.video_id: _PendingSample(c, shard_name, config, out_dir)
        for c in candidates
        if c.status == "scored" and is_kept(c.motion_score, threshold)
    }
    if config.processes > 0 and pending:
        answers = run_in_workers([p.job for p in pending.values()], config.processes)
        for p, answer in zip(pending.values(), answers):
            p.done = answer
    for c in candidates:
        row = ManifestRow(
            video_id=c.video_id,
            path=c.path,
            status="failed",
            reason=c.reason,
            error=c.error,
            damage=c.damage,
            cuts=c.cuts,
            dissolves=c.dissolves,
            wipes=c.wipes,
            flashes=c.flashes,
            scene_start=c.scene_start,
            scene_end=c.scene_end,
            num_frames=c.num_frames,
            fps=c.fps,
            width=c.width,
            height=c.height,
            bars=c.bars,
            motion_score=c.motion_score,
            chunk=chunk.key,
            caption=c.caption,
            camera_only=config.camera_only,
            flow_backend=c.flow_backend,
            tracker_backend=None,
        )
        if c.status == "failed":
            pass
        elif not is_kept(c.motion_score, threshold):
            row.status, row.reason = "filtered", "low_motion"
        else:
            sample = pending[c.video_id].sample(stage)
            if sample is None:  # the error is recorded against the video; the chunk goes on
                row.reason, row.error = c.reason, c.error
            else:
                samples.append(sample)
                row.status, row.reason = "ok", None
                row.shard, row.key = f"{SHARD_DIR}/{shard_name}", c.video_id
                row.caption = sample.caption
                row.tracker_backend = stage.tracker.name
        rows.append(dataclasses.asdict(row))
    shard_path = out_dir / SHARD_DIR / shard_name
    laps = _Laps(stage.stage_seconds)
    if samples:
        shard_path.parent.mkdir(parents=True, exist_ok=True)
        write_shard(shard_path, samples)
    elif shard_path.exists():
        shard_path.unlink()  # a stale shard from a run with another threshold
    laps.lap("shard")
    record = {"chunk": chunk.key, "threshold": _json_float(threshold), "rows": rows, "stage_seconds": stage.stage_seconds}
    _atomic_write_text(result, json.dumps(record, indent=1, sort_keys=True))
    stage.stage_seconds = {}
    return result


def _json_float(x: float) -> float | None:
    """JSON has no NaN/Infinity: a threshold that drops nothing (nan or -inf) is stored as null."""
    return None if x is None or not np.isfinite(x) else float(x)


# ----------------------------------------------------------------------------- manifest


@dataclass
class CurationSummary:
    out_dir: str
    num_videos: int
    counts: dict[str, int]
    reasons: dict[str, int]
    threshold: float | None
    score_percentiles: dict[str, float]
    removed_stale_shards: list[str]
    damaged: int = 0  # videos whose decoding lost frames (the manifest's ``damage``), whatever their status
    letterboxed: int = 0  # videos whose clips were cut inside bars, black or blurred (the manifest's ``bars``)
    # The input folder's files that are no video by their extension, counted by it ("" for none):
    # not inputs, so they have no row, but not passed by in silence.
    other_files: dict[str, int] = field(default_factory=dict)
    uncaptioned: int = 0  # kept clips whose caption is empty (no CSV row, no captioner)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def assemble_manifest(out_dir: str | os.PathLike, chunks: Sequence[Chunk], threshold: float,
                      other_files: dict[str, int] | None = None) -> CurationSummary:
    """Gather every chunk's rows into ``manifest.parquet`` (+ ``summary.json``); check none is
    missing or doubled. ``other_files``: what :func:`discover_videos` left out, for the summary."""
    from ic_data.manifest import ManifestRow, reason_counts, status_counts, write_manifest

    out_dir = Path(out_dir)
    rows = []
    for chunk in chunks:
        saved = json.loads(stage2_result_path(out_dir, chunk).read_text())
        chunk_rows = [ManifestRow(**r) for r in saved["rows"]]
        expected = {v for v, _ in chunk.videos}
        got = [r.video_id for r in chunk_rows]
        if sorted(got) != sorted(expected):
            raise RuntimeError(f"{chunk.key}: rows do not match its videos (missing {expected - set(got)})")
        rows.extend(chunk_rows)
    write_manifest(out_dir / "manifest.parquet", rows)
    # Shards of earlier runs with another config or input set would leak into training.
    live = {f"{c.key}.tar" for c in chunks}
    stale = []
    shard_dir = out_dir / SHARD_DIR
    if shard_dir.is_dir():
        for p in sorted(shard_dir.glob("*.tar")):
            if p.name not in live:
                p.unlink()
                stale.append(p.name)
    # Staged clips are in the shards now (or were filtered out).
    for chunk in chunks:
        for vid, _ in chunk.videos:
            (out_dir / STAGING_DIR / f"{vid}.mp4").unlink(missing_ok=True)
    scores = np.array([r.motion_score for r in rows if r.motion_score is not None], np.float64)
    pct = {f"p{q}": float(np.percentile(scores, q)) for q in (0, 10, 25, 50, 75, 90, 100)} if len(scores) else {}
    summary = CurationSummary(
        out_dir=str(out_dir),
        num_videos=len(rows),
        counts=status_counts(rows),
        reasons=reason_counts(rows),
        threshold=_json_float(threshold),
        score_percentiles=pct,
        removed_stale_shards=stale,
        damaged=sum(r.damage is not None for r in rows),
        letterboxed=sum(bool(r.bars) for r in rows),
        other_files=dict(sorted((other_files or {}).items())),
        uncaptioned=sum(r.status == "ok" and not r.caption for r in rows),
    )
    _atomic_write_text(out_dir / "summary.json", json.dumps(summary.to_json(), indent=1, sort_keys=True))
    return summary


# ----------------------------------------------------------------------------- plain driver


def curate(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: CurationConfig = CurationConfig(),
    chunk_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> CurationSummary:
    """Run the whole chain in this process (no orchestrator): what the flows do, sequentially."""
    say = progress or (lambda msg: None)
    out_dir = Path(out_dir)
    others: Counter = Counter()
    videos = discover_videos(videos_dir, out_dir=out_dir, others=others)
    chunks = plan_chunks(videos, config, chunk_size)
    say(f"{len(videos)} videos in {len(chunks)} chunks")
    if others:
        say(f"left out, no video by their extension: {other_files_line(others)}")
    if line := uncaptioned_line(chunks, config):
        say(line)
    # One backend instance for every chunk (RAFT/CoTracker weights load once); the run_* calls
    # skip finished chunks before touching it.
    stage1 = None if config.processes > 0 else Stage1(config, out_dir)  # else built in the workers
    stage2 = Stage2(config, out_dir)
    results = []
    for i, chunk in enumerate(chunks):
        results.append(run_stage1_chunk(chunk, config, out_dir, stage1))
        say(f"stage 1: chunk {i + 1}/{len(chunks)} scored")
    decision = decide_motion_threshold(results, config.drop_fraction)
    say(f"motion threshold {decision.threshold:.4f}: {decision.num_kept}/{decision.num_scored} kept")
    for i, chunk in enumerate(chunks):
        run_stage2_chunk(chunk, decision.threshold, config, out_dir, stage2)
        say(f"stage 2: chunk {i + 1}/{len(chunks)} written")
    return assemble_manifest(out_dir, chunks, decision.threshold, others)
