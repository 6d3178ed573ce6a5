"""Cached VAE latents of a curated shard set: the frozen VAE's encode, done once.

Every stage of the sd15 preset encodes 16 frames per sample per step with a frozen VAE: the same
result every epoch. ``ic cache-latents`` encodes every frame of every clip once and training reads
the frames it draws from the cache instead of decoding the mp4 and running the VAE.

The cache is exact, not an approximation: SD's VAE encodes each frame alone and training uses the
posterior mean (:func:`~ic_model.models.codec.encode_video`), so a frame's latent does not depend
on which other frames a sample draws. Frames are resized to the model size exactly as the data
loader does. A cached latent equals the one training would compute with a VAE of the cache's
dtype (stored in that dtype, so bf16 latents stay bf16).

Layout (one folder per VAE and geometry)::

    CACHE/cache.json                         VAE fingerprint, width, height, scaling factor, dtype
    CACHE/<shard stem>-<fingerprint>.safetensors   {sample key: (clip frames, C, h, w)}

A shard's file is named by a fingerprint of the shard (its resolved path, size and modification
time): a changed shard is a cache miss, reported as one error naming the command to rerun. The
VAE fingerprint is a SHA-256 of its weights rounded to bf16 (the same whatever dtype they were
loaded in); a stage refuses a cache of another VAE or geometry.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ic_data.errors import BadInputError
from ic_data.settings import require_writable
from ic_model.config import ModelConfig, load_json, save_json
from ic_model.models.files import write_safetensors

CACHE_INFO = "cache.json"


class LatentCacheError(BadInputError):
    """The cache is missing a shard or clip, or was built for another VAE or geometry."""


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """SHA-256 of the VAE's weights rounded to bf16, in state-dict order."""
    digest = hashlib.sha256()
    state = vae.state_dict()
    if not state:  # a codec without weights (space_to_depth): its settings are all it is
        digest.update(json.dumps(dict(vars(vae.config)), sort_keys=True, default=str).encode())
    for name, tensor in state.items():
        digest.update(name.encode())
        t = tensor.detach().to("cpu", torch.bfloat16) if tensor.is_floating_point() else tensor.detach().cpu()
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def shard_fingerprint(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    st = path.stat()
    return hashlib.sha256(repr((str(path), st.st_size, st.st_mtime_ns)).encode()).hexdigest()[:16]


def shard_cache_file(cache_dir: Path, shard: str | os.PathLike) -> Path:
    name = Path(shard).name.removesuffix(".tar")
    return Path(cache_dir) / f"{name}-{shard_fingerprint(shard)}.safetensors"


def cache_info(vae, cfg: ModelConfig) -> dict:
    return {
        "vae_sha256_bf16": vae_fingerprint(vae),
        "width": cfg.width,
        "height": cfg.height,
        "scaling_factor": float(vae.config.scaling_factor),
        "dtype": str(vae.dtype).removeprefix("torch."),  # diffusers' models and our codecs have it
    }


def default_cache_dir(run: str | os.PathLike, info: dict) -> Path:
    return Path(run) / "latents" / f"{info['vae_sha256_bf16'][:12]}-{info['width']}x{info['height']}"


def _read_info(path: Path) -> dict:
    try:
        info = load_json(path)
    except (OSError, ValueError) as err:
        raise LatentCacheError(f"{err}; delete {path.parent} and build the cache again") from None
    if not isinstance(info, dict):
        raise LatentCacheError(f"{path}: not a latent cache's info (a JSON object); delete {path.parent} and build "
                               "the cache again")
    return info


def check_cache(cache_dir: str | os.PathLike, vae, cfg: ModelConfig, shards=None) -> dict:
    """The cache's info, after checking it was built by this VAE at this model size and (with
    ``shards``) holds a file for every one of those shards as they are now (a stat each): a shard
    added or changed since was found only when a step drew it, hours in, or, never drawn, never."""
    path = Path(cache_dir) / CACHE_INFO
    if not path.is_file():
        raise LatentCacheError(f"{cache_dir} is not a latent cache (no {CACHE_INFO}): build it with `ic cache-latents`")
    saved = _read_info(path)
    now = cache_info(vae, cfg)
    wrong = [f"{k} {saved.get(k)!r} (this stage: {now[k]!r})" for k in ("vae_sha256_bf16", "width", "height",
                                                                        "scaling_factor") if saved.get(k) != now[k]]
    if wrong:
        raise LatentCacheError(f"{cache_dir} was built for another VAE or size: " + "; ".join(wrong))
    if shards is not None:
        from ic_data.shards import shard_paths

        paths = shard_paths(shards)
        missing = [p for p in paths if not shard_cache_file(Path(cache_dir), p).is_file()]
        if missing:
            more = f", … ({len(missing) - 3} more)" if len(missing) > 3 else ""
            raise LatentCacheError(
                f"the latent cache {cache_dir} has no file for {len(missing)} of the {len(paths)} shards (new or "
                f"changed since it was built: {', '.join(missing[:3])}{more}): rerun `ic cache-latents` for these shards")
    return saved


def _samples(shard: str):
    import webdataset as wds

    from ic_data.shards import webdataset_shard_handler

    return wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples(handler=webdataset_shard_handler))


def model_frames(frames: np.ndarray, cfg: ModelConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) clip frames → float32 (3, T, h, w) in [-1, 1] at the model size, as the
    data loader makes them."""
    resized = np.stack([cv2.resize(f, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA) for f in frames])
    return torch.from_numpy(resized.astype(np.float32) / 127.5 - 1.0).permute(3, 0, 1, 2)


@torch.no_grad()
def build_latent_cache(
    shards: Sequence[str], vae, cfg: ModelConfig, cache_dir: str | os.PathLike, *, device="cpu",
    frames_per_batch: int = 32, progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Encode every frame of every clip in ``shards`` with ``vae`` (posterior means, as training)
    into ``cache_dir``. Resumable: a shard whose file exists is skipped; each file is written
    atomically. Returns {"shards", "cached", "skipped", "clips", "frames", "bytes"}."""
    from ic_data.mp4 import decode_mp4
    from ic_model.models.codec import encode_video

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    info = cache_info(vae, cfg)
    info_path = cache_dir / CACHE_INFO
    if info_path.is_file():
        saved = _read_info(info_path)
        if saved != info:
            raise LatentCacheError(f"{cache_dir} holds a cache built differently ({saved}); use another folder")
    else:
        save_json(info_path, info)  # whole or absent, even if the command is stopped while writing it
    vae = vae.to(device).eval()
    stats = {"shards": len(shards), "cached": 0, "skipped": 0, "clips": 0, "frames": 0, "bytes": 0}
    for i, shard in enumerate(shards):
        target = shard_cache_file(cache_dir, shard)
        if target.is_file():
            stats["skipped"] += 1
            if progress:
                progress(str(shard), i + 1, len(shards))
            continue
        tensors, sizes = {}, {}
        for sample in _samples(shard):
            if "mp4" not in sample:
                raise LatentCacheError(f"shard {shard}, sample {sample['__key__']!r}: no mp4 member")
            try:
                frames = decode_mp4(sample["mp4"])
            except Exception as error:  # PyAV raises many types for corrupt data
                raise LatentCacheError(
                    f"shard {shard}, sample {sample['__key__']!r}: undecodable mp4 ({error}); the shards "
                    f"cached before it are kept, rerun after fixing this one"
                ) from error
            sizes[sample["__key__"]] = list(frames.shape[1:3])  # the clip's (H, W): tracks are in its pixels
            pixels = model_frames(frames, cfg)  # (3, T, h, w)
            parts = [encode_video(vae, chunk[None].to(device))[0].permute(1, 0, 2, 3).cpu()
                     for chunk in pixels.split(frames_per_batch, dim=1)]
            tensors[sample["__key__"]] = torch.cat(parts).contiguous()  # (T, C, h, w) in the VAE's dtype
            stats["clips"] += 1
            stats["frames"] += pixels.shape[1]
        write_safetensors(tensors, target, metadata={"shard": str(Path(shard).resolve()),
                                                     "clip_sizes": json.dumps(sizes)})
        stats["cached"] += 1
        stats["bytes"] += target.stat().st_size
        if progress:
            progress(str(shard), i + 1, len(shards))
    return stats


def load_run_vae(run: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The run's frozen VAE as training loads it: SD's (sd15, from ``sd15_path``) or the tiny
    preset's trained one with its scaling factor; nothing else is loaded."""
    from ic_model.models.sd15 import load_sd15, resolve_weight_paths
    from ic_model.training.run import is_done, load_run_components, run_model_config

    cfg = run_model_config(run)
    if cfg.preset == "sd15":
        vae = load_sd15(resolve_weight_paths(cfg, ("sd15_path",))["sd15_path"], dtype, unet=False)["vae"]
        if dtype == torch.float16:
            vae.float()  # SD's VAE overflows in fp16, as in training
        return vae, cfg
    if cfg.codec == "vae" and not is_done(run, "vae"):
        raise LatentCacheError(f"run {run} has no trained VAE yet (its vae stage is not done)")
    return load_run_components(run, cfg).vae.to(dtype), cfg


def cache_run_latents(
    shards, run: str | os.PathLike, out: str | os.PathLike | None = None, *, device="cpu",
    dtype: torch.dtype = torch.float32, progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Cache ``shards``' latents with ``run``'s VAE into ``out`` (default
    ``RUN/latents/<VAE fingerprint>-<W>x<H>``). Returns the stats and the folder (``cache``),
    which a stage takes as ``latent_cache``."""
    from ic_data.shards import shard_paths

    vae, cfg = load_run_vae(run, dtype)
    paths = shard_paths(shards)
    folder = Path(out) if out else default_cache_dir(run, cache_info(vae, cfg))
    require_writable(folder, "out")
    stats = build_latent_cache(paths, vae, cfg, folder, device=device, progress=progress)
    return {**stats, "cache": str(folder)}


class LatentCacheReader:
    """Per-process lookups of cached clips (files memory-mapped on first use)."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        self._files: dict[str, object] = {}

    def __getstate__(self) -> dict:  # DataLoader workers reopen the files they need
        return {"cache_dir": self.cache_dir, "_files": {}}

    def clip(self, shard_url: str, key: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """(clip frames, C, h, w) latents of sample ``key`` of the shard at ``shard_url``, and the
        clip's (H, W) in pixels."""
        handle = self._files.get(shard_url)
        if handle is None:
            path = shard_cache_file(self.cache_dir, shard_url)
            if not path.is_file():
                raise LatentCacheError(
                    f"the latent cache {self.cache_dir} has no file for shard {shard_url} (new or changed "
                    "since it was built): rerun `ic cache-latents` for these shards"
                )
            try:
                handle = safe_open(str(path), framework="pt")
            except SafetensorError as err:
                raise LatentCacheError(f"{path}: not a readable safetensors file ({err}): rerun `ic cache-latents` "
                                       "after deleting it") from err
            sizes = json.loads((handle.metadata() or {}).get("clip_sizes", "{}"))
            self._files[shard_url] = handle = (handle, sizes)
        handle, sizes = handle
        if key not in sizes:
            raise LatentCacheError(f"the latent cache {self.cache_dir} lacks clip {key!r} of shard {shard_url}")
        return handle.get_tensor(key), tuple(sizes[key])


__all__ = [
    "CACHE_INFO",
    "LatentCacheError",
    "LatentCacheReader",
    "build_latent_cache",
    "cache_info",
    "cache_run_latents",
    "check_cache",
    "default_cache_dir",
    "load_run_vae",
    "model_frames",
    "shard_cache_file",
    "shard_fingerprint",
    "vae_fingerprint",
]
