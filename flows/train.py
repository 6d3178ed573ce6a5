"""The `train-stage` flow: one stage of the paper's progressive training (§2.4).

Deployments `train-stage/{vae,base,dense,sparse,camera,object}` fix the stage; `vae` and `base`
exist for the tiny preset, whose base model is trained here instead of loaded (`vae` only with
its default codec; the lossless space-to-depth codec has nothing to train).
"""
from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import Field

from flows.params import ModelOptions, TrainOptions, WeightPaths, as_dict
from ic_data.errors import BadInputError
from ic_data.settings import require_writable
from ic_model.config import read_config_file, train_config
from ic_model.training.checkpoint import past_steps_problem
from ic_model.training.run import check_prerequisite, run_model_config, stage_dir
from tasks.training import publish_training, run_stage

Stage = Literal["vae", "base", "dense", "sparse", "camera", "object"]


def flow_train_config(preset: str, options: dict | None, **explicit):
    """The flow's TrainConfig: the preset's defaults, then ``options``, then each explicit
    parameter that is not None (a setting given both ways: the parameter wins)."""
    return train_config(preset, **{**(options or {}), **{k: v for k, v in explicit.items() if v is not None}})


@flow(name="train-stage", log_prints=True)
def train_stage_flow(
    stage: Stage,
    shards: str | list[str] | None = None,
    run: str | None = None,
    preset: Literal["tiny", "sd15"] | None = None,
    steps: Annotated[int | None, Field(ge=1)] = None,
    batch_size: Annotated[int | None, Field(ge=1)] = None,
    learning_rate: Annotated[float | None, Field(gt=0)] = None,
    grad_accum_steps: Annotated[int | None, Field(ge=1)] = None,
    num_processes: Annotated[int | None, Field(ge=1)] = None,
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None,
    gradient_checkpointing: bool | None = None,
    seed: Annotated[int | None, Field(ge=0)] = None,
    report_to: Literal["tensorboard", "wandb", "none"] | None = None,
    validate_every: Annotated[int | None, Field(ge=0)] = None,
    options: TrainOptions | None = None,
    weights: WeightPaths | None = None,
    model: ModelOptions | None = None,
    config: str | None = None,
) -> dict:
    """Train STAGE on SHARDS into RUN/STAGE/ (resuming if a checkpoint is there).

    ``preset``: a new run's (default tiny); an existing run keeps its own, and another is an error.
    A training setting left None takes the preset's default (TrainConfig's otherwise: 1000 steps,
    lr 1e-4, no accumulation, seed 0, TensorBoard).
    ``options`` sets any other TrainConfig field (e.g. ortho_weight, save_every); ``weights``
    sets the sd15 paths (sd15_path, motion_adapter_path, sparsectrl_rgb_path); ``model`` sets
    ModelConfig fields of a new run (e.g. codec="space_to_depth"), which an existing run must match.
    ``config``: a training config file (YAML, as ``ic train --config``) filling what the other
    parameters leave unset: a parameter wins over the file, ``options``/``model`` key by key.
    """
    try:  # parameters a deployment's Run form passed unchecked: a bad one ends Failed with its line
        options, weights, model = as_dict(options), as_dict(weights), as_dict(model)
        if config:
            spec = read_config_file(config, stage)
            shards = shards if shards is not None else spec.get("shards")
            run = run if run is not None else spec.get("run")
            preset = preset or spec.get("preset")
            num_processes = num_processes or spec.get("num_processes")
            options, weights, model = {**spec["train"], **options}, {**spec["weights"], **weights}, {**spec["model"], **model}
        missing = [name for name, value in (("shards", shards), ("run", run)) if value is None]
        if missing:
            raise BadInputError(f"train-stage needs {' and '.join(missing)} (as parameters or in the config file)")
        require_writable(run, "run")
        model_cfg = run_model_config(run, preset, **model, **weights)
        check_prerequisite(run, model_cfg, stage)  # fail in seconds, before any GPU is taken
        # None: the preset's default (sd15: batch 1, bf16, gradient checkpointing; tiny: batch 4, fp32).
        train_cfg = flow_train_config(
            model_cfg.preset, options, stage=stage, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
            grad_accum_steps=grad_accum_steps, mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing, seed=seed, report_to=report_to, validate_every=validate_every,
        )
        if problem := past_steps_problem(stage_dir(run, stage), train_cfg.steps):
            raise BadInputError(problem)
    except BadInputError as err:
        return Failed(message=str(err))
    state = run_stage(stage, shards, run, train_cfg, model_cfg, num_processes or 1, return_state=True)
    if not state.is_completed():  # e.g. an unreadable shard: the task logged it
        return Failed(message=state.message)
    summary = state.result()
    publish_training(stage, run, summary)
    get_run_logger().info("%s done: loss %s → %s", stage, summary.get("first_loss"), summary.get("final_loss"))
    return summary
