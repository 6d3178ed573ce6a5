"""Model and training configuration: plain dataclasses with presets, saved beside every checkpoint.

Two presets describe the same architecture:

- ``sd15``: the paper's sizes. SD 1.5 UNet + AnimateDiff v3 motion module, SparseCtrl RGB image
  ControlNet, SD VAE and CLIP ViT-L/14 text encoder, all loaded from local paths; ε-prediction.
- ``tiny``: the same classes with small widths, trained from scratch on CPU at 96×64 pixels and
  16 frames. Nothing pretrained exists here, so this preset adds the ``vae`` and ``base`` stages.
  It predicts x0 (``sample``) by default: ε-prediction was far too slow to converge at this size.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ic_data.errors import BadInputError
from ic_data.settings import number, one_of, read_yaml, refuse, text, truth, whole

# Stage order. ``vae`` and ``base`` exist only for presets that train their own base model.
STAGES = ("vae", "base", "dense", "sparse", "camera", "object")
PAPER_STAGES = ("dense", "sparse", "camera", "object")
LORA_STAGES = ("camera", "object")

# The ModelConfig fields that take one of a few names (the first is the tiny preset's default).
CHOICES = {
    "prediction_type": ("sample", "epsilon", "v_prediction"),
    "codec": ("vae", "space_to_depth"),
    "image_condition": ("first_frame", "every_frame"),
    "spatial_attention": ("self", "first_frame"),
    "first_frame_latent": ("noisy", "clean"),
    "motion_norm": ("joint", "per_frame"),
}

# The TrainConfig fields that take one of a few names (the first is the default).
TRAIN_CHOICES = {
    "mixed_precision": ("no", "fp16", "bf16"),
    "ortho_mode": ("paper", "cross"),
    "report_to": ("tensorboard", "wandb", "none"),
}

# Bounds of numeric fields (inclusive "ge"/"le", exclusive "gt"), for typed forms and checks.
TRAIN_BOUNDS = {
    "steps": {"ge": 1}, "batch_size": {"ge": 1}, "grad_accum_steps": {"ge": 1}, "learning_rate": {"gt": 0},
    "adam_weight_decay": {"ge": 0}, "warmup_steps": {"ge": 0}, "max_grad_norm": {"ge": 0},
    "frame_stride": {"ge": 1}, "min_tracks": {"ge": 1}, "max_tracks": {"ge": 1}, "shuffle_buffer": {"ge": 1},
    "num_workers": {"ge": 0}, "caption_dropout": {"ge": 0, "le": 1}, "vae_frames_per_clip": {"ge": 1},
    "high_noise_prob": {"ge": 0, "le": 1}, "high_noise_min_t": {"ge": 0}, "motion_loss_weight": {"ge": 0},
    "ortho_weight": {"ge": 0}, "kl_weight": {"ge": 0}, "validate_every": {"ge": 0},
    "validation_guidance_scale": {"ge": 0}, "log_every": {"ge": 1}, "save_every": {"ge": 1},
    "keep_checkpoints": {"ge": 1}, "seed": {"ge": 0, "le": 2**63 - 1},
}
MODEL_BOUNDS = {
    "width": {"ge": 8}, "height": {"ge": 8}, "num_frames": {"ge": 2}, "flow_kernel_size": {"ge": 1},
    "flow_sigma": {"gt": 0}, "flow_gain": {"gt": 0}, "num_train_timesteps": {"ge": 1}, "beta_start": {"gt": 0},
    "beta_end": {"gt": 0}, "layers_per_block": {"ge": 1}, "norm_num_groups": {"ge": 1},
    "attention_head_dim": {"ge": 1}, "motion_num_attention_heads": {"ge": 1}, "cross_attention_dim": {"ge": 1},
    "space_to_depth_factor": {"ge": 1}, "vae_layers_per_block": {"ge": 1}, "vae_norm_num_groups": {"ge": 1},
    "latent_channels": {"ge": 1}, "latent_scaling_factor": {"gt": 0}, "text_hidden_size": {"ge": 1},
    "text_layers": {"ge": 1}, "text_heads": {"ge": 1}, "text_intermediate_size": {"ge": 1},
    "max_text_tokens": {"ge": 1}, "lora_rank": {"ge": 1}, "lora_alpha": {"gt": 0},
    "init_seed": {"ge": 0, "le": 2**63 - 1},
}


def settings_problems(obj, bounds: dict, choices: dict) -> list[str]:
    """Every field of the dataclass ``obj`` that breaks its type, its ``bounds`` or its
    ``choices`` (the tables above, which the deployments' typed forms use too), one line each."""
    problems = []
    for f in dataclasses.fields(obj):
        value, default = getattr(obj, f.name), f.default
        if f.name in choices:
            problems.append(one_of(f.name, value, choices[f.name]))
        elif isinstance(default, bool):
            problems.append(truth(f.name, value))
        elif isinstance(default, (int, float)):
            b = bounds.get(f.name, {})
            low = b.get("ge", b.get("gt"))
            if isinstance(default, int):
                problems.append(whole(f.name, value, None if low is None else low + ("gt" in b), b.get("le")))
            else:
                problems.append(number(f.name, value, low, b.get("le"), above="gt" in b))
        elif isinstance(default, str):
            problems.append(text(f.name, value))
    return [p for p in problems if p]


# Environment variables that may fill the sd15 weight paths (the flow/CLI settings win).
WEIGHT_ENV = {
    "sd15_path": "IC_SD15_PATH",
    "motion_adapter_path": "IC_MOTION_ADAPTER_PATH",
    "sparsectrl_rgb_path": "IC_SPARSECTRL_RGB_PATH",
}

# LoRA targets, as in the official release: attention projections, resnet and downsampler convs,
# time-embedding projections, feed-forward layers, the conditioning embedding, conv_in, and the
# ControlNet down/mid zero-convs: every Linear and Conv2d of the motion ControlNet. A regular
# expression over module names, anchored at a "." so that e.g. "xconv1" does not match "conv1".
DEFAULT_LORA_TARGETS = (
    r"(?:.*\.)?(?:to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2"
    r"|conv1|conv2|conv_shortcut|downsamplers\.\d+\.conv|time_emb_proj|linear_1|linear_2"
    r"|controlnet_cond_embedding|conv_in|controlnet_down_blocks\.\d+|controlnet_mid_block)"
)


# Fields renamed since a run folder may have been written: old name → new name.
_RENAMED = {"vae_scaling_factor": "latent_scaling_factor"}


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model from its saved JSON alone."""

    preset: str = "tiny"
    # Clip geometry the model sees (pixels) and the trajectory-map filter at that size.
    width: int = 96
    height: int = 64
    num_frames: int = 16
    flow_kernel_size: int = 25
    flow_sigma: float = 2.5
    # Multiplies the trajectory maps before the motion ControlNet. 1 is the official model. The
    # filtered maps are small (at 96×64, std ≈ 0.05 dense and ≈ 0.007 for 1–8 sparse tracks), and
    # the ControlNet's input conv starts at zero, so a model trained from scratch for a few
    # thousand steps hardly sees them; a gain of ~20 brings dense maps to unit scale.
    flow_gain: float = 1.0
    # Denoising objective: "epsilon" (sd15), "sample" (x0) or "v_prediction".
    prediction_type: str = "sample"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    # Widths shared by the UNet and both ControlNets (tiny only; sd15 reads its configs).
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    motion_num_attention_heads: int = 4
    cross_attention_dim: int = 64
    # The tiny preset's codec between pixels and the diffusion grid: "vae" (a small AutoencoderKL
    # trained by the `vae` stage) or "space_to_depth" (lossless pixel-unshuffle by
    # ``space_to_depth_factor`` into 3·factor² channels; no `vae` stage). sd15 uses SD's VAE.
    codec: str = "vae"
    space_to_depth_factor: int = 8
    # What the image ControlNet sees: "first_frame" (SparseCtrl: the first frame's latent at frame
    # 0, zeros elsewhere; sd15's pretrained weights expect this) or "every_frame" (the same latent
    # at every frame position, mask still on frame 0: a tiny base trained from scratch then sees
    # the content it must carry at each frame, as frame-concatenating image-to-video models do).
    image_condition: str = "first_frame"
    # The tiny UNet's spatial self-attention: "self" (each frame alone, as in SD) or "first_frame"
    # (each frame also attends to frame 0's tokens: ic_model.models.frame_attention), so a moved object
    # can keep frame 0's appearance. sd15 keeps the pretrained "self".
    spatial_attention: str = "self"
    # Frame 0 of the diffusion latents: "noisy" (noised like every frame; the image reaches the
    # model only through the image ControlNet, as in SparseCtrl) or "clean" (the input image's
    # latent at every noise level, and the model's x0 for frame 0 is that latent: frames 1… are
    # denoised beside an exact frame 0 they can copy from, and frame 0 of the output is the
    # input). "clean" needs prediction_type "sample"; sd15 keeps "noisy".
    first_frame_latent: str = "noisy"
    # The motion modules' temporal GroupNorm: "joint" (statistics over all frames, as diffusers'
    # AnimateDiffTransformer3D computes them) or "per_frame" (each frame alone, as AnimateDiff's and
    # Image Conductor's own code do: the released Image Conductor weights were trained that way).
    motion_norm: str = "joint"
    # Tiny VAE: four blocks, so latents are 1/8 of the pixels as in SD.
    vae_block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    vae_layers_per_block: int = 1
    vae_norm_num_groups: int = 8
    latent_channels: int = 4
    # What latents are multiplied by after encoding (diffusers' ``vae.config.scaling_factor``; SD
    # 1.5: 0.18215). Not to be confused with ``vae_scale_factor``, the VAE's spatial downsampling.
    latent_scaling_factor: float = 1.0
    # Tiny text encoder (the tokenizer is always the real CLIP BPE one).
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate_size: int = 128
    max_text_tokens: int = 77
    # LoRA on the motion ControlNet.
    lora_rank: int = 64
    lora_alpha: int = 64
    lora_targets: str = DEFAULT_LORA_TARGETS
    # Where real weights live (sd15 only). Empty = read the IC_* environment variable.
    sd15_path: str = ""
    motion_adapter_path: str = ""
    sparsectrl_rgb_path: str = ""
    # Seed for the random initialisation of the tiny preset's components.
    init_seed: int = 0

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (diffusers' pipelines call it the same)."""
        if self.preset == "sd15":
            return 8
        if self.codec == "space_to_depth":
            return self.space_to_depth_factor
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the latent grid."""
        f = self.vae_scale_factor
        return self.height // f, self.width // f

    @property
    def stages(self) -> tuple[str, ...]:
        if self.preset == "sd15":
            return PAPER_STAGES
        return STAGES[1:] if self.codec == "space_to_depth" else STAGES

    def prerequisite(self, stage: str) -> str | None:
        """The stage that must have finished before ``stage`` may start."""
        if stage not in self.stages:
            raise ValueError(f"stage {stage!r} does not exist for preset {self.preset!r}: {self.stages}")
        i = self.stages.index(stage)
        return self.stages[i - 1] if i > 0 else None

    def weight_path(self, name: str) -> str:
        """A configured weight path, falling back to its environment variable."""
        value = getattr(self, name)
        return value or os.environ.get(WEIGHT_ENV[name], "")

    def validate(self) -> None:
        # Types, bounds and choices (a zero LoRA alpha, a NaN sigma, an even filter: failures deep in a run).
        refuse("ModelConfig", settings_problems(self, MODEL_BOUNDS, {**CHOICES, "preset": ("tiny", "sd15")}) + [p for p in (
            None if not isinstance(self.flow_kernel_size, int) or self.flow_kernel_size % 2
            else f"flow_kernel_size must be odd, got {self.flow_kernel_size}",
            number("beta_start", self.beta_start, 0, 0.999) or number("beta_end", self.beta_end, 0, 0.999),
        ) if p])
        f = self.vae_scale_factor
        if self.width < f or self.height < f or self.width % f or self.height % f:
            raise ValueError(f"width×height {self.width}×{self.height} must be positive multiples of {f}")
        if self.preset == "sd15" and self.codec != "vae":
            raise ValueError("the sd15 preset uses SD 1.5's VAE (codec 'vae')")
        if self.preset == "sd15" and self.image_condition != "first_frame":
            raise ValueError("the sd15 preset keeps SparseCtrl's first-frame condition (pretrained weights expect it)")
        if self.preset == "sd15" and self.spatial_attention != "self":
            raise ValueError("the sd15 preset keeps the pretrained UNet's spatial self-attention ('self')")
        if self.first_frame_latent == "clean" and (self.preset == "sd15" or self.prediction_type != "sample"):
            raise ValueError("first_frame_latent 'clean' needs the tiny preset with prediction_type 'sample' (x0): "
                             "the model's prediction for frame 0 is then the input's latent itself")
        if self.codec == "space_to_depth" and self.latent_channels != 3 * self.space_to_depth_factor**2:
            raise ValueError(
                f"codec 'space_to_depth' with factor {self.space_to_depth_factor} gives "
                f"{3 * self.space_to_depth_factor**2} latent channels, not latent_channels={self.latent_channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        data = {_RENAMED.get(k, k): v for k, v in data.items()}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg


def tiny_config(**overrides) -> ModelConfig:
    if overrides.get("codec") == "space_to_depth":  # the codec fixes the channel count
        overrides.setdefault("latent_channels", 3 * overrides.get("space_to_depth_factor", 8) ** 2)
    cfg = ModelConfig(**overrides)
    cfg.validate()
    return cfg


def sd15_config(**overrides) -> ModelConfig:
    base = dict(
        preset="sd15",
        width=384,
        height=256,
        num_frames=16,
        flow_kernel_size=99,
        flow_sigma=10.0,
        prediction_type="epsilon",
        latent_scaling_factor=0.18215,
        cross_attention_dim=768,
        motion_norm="per_frame",  # as AnimateDiff's and Image Conductor's code (and weights) have it
    )
    base.update(overrides)
    cfg = ModelConfig(**base)
    cfg.validate()
    return cfg


PRESETS = {"tiny": tiny_config, "sd15": sd15_config}


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)


@dataclass
class TrainConfig:
    """One training stage. Defaults follow the paper where it says (Adam, lr 1e-4)."""

    stage: str = "dense"
    steps: int = 1000
    batch_size: int = 4  # per process, per micro-step
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (GPU)
    gradient_checkpointing: bool = False
    # Data.
    frame_stride: int = 2  # 16 frames out of a 32-frame clip
    min_tracks: int = 1
    max_tracks: int = 8
    shuffle_buffer: int = 64
    num_workers: int = 0
    pin_memory: bool = False  # page-locked batches for faster host→GPU copies (CUDA only)
    # A folder of cached VAE latents of the shards (`ic cache-latents`): no mp4 decode and no VAE
    # encode per step. "" = encode every step. Not for the `vae` stage, which trains the VAE.
    latent_cache: str = ""
    caption_dropout: float = 0.1
    vae_frames_per_clip: int = 4
    # Timesteps: with this probability draw t from [high_noise_min_t, T) (MotionCtrl's trick).
    high_noise_prob: float = 0.0
    high_noise_min_t: int = 700
    # Motion ControlNet stages (dense, sparse, camera, object): weight the denoising loss towards
    # positions whose latent changes between frames (1 + w · relative change; see
    # train.motion_weights). 0 = the paper's plain MSE. Never applied to `base`: weighting it
    # starved the first frame, whose copy the base must learn (frame-0 x0 error 3.8× higher).
    motion_loss_weight: float = 0.0
    # Object stage: orthogonal loss between the camera and object LoRAs.
    ortho_weight: float = 1e-3  # the paper-mode term starts near r per layer (‖I‖² = rank)
    ortho_mode: str = "paper"  # "paper": ‖I − W_cam W_objᵀ‖²; "cross": ‖W_cam W_objᵀ‖²
    # VAE stage.
    kl_weight: float = 1e-6
    # Overfit one fixed batch (same clips, noise and timesteps every step): a debugging mode.
    overfit_one_batch: bool = False
    # Bookkeeping. report_to: "tensorboard" (event files in RUN/STAGE/logs/), "wandb" (offline
    # without a network: WANDB_MODE=offline) or "none"; metrics.jsonl is written in every case.
    report_to: str = "tensorboard"
    # Every N steps (and at step 0) generate and score one held-out case (training/validation.py);
    # 0 = never. CFG 1.0 by default: the tiny preset's text encoder is random and frozen.
    validate_every: int = 0
    validation_guidance_scale: float = 1.0
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        # Refused when made: steps=0 used to finish a stage untrained (done.json and all),
        # log_every=0 to stop with a ZeroDivisionError after the first step.
        refuse("TrainConfig", self.problems())

    def problems(self) -> list[str]:
        """Every field out of its range, one line each (empty when the config is sound)."""
        betas = self.adam_betas
        return settings_problems(self, TRAIN_BOUNDS, {**TRAIN_CHOICES, "stage": STAGES}) + [p for p in (
            None if isinstance(betas, (tuple, list)) and len(betas) == 2
            and not any(number("", b, 0, 1) for b in betas) and max(betas) < 1
            else f"adam_betas must be two numbers in [0, 1), got {betas!r}",
            f"min_tracks {self.min_tracks} is above max_tracks {self.max_tracks}"
            if isinstance(self.min_tracks, int) and isinstance(self.max_tracks, int)
            and self.min_tracks > self.max_tracks else None,
        ) if p]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


# TrainConfig defaults that belong to a preset; a flag or option still overrides each. sd15 on
# GPUs: bf16 autocast with the frozen weights held in bf16, gradient checkpointing, one clip per
# GPU per micro-step (16 frames at 384×256), data decoded by worker processes into pinned memory.
# The paper's global batch of 64 is batch 1 × grad_accum_steps × GPUs, e.g. 1 × 8 × 8.
PRESET_TRAIN_DEFAULTS = {
    "tiny": {},
    "sd15": dict(batch_size=1, mixed_precision="bf16", gradient_checkpointing=True, num_workers=4, pin_memory=True),
}


def train_config(preset: str, **fields) -> TrainConfig:
    """A TrainConfig with ``preset``'s defaults; ``fields`` given as None keep the default."""
    if preset not in PRESET_TRAIN_DEFAULTS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESET_TRAIN_DEFAULTS)}")
    given = {k: v for k, v in fields.items() if v is not None}
    return TrainConfig.from_dict({**PRESET_TRAIN_DEFAULTS[preset], **given})


class ConfigFileError(BadInputError):
    """A training config file with problems; ``problems`` holds one line for each."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.problems = [f"{path}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))


def device_problem(value: str | None) -> str | None:
    """Why the torch device ``value`` cannot run the models on this machine, or None: "cuda" without
    a GPU would otherwise fail deep inside a run, after its data and weights are up."""
    if value is None or value == "cpu":
        return None
    if not value.strip():
        return "not a device (cpu, cuda, cuda:1, mps, …)"
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        return "not a device (cpu, cuda, cuda:1, mps, …)"
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type == "meta" or available is None:
        return f"the models cannot run on a {device.type!r} device"
    if not available():
        return f"this machine has no {device.type} device available to torch"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        return f"this machine has {n} CUDA device(s) (cuda:0 … cuda:{n - 1})"
    return None


def field_problems(data, cls, where: str) -> list[str]:
    """What is wrong with ``data`` as fields of the dataclass ``cls``: unknown keys and values of
    the wrong type (ints are accepted for floats, lists for tuples), one line each."""
    if not isinstance(data, dict):
        return [f"{where}: must be a mapping of {cls.__name__} fields, got {type(data).__name__}"]
    fields = {f.name for f in dataclasses.fields(cls)}
    default = cls()
    problems = []
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{where}: {key!r} is not a {cls.__name__} field")
            continue
        expected = getattr(default, key)
        if isinstance(expected, bool):
            ok = isinstance(value, bool)
        elif isinstance(expected, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(expected, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):  # JSON's NaN/Infinity: never a setting
                problems.append(f"{where}: {key!r} must be a finite number, got {value}")
                continue
        elif isinstance(expected, str):
            ok = isinstance(value, str)
        elif isinstance(expected, tuple):
            ok = isinstance(value, (list, tuple))
        else:
            ok = True
        if not ok:
            problems.append(f"{where}: {key!r} must be {type(expected).__name__}, got {shown(value)}")
    return problems


def shown(value, limit: int = 120) -> str:
    """``value`` as JSON for a message, cut short: a few items of each list or mapping, three
    levels deep, long text elided (a YAML file's aliases can make a small file a huge value)."""

    def cut(v, depth: int):
        if isinstance(v, str):
            return v if len(v) <= 60 else v[:60] + "…"
        if isinstance(v, dict):
            if depth == 0:
                return "{…}"
            out = {str(k): cut(x, depth - 1) for k, x in list(v.items())[:5]}
            if len(v) > 5:
                out["…"] = f"{len(v) - 5} more"
            return out
        if isinstance(v, (list, tuple)):
            if depth == 0:
                return "[…]"
            return [cut(x, depth - 1) for x in v[:5]] + ([f"… {len(v) - 5} more"] if len(v) > 5 else [])
        return v

    text = json.dumps(cut(value, 3), default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


# The sections of a training config file (``ic train STAGE --config FILE``).
CONFIG_FILE_KEYS = ("preset", "run", "shards", "num_processes", "model", "weights", "train", "stages")


def read_config_file(path: str | os.PathLike, stage: str) -> dict:
    """A training config file (YAML or JSON) for ``stage``: ``preset``, ``run``, ``shards``,
    ``num_processes``, ``model`` (ModelConfig fields of a new run), ``weights`` (sd15 paths),
    ``train`` (TrainConfig fields for every stage) and ``stages.STAGE`` (TrainConfig fields for
    one stage, over ``train``). Returns them with ``train`` merged for ``stage``, and ``sources``:
    each of its keys → where in the file it was set (``stages.dense.steps``); every problem
    (unknown key, wrong type, unreadable file) is one line of a :class:`ConfigFileError`."""
    import yaml

    try:
        data = read_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigFileError(path, [f"cannot read it ({err.strerror or err})"]) from None
    except UnicodeDecodeError as err:
        raise ConfigFileError(path, [f"not UTF-8 text ({err.reason} at byte {err.start})"]) from None
    except yaml.YAMLError as err:
        raise ConfigFileError(path, [f"not valid YAML ({str(err).splitlines()[0]})"]) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigFileError(path, [f"must be a mapping of {', '.join(CONFIG_FILE_KEYS)}"])
    problems = [f"unknown key {k!r} (known: {', '.join(CONFIG_FILE_KEYS)})" for k in data if k not in CONFIG_FILE_KEYS]
    if "preset" in data and data["preset"] not in PRESETS:
        problems.append(f"preset: {data['preset']!r} is not one of {sorted(PRESETS)}")
    for key, kind in (("run", str), ("shards", (str, list)), ("num_processes", int)):
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            problems.append(f"{key}: wrong type, got {shown(data[key])}")
    model = data.get("model") or {}
    problems += field_problems(model, ModelConfig, "model")
    if isinstance(model, dict):
        problems += [f"model: {k!r} belongs under weights" for k in model if k in WEIGHT_ENV]
    weights = data.get("weights") or {}
    if not isinstance(weights, dict):
        problems.append("weights: must be a mapping of " + ", ".join(WEIGHT_ENV))
        weights = {}
    problems += [f"weights: {k!r} is not one of {', '.join(WEIGHT_ENV)}" for k in weights if k not in WEIGHT_ENV]
    problems += [f"weights: {k!r} must be a path, got {shown(v)}"
                 for k, v in weights.items() if k in WEIGHT_ENV and not isinstance(v, str)]
    train = data.get("train") or {}
    problems += field_problems(train, TrainConfig, "train")
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        problems.append("stages: must be a mapping of stage names to TrainConfig fields")
        stages = {}
    for name, fields in stages.items():
        if name not in STAGES:
            problems.append(f"stages: {name!r} is not a stage ({', '.join(STAGES)})")
        else:
            problems += field_problems(fields or {}, TrainConfig, f"stages.{name}")
    for where, fields in [("train", train), *((f"stages.{n}", f) for n, f in stages.items())]:
        if isinstance(fields, dict) and "stage" in fields:
            problems.append(f"{where}: 'stage' is given on the command line, not in the file")
    if problems:
        raise ConfigFileError(path, problems)
    merged = {**(train if isinstance(train, dict) else {}), **(stages.get(stage) or {})}
    top = {k: data[k] for k in ("preset", "run", "shards", "num_processes") if k in data}
    # Where each value came from, so that a problem with it names the file's key, not a flag.
    sources = {**{k: k for k in top}, **{k: f"train.{k}" for k in train},
               **{k: f"stages.{stage}.{k}" for k in stages.get(stage) or {}}}
    return {**top, "model": model, "weights": weights, "train": merged, "sources": sources}


def save_json(path: str | os.PathLike, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_json(path: str | os.PathLike) -> dict:
    """A JSON file of this project's own (a run's config.json, a stage's done.json); a damaged
    one is a ValueError naming it, not a bare JSONDecodeError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None


__all__ = [
    "MODEL_BOUNDS",
    "TRAIN_BOUNDS",
    "TRAIN_CHOICES",
    "ConfigFileError",
    "DEFAULT_LORA_TARGETS",
    "LORA_STAGES",
    "PAPER_STAGES",
    "PRESETS",
    "PRESET_TRAIN_DEFAULTS",
    "STAGES",
    "WEIGHT_ENV",
    "ModelConfig",
    "TrainConfig",
    "load_json",
    "device_problem",
    "field_problems",
    "preset_config",
    "read_config_file",
    "save_json",
    "sd15_config",
    "tiny_config",
    "train_config",
]
