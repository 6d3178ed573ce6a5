"""The `train-stage` flow: one stage of the paper's progressive training (§2.4).

Deployments `train-stage/{vae,base,dense,sparse,camera,object}` fix the stage; `vae` and `base`
exist for the tiny preset, whose base model is trained here instead of loaded (`vae` only with
its default codec; the lossless space-to-depth codec has nothing to train).
"""
from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from ic_model.config import train_config
from ic_model.training.run import check_prerequisite, run_model_config
from tasks.training import publish_training, run_stage

Stage = Literal["vae", "base", "dense", "sparse", "camera", "object"]


def flow_train_config(preset: str, options: dict | None, **explicit):
    """The flow's TrainConfig: the preset's defaults, then ``options``, then each explicit
    parameter that is not None (a setting given both ways: the parameter wins)."""
    return train_config(preset, **{**(options or {}), **{k: v for k, v in explicit.items() if v is not None}})


@flow(name="train-stage", log_prints=True)
def train_stage_flow(
    stage: Stage,
    shards: str | list[str],
    run: str,
    preset: Literal["tiny", "sd15"] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    grad_accum_steps: int | None = None,
    num_processes: int = 1,
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None,
    gradient_checkpointing: bool | None = None,
    seed: int | None = None,
    report_to: Literal["tensorboard", "wandb", "none"] | None = None,
    validate_every: int | None = None,
    options: dict | None = None,
    weights: dict | None = None,
    model: dict | None = None,
) -> dict:
    """Train STAGE on SHARDS into RUN/STAGE/ (resuming if a checkpoint is there).

    ``preset``: a new run's (default tiny); an existing run keeps its own, and another is an error.
    A training setting left None takes the preset's default (TrainConfig's otherwise: 1000 steps,
    lr 1e-4, no accumulation, seed 0, TensorBoard).
    ``options`` sets any other TrainConfig field (e.g. ortho_weight, save_every); ``weights``
    sets the sd15 paths (sd15_path, motion_adapter_path, sparsectrl_rgb_path); ``model`` sets
    ModelConfig fields of a new run (e.g. codec="space_to_depth"), which an existing run must match.
    """
    model_cfg = run_model_config(run, preset, **(model or {}), **(weights or {}))
    check_prerequisite(run, model_cfg, stage)  # fail in seconds, before any GPU is taken
    # None: the preset's default (sd15: batch 1, bf16, gradient checkpointing; tiny: batch 4, fp32).
    train_cfg = flow_train_config(
        model_cfg.preset, options, stage=stage, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        grad_accum_steps=grad_accum_steps, mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing, seed=seed, report_to=report_to, validate_every=validate_every,
    )
    summary = run_stage(stage, shards, run, train_cfg, model_cfg, num_processes)
    publish_training(stage, run, summary)
    get_run_logger().info("%s done: loss %s → %s", stage, summary.get("first_loss"), summary.get("final_loss"))
    return summary
