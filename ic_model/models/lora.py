"""Camera and object LoRA adapters on the motion ControlNet (paper §2.4).

The motion ControlNet carries two LoRA adapters, ``camera`` (θ_cam) and ``object`` (θ_obj).
Training is incremental: the camera stage trains the camera adapter alone; the object stage loads
the camera adapter frozen (the stop-gradient of eq. 2), activates both, and trains only the object
adapter with the denoising loss plus the orthogonal loss of eq. 4. Camera-free guidance (§2.5)
also needs θ_0, the ControlNet without any LoRA, while the adapters stay loaded.

``SparseControlNetModel`` has no diffusers PEFT mixin, so adapters are injected with ``peft``
directly. peft's layer methods (``set_adapter``, ``enable_adapters``, adapter injection) also
rewrite ``requires_grad`` of the adapter weights — activating the camera adapter would silently
make it trainable again. Every function here that calls them restores the ``requires_grad`` flags
afterwards, so trainability changes only through :func:`freeze_adapter` and
:func:`set_trainable_adapters`. diffusers' motion modules also call ``proj_in(input=…)`` by
keyword, which peft's LoRA layers (argument ``x``) reject; a forward pre-hook on every LoRA layer
passes it on positionally.

Targets (:data:`LORA_TARGETS`, as in the official release): attention projections
(``to_q/to_k/to_v/to_out.0``, ``proj_in/proj_out``), feed-forward layers (``ff.net.0.proj``,
``ff.net.2``), resnet convs (``conv1/conv2/conv_shortcut``), the downsampler convs,
``time_emb_proj`` and the time-embedding linears, the conditioning-embedding conv, ``conv_in``, and
the ControlNet zero-convs (``controlnet_down_blocks.N``, ``controlnet_mid_block``): every Linear
and Conv2d of the ControlNet. That includes the attention and feed-forward layers of the
AnimateDiff motion modules inside its down blocks; the official target list (plain suffixes such
as ``to_q``) adapts them too, so they are kept.

Orthogonal loss (eq. 4), ``L = E_i ‖I − W_{i,cam} W_{i,obj}ᵀ‖²``. A LoRA layer holds no single
weight matrix but a pair, ΔW = B·A·(α/r) with A ∈ R^{r×in} and B ∈ R^{out×r}. The identity target
only makes sense for a square product, and both r×r pairings are square:

- A: ``A_cam · A_objᵀ`` (r×r), inner products between the input directions of the two adapters;
- B: ``B_camᵀ · B_obj`` (r×r), inner products between their output directions (``B_cam B_objᵀ``
  would be out×out, of rank ≤ r < out, and could never equal I).

Conv LoRA weights are flattened to 2-D first: A (r, in, k, k) → r × (in·k·k); B (out, r, 1, 1) →
out × r. Each product contributes its squared Frobenius norm (‖·‖₂² read element-wise); the loss is
the mean over all (layer, A/B) products of the layers that carry both adapters. The raw A and B are
used, not scaled by α/r. Mode ``"paper"`` is eq. 4 as written (target I; needs equal ranks); mode
``"cross"`` is the usual orthogonality constraint (target 0, as in O-LoRA): same pairs, no
identity. The camera weights are detached inside the loss: eq. 4 optimises θ_obj only, and this
holds even if the camera adapter was left trainable.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ic_model.config import DEFAULT_LORA_TARGETS
from ic_model.models.files import read_safetensors, write_safetensors

LORA_TARGETS = DEFAULT_LORA_TARGETS

# safetensors metadata key holding the adapter's JSON description (name, rank, alpha, targets).
METADATA_KEY = "ic_lora"

ORTHO_MODES = ("paper", "cross")


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for module_name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield module_name, module


def input_kwarg_to_positional(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: diffusers' motion modules call ``proj_in(input=…)``, using
    ``nn.Linear``'s argument name, but peft's LoRA layers name that argument ``x``."""
    if "input" not in kwargs:
        return None
    kwargs = dict(kwargs)
    return (kwargs.pop("input"), *args), kwargs


def _accept_input_kwarg(model: nn.Module) -> None:
    for _, layer in _lora_layers(model):
        if not getattr(layer, "_ic_accepts_input_kwarg", False):
            layer.register_forward_pre_hook(input_kwarg_to_positional, with_kwargs=True)
            layer._ic_accepts_input_kwarg = True


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapters loaded in ``model``, sorted."""
    names: set[str] = set()
    for _, layer in _lora_layers(model):
        names.update(layer.lora_A.keys())
    return sorted(names)


def _require_adapters(model: nn.Module, names: Sequence[str]) -> None:
    missing = sorted(set(names) - set(adapter_names(model)))
    if missing:
        raise KeyError(f"LoRA adapter(s) {missing} not loaded; loaded: {adapter_names(model)}")


@contextlib.contextmanager
def _keep_requires_grad(model: nn.Module) -> Iterator[None]:
    """Restore every existing parameter's ``requires_grad`` after peft calls that rewrite it."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def active_adapters(model: nn.Module) -> list[str]:
    """The adapters that take part in the forward pass (all LoRA layers agree on them)."""
    seen = {tuple(layer.active_adapters) for _, layer in _lora_layers(model)}
    if len(seen) > 1:
        raise RuntimeError(f"LoRA layers disagree on the active adapters: {sorted(seen)}")
    return list(seen.pop()) if seen else []


def set_active_adapters(model: nn.Module, names: Sequence[str]) -> None:
    """Make exactly ``names`` active, summed in every LoRA layer (both adapters during the object
    stage and at inference). ``requires_grad`` flags are left as they were."""
    names = list(names)
    _require_adapters(model, names)
    with _keep_requires_grad(model):
        for _, layer in _lora_layers(model):
            layer.set_adapter(names)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as θ_0, its base weights without any LoRA, while the adapters stay loaded
    (camera-free guidance). Outputs equal the base model's bit for bit as long as the base
    weights' ``requires_grad`` flags are the same (PyTorch's matmul picks its kernel path by them);
    the active set and ``requires_grad`` flags are restored on exit."""
    layers = [layer for _, layer in _lora_layers(model)]
    with _keep_requires_grad(model):
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)


def add_lora_adapter(
    model: nn.Module, name: str, rank: int, alpha: float, targets_regex: str = LORA_TARGETS
) -> None:
    """Inject a new LoRA adapter ``name`` into every module whose full name matches
    ``targets_regex``.

    A starts Gaussian (std 1/rank) as in the official release (``init_lora_weights="gaussian"``
    in its ``utils/lora_utils.py``; peft's default is Kaiming-uniform), B at zero, so the
    outputs do not change until it trains. The new
    adapter is trainable and joins the active set; adapters already loaded keep their
    ``requires_grad`` flags, and the base weights are frozen (peft does this on injection: LoRA
    stages never train them).
    """
    if not name.isidentifier():
        raise ValueError(f"adapter name must be an identifier, got {name!r}")
    if name in adapter_names(model):
        raise ValueError(f"LoRA adapter {name!r} is already loaded")
    previous = active_adapters(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets_regex, lora_dropout=0.0,
                        init_lora_weights="gaussian")
    lora_flags = {
        p: p.requires_grad
        for other in adapter_names(model)
        for p in lora_parameters(model, other).values()
    }
    with warnings.catch_warnings():
        # peft warns whenever a second adapter is injected into a model; here that is the intent.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, model, adapter_name=name)
    _accept_input_kwarg(model)
    for p, flag in lora_flags.items():
        p.requires_grad_(flag)
    for p in lora_parameters(model, name).values():
        p.requires_grad_(True)
    set_active_adapters(model, previous + [name])


def _adapter_entries(model: nn.Module, name: str) -> Iterator[tuple[str, str, nn.Parameter]]:
    """(model parameter name, file key, parameter) of adapter ``name``. File keys drop the
    adapter name (peft's convention: ``….to_q.lora_A.weight``) so a file loads under any name."""
    for module_name, layer in _lora_layers(model):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr)
            if name not in container:
                continue
            entry = container[name]
            params = entry.named_parameters() if isinstance(entry, nn.Module) else [("", entry)]
            for param_name, param in params:
                suffix = f".{param_name}" if param_name else ""
                yield (
                    f"{module_name}.{attr}.{name}{suffix}",
                    f"{module_name}.{attr}{suffix}",
                    param,
                )


def lora_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Parameters of adapter ``name``, keyed by their name in ``model.named_parameters()``."""
    _require_adapters(model, [name])
    return {full: param for full, _, param in _adapter_entries(model, name)}


def freeze_adapter(model: nn.Module, name: str) -> None:
    """Stop gradients into adapter ``name`` (sg[θ_cam] in the object stage, eq. 2)."""
    for p in lora_parameters(model, name).values():
        p.requires_grad_(False)


def set_trainable_adapters(model: nn.Module, names: Sequence[str]) -> None:
    """Make exactly the parameters of adapters ``names`` trainable: the base weights and every
    other adapter are frozen. The one call a LoRA stage needs before building its optimizer."""
    _require_adapters(model, names)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        for p in lora_parameters(model, name).values():
            p.requires_grad_(True)


def _adapter_description(model: nn.Module, name: str) -> dict:
    config = model.peft_config[name]
    return {
        "adapter": name,
        "rank": config.r,
        "alpha": config.lora_alpha,
        "targets": config.target_modules,
    }


def save_adapter(model: nn.Module, name: str, path: str | os.PathLike) -> None:
    """Write adapter ``name`` to a safetensors file; rank, alpha and target regex go in its
    metadata so :func:`load_adapter` can rebuild the adapter on a bare model."""
    _require_adapters(model, [name])
    tensors = {key: p.detach().cpu().contiguous() for _, key, p in _adapter_entries(model, name)}
    metadata = {METADATA_KEY: json.dumps(_adapter_description(model, name))}
    write_safetensors(tensors, path, metadata=metadata)


def load_adapter(model: nn.Module, name: str, path: str | os.PathLike) -> None:
    """Load a file written by :func:`save_adapter` as adapter ``name``.

    If ``name`` is not loaded yet it is injected with the file's rank, alpha and targets (active
    and trainable, as :func:`add_lora_adapter` leaves it). Strict: the file must hold exactly the
    adapter's tensors with the same shapes, and an adapter already present must have the file's
    rank and alpha (alpha/rank scales the LoRA update, so a mismatch would change outputs silently).
    """
    tensors, metadata = read_safetensors(path)
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not a LoRA adapter file (no {METADATA_KEY!r} metadata)")
    saved = json.loads(metadata[METADATA_KEY])
    if name in adapter_names(model):
        current = _adapter_description(model, name)
        for field in ("rank", "alpha"):
            if current[field] != saved[field]:
                raise ValueError(
                    f"adapter {name!r} has {field} {current[field]}, but {path} has {saved[field]}"
                )
    else:
        add_lora_adapter(model, name, saved["rank"], saved["alpha"], saved["targets"])
    params = {key: p for _, key, p in _adapter_entries(model, name)}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match adapter {name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    wrong = [k for k in params if params[k].shape != tensors[k].shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch for adapter {name!r}, e.g. {wrong[:3]}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key])


def _lora_matrices(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter ``name``'s (A, B) in ``layer`` as 2-D float32 matrices: r × in·k·k and out × r."""
    a = layer.lora_A[name].weight.flatten(1).float()
    b = layer.lora_B[name].weight.flatten(1).float()
    return a, b


def orthogonal_loss(
    model: nn.Module, cam: str = "camera", obj: str = "object", mode: str = "paper"
) -> torch.Tensor:
    """Eq. 4 between adapters ``cam`` and ``obj``: mean over LoRA layers carrying both, and over
    the A and B products, of ‖I − A_cam A_objᵀ‖²_F and ‖I − B_camᵀ B_obj‖²_F (``"paper"``) or of
    ‖A_cam A_objᵀ‖²_F and ‖B_camᵀ B_obj‖²_F (``"cross"``). Gradients reach ``obj`` only: the
    ``cam`` weights are detached. See the module docstring for why these products."""
    if mode not in ORTHO_MODES:
        raise ValueError(f"unknown ortho mode {mode!r}; choose one of {ORTHO_MODES}")
    _require_adapters(model, [cam, obj])
    terms = []
    for module_name, layer in _lora_layers(model):
        if cam not in layer.lora_A or obj not in layer.lora_A:
            continue
        a_cam, b_cam = (m.detach() for m in _lora_matrices(layer, cam))
        a_obj, b_obj = _lora_matrices(layer, obj)
        for product in (a_cam @ a_obj.T, b_cam.T @ b_obj):
            if mode == "paper":
                if product.shape[0] != product.shape[1]:
                    raise ValueError(
                        f"{module_name}: ranks {product.shape[0]} ({cam}) and {product.shape[1]} "
                        f"({obj}) differ; the paper's I − W_cam W_objᵀ needs equal ranks"
                    )
                product = torch.eye(product.shape[0], device=product.device) - product
            terms.append(product.pow(2).sum())
    if not terms:
        raise ValueError(f"no LoRA layer carries both {cam!r} and {obj!r}")
    return torch.stack(terms).mean()


__all__ = [
    "LORA_TARGETS",
    "METADATA_KEY",
    "ORTHO_MODES",
    "active_adapters",
    "adapter_names",
    "adapters_disabled",
    "add_lora_adapter",
    "freeze_adapter",
    "load_adapter",
    "lora_parameters",
    "orthogonal_loss",
    "save_adapter",
    "set_active_adapters",
    "set_trainable_adapters",
]
