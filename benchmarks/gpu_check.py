"""The real-size path on a GPU, measured in one command: training, generation, a bf16 check, RAFT.

    python benchmarks/gpu_check.py                      on a CUDA GPU (≈ 6 min on an H200)
    python benchmarks/gpu_check.py --dry-run            the same code on CPU at a mini size

On the lent GPU machine (no network, no diffusers/PyAV/webdataset): `bash benchmarks/gpu_wheels.sh`
here first, then carry `.whl` and run there
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json

Random weights at the sd15 preset's real sizes (SD 1.5 UNet + AnimateDiff v3 motion module,
SparseCtrl RGB, SD VAE, CLIP text encoder, the motion ControlNet and rank-64 LoRAs): the same
compute and memory as the released weights. Writes one JSON (``--out``) and prints a table:

1. **train**: the step of the `dense`, `camera` and `object` stages exactly as ``train_stage``
   builds it (StageModule, the frozen weights cast by the loop's own ``_cast_frozen``, Adam, bf16
   autocast), at 16×256×384: samples/s and peak memory per batch size, gradient checkpointing on
   and off; the share of the step the frozen VAE's encode takes and the step from cached latents
   (``latents=``, what ``ic cache-latents`` gives); the step's FLOPs (``torch.utils.flop_counter``) and the MFU against the card's bf16
   peak; the top kernels (``torch.profiler``) and the data loader's rate beside the step's.
2. **generate**: seconds per 16-frame video (25 DDIM steps, CFG 7.5) in `camera`, `object`, and
   `object` with camera-free guidance (λ_trajs 1.3), the guidance's cost ÷ plain CFG, peak memory.
3. **correctness**: one bf16 and one fp32 training step from the same weights and batch (losses
   within 1 %), and the sampler's output in bf16 against fp32.
4. **raft**: curation's motion score with torchvision's RAFT-large (random weights), videos/s
   at the curation's analysis size, and GPU-hours per million videos.

Each section stops adding rows when ``--budget-s`` is spent, and says so in the JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ic_model.config import TrainConfig, sd15_config  # noqa: E402
from ic_model.models import lora, sd15  # noqa: E402
from ic_model.models.components import Components  # noqa: E402
from ic_model.models.tokenizer import clip_tokenizer  # noqa: E402
from ic_model.training.loop import StageModule, _cast_frozen  # noqa: E402

# bf16 dense matmul peak of the cards we report on (TFLOP/s); others: pass --peak-tflops.
PEAK_BF16_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0}

class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Device:
    """What differs between the GPU run and the CPU dry run."""

    def __init__(self, dry_run: bool):
        self.dry = dry_run
        self.torch = torch.device("cpu" if dry_run else "cuda")
        self.cuda = self.torch.type == "cuda"
        self.name = torch.cuda.get_device_name() if self.cuda else f"CPU ({platform.processor() or platform.machine()})"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def oom(self):
        return (torch.cuda.OutOfMemoryError,) if self.cuda else ()


def model_config(dry: bool):
    return sd15.mini_config() if dry else sd15_config()


def components(cfg, dev: Device, adapters: tuple[str, ...] = ()) -> Components:
    """Random-weight components at the preset's sizes, built directly on the device."""
    parts = sd15.build_sd15_on_meta(cfg, device=dev.torch)
    comps = Components(cfg=cfg, tokenizer=clip_tokenizer(), **{k: parts[k] for k in (
        "vae", "text_encoder", "unet", "image_controlnet", "motion_controlnet", "scheduler")})
    for name in adapters:
        lora.add_lora_adapter(comps.motion_controlnet, name, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return comps


def stage_module(cfg, dev: Device, stage: str, workdir: Path, mixed_precision: str = "bf16") -> StageModule:
    """The stage's module as train_stage builds it (the object stage loads a camera adapter file)."""
    camera_file = None
    if stage == "object":
        donor = components(cfg, dev, adapters=("camera",))
        camera_file = workdir / "camera_lora.safetensors"
        lora.save_adapter(donor.motion_controlnet, "camera", camera_file)
        del donor
    comps = components(cfg, dev)
    train_cfg = TrainConfig(stage=stage, mixed_precision=mixed_precision)
    module = StageModule(comps, stage, train_cfg, camera_lora=camera_file)
    _cast_frozen(module, mixed_precision)
    return module.to(dev.torch)


def step_inputs(cfg, batch: int, dev: Device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_size
    return dict(
        pixels=(torch.rand(batch, 3, cfg.num_frames, cfg.height, cfg.width, generator=g) * 2 - 1).to(dev.torch),
        flow=(torch.randn(batch, 2, cfg.num_frames, cfg.height, cfg.width, generator=g) * 0.01).to(dev.torch),
        input_ids=torch.randint(0, 49407, (batch, 77), generator=g).to(dev.torch),
        noise=torch.randn(batch, cfg.latent_channels, cfg.num_frames, h, w, generator=g).to(dev.torch),
        timesteps=torch.randint(0, 1000, (batch,), generator=g).to(dev.torch),
    )


def train_step(module, opt, inputs: dict, dev: Device, autocast: bool = True) -> float:
    with torch.autocast(dev.torch.type, dtype=torch.bfloat16, enabled=autocast):
        losses = module(**inputs)
    losses["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return losses["loss"].detach()


def seconds_per_step(module, opt, inputs: dict, dev: Device, steps: int) -> float:
    dev.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(module, opt, inputs, dev)
    dev.sync()
    return (time.perf_counter() - t0) / steps


def set_checkpointing(module: StageModule, on: bool) -> None:
    for m in (module.denoiser.unet, module.denoiser.image_controlnet, module.motion_controlnet):
        if not getattr(m, "_supports_gradient_checkpointing", False):
            continue
        if on:
            m.enable_gradient_checkpointing()
        else:
            m.disable_gradient_checkpointing()


def step_flops(module, opt, inputs: dict, dev: Device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(module, opt, inputs, dev)
    return float(counter.get_total_flops())


def vae_encode_seconds(module, inputs: dict, dev: Device, repeats: int) -> float:
    from ic_model.models.codec import encode_video

    times = []
    with torch.no_grad():
        for _ in range(repeats):
            dev.sync()
            t0 = time.perf_counter()
            encode_video(module.vae, inputs["pixels"])
            dev.sync()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def top_kernels(module, opt, inputs: dict, dev: Device, n: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.cuda else [])
    with profile(activities=activities) as prof:
        train_step(module, opt, inputs, dev)
        dev.sync()
    events = prof.key_averages()

    def self_time(e) -> float:
        if dev.cuda:
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
        return float(e.self_cpu_time_total)

    total = sum(self_time(e) for e in events) or 1.0
    rows = sorted(events, key=self_time, reverse=True)[:n]
    return [{"name": e.key[:90], "self_ms": round(self_time(e) / 1e3, 2), "share": round(self_time(e) / total, 3),
             "calls": e.count} for e in rows]


def loader_rate(cfg, dev: Device, workdir: Path, batch: int, budget: Budget) -> dict:
    """Batches/s of the training DataLoader at the preset's defaults (decode, resize, maps)."""
    from ic_data.synthetic import write_synthetic_shards
    from ic_model.config import train_config
    from ic_model.training.data import make_loader

    shards = write_synthetic_shards(workdir / "shards", num_mixed=4, num_camera=0)
    tc = train_config("sd15", stage="dense", batch_size=batch, num_workers=0 if dev.dry else None)
    loader = make_loader(shards, cfg, tc, track_mode="dense")
    it = iter(loader)
    next(it)  # workers start, first decode
    t0, n = time.perf_counter(), 0
    while n < (3 if dev.dry else 12) and budget.left() > 0:
        next(it)
        n += 1
    seconds = time.perf_counter() - t0
    return {"batch": batch, "num_workers": tc.num_workers, "batches_per_s": round(n / seconds, 3),
            "samples_per_s": round(n * batch / seconds, 3)}


def section_train(cfg, dev: Device, args, budget: Budget, workdir: Path) -> dict:
    out: dict = {"rows": [], "note": ""}
    batches = [1, 2] if dev.dry else [1, 2, 4, 8, 16, 32]
    steps = 2 if dev.dry else 4
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in dev.name), None)
    best = {}
    for stage in ("dense", "camera", "object"):
        if budget.left() < 30:
            out["note"] += f"{stage} and later skipped: budget spent. "
            break
        module = stage_module(cfg, dev, stage, workdir)
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-5)
        stage_batches = batches if stage == "dense" else [1, best.get("dense", 1)]
        for checkpointing in (True, False):
            set_checkpointing(module, checkpointing)
            for batch in sorted(set(stage_batches)):
                if budget.left() < 20:
                    break
                row = {"stage": stage, "batch": batch, "grad_checkpointing": checkpointing}
                try:
                    dev.reset_peak()
                    inputs = step_inputs(cfg, batch, dev)
                    train_step(module, opt, inputs, dev)  # kernel selection, allocator warm-up
                    step_s = seconds_per_step(module, opt, inputs, dev, steps)
                    row.update(step_s=round(step_s, 4), samples_per_s=round(batch / step_s, 3), peak_gib=dev.peak_gib())
                    if checkpointing and batch in (1, max(stage_batches)):
                        flops = step_flops(module, opt, inputs, dev)
                        encode = vae_encode_seconds(module, inputs, dev, 2 if dev.dry else 3)
                        row.update(tflop_per_step=round(flops / 1e12, 3),
                                   mfu=round(flops / step_s / (peak * 1e12), 4) if peak else None,
                                   vae_encode_share=round(encode / step_s, 3))
                        # The same step from cached latents (ic cache-latents): no VAE encode.
                        from ic_model.models.codec import encode_video

                        with torch.no_grad():
                            cached = {**inputs, "pixels": None, "latents": encode_video(module.vae, inputs["pixels"])}
                        cached_s = seconds_per_step(module, opt, cached, dev, steps)
                        row.update(step_s_cached_latents=round(cached_s, 4),
                                   samples_per_s_cached_latents=round(batch / cached_s, 3))
                except dev.oom():
                    row.update(step_s=None, samples_per_s=None, peak_gib="OOM")
                    out["rows"].append(row)
                    print(json.dumps(row), flush=True)
                    break
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
                if checkpointing and (stage not in best or row["samples_per_s"] > _rate(out, stage, best[stage])):
                    best[stage] = batch
        if stage == "dense" and budget.left() > 30:
            set_checkpointing(module, True)
            out["dense_top_kernels"] = top_kernels(module, opt, step_inputs(cfg, best.get("dense", 1), dev), dev)
        del module, opt, params
        dev.reset_peak()
    out["best_batch"] = best
    if budget.left() > 20:
        out["loader"] = loader_rate(cfg, dev, workdir, best.get("dense", 1), budget)
    out["peak_tflops"] = peak
    return out


def _rate(out: dict, stage: str, batch: int) -> float:
    rates = [r["samples_per_s"] for r in out["rows"]
             if r["stage"] == stage and r["batch"] == batch and r["grad_checkpointing"] and r["samples_per_s"]]
    return max(rates, default=0.0)


def pipeline(cfg, dev: Device, dtype: torch.dtype):
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    torch.manual_seed(0)
    comps = components(cfg, dev, adapters=("camera", "object"))
    pipe = ImageConductorPipeline(comps, device=dev.torch, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(pipe):
    from ic_model.pipelines.image_conductor import prepare_image_and_tracks

    image = np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)
    return prepare_image_and_tracks(image, [[[60, 60], [200, 120]], [[300, 200], [250, 100]]], pipe.cfg)


def section_generate(cfg, dev: Device, args, budget: Budget) -> dict:
    pipe = pipeline(cfg, dev, torch.bfloat16)
    prepared = _inputs(pipe)
    steps = 3 if dev.dry else 25
    rows = {}
    for name, mode, lam in (("camera", "camera", 1.0), ("object", "object", 1.0), ("object_cfg_1.3", "object", 1.3)):
        if budget.left() < 15:
            break
        dev.reset_peak()
        pipe(prepared.image, "a test", prepared.tracks, mode=mode, num_inference_steps=2, trajs_scale=lam)  # warm-up
        times = []
        for r in range(1 if dev.dry else 2):
            dev.sync()
            t0 = time.perf_counter()
            pipe(prepared.image, "a test", prepared.tracks, mode=mode, num_inference_steps=steps,
                 guidance_scale=7.5, trajs_scale=lam, seed=r)
            dev.sync()
            times.append(time.perf_counter() - t0)
        rows[name] = {"s_per_video": round(float(np.median(times)), 3), "peak_gib": dev.peak_gib()}
        print(json.dumps({name: rows[name]}), flush=True)
    out = {"steps": steps, "guidance_scale": 7.5, "dtype": "bf16", "rows": rows}
    if "object_cfg_1.3" in rows:
        out["guidance_cost_ratio"] = round(rows["object_cfg_1.3"]["s_per_video"] / rows["object"]["s_per_video"], 3)
    return out


def section_correctness(cfg, dev: Device, args, budget: Budget, workdir: Path) -> dict:
    """bf16 vs fp32 from the same weights and inputs: a training loss, and sampled latents."""
    torch.manual_seed(0)
    module = stage_module(cfg, dev, "dense", workdir, mixed_precision="no")
    inputs = step_inputs(cfg, 1, dev, seed=1)
    with torch.no_grad():
        loss32 = float(module(**inputs)["loss"])
        _cast_frozen(module, "bf16")
        with torch.autocast(dev.torch.type, dtype=torch.bfloat16):
            loss16 = float(module(**inputs)["loss"])
    del module
    out = {"loss_fp32": loss32, "loss_bf16": loss16, "loss_rel_diff": round(abs(loss16 - loss32) / abs(loss32), 5),
           "loss_within_1pct": abs(loss16 - loss32) <= 0.01 * abs(loss32)}
    if budget.left() > 20:
        pipes = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            pipes[name] = pipeline(cfg, dev, dtype)
        prepared = _inputs(pipes["fp32"])
        lat = {name: p(prepared.image, "a test", prepared.tracks, mode="object", num_inference_steps=3 if dev.dry else 25,
                       guidance_scale=7.5, trajs_scale=1.3, output_type="latent") for name, p in pipes.items()}
        ref = lat["fp32"]
        out["sampler_latent_rel_rms"] = round(float((lat["bf16"] - ref).pow(2).mean().sqrt() / ref.std()), 5)
    return out


def section_raft(dev: Device, args, budget: Budget) -> dict:
    from ic_data.motion import RAFTFlow, motion_score

    # Curation scores 8 evenly spaced adjacent pairs of a clip decoded at the analysis size
    # (shorter side 256: 455×256 for 16:9 video); RAFT runs them as one batch.
    h, w = (128, 160) if dev.dry else (256, 455)
    backend = RAFTFlow("raft_large", random_init=True, device=str(dev.torch), batch_size=8, iters=2 if dev.dry else 12)
    frames = np.random.default_rng(0).integers(0, 256, (32, h, w, 3), dtype=np.uint8)
    motion_score(frames, backend, 8)  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < (2 if dev.dry else 20) and budget.left() > 5:
        motion_score(frames, backend, 8)
        n += 1
    dev.sync()
    if n == 0:
        return {"skipped": "budget spent"}
    rate = n / (time.perf_counter() - t0)
    return {"model": "raft_large (random weights)", "size": f"{w}x{h}", "pairs_per_video": 8,
            "iters": backend.iters, "videos_per_s": round(rate, 3),
            "gpu_hours_per_million_videos": round(1e6 / rate / 3600, 1)}


def print_table(report: dict) -> None:
    print(f"\n== gpu_check on {report['device']} (torch {report['torch']}) ==")
    train = report.get("train", {})
    for r in train.get("rows", []):
        extra = f" MFU {r['mfu']:.1%}" if r.get("mfu") else ""
        extra += f" VAE {r['vae_encode_share']:.0%}" if r.get("vae_encode_share") is not None else ""
        print(f"train {r['stage']:7s} batch {r['batch']:3d} ckpt {str(r['grad_checkpointing']):5s} "
              f"{r['samples_per_s']} samples/s peak {r['peak_gib']} GiB{extra}")
    if "loader" in train:
        print(f"loader {train['loader']}")
    gen = report.get("generate", {})
    for name, r in gen.get("rows", {}).items():
        print(f"generate {name:15s} {r['s_per_video']} s/video peak {r['peak_gib']} GiB")
    if "guidance_cost_ratio" in gen:
        print(f"camera-free guidance / plain CFG: {gen['guidance_cost_ratio']} (target <= 1.55)")
    if "correctness" in report:
        print(f"correctness {report['correctness']}")
    if "raft" in report:
        print(f"raft {report['raft']}")
    for key, err in report.get("errors", {}).items():
        print(f"ERROR in {key}: {err.splitlines()[-1]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, mini networks: checks the script end to end")
    ap.add_argument("--out", default=None,
                    help="JSON path (default: benchmarks/results/gpu_check.json; a dry run: bench_out/)")
    ap.add_argument("--sections", default="train,generate,correctness,raft")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop adding rows after this many seconds (default 330; a dry run 1200)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of a card not in the table")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    dev = Device(args.dry_run)
    budget = Budget(args.budget_s or (1200.0 if args.dry_run else 330.0))
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # casting random frozen weights is the point here
    cfg = model_config(args.dry_run)
    repo = Path(__file__).resolve().parents[1]
    default = repo / ("bench_out/gpu_check-dry-run.json" if args.dry_run else "benchmarks/results/gpu_check.json")
    out_path = Path(args.out) if args.out else default
    report = {"device": dev.name, "torch": torch.__version__, "dry_run": args.dry_run,
              "size": f"{cfg.num_frames}x{cfg.height}x{cfg.width}", "errors": {}}
    t_all = time.perf_counter()
    mini = sd15.mini_architecture() if args.dry_run else nullcontext()
    with mini, tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for section in args.sections.split(","):
            t0 = time.perf_counter()
            try:
                if section == "train":
                    report["train"] = section_train(cfg, dev, args, budget, Path(tmp))
                elif section == "generate":
                    report["generate"] = section_generate(cfg, dev, args, budget)
                elif section == "correctness":
                    report["correctness"] = section_correctness(cfg, dev, args, budget, Path(tmp))
                elif section == "raft":
                    report["raft"] = section_raft(dev, args, budget)
                else:
                    raise ValueError(f"unknown section {section!r}")
            except Exception:  # keep the other sections' figures
                report["errors"][section] = traceback.format_exc()
            report.setdefault("section_s", {})[section] = round(time.perf_counter() - t0, 1)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(report, indent=1))
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    out_path.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"\nwrote {out_path}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
