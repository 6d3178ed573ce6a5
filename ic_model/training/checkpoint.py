"""Resumable training state: trainable weights (safetensors), optimizer, LR scheduler, RNG.

Noise and timesteps are drawn from a generator seeded by (seed, rank, step) inside the loop and
the data stream skips what was consumed, so resuming needs no per-rank RNG state; the global
RNG states are still saved for anything else that draws from them.

A checkpoint directory is written under a temporary name and renamed when complete, so a run
killed mid-write leaves the previous checkpoint intact and never a half-written one.

``state.pt`` holds only tensors and plain containers (the numpy RNG state as a tensor), so it is
read with ``torch.load(weights_only=True)``: a run folder someone shares cannot execute code when
it is resumed.

A resume starts from the newest checkpoint that reads back whole (:func:`resume`). One that does
not (a disk fault, a file cut short when a run was copied, a state that would run code) is moved
aside to ``checkpoints/damaged-step-N`` with a warning, and the one before it is used; if none
can be used, the resume stops with an error naming each, and nothing is moved.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ic_data.errors import BadInputError
from ic_model.models.files import WeightsFileError, load_safetensors, write_safetensors

_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    """Every global RNG's state in types ``torch.load(weights_only=True)`` reads."""
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, float | None)
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        keys = numpy["keys"].numpy().astype(np.uint32)
        numpy = (numpy["bit_generator"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(BadInputError):
    """A checkpoint's ``state.pt`` is missing, cut short, not a torch file, or holds more than data."""


def read_state(path: str | os.PathLike) -> dict:
    """``state.pt`` through the weights-only unpickler. Checkpoints written before the numpy RNG
    state was stored as a tensor hold numpy arrays: those are read by allowing numpy's array
    constructors alone, which build data and run nothing else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint state file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one loses its directory
        raise CheckpointError(f"{path}: not a readable checkpoint state (not a whole torch.save archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint state ({str(err).splitlines()[0]})") from None
    except pickle.UnpicklingError:
        legacy = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        legacy += [getattr(getattr(np, mod), "multiarray")._reconstruct for mod in ("_core", "core") if hasattr(np, mod)]
        try:
            with torch.serialization.safe_globals(legacy):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path}: refusing to load a checkpoint state that holds more than tensors and plain "
                "data (loading it could run code)"
            ) from None


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().contiguous().cpu()
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    stage_dir: str | os.PathLike,
    step: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    keep: int = 2,
    scaler=None,
) -> Path:
    """Write STAGE/checkpoints/step-N/ (trainable weights, optimizer, LR scheduler, RNG and, under
    fp16, the loss scaler) and keep the ``keep`` newest."""
    root = Path(stage_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_safetensors(trainable_state(module), tmp / "trainable.safetensors")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": rng_state(),
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
        },
        tmp / "state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(stage_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(stage_dir: str | os.PathLike) -> list[Path]:
    root = Path(stage_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def past_steps_problem(stage_dir: str | os.PathLike, steps: int) -> str | None:
    """A stage not done whose newest checkpoint is past ``steps``: resumed, it would stop at once and
    record ``steps`` for weights trained further."""
    stage_dir = Path(stage_dir)
    found = list_checkpoints(stage_dir)
    if not found or (stage_dir / "done.json").is_file():
        return None
    newest = int(_STEP_DIR.match(found[-1].name).group(1))
    if newest <= steps:
        return None
    return (f"{stage_dir.name}: the run's newest checkpoint is at step {newest}, past steps={steps}; "
            f"train to {newest} or more to resume it (or use a new run folder)")


def load_checkpoint(
    path: str | os.PathLike,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    scaler=None,
) -> int:
    """Restore a checkpoint into the (unwrapped) module and optimizer; return its step. Both files
    are read before anything is restored, so a damaged one changes nothing."""
    path = Path(path)
    weights = load_safetensors(path / "trainable.safetensors")
    state = read_state(path / "state.pt")
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(
            f"checkpoint {path} holds other trainable tensors than this stage trains "
            f"({len(set(weights) ^ expected)} differ)"
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    set_rng_state(state["rng"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])


def resume(
    stage_dir: str | os.PathLike,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    scaler=None,
    move_aside: bool = True,
) -> tuple[int, list[str]]:
    """Load the newest checkpoint that reads back whole; return (its step, or 0 with none, and
    one line per unusable newer checkpoint). ``move_aside`` (the main process) renames each
    unusable one to ``damaged-step-N`` once an older one has loaded.

    Raises:
        CheckpointError: no checkpoint can be used (each named; nothing is moved).
    """
    damaged: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(stage_dir)):
        try:
            step = load_checkpoint(path, module, optimizer, lr_scheduler, scaler=scaler)
        except (CheckpointError, WeightsFileError) as err:
            damaged.append((path, str(err)))
            continue
        notes = []
        for bad, why in damaged:
            aside = bad.with_name(f"damaged-{bad.name}")
            if move_aside:
                n = 1
                while aside.exists():
                    aside, n = bad.with_name(f"damaged-{bad.name}-{n}"), n + 1
                os.replace(bad, aside)
            notes.append(f"checkpoint {bad.name} cannot be used ({why}); resumed from {path.name}"
                         + (f", the unusable one moved to {aside}" if move_aside else ""))
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
        return step, notes
    if damaged:
        raise CheckpointError(
            f"no checkpoint of {Path(stage_dir)} can be used: " + "; ".join(why for _, why in damaged)
            + ". Move its checkpoints/ folder aside to train the stage afresh"
        )
    return 0, []


__all__ = [
    "CheckpointError",
    "list_checkpoints",
    "past_steps_problem",
    "load_checkpoint",
    "read_state",
    "resume",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "trainable_state",
]
