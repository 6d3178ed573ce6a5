"""The run directory: one folder per stage, each stage building on the one before.

```
RUN/config.json                 the ModelConfig every stage of this run shares
RUN/STAGE/config.json           the same ModelConfig, saved beside the stage's weights
RUN/STAGE/train_config.json     the TrainConfig it ran with
RUN/STAGE/checkpoints/step-N/   resumable state (weights, optimizer, scheduler, RNG)
RUN/STAGE/metrics.jsonl         one line per logged step
RUN/STAGE/done.json             written last: the stage finished (its summary)
RUN/vae/vae.safetensors                         (tiny preset)
RUN/base/{unet,image_controlnet,text_encoder}.safetensors   (tiny preset)
RUN/base/{unet,image_controlnet}.safetensors    (sd15, converted release: replaces AnimateDiff/SparseCtrl)
RUN/{dense,sparse}/motion_controlnet.safetensors
RUN/camera/camera_lora.safetensors
RUN/object/object_lora.safetensors (+ the camera_lora.safetensors it was trained against)
```
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ic_data.errors import BadInputError
from ic_model.config import ModelConfig, load_json, preset_config, save_json
from ic_model.models.components import Components
from ic_model.models.files import WeightsFileError, load_safetensors, write_safetensors
from ic_model.models.motion_controlnet import copy_unet_encoder
from ic_model.models.presets import build_components
from ic_model.models.sd15 import COMPUTED_BUFFERS

# Weights each full-model stage publishes, by component name.
STAGE_WEIGHTS = {
    "vae": ("vae",),
    "base": ("unet", "image_controlnet", "text_encoder"),
    "dense": ("motion_controlnet",),
    "sparse": ("motion_controlnet",),
}
LORA_FILES = {"camera": "camera_lora.safetensors", "object": "object_lora.safetensors"}


class MissingPrerequisiteError(BadInputError, RuntimeError):
    """A stage was asked to start before the stage it builds on finished."""


def stage_dir(run: str | os.PathLike, stage: str) -> Path:
    return Path(run) / stage


def is_done(run: str | os.PathLike, stage: str) -> bool:
    return (stage_dir(run, stage) / "done.json").exists()


def prerequisite(cfg: ModelConfig, stage: str) -> str | None:
    """The stage that must have finished before ``stage`` may start."""
    return cfg.prerequisite(stage)


def check_prerequisite(run: str | os.PathLike, cfg: ModelConfig, stage: str) -> None:
    before = prerequisite(cfg, stage)
    if before is not None and not is_done(run, before):
        raise MissingPrerequisiteError(
            f"stage {stage!r} needs the finished {before!r} stage first: "
            f"{stage_dir(run, before) / 'done.json'} does not exist. "
            f"Run `ic train {before} --run {run} …` before `ic train {stage}`."
        )


def has_trained(run: str | os.PathLike) -> bool:
    """Whether any stage of ``run`` is done or has a checkpoint: from then on the run's
    ModelConfig is fixed; before, a command with other model settings sets it anew."""
    run = Path(run)
    return any(run.glob("*/done.json")) or any(run.glob("*/checkpoints/step-*"))


WEIGHT_PATH_FIELDS = {"sd15_path", "motion_adapter_path", "sparsectrl_rgb_path"}  # machine settings


def config_clashes(cfg: ModelConfig, preset: str | None, overrides: dict) -> list[tuple[str, object, object]]:
    """(setting, the run's value, the asked value) for each of ``preset`` and ``overrides`` that
    differs from the run's ``cfg``; weight paths are this machine's, never a clash."""
    clashes = [("preset", cfg.preset, preset)] if preset is not None and preset != cfg.preset else []
    return clashes + [(k, getattr(cfg, k), v) for k, v in overrides.items()
                      if k not in WEIGHT_PATH_FIELDS and getattr(cfg, k) != v]


def run_model_config(
    run: str | os.PathLike, preset: str | None = None, **overrides
) -> ModelConfig:
    """The run's ModelConfig: read from RUN/config.json, or created from ``preset`` and saved.

    A run keeps one architecture for all its stages, so a different preset or model setting is
    an error once a stage has trained (``has_trained``); before (a first stage that failed at
    its start), the new settings replace the file.
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise BadInputError(f"unknown ModelConfig fields: {unknown}")
    path = Path(run) / "config.json"
    if path.exists():
        cfg = ModelConfig.from_dict(load_json(path))
        clashes = config_clashes(cfg, preset, overrides)
        if clashes and has_trained(run):
            key, have, want = clashes[0]
            if key == "preset":
                raise BadInputError(f"run {run} was created with preset {have!r}, not {want!r}")
            raise BadInputError(f"run {run} has {key}={have!r}, not {want!r}")
        if not clashes:
            for key in WEIGHT_PATH_FIELDS & set(overrides):
                setattr(cfg, key, overrides[key])
            return cfg
        preset = preset or cfg.preset  # nothing trained with it yet (a first stage that failed): anew
    cfg = preset_config(preset or "tiny", **overrides)
    save_json(path, cfg.to_dict())
    return cfg


def save_module(module: torch.nn.Module, path: str | os.PathLike) -> None:
    write_safetensors({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, path)


def load_module(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Strict, except for buffers the module computes itself (the motion modules' position
    tables: a converted release does not carry them)."""
    state = load_safetensors(path)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape: torch lists them, without the file
        detail = " ".join(str(err).split())
        raise WeightsFileError(f"{path} does not match the model: {detail[:500]}") from None
    missing = [k for k in missing if not COMPUTED_BUFFERS.search(k)]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def _latest_done(run, stages: tuple[str, ...]) -> str | None:
    for stage in reversed(stages):
        if is_done(run, stage):
            return stage
    return None


def load_run_components(
    run: str | os.PathLike, cfg: ModelConfig, before_stage: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> Components:
    """Build the preset and load the weights of every finished stage before ``before_stage``
    (all finished stages when ``None``). LoRA adapters are loaded by the caller (lora.py).

    A motion ControlNet with no trained weights yet is (re)initialised from the UNet encoder
    after the base weights are in place, as the paper initialises it. ``torch_dtype``: see
    :func:`~ic_model.models.presets.build_components`.
    """
    stages = cfg.stages
    if before_stage is not None and before_stage not in stages:
        raise ValueError(f"before_stage must be one of {stages} (this run's stages), got {before_stage!r}")
    upto = stages.index(before_stage) if before_stage is not None else len(stages)
    earlier = stages[:upto]
    # An sd15 run may carry its own frozen video model (``ic convert-official`` writes RUN/base/).
    base_dir = stage_dir(run, "base") if cfg.preset == "sd15" and is_done(run, "base") else None
    comps = build_components(cfg, torch_dtype, base_dir=base_dir)
    modules = comps.modules()
    for stage in ("vae", "base"):
        if stage in earlier and is_done(run, stage):
            for name in STAGE_WEIGHTS[stage]:
                load_module(modules[name], stage_dir(run, stage) / f"{name}.safetensors")
    if "vae" in earlier and is_done(run, "vae"):
        done = load_json(stage_dir(run, "vae") / "done.json")
        scale = done.get("latent_scaling_factor", done.get("vae_scaling_factor"))  # the name before 0.2
        if scale:
            comps.vae.register_to_config(scaling_factor=float(scale))
    motion_stage = _latest_done(run, tuple(s for s in earlier if s in ("dense", "sparse")))
    if motion_stage is not None:
        load_module(
            comps.motion_controlnet,
            stage_dir(run, motion_stage) / "motion_controlnet.safetensors",
        )
    elif cfg.preset != "sd15":
        copy_unet_encoder(comps.unet, comps.motion_controlnet)
    return comps


__all__ = [
    "LORA_FILES",
    "STAGE_WEIGHTS",
    "MissingPrerequisiteError",
    "check_prerequisite",
    "config_clashes",
    "has_trained",
    "is_done",
    "load_module",
    "load_run_components",
    "prerequisite",
    "run_model_config",
    "save_module",
    "stage_dir",
]
