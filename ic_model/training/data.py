"""Training data: curated WebDataset shards → batches of clips, trajectory maps and captions.

Each shard sample (see :mod:`ic_data.shards`) holds a 32-frame clip and point tracks in clip
pixels. A training sample takes ``num_frames`` frames at ``frame_stride`` from a random start,
resizes them to the model size and builds the trajectory conditioning with
:func:`ic_data.trajectories.tracks_to_flow_maps` — the function inference also uses — from
every track (``"dense"`` stage) or an intensity-weighted draw of 1–8 tracks (``"sparse"`` and
later stages, paper §2.2), drawn afresh for each sample (the shard's ``sparse.npy`` is the
curation's preview draw), leaving out the steps the tracker saw hidden or outside the frame.

The stream is infinite (shards are resampled with replacement) and **exactly resumable**: the
batches are a pure function of (shards, seed, rank, number of DataLoader workers, batch size),
and ``skip_batches=S`` yields batch S, S+1, … of the un-skipped stream without decoding the
skipped samples. Three things make that hold:

* every stream (rank, worker) seeds its shard and shuffle RNGs from (seed, rank, worker role);
* the randomness of one sample (frame start, tracks, caption dropout) is drawn from
  ``np.random.default_rng([seed, rank, role, counter])``, a function of its position in the
  stream, so skipping a sample needs no RNG draws for it, only reading its bytes;
* a DataLoader with k workers takes batches round-robin, and a fresh loader always starts at
  worker 0. Global batch g therefore belongs to the worker *role* g mod k; on resume worker w
  plays role (w + S) mod k, so that worker 0 produces batch S, worker 1 batch S + 1, and so on.
"""
from __future__ import annotations

import json
import os
import random
import signal
import tarfile
from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ic_data.clips import resize_points
from ic_data.mp4 import decode_mp4
from ic_data.errors import ShardError
from ic_data.shards import MEMBER_SUFFIXES, npy_load, shard_paths, unreadable_shard, webdataset_shard_handler
from ic_data.trajectories import sample_sparse_tracks, tracks_to_flow_maps
from ic_model.config import ModelConfig, TrainConfig
from ic_model.training.latent_cache import LatentCacheReader, model_frames

__all__ = [
    "TRACK_MODES",
    "ClipStream",
    "ShardError",
    "ShardSampleError",
    "TrainBatch",
    "make_loader",
    "shard_paths",
]

TRACK_MODES = ("dense", "sparse")

# Purposes mixed into the stream seeds so the shard and shuffle RNGs are independent.
_SHARD_RNG, _SHUFFLE_RNG = 0, 1


class ShardSampleError(ShardError):
    """One shard sample breaks the data contract (``shard …, sample …: problem``)."""


def _bad(url: str, key: str, problem: str) -> ShardSampleError:
    return ShardSampleError(f"shard {url}, sample {key!r}: {problem}")


@dataclass
class TrainBatch:
    """One collated batch. B clips of T frames at the model's H×W."""

    pixels: torch.Tensor | None  # float32 (B, 3, T, H, W) in [-1, 1]; None with a latent cache
    flow: torch.Tensor  # float32 (B, 2, T, H, W): trajectory maps (dx, dy) at the model size
    captions: list[str]  # "" where dropped for classifier-free guidance
    keys: list[str]
    camera_only: torch.Tensor  # bool (B,)
    num_tracks: torch.Tensor  # int64 (B,): tracks drawn into ``flow``
    frame_indices: torch.Tensor  # int64 (B, T): the clip frames used
    track_indices: list[torch.Tensor | None]  # int64 indices per clip; None = all (dense)
    latents: torch.Tensor | None = None  # (B, C, T, h, w) cached VAE latents of the frames, if cached

    def __len__(self) -> int:
        return len(self.keys)


def _seed_int(*entropy: int) -> int:
    """A 63-bit integer seed from several integers (stable across processes, unlike ``hash``)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]) >> 1


def _worker_skip(skip_batches: int, role: int, num_workers: int) -> int:
    """How many of the first ``skip_batches`` global batches belong to worker ``role``."""
    return max(0, (skip_batches - role + num_workers - 1) // num_workers)


def _member(sample: dict, suffix: str) -> bytes:
    if suffix not in sample:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise _bad(
            sample["__url__"], sample["__key__"], f"lacks the {suffix!r} member (has {present})"
        )
    return sample[suffix]


def _load_json(sample: dict) -> dict:
    try:
        meta = json.loads(_member(sample, "json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _bad(sample["__url__"], sample["__key__"], f"bad json: {error}") from error
    if not isinstance(meta, dict):
        raise _bad(sample["__url__"], sample["__key__"], f"json is a {type(meta).__name__}, not an object")
    if not isinstance(meta.get("camera_only"), bool):
        raise _bad(
            sample["__url__"], sample["__key__"], "json lacks the boolean 'camera_only'"
        )
    return meta


def _load_npy(sample: dict, suffix: str) -> np.ndarray:
    try:
        return npy_load(_member(sample, suffix))
    except ValueError as error:
        raise _bad(
            sample["__url__"], sample["__key__"], f"unreadable {suffix}: {error}"
        ) from error


def _scan_shards(paths: list[str], camera_only: bool | None) -> list[str]:
    """The shards holding at least one wanted sample; raise ``ValueError`` if there is none.

    Resampling draws shards forever, so a filter that matches nothing would hang the stream.
    With a ``camera_only`` filter every shard's json members are read once (cheap: the videos
    are not), and shards without a match are dropped so the stream never reads them. Without
    a filter, the scan stops at the first non-empty shard.
    """
    kept = []
    for path in paths:
        try:
            with tarfile.open(path, mode="r") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    if camera_only is None:
                        return paths
                    if not info.name.endswith(".json"):
                        continue
                    meta = json.loads(tar.extractfile(info).read().decode("utf-8"))
                    if isinstance(meta, dict) and meta.get("camera_only") is camera_only:
                        kept.append(path)
                        break
        except (tarfile.TarError, OSError) as error:
            raise unreadable_shard(path, error) from error
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ShardError(f"shard {path}: a json member is not UTF-8 JSON ({error})") from error
    if kept:
        return kept
    where = f"{len(paths)} shard(s) ({paths[0]}{', …' if len(paths) > 1 else ''})"
    if camera_only is None:
        raise ShardError(f"no samples in {where}: every shard is empty")
    if camera_only:
        raise ShardError(
            f"no camera_only clips in {where}: the camera stage needs RealEstate10K-style shards"
        )
    raise ShardError(f"no clips with camera_only=false in {where}: the object stage trains on mixed "
                     "(WebVid-style) shards, as `ic curate webvid` writes them")


class ClipStream(IterableDataset):
    """An infinite, exactly resumable stream of :class:`TrainBatch` from WebDataset shards.

    Use with ``DataLoader(stream, batch_size=None, num_workers=k)``: each (rank, worker) runs
    its own seeded stream and yields whole batches, which the loader interleaves round-robin.
    See the module docstring for why ``skip_batches`` resumes exactly.

    Args:
        urls: a shard directory, glob pattern, path, or list of those (see :func:`shard_paths`).
        model_cfg: clip size, number of frames and trajectory-map filter.
        batch_size: clips per batch (per process).
        track_mode: ``"dense"`` (every track) or ``"sparse"`` (n in [min_tracks, max_tracks]
            tracks drawn by motion intensity).
        camera_only: ``None`` for every sample, else only samples whose json ``camera_only``
            equals it (True for the camera-LoRA stage).
        frame_stride: spacing of the chosen clip frames.
        shuffle_buffer: samples held by the shuffle buffer.
        caption_dropout: probability of replacing a caption with "".
        seed, rank, world_size: the stream of rank r is seeded by (seed, r); shards are
            resampled, so ranks need no shard split.
        skip_batches: global batches already consumed (checkpointed step × grad accumulation).
        latent_cache: a folder written by ``ic cache-latents``: batches then carry the drawn
            frames' cached VAE latents (``latents``) instead of decoded pixels (``pixels`` None).
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        model_cfg: ModelConfig,
        *,
        batch_size: int,
        track_mode: str = "dense",
        camera_only: bool | None = None,
        frame_stride: int = 2,
        min_tracks: int = 1,
        max_tracks: int = 8,
        shuffle_buffer: int = 64,
        caption_dropout: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
        latent_cache: str | os.PathLike | None = None,
    ):
        super().__init__()
        if track_mode not in TRACK_MODES:
            raise ValueError(f"track_mode must be one of {TRACK_MODES}, got {track_mode!r}")
        if batch_size < 1 or frame_stride < 1 or shuffle_buffer < 1 or skip_batches < 0:
            raise ValueError(
                "need batch_size, frame_stride, shuffle_buffer >= 1 and skip_batches >= 0, got "
                f"{batch_size}, {frame_stride}, {shuffle_buffer}, {skip_batches}"
            )
        if not 1 <= min_tracks <= max_tracks:
            raise ValueError(f"need 1 <= min_tracks <= max_tracks, got {min_tracks}, {max_tracks}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must lie in [0, 1], got {caption_dropout}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.shards = _scan_shards(shard_paths(urls), camera_only)
        self.model_cfg = model_cfg
        self.batch_size = batch_size
        self.track_mode = track_mode
        self.camera_only = camera_only
        self.frame_stride = frame_stride
        self.min_tracks = min_tracks
        self.max_tracks = max_tracks
        self.shuffle_buffer = shuffle_buffer
        self.caption_dropout = caption_dropout
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.skip_batches = skip_batches
        self.latent_cache = LatentCacheReader(latent_cache) if latent_cache else None

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (worker + self.skip_batches) % num_workers
        samples = self._raw_samples(role)
        skipped = _worker_skip(self.skip_batches, role, num_workers) * self.batch_size
        # Skipped samples are only read: their randomness is keyed by position, not drawn.
        for _ in islice(samples, skipped):
            pass
        counter = skipped
        while True:
            items = []
            for sample in islice(samples, self.batch_size):
                rng = np.random.default_rng([self.seed, self.rank, role, counter])
                items.append(self._decode(sample, rng))
                counter += 1
            yield _collate(items)

    def _raw_samples(self, role: int) -> Iterator[dict]:
        """Undecoded samples of this stream: resampled shards → tar members → filter → shuffle.

        Built afresh on every ``__iter__``: ``ResampledShards`` counts epochs in its state, which
        would make a second iteration of the same object differ from the first.
        """
        shard_seed = _seed_int(self.seed, self.rank, role, _SHARD_RNG)
        stages = [
            wds.ResampledShards(self.shards, worker_seed=lambda: shard_seed, deterministic=True),
            wds.tarfile_to_samples(handler=webdataset_shard_handler),
        ]
        if self.camera_only is not None:
            stages.append(wds.select(lambda s: _load_json(s)["camera_only"] is self.camera_only))
        shuffle_rng = random.Random(_seed_int(self.seed, self.rank, role, _SHUFFLE_RNG))
        stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shuffle_rng))
        return iter(wds.DataPipeline(*stages))

    def _decode(self, sample: dict, rng: np.random.Generator) -> dict:
        """Decode one sample and draw its frames, tracks and caption dropout from ``rng``."""
        url, key = sample["__url__"], sample["__key__"]
        for suffix in MEMBER_SUFFIXES:
            _member(sample, suffix)
        meta = _load_json(sample)
        tracks = _load_npy(sample, "tracks.npy")
        visibility = _load_npy(sample, "visibility.npy")
        if tracks.ndim != 3 or tracks.shape[2] != 2 or min(tracks.shape) < 1:
            raise _bad(url, key, f"tracks must be (T, N, 2), got {tracks.shape}")
        if not np.issubdtype(tracks.dtype, np.floating) or not np.isfinite(tracks).all():
            raise _bad(url, key, f"tracks must be finite floats, got {tracks.dtype}")
        clip_len, num_tracks = tracks.shape[:2]
        if visibility.shape != (clip_len, num_tracks):
            raise _bad(
                url, key, f"visibility is {visibility.shape}, tracks need {(clip_len, num_tracks)}"
            )

        cfg = self.model_cfg
        span = (cfg.num_frames - 1) * self.frame_stride + 1
        if clip_len < span:
            raise _bad(
                url, key,
                f"the clip has {clip_len} frames, shorter than the {span}-frame span of "
                f"num_frames={cfg.num_frames} at frame_stride={self.frame_stride}",
            )
        start = int(rng.integers(0, clip_len - span + 1))
        frame_indices = np.arange(cfg.num_frames) * self.frame_stride + start
        clip_tracks = tracks[frame_indices]
        indices = None
        if self.track_mode == "sparse":
            indices = sample_sparse_tracks(
                clip_tracks, rng, self.max_tracks, self.min_tracks, visibility[frame_indices]
            )
        try:
            caption = _member(sample, "txt").decode("utf-8")
        except UnicodeDecodeError as error:
            raise _bad(url, key, f"txt is not UTF-8 text ({error})") from error
        if rng.random() < self.caption_dropout:
            caption = ""

        pixels = latents = None
        if self.latent_cache is not None:  # the frames' VAE latents, encoded once (no mp4 decode)
            cached, (clip_h, clip_w) = self.latent_cache.clip(url, key)
            if cached.shape[0] != clip_len:
                raise _bad(url, key, f"the latent cache has {cached.shape[0]} frames but the tracks have {clip_len}")
            latents = cached[torch.from_numpy(frame_indices)].permute(1, 0, 2, 3)
        else:
            try:
                frames = decode_mp4(_member(sample, "mp4"))
            except Exception as error:  # PyAV raises many types for corrupt data
                raise _bad(url, key, f"undecodable mp4: {error}") from error
            if frames.shape[0] != clip_len:
                raise _bad(
                    url, key, f"the mp4 has {frames.shape[0]} frames but the tracks have {clip_len}"
                )
            clip_h, clip_w = frames.shape[1:3]
            pixels = model_frames(frames[frame_indices], cfg)
        # Tracks are in clip pixels; the maps are drawn at the model size, where the frames
        # resized to it show what the tracks follow (generation maps drawn tracks the same way).
        scaled = resize_points(clip_tracks, (clip_w, clip_h), (cfg.width, cfg.height))
        flow = tracks_to_flow_maps(
            scaled, indices, height=cfg.height, width=cfg.width,
            kernel_size=cfg.flow_kernel_size, sigma=cfg.flow_sigma, visibility=visibility[frame_indices],
        )
        return dict(
            pixels=pixels,
            latents=latents,
            flow=torch.from_numpy(flow),
            caption=caption,
            key=key,
            camera_only=meta["camera_only"],
            num_tracks=num_tracks if indices is None else len(indices),
            frame_indices=torch.from_numpy(frame_indices.astype(np.int64)),
            track_indices=None if indices is None else torch.from_numpy(indices),
        )


def _collate(items: list[dict]) -> TrainBatch:
    return TrainBatch(
        pixels=None if items[0]["pixels"] is None else torch.stack([item["pixels"] for item in items]),
        latents=None if items[0]["latents"] is None else torch.stack([item["latents"] for item in items]),
        flow=torch.stack([item["flow"] for item in items]),
        captions=[item["caption"] for item in items],
        keys=[item["key"] for item in items],
        camera_only=torch.tensor([item["camera_only"] for item in items], dtype=torch.bool),
        num_tracks=torch.tensor([item["num_tracks"] for item in items], dtype=torch.int64),
        frame_indices=torch.stack([item["frame_indices"] for item in items]),
        track_indices=[item["track_indices"] for item in items],
    )


def make_loader(
    urls: str | os.PathLike | Sequence[str | os.PathLike],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    track_mode: str = "dense",
    camera_only: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    skip_batches: int = 0,
) -> DataLoader:
    """A DataLoader of :class:`TrainBatch` for one process, with the data settings of ``train_cfg``.

    Workers are not persistent: every ``iter(loader)`` restarts the stream from batch
    ``skip_batches``, which is what resuming needs.
    """
    stream = ClipStream(
        urls,
        model_cfg,
        batch_size=train_cfg.batch_size,
        track_mode=track_mode,
        camera_only=camera_only,
        frame_stride=train_cfg.frame_stride,
        min_tracks=train_cfg.min_tracks,
        max_tracks=train_cfg.max_tracks,
        shuffle_buffer=train_cfg.shuffle_buffer,
        caption_dropout=train_cfg.caption_dropout,
        seed=train_cfg.seed,
        rank=rank,
        world_size=world_size,
        skip_batches=skip_batches,
        latent_cache=train_cfg.latent_cache or None,
    )
    return DataLoader(
        stream, batch_size=None, num_workers=train_cfg.num_workers, persistent_workers=False,
        pin_memory=train_cfg.pin_memory and torch.cuda.is_available(), worker_init_fn=_worker_init,
    )


def _worker_init(worker_id: int) -> None:
    """A loader worker leaves Ctrl-C to the training process, which finishes its step and saves
    it first (``StopBetweenSteps``). SIGTERM ends it with success: killed by a signal, the loader
    would fail the step at once ("worker killed by signal"), and ignoring SIGTERM would hang the
    process at exit (multiprocessing stops its workers with it). Workers also exit on their own
    when the training process is gone (PyTorch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum, frame) -> None:
    os._exit(0)

