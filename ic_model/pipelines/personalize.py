"""Personalised generation (paper §3.2): swap the base model under a trained Image Conductor.

The motion ControlNet and its camera/object LoRAs are trained against the frozen SD 1.5 image
weights of the video UNet; AnimateDiff-style, any community model fine-tuned from SD 1.5 (a
"DreamBooth" checkpoint) or any SD 1.5 LoRA can replace or adapt those image weights at inference,
without retraining anything. Only the *spatial* part of the ``UNetMotionModel`` changes: the
AnimateDiff motion modules, the image ControlNet (SparseCtrl) and the motion ControlNet stay as
they are.

Supported sources
-----------------
:func:`load_personalized_base` (``--base-model``):

- a single ``.safetensors`` / ``.ckpt`` (also ``.pt``/``.pth``/``.bin``) file as community models
  ship, with the original LDM key names (``model.diffusion_model.*``; a Lightning ``state_dict``
  wrapper and EMA copies are handled as in :mod:`ic_model.models.sd15`); keys are converted with
  diffusers' ``convert_ldm_unet_checkpoint`` using a ``UNet2DConditionModel`` config derived from
  the *current* video UNet (:func:`unet2d_config`), so the same code serves the sd15 preset and
  the tiny one. A single file with diffusers UNet key names (``conv_in.weight``,
  ``down_blocks.…``, optionally prefixed ``unet.``) is accepted as well.
- a diffusers folder: a pipeline folder with ``unet/`` (``vae/`` and ``text_encoder/`` optional) or
  a UNet folder itself (``config.json`` + weights; a ``UNetMotionModel`` folder works too, its
  motion modules are ignored).

When the caller passes ``vae=`` / ``text_encoder=`` and the source holds those parts too (a full
checkpoint's ``first_stage_model.*`` / ``cond_stage_model.transformer.*`` keys, or ``vae/`` /
``text_encoder/`` subfolders), they are loaded as well — community models often bake in a VAE and
fine-tune CLIP, and AnimateDiff loads all three. Parts absent from the source are left as they
are. Loading is strict: every spatial tensor of the UNet (every key outside ``motion_modules``)
must be present with the right shape, and the source may hold no UNet tensor the model lacks;
otherwise one :class:`IncompatibleWeightsError` names the file and what mismatched (with a hint
such as "looks like an SDXL checkpoint"). Weights are copied in place, so the modules keep their
device and dtype (a pipeline already on the GPU stays there) and existing LoRA layers survive.

:func:`load_base_lora` (``--base-lora FILE[:SCALE]``, repeatable): a LoRA for the SD 1.5 UNet in

- kohya / A1111 format (``lora_unet_…​.lora_down.weight`` / ``lora_up.weight`` / ``alpha``, as
  community SD 1.5 LoRAs ship; LoCon conv layers included), converted by diffusers'
  ``StableDiffusionLoraLoaderMixin.lora_state_dict``;
- diffusers / peft format (``unet.….lora_A.weight`` / ``lora_B.weight``, the older
  ``….lora.down.weight`` attention-processor names, or the same keys without the ``unet.``
  prefix), e.g. ``pytorch_lora_weights.safetensors`` or a folder holding it.

Each LoRA becomes a named peft adapter of the video UNet (``UNetMotionModel.load_lora_adapter``);
all loaded base LoRAs are active together, each with its own scale (``set_adapters``), and
:func:`remove_base_loras` gives back the exact base model. kohya's per-layer ``alpha`` is folded
into ``lora_B`` (ΔW = alpha/rank · up · down), because diffusers cannot map the alphas of
attention layers back to their modules and mis-scales files whose alphas differ between layers.
A ``LoraConfig`` saved by diffusers in the safetensors header (``lora_adapter_metadata``) is
honoured, restricted to the layers the file holds (its suffix targets such as ``to_q`` would
otherwise also wrap every motion-module layer). LoRAs in diffusers naming that target the motion
modules (``…motion_modules.…``) load too. Text-encoder parts (``lora_te_…`` /
``text_encoder.…``) are loaded into ``text_encoder`` when one is passed (as
:func:`apply_personalization` does), and ignored with a warning otherwise. A LoRA that cannot be
placed completely (a layer it targets is missing, a shape differs) is an error and changes
nothing. LyCORIS variants other than LoCon (LoHa, LoKr, DoRA scales) are not supported beyond
what diffusers' converter does.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNetMotionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from diffusers.utils import logging as diffusers_logging
from torch import nn
from transformers import CLIPTextModel

from ic_data.errors import BadInputError, MissingWeightsError
from ic_model.models.files import pickle_refusal
from ic_model.models.lora import input_kwarg_to_positional
from ic_model.models.sd15 import (
    CHECKPOINT_SUFFIXES,
    COMPUTED_BUFFERS,
    from_folder,
    read_checkpoint,
)

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."
MOTION_KEY = ".motion_modules."

# Buffers a model computes itself (CLIP's position ids): a source may lack them.
# peft's extra tensors inside a LoRA-wrapped layer: not part of the base weights.
_PEFT_TENSOR = re.compile(r"\.lora_[A-Za-z_]+\.")

# Model types of diffusers' single-file detector that are certainly not SD 1.5 family.
_MODEL_TYPE_HINTS = {
    "v2": "SD 2.x",
    "inpainting_v2": "SD 2.x inpainting",
    "xl_base": "SDXL",
    "xl_refiner": "SDXL refiner",
    "xl_inpaint": "SDXL inpainting",
    "playground-v2-5": "Playground v2.5 (SDXL)",
    "upscale": "SD x4 upscaler",
    "sd3": "SD 3",
    "sd35_medium": "SD 3.5",
    "sd35_large": "SD 3.5",
    "stable_cascade_stage_b": "Stable Cascade",
    "stable_cascade_stage_c": "Stable Cascade",
    "controlnet": "ControlNet",
    "controlnet_xl_large": "SDXL ControlNet",
    "controlnet_xl_mid": "SDXL ControlNet",
    "controlnet_xl_small": "SDXL ControlNet",
    "animatediff_v2": "AnimateDiff motion module",
    "animatediff_v3": "AnimateDiff motion module",
    "animatediff_scribble": "AnimateDiff SparseCtrl",
    "animatediff_rgb": "AnimateDiff SparseCtrl",
    "flux-dev": "FLUX",
    "flux-schnell": "FLUX",
    "inpainting": "SD 1.5 inpainting (9 input channels)",
}

# Base-LoRA bookkeeping on the modules: adapter name → scale, in load order.
_SCALES_ATTR = "_ic_base_lora_scales"


class IncompatibleWeightsError(BadInputError):
    """A personalised base model or LoRA does not fit the model (architecture or format): bad
    input (a ``ValueError``), which a flow ends Failed with in one line."""


# --------------------------------------------------------------------------- the spatial UNet


def unet2d_config(unet: UNetMotionModel) -> dict:
    """The ``UNet2DConditionModel`` config of the video UNet's spatial (image) part.

    The inverse of ``UNetMotionModel.from_unet2d``'s config mapping: the same widths, layers,
    norm groups and cross-attention size, Motion block types mapped to their 2-D counterparts,
    and ``num_attention_heads`` written back to SD's (misnamed) ``attention_head_dim``.
    """
    accepted = inspect.signature(UNet2DConditionModel.__init__).parameters
    config = {k: v for k, v in dict(unet.config).items() if k in accepted and not k.startswith("_")}
    config["down_block_types"] = tuple(
        "CrossAttnDownBlock2D" if "CrossAttn" in t else "DownBlock2D" for t in unet.config.down_block_types
    )
    config["up_block_types"] = tuple(
        "CrossAttnUpBlock2D" if "CrossAttn" in t else "UpBlock2D" for t in unet.config.up_block_types
    )
    heads = config.pop("num_attention_heads", None) or unet.config.get("num_attention_heads")
    config["attention_head_dim"] = heads
    return config


def _spatial_keys(unet: nn.Module) -> dict[str, str]:
    """Plain (diffusers ``UNet2DConditionModel``) name → this module's state-dict name, for every
    spatial tensor: all but the motion modules and peft's LoRA tensors (whose wrapped layers
    keep their base weight under ``base_layer``)."""
    keys = {}
    for key in unet.state_dict():
        if MOTION_KEY in key or _PEFT_TENSOR.search(key):
            continue
        keys[key.replace(".base_layer.", ".")] = key
    return keys


def spatial_state_dict(unet: UNetMotionModel) -> dict[str, torch.Tensor]:
    """The spatial weights of the video UNet under ``UNet2DConditionModel`` names (base weights
    only, without any LoRA)."""
    state = unet.state_dict()
    return {plain: state[key] for plain, key in _spatial_keys(unet).items()}


def extract_unet2d(unet: UNetMotionModel) -> UNet2DConditionModel:
    """A standalone ``UNet2DConditionModel`` holding a copy of the video UNet's image weights
    (e.g. to save the current base as a diffusers folder and restore it later)."""
    model = UNet2DConditionModel(**unet2d_config(unet))
    model.load_state_dict({k: v.detach().clone() for k, v in spatial_state_dict(unet).items()}, strict=True)
    return model.to(unet.dtype).eval()


# --------------------------------------------------------------------------- strict copy


def _hint(checkpoint: dict | None) -> str:
    if not checkpoint:
        return ""
    try:
        kind = infer_diffusers_model_type(checkpoint)
    except Exception:  # the detector indexes keys freely; a hint is never worth a crash
        return ""
    name = _MODEL_TYPE_HINTS.get(kind)
    return f"; it looks like a{'n' if name and name[0] in 'AEIOS' else ''} {name} checkpoint" if name else ""


class _Part:
    """One module's new weights: checked against the module first, copied only once every part
    of the source has passed its check."""

    def __init__(self, name: str, module: nn.Module, state: dict[str, torch.Tensor], *, what: str,
                 targets: dict[str, str] | None = None):
        self.name, self.module, self.state, self.what = name, module, state, what
        # plain name → the module's state-dict name (they differ only for the UNet's LoRA layers)
        self.targets = targets if targets is not None else {k: k for k in module.state_dict()}

    def check(self, source: str, hint: str = "") -> None:
        """Every target supplied with its shape and nothing else, else one error listing what
        mismatched."""
        current, state, targets = self.module.state_dict(), self.state, self.targets
        missing = [k for k in targets if k not in state and not COMPUTED_BUFFERS.search(k)]
        unexpected = [k for k in state if k not in targets and not COMPUTED_BUFFERS.search(k)]
        wrong = [
            f"{k}: {tuple(state[k].shape)} in the file vs {tuple(current[a].shape)} in the model"
            for k, a in targets.items()
            if k in state and tuple(state[k].shape) != tuple(current[a].shape)
        ]
        problems = []
        if wrong:
            problems.append(f"{len(wrong)} tensors have the wrong shape (e.g. {'; '.join(wrong[:3])})")
        if missing:
            problems.append(
                f"{len(missing)} of the model's {len(targets)} {self.what} tensors are missing (e.g. {missing[:3]})"
            )
        if unexpected:
            problems.append(f"{len(unexpected)} tensors the model does not have (e.g. {unexpected[:3]})")
        if problems:
            raise IncompatibleWeightsError(
                f"{source}: not an SD 1.5-compatible {self.what} for this model{hint}: " + "; ".join(problems)
            )

    def copy(self) -> None:
        """In place: the module keeps its device and dtype."""
        current = self.module.state_dict()
        with torch.no_grad():
            for key, actual in self.targets.items():
                if key in self.state:
                    current[actual].copy_(self.state[key])


# --------------------------------------------------------------------------- sources


def _check_source(source: str | Path, what: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"{what} {str(source)!r} does not exist")
    if path.is_file() and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise IncompatibleWeightsError(
            f"{what} {str(source)!r} is neither a folder nor a {'/'.join(CHECKPOINT_SUFFIXES)} file"
        )
    return path


def _why_unreadable(error: BaseException, path: Path) -> str:
    """What stopped a checkpoint from loading, from the first cause of diffusers' general "Unable
    to load weights" (torch's advice to turn the weights-only unpickler off is never passed on)."""
    refused = pickle_refusal(error)
    if refused and "global" in refused.lower():  # weights_only refused an object: named, not run
        return f"it holds Python objects other than tensors ({refused}): refused, never run"
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(cause)
    first = chain[-1]
    said = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
    if type(first).__name__ == "SafetensorError":
        return f"not a whole safetensors file ({said})"
    if path.suffix.lower() != ".safetensors" and isinstance(first, (KeyError, EOFError, pickle.UnpicklingError)):
        return f"not a PyTorch checkpoint ({refused or f'{type(first).__name__}: {said}'})"
    return said


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_checkpoint(path)
    except Exception as error:
        raise IncompatibleWeightsError(f"{path}: cannot read the checkpoint: {_why_unreadable(error, path)}") from error


def _looks_like_diffusers_unet(keys) -> bool:
    return "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys)


def _unet_from_single_file(checkpoint: dict, config: dict, source: str) -> dict[str, torch.Tensor] | None:
    """The UNet tensors of a single-file checkpoint under diffusers names, or None if it holds
    no UNet."""
    if any(k.startswith(LDM_UNET_PREFIX) for k in checkpoint):
        try:
            return convert_ldm_unet_checkpoint(checkpoint, config, extract_ema=True)
        except Exception as error:  # the converter indexes blocks by the config's layout
            raise IncompatibleWeightsError(
                f"{source}: not an SD 1.5-compatible UNet for this model{_hint(checkpoint)} "
                f"(diffusers' key converter failed: {type(error).__name__}: {error})"
            ) from error
    for prefix in ("", "unet."):
        sub = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        if _looks_like_diffusers_unet(sub):
            return {k: v for k, v in sub.items() if MOTION_KEY not in k}
    return None



def _unet_class(folder: Path):
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as error:
        raise IncompatibleWeightsError(f"{folder}: unreadable config.json ({error})") from error
    if name == "UNetMotionModel":
        return UNetMotionModel
    if name and name != "UNet2DConditionModel":
        raise IncompatibleWeightsError(f"{folder}: holds a {name}, not an SD 1.5 UNet (UNet2DConditionModel)")
    return UNet2DConditionModel


def load_personalized_base(
    unet: UNetMotionModel,
    source: str | Path,
    *,
    vae: AutoencoderKL | None = None,
    text_encoder: CLIPTextModel | None = None,
) -> list[str]:
    """Replace the video UNet's spatial (SD 1.5) weights with those of a community model, keeping
    the AnimateDiff motion modules. See the module docstring for the accepted ``source`` formats.

    ``vae`` / ``text_encoder``: also load those parts when the source holds them (ignored when
    it does not). Returns the parts loaded, among ``"unet"``, ``"vae"`` and ``"text_encoder"``.
    Raises :class:`MissingWeightsError` for a missing path and :class:`IncompatibleWeightsError`
    (a ``ValueError``) for anything that does not fit; every part is checked before any is
    copied, so a failure changes nothing.
    """
    path = _check_source(source, "base model")
    src = str(path)
    hint = ""
    parts: list[_Part] = []
    if path.is_file():
        checkpoint = _read_file(path)
        hint = _hint(checkpoint)
        state = _unet_from_single_file(checkpoint, unet2d_config(unet), src)
        if state is None:
            kind = "a LoRA (use --base-lora)" if any("lora" in k for k in checkpoint) else "no UNet"
            raise IncompatibleWeightsError(
                f"{src}: holds {kind}: no 'model.diffusion_model.*' or diffusers UNet tensors{hint}"
            )
        parts.append(_Part("unet", unet, state, what="UNet", targets=_spatial_keys(unet)))
        try:
            if vae is not None and any(k.startswith(LDM_VAE_PREFIX) for k in checkpoint):
                parts.append(_Part("vae", vae, convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), what="VAE"))
            if text_encoder is not None and any(k.startswith(LDM_TEXT_PREFIX) for k in checkpoint):
                text_state = convert_ldm_clip_checkpoint(checkpoint)
                if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
                    text_state = {k.removeprefix("text_model."): v for k, v in text_state.items()}
                parts.append(_Part("text_encoder", text_encoder, text_state, what="text encoder"))
        except IncompatibleWeightsError:
            raise
        except Exception as error:  # the converters index blocks by the config's layout
            raise IncompatibleWeightsError(
                f"{src}: cannot convert its VAE / text encoder ({type(error).__name__}: {error})"
            ) from error
    else:
        if (path / "unet").is_dir():
            unet_dir = path / "unet"
        elif (path / "config.json").is_file():
            unet_dir = path
        else:
            raise IncompatibleWeightsError(f"{src}: a folder without unet/ or a UNet config.json")
        model = from_folder(_unet_class(unet_dir), unet_dir, what="UNet", source=src, error=IncompatibleWeightsError,
                            may_lack=MOTION_KEY)
        state = {k: v for k, v in model.state_dict().items() if MOTION_KEY not in k}
        parts.append(_Part("unet", unet, state, what="UNet", targets=_spatial_keys(unet)))
        del model
        if unet_dir != path and vae is not None and (path / "vae").is_dir():
            vae_state = from_folder(AutoencoderKL, path / "vae", what="VAE", source=src, error=IncompatibleWeightsError).state_dict()
            parts.append(_Part("vae", vae, vae_state, what="VAE"))
        if unet_dir != path and text_encoder is not None and (path / "text_encoder").is_dir():
            text_model = from_folder(type(text_encoder), path / "text_encoder", what="text encoder", source=src,
                                     error=IncompatibleWeightsError)
            parts.append(_Part("text_encoder", text_encoder, text_model.state_dict(), what="text encoder"))
    for part in parts:
        part.check(src, hint if part.name == "unet" else "")
    for part in parts:
        part.copy()
    return [part.name for part in parts]


# --------------------------------------------------------------------------- LoRA


def parse_lora_spec(spec: str | Path) -> tuple[Path, float]:
    """``"file.safetensors:0.8"`` → ``(Path("file.safetensors"), 0.8)``; the scale defaults to 1.0.

    Only the text after the *last* ``:`` is read as the scale, and only if it parses as a float,
    so paths with colons (``C:\\loras\\x.safetensors``, ``a:b.safetensors``) work.
    """
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return Path(text), 1.0
        if not math.isfinite(scale):
            raise BadInputError(f"base LoRA {text!r}: the scale after ':' must be a finite number")
        return Path(head), scale
    return Path(text), 1.0


def _read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of a LoRA file (or of the one in a diffusers LoRA folder) and diffusers' LoRA
    metadata (the exact ``LoraConfig``) when the safetensors header carries it."""
    if path.is_dir():
        candidates = [path / "pytorch_lora_weights.safetensors", *sorted(path.glob("*.safetensors")),
                      path / "pytorch_lora_weights.bin"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise MissingWeightsError(f"base LoRA folder {str(path)!r} holds no .safetensors/.bin weights")
        path = found[0]
    state = _read_file(path)
    metadata = None
    if path.suffix.lower() == ".safetensors":
        try:
            from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata

            metadata = _load_sft_state_dict_metadata(str(path))
        except Exception:  # no (or unreadable) metadata: the LoraConfig is derived from the tensors
            metadata = None
    return state, metadata


def _to_peft(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Diffusers' LoRA key flavours (old attention-processor names, ``lora_linear_layer``, peft)
    → peft names ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``."""
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if prefix == "unet":
        return convert_unet_state_dict_to_peft(dict(state))
    if all(re.search(r"\.lora_[AB]\.", k) for k in state):
        return dict(state)
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(dict(state), original_type=StateDictType.DIFFUSERS_OLD))


def _fold_alphas(peft: dict[str, torch.Tensor], alphas: dict[str, float], prefix: str) -> dict[str, torch.Tensor]:
    """Apply kohya's per-layer ``alpha / rank`` to the ``lora_B`` matrices, so the adapter needs
    no alphas (scale 1 per layer: ΔW = B·A). diffusers only maps alphas whose names it can parse
    back to a module, and silently mis-scales the others (attention layers of mixed-alpha
    kohya files); folding them here is exact whatever the names."""
    for key, alpha in alphas.items():
        base = key.removesuffix(".alpha")
        module = base
        if base.endswith(".weight"):  # old attention-processor name, e.g. "attn1.processor.to_q_lora.down.weight"
            converted = next(iter(_to_peft({base: torch.zeros(1)}, prefix)))
            module = re.split(r"\.lora_[AB]\.", converted)[0]
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        if a_key in peft and b_key in peft:
            rank = peft[a_key].shape[0]
            peft[b_key] = (peft[b_key].float() * (float(alpha) / rank)).to(peft[b_key].dtype)
    return peft


def _lora_parts(state: dict[str, torch.Tensor], src: str) -> dict[str, dict[str, torch.Tensor]]:
    """A LoRA file's tensors → ``{"unet": peft state, "text_encoder": peft state}`` (parts present
    only), alphas folded in. kohya files go through diffusers' converter first."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    if not any("lora" in k for k in state):
        raise IncompatibleWeightsError(f"{src}: holds no LoRA tensors (no 'lora' in any key)")
    kohya = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
    alphas: dict[str, float] = {}
    if any(k.startswith(kohya) for k in state):
        state = {k: v for k, v in state.items() if k.startswith(kohya)}  # e.g. drop stray metadata tensors
        try:
            state, network_alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(state)
        except Exception as error:
            raise IncompatibleWeightsError(f"{src}: unsupported kohya LoRA ({type(error).__name__}: {error})") from error
        alphas = dict(network_alphas or {})
    elif not any(k.startswith(("unet.", "text_encoder.")) for k in state):
        state = {f"unet.{k}": v for k, v in state.items()}  # bare peft keys of the UNet
    for key in [k for k in state if k.endswith(".alpha")]:  # alphas stored as tensors
        alphas[key] = float(state.pop(key))
    parts = {}
    for prefix in ("unet", "text_encoder"):
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not sub:
            continue
        sub_alphas = {k[len(prefix) + 1:]: v for k, v in alphas.items() if k.startswith(prefix + ".")}
        try:
            parts[prefix] = _fold_alphas(_to_peft(sub, prefix), sub_alphas, prefix)
        except Exception as error:
            raise IncompatibleWeightsError(f"{src}: unsupported LoRA format ({type(error).__name__}: {error})") from error
    return parts


def _metadata_kwarg(metadata: dict | None, prefix: str, targets: set[str]) -> dict:
    """``metadata=`` (diffusers' saved LoraConfig for this part) when the file has one; older
    diffusers releases know no such argument, so it is passed only when needed. Its
    ``target_modules`` are usually suffixes (``to_q``) that would also wrap every motion-module
    layer of the video UNet: they are replaced by the exact layers the file holds tensors for."""
    part = {k: v for k, v in (metadata or {}).items() if k.startswith(prefix + ".")}
    if not part:
        return {}
    part[f"{prefix}.target_modules"] = sorted(targets)
    return {"metadata": part}


def _adapter_modules(model: nn.Module, name: str) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = set()
    for module_name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            if name in getattr(module, "lora_A", {}) or name in getattr(module, "lora_embedding_A", {}):
                out.add(module_name)
    return out


def _targets(peft: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".lora_B.")[0] for k in peft if ".lora_B." in k}


@contextlib.contextmanager
def _quiet_peft():
    """peft/diffusers notes that are expected when adapters are stacked or a failed one is
    removed: several adapters share the model; the other adapters' tensors read as "missing"."""
    peft_log = diffusers_logging.get_logger("diffusers.utils.peft_utils")
    level = peft_log.level
    peft_log.setLevel(diffusers_logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            yield
    finally:
        peft_log.setLevel(level)



def _unique_name(path: Path, taken: set[str]) -> str:
    stem = path.name
    for suffix in CHECKPOINT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    base = re.sub(r"\W", "_", stem) or "lora"
    if base[0].isdigit():
        base = f"lora_{base}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def base_lora_scales(module: nn.Module) -> dict[str, float]:
    """The base LoRAs loaded into ``module`` (UNet or text encoder): adapter name → scale."""
    return dict(getattr(module, _SCALES_ATTR, {}))


def _activate(module: nn.Module, scales: dict[str, float]) -> None:
    """Make exactly the base LoRAs in ``scales`` active, with those scales. peft's adapter
    switch marks adapter weights trainable; base LoRAs are inference-only, so they are frozen."""
    setattr(module, _SCALES_ATTR, dict(scales))
    if hasattr(module, "set_adapters"):  # diffusers models (the UNet)
        module.set_adapters(list(scales), weights=list(scales.values()))
    else:  # transformers models (the text encoder)
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        set_weights_and_activate_adapters(module, list(scales), list(scales.values()))
    for param_name, param in module.named_parameters():
        if any(f".{name}." in param_name for name in scales) and "lora_" in param_name:
            param.requires_grad_(False)


def set_base_lora_scale(unet: nn.Module, name: str, scale: float, text_encoder: nn.Module | None = None) -> None:
    """Change the scale of an already loaded base LoRA (UNet and, if given, text encoder)."""
    for module in (unet, text_encoder):
        if module is None:
            continue
        scales = base_lora_scales(module)
        if module is unet and name not in scales:
            raise KeyError(f"no base LoRA named {name!r}; loaded: {sorted(scales)}")
        if name in scales:
            scales[name] = float(scale)
            _activate(module, scales)


def remove_base_loras(unet: nn.Module, text_encoder: nn.Module | None = None) -> list[str]:
    """Delete every base LoRA loaded by :func:`load_base_lora` (the base weights were never
    changed, so the model computes exactly what it did before). Returns the names removed."""
    removed = list(base_lora_scales(unet))
    for module in (unet, text_encoder):
        if module is None:
            continue
        names = list(base_lora_scales(module))
        if names:
            if hasattr(module, "delete_adapters"):
                module.delete_adapters(names)
            else:
                from diffusers.utils.peft_utils import delete_adapter_layers

                for name in names:
                    delete_adapter_layers(module, name)
        setattr(module, _SCALES_ATTR, {})
    return removed


def _forget(model: nn.Module, name: str, scales: dict[str, float]) -> None:
    """Undo a failed load: drop adapter ``name`` wherever it got to, re-activate the others."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    with _quiet_peft():
        if hasattr(model, "delete_adapters") and name in (getattr(model, "peft_config", None) or {}):
            model.delete_adapters(name)
        else:
            delete_adapter_layers(model, name)
    setattr(model, _SCALES_ATTR, dict(scales))
    if scales:
        _activate(model, scales)


def load_base_lora(
    unet: UNetMotionModel,
    path: str | Path,
    scale: float = 1.0,
    name: str | None = None,
    *,
    text_encoder: CLIPTextModel | None = None,
) -> str:
    """Load a community SD 1.5 LoRA into the video UNet's image layers as a peft adapter, active
    with ``scale`` together with the base LoRAs loaded before (stacking). Returns the adapter name
    (``name`` or one derived from the file name). Text-encoder parts go into ``text_encoder`` when
    given, else are skipped with a warning. Formats: see the module docstring. Every layer the
    LoRA targets must exist with matching shapes, else :class:`IncompatibleWeightsError` and
    nothing changes.
    """
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    file = _check_source(path, "base LoRA")
    src = str(file)
    state, metadata = _read_lora(file)
    parts = _lora_parts(state, src)
    if "unet" not in parts or not _targets(parts["unet"]):
        raise IncompatibleWeightsError(f"{src}: holds no UNet LoRA tensors")
    unet_scales = base_lora_scales(unet)
    taken = set(getattr(unet, "peft_config", None) or {}) | set(unet_scales)
    if name is None:
        name = _unique_name(file, taken)
    elif name in taken:
        raise ValueError(f"an adapter named {name!r} is already loaded into the UNet")

    def fail(model, scales, detail: str):
        _forget(model, name, scales)
        return IncompatibleWeightsError(f"{src}: not an SD 1.5-compatible LoRA for this model: {detail}")

    expected = _targets(parts["unet"])
    try:
        with _quiet_peft():
            unet.load_lora_adapter(
                {f"unet.{k}": v for k, v in parts["unet"].items()},
                prefix="unet", adapter_name=name, **_metadata_kwarg(metadata, "unet", expected),
            )
    except Exception as error:
        raise fail(unet, unet_scales, f"{type(error).__name__}: {error}") from error
    placed = _adapter_modules(unet, name)
    absent = sorted(expected - placed)
    if absent:
        raise fail(unet, unet_scales, f"{len(absent)} of its {len(expected)} target layers are not in the UNet "
                   f"(e.g. {absent[:3]})")
    for module_name in placed:
        if ".motion_modules." in f".{module_name}." and module_name.endswith(("proj_in", "proj_out")):
            unet.get_submodule(module_name).register_forward_pre_hook(input_kwarg_to_positional, with_kwargs=True)
    unet_scales[name] = float(scale)
    _activate(unet, unet_scales)

    if "text_encoder" in parts:
        if text_encoder is None:
            warnings.warn(f"{src}: its text-encoder LoRA tensors are ignored (no text encoder given)", stacklevel=2)
            return name
        text_scales = base_lora_scales(text_encoder)
        peft = parts["text_encoder"]
        if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
            peft = {k.removeprefix("text_model."): v for k, v in peft.items()}
        expected = _targets(peft)
        try:
            with _quiet_peft():
                StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                    {f"text_encoder.{k}": v for k, v in peft.items()}, None, text_encoder,
                    prefix="text_encoder", adapter_name=name, **_metadata_kwarg(metadata, "text_encoder", expected),
                )
            absent = sorted(expected - _adapter_modules(text_encoder, name))
        except Exception as error:
            _forget(unet, name, {k: v for k, v in unet_scales.items() if k != name})
            raise fail(text_encoder, text_scales, f"its text-encoder part: {type(error).__name__}: {error}") from error
        if absent:
            _forget(unet, name, {k: v for k, v in unet_scales.items() if k != name})
            raise fail(text_encoder, text_scales, f"{len(absent)} of its {len(expected)} text-encoder layers "
                       f"are not in the text encoder (e.g. {absent[:3]})")
        text_scales[name] = float(scale)
        _activate(text_encoder, text_scales)
    return name


# --------------------------------------------------------------------------- convenience


def apply_personalization(
    comps_or_pipeline,
    base_model: str | Path | None = None,
    base_loras: Sequence[str | Path] = (),
    *,
    load_vae: bool = True,
    load_text_encoder: bool = True,
) -> dict:
    """Apply ``--base-model`` then each ``--base-lora FILE[:SCALE]`` to a ``Components`` or an
    ``ImageConductorPipeline`` (whose denoiser shares ``comps.unet``). Safe to call after the
    pipeline moved to its device and dtype: weights are copied in place and peft puts new LoRA
    layers on their base layer's device. ``load_vae`` / ``load_text_encoder``: also take those
    parts from a full checkpoint (and text-encoder LoRA parts). Returns
    ``{"base_model": [parts loaded], "base_loras": {adapter: scale}}``.
    """
    comps = getattr(comps_or_pipeline, "comps", comps_or_pipeline)
    report: dict = {"base_model": [], "base_loras": {}}
    text_encoder = comps.text_encoder if load_text_encoder else None
    # A weightless codec (the tiny preset's space-to-depth) has no VAE weights to take.
    vae = comps.vae if load_vae and isinstance(comps.vae, AutoencoderKL) else None
    if base_model:
        report["base_model"] = load_personalized_base(comps.unet, base_model, vae=vae, text_encoder=text_encoder)
    for spec in base_loras:
        path, scale = parse_lora_spec(spec)
        name = load_base_lora(comps.unet, path, scale, text_encoder=text_encoder)
        report["base_loras"][name] = scale
    return report


__all__ = [
    "IncompatibleWeightsError",
    "apply_personalization",
    "base_lora_scales",
    "extract_unet2d",
    "load_base_lora",
    "load_personalized_base",
    "parse_lora_spec",
    "remove_base_loras",
    "set_base_lora_scale",
    "spatial_state_dict",
    "unet2d_config",
]
