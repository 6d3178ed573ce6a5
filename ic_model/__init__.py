"""Image Conductor's model library: assembly, training, sampling and evaluation (no Prefect).

Where things live:

- ``ic_model.config``: ``ModelConfig`` / ``TrainConfig`` and the ``tiny`` and ``sd15`` presets.
- ``ic_model.models``: the networks: codec, denoiser assembly, motion ControlNet, LoRA adapters,
  first-frame attention, the presets' builders and weight loaders, the converter of the released
  Image Conductor weights (``official``), the CLIP tokenizer.
- ``ic_model.training``: shard data, the stage training loop, checkpoints, the run folder.
- ``ic_model.pipelines``: the sampling pipeline with camera-free guidance, one-request
  generation, personalised bases.
- ``ic_model.evaluation``: the paper's evaluation sets, the evaluate driver, ``metrics/``
  (FID, FVD, CamMC/ObjMC).

The names below are what a user calls; they import on first use, so ``import ic_model`` and
``ic_model.config`` stay light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "ic_model.config",
    "TrainConfig": "ic_model.config",
    "preset_config": "ic_model.config",
    "tiny_config": "ic_model.config",
    "sd15_config": "ic_model.config",
    "Components": "ic_model.models.components",
    "build_components": "ic_model.models.presets",
    "convert_official": "ic_model.models.official",
    "official_run": "ic_model.models.official",
    "train_stage": "ic_model.training.loop",
    "run_model_config": "ic_model.training.run",
    "load_run_components": "ic_model.training.run",
    "ImageConductorPipeline": "ic_model.pipelines.image_conductor",
    "prepare_image_and_tracks": "ic_model.pipelines.image_conductor",
    "generate_to_files": "ic_model.pipelines.generate",
    "EvalSettings": "ic_model.evaluation.evaluate",
    "evaluate_set": "ic_model.evaluation.evaluate",
    "load_eval_set": "ic_model.evaluation.evalsets",
    "read_eval_set": "ic_model.evaluation.evalsets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ic_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
