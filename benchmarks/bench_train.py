"""Training throughput: tiny-preset steps/s per stage on this machine, and the real-size (sd15)
motion-ControlNet step on a GPU.

    python benchmarks/bench_train.py                 tiny preset, every stage (CPU is fine)
    python benchmarks/bench_train.py --sd15          sd15 sizes, random weights, needs CUDA

Tiny: synthetic shards in the data contract, each stage trained for --steps steps through the
real loop (data loading included); the first step (start-up) is left out of the rate.

sd15: the `dense` stage's step (frozen VAE, text encoder, UNet + motion module and image
ControlNet in bf16; motion ControlNet trained in fp32 under bf16 autocast) on 16×256×384 clips
built in memory, for batch 1, 2, 4, … until the GPU runs out of memory, with and without
gradient checkpointing. Random weights cost the same compute and memory as the real ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ic_data.synthetic import write_synthetic_shards  # noqa: E402
from ic_model.config import TrainConfig, sd15_config  # noqa: E402
from ic_model.training.run import run_model_config  # noqa: E402
from ic_model.training.loop import train_stage  # noqa: E402


def bench_tiny(steps: int, batch_size: int, workdir: Path) -> list[dict]:
    shards = write_synthetic_shards(workdir / "shards", num_mixed=8, num_camera=8)
    run = workdir / "run"
    cfg = run_model_config(run, "tiny")
    rows = []
    for stage in cfg.stages:
        train_cfg = TrainConfig(stage=stage, steps=steps, batch_size=batch_size, log_every=1, save_every=10**9)
        s = train_stage(stage, str(shards), run, train_cfg, cfg)
        rows.append({
            "stage": stage,
            "batch": batch_size,
            "frames": cfg.num_frames,
            "size": f"{cfg.width}x{cfg.height}",
            "steps_per_s": round(s["samples_per_s"] / batch_size, 3),
            "samples_per_s": s["samples_per_s"],
            "peak_rss_mb": s["peak_memory_mb"],
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_sd15(steps: int, max_batch: int) -> list[dict]:
    from ic_model.models.components import Components
    from ic_model.models.sd15 import build_sd15_on_meta
    from ic_model.models.tokenizer import clip_tokenizer
    from ic_model.training.loop import StageModule

    if not torch.cuda.is_available():
        raise SystemExit("--sd15 needs a CUDA GPU")
    device = torch.device("cuda")
    cfg = sd15_config()
    rows = []
    for checkpointing in (False, True):
        batch = 1
        while batch <= max_batch:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            parts = build_sd15_on_meta(cfg, device=device)
            comps = Components(
                cfg=cfg, tokenizer=clip_tokenizer(), **{k: parts[k] for k in (
                    "vae", "text_encoder", "unet", "image_controlnet", "motion_controlnet", "scheduler")},
            )
            module = StageModule(comps, "dense", TrainConfig(stage="dense", gradient_checkpointing=checkpointing))
            for frozen in (module.vae, module.text_encoder, module.denoiser.unet, module.denoiser.image_controlnet):
                frozen.to(torch.bfloat16)
            params = [p for p in module.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-4)
            h, w = cfg.latent_size
            pixels = torch.rand(batch, 3, cfg.num_frames, cfg.height, cfg.width, device=device) * 2 - 1
            flow = torch.randn(batch, 2, cfg.num_frames, cfg.height, cfg.width, device=device) * 0.01
            ids = torch.randint(0, 49407, (batch, 77), device=device)
            row = {"gpu": torch.cuda.get_device_name(), "batch": batch, "grad_checkpointing": checkpointing}
            try:
                times = []
                for i in range(steps + 1):
                    noise = torch.randn(batch, 4, cfg.num_frames, h, w, device=device)
                    t = torch.randint(0, 1000, (batch,), device=device)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = module(pixels, flow, ids, noise, t)["loss"]
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()
                    if i:  # the first step pays for kernel selection
                        times.append(time.perf_counter() - t0)
                row.update(
                    samples_per_s=round(batch * len(times) / sum(times), 3),
                    peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                )
            except torch.cuda.OutOfMemoryError:
                row.update(samples_per_s=None, peak_memory_gib="OOM")
            print(json.dumps(row), flush=True)
            rows.append(row)
            del module, comps, parts, opt
            if row["peak_memory_gib"] == "OOM":
                break
            batch *= 2
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd15", action="store_true", help="real sizes on a GPU instead of the tiny preset")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    if args.sd15:
        bench_sd15(args.steps, args.max_batch)
    else:
        with tempfile.TemporaryDirectory(prefix="ic-bench-train-") as tmp:
            bench_tiny(args.steps, args.batch_size, Path(tmp))


if __name__ == "__main__":
    main()
