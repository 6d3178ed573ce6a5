"""Typed parameters of the `train-stage` flow, so its deployments' Run form in the Prefect UI
shows named, validated fields (choices as drop-downs, bounds checked) instead of free JSON.

The models are generated from the dataclasses they fill (``TrainConfig``, ``ModelConfig``), so
a field added there appears here; every field is optional (None: the preset's or run's value),
and an unknown key is refused.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from ic_model.config import (
    CHOICES,
    MODEL_BOUNDS,
    TRAIN_BOUNDS,
    TRAIN_CHOICES,
    WEIGHT_ENV,
    ModelConfig,
    TrainConfig,
)


def _field_type(cls, field: dataclasses.Field, choices: dict):
    if field.name in choices:
        return Literal[choices[field.name]]
    hint = typing.get_type_hints(cls)[field.name]
    return hint


def _optional_model(name: str, cls, choices: dict, bounds: dict, skip: tuple[str, ...], doc: str):
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        fields[field.name] = (
            Optional[_field_type(cls, field, choices)],
            Field(default=None, description=f"default: {default!r}", **bounds.get(field.name, {})),
        )
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


TrainOptions = _optional_model(
    "TrainOptions", TrainConfig, TRAIN_CHOICES, TRAIN_BOUNDS, skip=("stage",),
    doc="TrainConfig fields; unset ones take the preset's default (the flow's own parameters win).",
)
ModelOptions = _optional_model(
    "ModelOptions", ModelConfig, CHOICES, MODEL_BOUNDS, skip=("preset", *WEIGHT_ENV),
    doc="ModelConfig fields of a new run; an existing run must match them.",
)


class WeightPaths(BaseModel):
    """Local paths of the sd15 preset's pretrained weights (folders or original checkpoints)."""

    model_config = ConfigDict(extra="forbid")
    sd15_path: str | None = Field(default=None, description="SD 1.5 folder or .ckpt/.safetensors")
    motion_adapter_path: str | None = Field(default=None, description="AnimateDiff v3 MotionAdapter folder or v3_sd15_mm.ckpt")
    sparsectrl_rgb_path: str | None = Field(default=None, description="SparseCtrl RGB folder or .ckpt")


def as_dict(value) -> dict:
    """A parameter model (or a plain dict, as Python callers pass) → its set fields."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return {k: v for k, v in dict(value).items() if v is not None}


__all__ = ["ModelOptions", "TrainOptions", "WeightPaths", "as_dict"]
