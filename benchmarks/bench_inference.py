"""Generation speed and the cost of camera-free guidance, measured in one run.

    python benchmarks/bench_inference.py [--run RUN] [--steps 25] [--repeats 3]

Without --run, a tiny-preset run is trained for a few steps per stage on synthetic shards (the
weights do not change the cost). Prints seconds per generated video (16 frames, 25 DDIM steps)
for plain CFG (two UNet evaluations per step, batched) and for camera-free guidance (three), and
their ratio (target ≤ 1.55). With a CUDA GPU and --preset sd15 the same for the real sizes,
random-initialised.

    python benchmarks/bench_inference.py --flops

counts instead the FLOPs of one denoising step at the sd15 preset's real size (SD 1.5 + AnimateDiff
v3 + SparseCtrl RGB + the motion ControlNet with rank-64 LoRAs, 16×256×384) on the ``meta`` device
(no weights, any machine), through the two calls the sampling loop makes: the batched (∅, c) pass of
plain CFG and ``Denoiser.camera_free_guidance``; and their ratio, the guidance's cost where a GPU is
compute-bound.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ic_data.synthetic import write_synthetic_shards  # noqa: E402
from ic_model.config import TrainConfig  # noqa: E402
from ic_model.pipelines.image_conductor import ImageConductorPipeline, prepare_image_and_tracks  # noqa: E402
from ic_model.training.run import run_model_config  # noqa: E402
from ic_model.training.loop import train_stage  # noqa: E402


def quick_tiny_run(workdir: Path) -> Path:
    shards = write_synthetic_shards(workdir / "shards", num_mixed=2, num_camera=2)
    run = workdir / "run"
    cfg = run_model_config(run, "tiny")
    for stage in cfg.stages:
        train_stage(stage, str(shards), run, TrainConfig(stage=stage, steps=1, batch_size=1), cfg)
    return run


def sd15_pipeline(device: str) -> ImageConductorPipeline:
    from ic_model.models import lora
    from ic_model.models.components import Components
    from ic_model.config import sd15_config
    from ic_model.models.sd15 import build_sd15_on_meta
    from ic_model.models.tokenizer import clip_tokenizer

    cfg = sd15_config()
    parts = build_sd15_on_meta(cfg, device=device)
    comps = Components(cfg=cfg, tokenizer=clip_tokenizer(), **{k: parts[k] for k in (
        "vae", "text_encoder", "unet", "image_controlnet", "motion_controlnet", "scheduler")})
    for name in ("camera", "object"):
        lora.add_lora_adapter(comps.motion_controlnet, name, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return ImageConductorPipeline(comps, device=device, dtype=torch.float16)


def sd15_step_flops() -> dict:
    """FLOPs of one DDIM step at the sd15 preset's real size, plain CFG and camera-free guidance:
    the two calls the sampling loop makes, on the ``meta`` device (shapes only)."""
    from torch.utils.flop_counter import FlopCounterMode

    pipe = sd15_pipeline("meta")
    cfg, den, dt = pipe.cfg, pipe.denoiser, pipe.dtype
    h, w = cfg.latent_size
    with torch.device("meta"):
        x = torch.zeros(1, cfg.latent_channels, cfg.num_frames, h, w, dtype=dt)
        text = torch.zeros(2, cfg.max_text_tokens, cfg.cross_attention_dim, dtype=dt)
        first = torch.zeros(1, cfg.latent_channels, h, w, dtype=dt)
        flow = torch.zeros(1, 2, cfg.num_frames, cfg.height, cfg.width, dtype=dt)
        t = torch.tensor(500)

    def count(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    def plain():
        with pipe._use_adapter("object"):
            den(x.expand(2, -1, -1, -1, -1), t.reshape(1).expand(2), text, first.expand(2, -1, -1, -1),
                flow=flow.expand(2, -1, -1, -1, -1))

    plain_flops = count(plain)
    guided = count(lambda: den.camera_free_guidance(x, t, text, first, flow, pipe._use_adapter))
    return {"size": f"{cfg.num_frames}x{cfg.height}x{cfg.width}", "plain_tflop": plain_flops / 1e12,
            "guided_tflop": guided / 1e12, "ratio": guided / plain_flops}


def time_video(pipe, prepared, steps: int, trajs_scale: float, repeats: int) -> float:
    times = []
    for r in range(repeats + 1):
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe(prepared.image, "a bench", prepared.tracks, mode="object", num_inference_steps=steps,
             trajs_scale=trajs_scale, seed=r)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        if r:  # the first call warms caches and kernels
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--preset", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flops", action="store_true", help="count one step's FLOPs at the sd15 size instead")
    args = ap.parse_args()
    if args.flops:
        f = sd15_step_flops()
        print(f"sd15: one DDIM step at {f['size']} (frames x height x width), FLOPs counted on the meta device")
        print(f"plain CFG            {f['plain_tflop']:.2f} TFLOP/step")
        print(f"camera-free guidance {f['guided_tflop']:.2f} TFLOP/step")
        print(f"ratio                {f['ratio']:.3f}  (target <= 1.55)")
        return
    with tempfile.TemporaryDirectory(prefix="ic-bench-inf-") as tmp:
        if args.preset == "sd15":
            if not torch.cuda.is_available():
                raise SystemExit("--preset sd15 needs a CUDA GPU")
            pipe = sd15_pipeline("cuda")
            where = torch.cuda.get_device_name()
        else:
            pipe = ImageConductorPipeline.from_run(args.run or quick_tiny_run(Path(tmp)))
            where = f"CPU, {torch.get_num_threads()} threads"
        image = np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)
        prepared = prepare_image_and_tracks(image, [[[60, 60], [200, 120]], [[300, 200], [250, 100]]], pipe.cfg)
        plain = time_video(pipe, prepared, args.steps, 1.0, args.repeats)
        guided = time_video(pipe, prepared, args.steps, 1.3, args.repeats)
    c = pipe.cfg
    print(f"{c.preset}: {c.num_frames} frames at {c.width}x{c.height}, {args.steps} DDIM steps, on {where}")
    print(f"plain CFG            {plain:.2f} s/video")
    print(f"camera-free guidance {guided:.2f} s/video")
    print(f"ratio                {guided / plain:.3f}  (target <= 1.55)")


if __name__ == "__main__":
    main()
