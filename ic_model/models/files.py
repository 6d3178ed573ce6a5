"""Reading the weight files a run holds (safetensors: no code runs on load), with one error that
names a damaged or missing file instead of the library's bare message."""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError, safe_open

from ic_data.errors import BadInputError


class WeightsFileError(BadInputError):
    """A weights file is missing, truncated or not safetensors."""


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, on the CPU."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except FileNotFoundError:
        raise WeightsFileError(f"{path}: no such weights file") from None
    except (SafetensorError, OSError) as err:
        raise WeightsFileError(f"{path}: not a readable safetensors file ({err})") from err


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``safetensors.torch.load_file`` with ``WeightsFileError``)."""
    return read_safetensors(path)[0]
