"""What cached latents save: per training sample, the frozen VAE's input path (mp4 decode, resize,
SD VAE encode of the drawn frames) against reading those frames' latents from the cache.

Real-size SD 1.5 VAE (random weights: the same cost as the real ones), the sd15 preset's 16
frames at 384×256 drawn from curated 32-frame clips (synthetic shards in the data contract).
Prints one table and writes JSON; both ways go through ``ClipStream`` itself, so the figures
include everything the data loader does for a sample (tracks and trajectory maps too).

    python benchmarks/bench_latent_cache.py [--clips 4] [--device cpu|cuda] [--dtype fp32|bf16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ic_data.synthetic import write_synthetic_shards
from ic_model.config import sd15_config
from ic_model.models.codec import encode_video
from ic_model.models.sd15 import sd15_vae
from ic_model.training.data import ClipStream
from ic_model.training.latent_cache import build_latent_cache

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="samples timed each way")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--out", default="bench_out/latent_cache.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = sd15_config()
    vae = sd15_vae().to(args.device, DTYPES[args.dtype]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_synthetic_shards(Path(tmp) / "shards", num_mixed=2, num_camera=2)
        t0 = time.perf_counter()
        stats = build_latent_cache(sorted(str(p) for p in shards.glob("*.tar")), vae, cfg, Path(tmp) / "cache",
                                   device=args.device)
        build_s = time.perf_counter() - t0

        def timed(stream, encode: bool) -> float:
            it = iter(stream)
            t = time.perf_counter()
            for _ in range(args.clips):
                batch = next(it)
                if encode:
                    with torch.no_grad():
                        encode_video(vae, batch.pixels.to(args.device))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            return (time.perf_counter() - t) / args.clips

        common = dict(batch_size=1, track_mode="sparse", frame_stride=2, seed=0)
        uncached = timed(ClipStream(str(shards), cfg, **common), encode=True)
        cached = timed(ClipStream(str(shards), cfg, latent_cache=str(Path(tmp) / "cache"), **common), encode=False)
    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "dtype": args.dtype, "frames_per_sample": cfg.num_frames, "size": [cfg.width, cfg.height],
        "uncached_s_per_sample": round(uncached, 4), "cached_s_per_sample": round(cached, 4),
        "saved_s_per_sample": round(uncached - cached, 4), "ratio": round(uncached / cached, 1),
        "cache_build_s_per_clip": round(build_s / stats["clips"], 3),
        "cache_bytes_per_clip": stats["bytes"] // stats["clips"], "clip_frames": stats["frames"] // stats["clips"],
    }
    print("| per sample | decode + VAE encode | cached read | saved | ratio |\n|---|---|---|---|---|")
    print(f"| {result['device']} {args.dtype} | {uncached:.3f} s | {cached:.4f} s | {uncached - cached:.3f} s | "
          f"{result['ratio']}× |")
    print(f"cache: {result['cache_build_s_per_clip']} s and {result['cache_bytes_per_clip'] / 2**20:.2f} MiB "
          f"per {result['clip_frames']}-frame clip (built once)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
