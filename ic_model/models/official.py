"""The released Image Conductor weights (``TencentARC/ImageConductor``) in this project's models.

The authors published three pickled fp16 state dicts, meant to sit beside an SD 1.5 folder:

- ``unet.ckpt``: SD 1.5's UNet with AnimateDiff-v3-style motion modules, in the original
  AnimateDiff layout (``…motion_modules.N.temporal_transformer.transformer_blocks.0.
  attention_blocks.K.to_q…``, ``norms.K``, ``ff_norm``, a ``pos_encoder.pe`` table per
  attention block). Our video UNet is diffusers' ``UNetMotionModel``, which holds the same
  tensors under other names.
- ``image_controlnet.ckpt``: the SparseCtrl-RGB-style image ControlNet, same layout, → diffusers'
  ``SparseControlNetModel`` (4 latent channels + mask).
- ``flow_controlnet.ckpt``: the motion ControlNet (2 flow channels pixel-unshuffled by 8 → 128)
  with two peft LoRA adapters in the same dict: ``cmcm_weights`` (camera motion, our ``camera``)
  and ``omcm_weights`` (object motion, our ``object``), rank 64 and alpha 64
  (``utils/lora_utils.py``: ``lora_alpha=lora_rank``; alpha is not stored in the file). Wrapped
  layers keep their weight under ``….base_layer.weight`` and the adapters under
  ``….lora_A.<adapter>.weight`` / ``….lora_B.<adapter>.weight``.

:func:`convert_official` turns them into a run folder (safetensors only), after which every
command that takes ``--run`` works on it. Reading is safe and strict: ``torch.load(...,
weights_only=True)`` (the files are plain tensor dicts: nothing in them can execute), every key
is renamed by an explicit rule and mapped exactly once, and a key the target model lacks, a
tensor it misses or a shape that differs is one :class:`OfficialWeightsError` naming the key and
the file. (The official loader uses ``strict=False`` and only checks for unexpected keys.)

The motion modules' temporal GroupNorm: AnimateDiff's own code, and Image Conductor's copy of it,
normalise each frame separately (``b c f h w -> (b f) c h w`` before the norm); diffusers'
``AnimateDiffTransformer3D`` normalises over all frames at once. A converted run therefore sets
``ModelConfig.motion_norm = "per_frame"`` so the released weights run as they were trained.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ic_model.models.files import pickle_refusal

# The released files, by the component of ours each becomes.
OFFICIAL_FILES = {
    "unet": "unet.ckpt",
    "image_controlnet": "image_controlnet.ckpt",
    "motion_controlnet": "flow_controlnet.ckpt",
}
# The flow ControlNet's adapters → our adapter names.
OFFICIAL_ADAPTERS = {"cmcm_weights": "camera", "omcm_weights": "object"}
# Non-tensor entries the official loaders drop or only print.
BOOKKEEPING_KEYS = frozenset({"animatediff_config", "global_step", "epoch"})

_PEFT_KEY = re.compile(
    r"^(?P<module>.+)\.(?:base_layer\.(?P<param>weight|bias)"
    r"|(?P<ab>lora_A|lora_B)\.(?P<adapter>[^.]+)\.weight)$"
)
_MOTION_MODULE = re.compile(r"^(?P<head>(?:.+\.)?motion_modules\.\d+\.)temporal_transformer\.(?P<rest>.+)$")
_POS_TABLE = re.compile(r"^transformer_blocks\.\d+\.attention_blocks\.\d+\.pos_encoder\.pe$")
_MOTION_RULES = (
    # (pattern inside a motion module's temporal transformer, replacement)
    (re.compile(r"^transformer_blocks\.(\d+)\.attention_blocks\.(\d+)\.(.+)$"),
     lambda m: f"transformer_blocks.{m[1]}.attn{int(m[2]) + 1}.{m[3]}"),
    (re.compile(r"^transformer_blocks\.(\d+)\.norms\.(\d+)\.(weight|bias)$"),
     lambda m: f"transformer_blocks.{m[1]}.norm{int(m[2]) + 1}.{m[3]}"),
    (re.compile(r"^transformer_blocks\.(\d+)\.ff_norm\.(weight|bias)$"),
     lambda m: f"transformer_blocks.{m[1]}.norm3.{m[2]}"),
    (re.compile(r"^(transformer_blocks\.\d+\.ff\..+|norm\.(?:weight|bias)|proj_(?:in|out)\..+)$"),
     lambda m: m[1]),
)


#: What the released weights were trained with: a run of them that says otherwise would sample
#: with another objective or schedule, or hand the motion ControlNet maps of another scale, and
#: make noise without a word. (Size, frames and the maps' filter may change with the size.)
TRAINED_WITH = ("prediction_type", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                "latent_scaling_factor", "flow_gain", "motion_norm")


def release_mismatches(cfg) -> list[str]:
    """One line for each of ``TRAINED_WITH`` where ``cfg`` differs from the sd15 preset."""
    from ic_model.config import sd15_config

    preset = sd15_config()
    return [f"{name} {getattr(preset, name)!r}, not {getattr(cfg, name)!r}" for name in TRAINED_WITH
            if getattr(cfg, name) != getattr(preset, name)]


class OfficialWeightsError(ValueError):
    """A released checkpoint cannot be read, or does not hold exactly the expected tensors."""


# --------------------------------------------------------------------------- reading


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of one released ``.ckpt``: ``torch.load(weights_only=True)`` (memory-mapped
    where the file allows it), unwrapped from ``state_dict`` or ``controlnet`` as the official
    loaders do, without the bookkeeping entries they drop. Anything else is an error."""
    path = Path(path)
    if not path.is_file():
        raise OfficialWeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise OfficialWeightsError(f"{path}: the file is empty")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            raise OfficialWeightsError(f"{path}: unreadable: a truncated or damaged zip archive (no central directory)")
        if head[:1] != b"\x80":  # torch's legacy format is a pickle (protocol ≥ 2) from its first byte
            raise OfficialWeightsError(f"{path}: unreadable: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    obj = None
    for mmap in ((True, False) if is_zip else (False,)):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except pickle.UnpicklingError as exc:  # weights_only refused an object, or not a pickle
            reason = pickle_refusal(exc) or "not a pickle of tensors"
            raise OfficialWeightsError(
                f"{path}: not a plain tensor checkpoint (refused by weights_only loading: {reason})"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as exc:
            if mmap and "mmap" in str(exc):
                continue  # legacy (non-zip) format: read it into memory instead
            raise OfficialWeightsError(f"{path}: unreadable or truncated checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise OfficialWeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for wrapper in ("state_dict", "controlnet"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    tensors, foreign = {}, []
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            tensors[str(key)] = value
        elif key not in BOOKKEEPING_KEYS:
            foreign.append(key)
    if foreign:
        raise OfficialWeightsError(
            f"{path}: {len(foreign)} entries are neither tensors nor known bookkeeping (e.g. {foreign[:3]})"
        )
    if not tensors:
        raise OfficialWeightsError(f"{path}: holds no tensors")
    return tensors


# --------------------------------------------------------------------------- key mapping


def official_key(key: str) -> str | None:
    """Our name for an official (AnimateDiff-layout) key; None for a motion module's sinusoidal
    position table, which our models compute themselves. Keys outside the motion modules keep
    their name (SD's UNet, resnets, spatial transformers and ControlNet heads are named alike).
    A motion-module key no rule covers raises :class:`KeyError`."""
    m = _MOTION_MODULE.match(key)
    if m is None:
        if ".temporal_transformer." in key or "attention_blocks." in key:
            raise KeyError(key)
        return key
    rest = m["rest"]
    if _POS_TABLE.match(rest):
        return None
    for pattern, replace in _MOTION_RULES:
        hit = pattern.match(rest)
        if hit:
            return m["head"] + replace(hit)
    raise KeyError(key)


def split_peft(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict[str, dict]]:
    """A peft-wrapped state dict → (base weights under plain names, {official adapter: {plain
    module name + ``.lora_A.weight`` / ``.lora_B.weight``: tensor}})."""
    base: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            plain = key
            if plain in base:
                raise OfficialWeightsError(f"{source}: {key} appears both wrapped and unwrapped")
            base[plain] = value
        elif m["param"]:
            plain = f"{m['module']}.{m['param']}"
            if plain in base:
                raise OfficialWeightsError(f"{source}: {key} appears both wrapped and unwrapped")
            base[plain] = value
        else:
            adapters.setdefault(m["adapter"], {})[f"{m['module']}.{m['ab']}.weight"] = value
    return base, adapters


def rename(state: dict[str, torch.Tensor], *, source: str) -> tuple[dict[str, torch.Tensor], dict[str, tuple]]:
    """Official keys → ours. Returns (renamed tensors, {dropped position-table key: shape}).
    Every key is mapped by exactly one rule, and no two keys may land on the same name."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: dict[str, tuple] = {}
    for key, value in state.items():
        try:
            new = official_key(key)
        except KeyError:
            raise OfficialWeightsError(f"{source}: no rule maps the key {key!r}: is it a released Image Conductor file?") from None
        if new is None:
            dropped[key] = tuple(value.shape)
            continue
        if new in out:
            raise OfficialWeightsError(f"{source}: {origin[new]!r} and {key!r} both map to {new!r}")
        out[new], origin[new] = value, key
    return out, dropped


def check_against(
    expected: dict[str, tuple], state: dict[str, torch.Tensor], *, what: str, source: str,
    computed: Callable[[str], bool] = lambda k: False,
) -> None:
    """``state`` holds exactly ``expected``'s tensors (names → shapes), bar ones the model
    computes itself; one error names the first problem keys."""
    missing = sorted(k for k in expected if k not in state and not computed(k))
    unexpected = sorted(k for k in state if k not in expected)
    if missing:
        raise OfficialWeightsError(f"{source}: lacks {len(missing)} of the {what}'s tensors, e.g. {missing[:3]}")
    if unexpected:
        raise OfficialWeightsError(f"{source}: {len(unexpected)} tensors the {what} does not have, e.g. {unexpected[:3]}")
    wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k])} in the {what}"
             for k, v in state.items() if tuple(v.shape) != tuple(expected[k])]
    if wrong:
        raise OfficialWeightsError(f"{source}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[:3]}")


def _shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- conversion


def official_targets(cfg, rank: int, alpha: float) -> dict:
    """Our three models at the preset's size on the ``meta`` device (no memory): the targets the
    released tensors must fit, with both adapters injected into the motion ControlNet."""
    from ic_model.models import lora
    from ic_model.models.sd15 import build_sd15_on_meta

    parts = build_sd15_on_meta(cfg)
    mc = parts["motion_controlnet"]
    with torch.device("meta"):
        for name in OFFICIAL_ADAPTERS.values():
            lora.add_lora_adapter(mc, name, rank, alpha, cfg.lora_targets)
    return parts


def convert_part(
    part: str, state: dict[str, torch.Tensor], target: nn.Module, *, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict]:
    """One released file's tensors → (our base tensors, {our adapter name: adapter file tensors},
    summary), checked strictly against ``target`` (our model on the meta device, adapters
    injected for the motion ControlNet). Each official key is used exactly once: renamed, a
    LoRA tensor of a known adapter, or a dropped position table."""
    from ic_model.models import lora
    from ic_model.models.sd15 import COMPUTED_BUFFERS

    n_tensors = len(state)
    adapters: dict[str, dict] = {}
    if part == "motion_controlnet":
        state, official_adapters = split_peft(state, source)
        if set(official_adapters) != set(OFFICIAL_ADAPTERS):
            raise OfficialWeightsError(
                f"{source}: expected the LoRA adapters {sorted(OFFICIAL_ADAPTERS)}, "
                f"found {sorted(official_adapters) or 'none'}"
            )
        for official_name, tensors in official_adapters.items():
            renamed, _ = rename(tensors, source=f"{source} (adapter {official_name})")
            adapters[OFFICIAL_ADAPTERS[official_name]] = renamed
    renamed, dropped = rename(state, source=source)
    expected = {k.replace(".base_layer.", "."): v for k, v in _shapes(target).items() if ".lora_" not in k}
    check_against(expected, renamed, what=f"{part} model", source=source,
                  computed=lambda k: bool(COMPUTED_BUFFERS.search(k)))
    for name, tensors in adapters.items():
        wanted = {key: tuple(p.shape) for _, key, p in lora._adapter_entries(target, name)}
        check_against(wanted, tensors, what=f"{name} adapter", source=f"{source} ({name} adapter)")
    used = len(renamed) + len(dropped) + sum(len(t) for t in adapters.values())
    if used != n_tensors:  # guards the bookkeeping above: every key lands exactly once
        raise OfficialWeightsError(f"{source}: {n_tensors} tensors read but {used} mapped")
    summary = {
        "tensors": n_tensors,
        "parameters": sum(v.numel() for v in renamed.values())
        + sum(v.numel() for t in adapters.values() for v in t.values()),
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in renamed.values()}),
        "position_tables_dropped": len(dropped),
        "adapters": sorted(adapters),
    }
    return renamed, adapters, summary


def convert_official(
    official_dir: str | os.PathLike, out: str | os.PathLike, *, sd15_path: str = "",
    cfg=None, progress: Callable[[str], None] | None = None,
) -> dict:
    """Write the released weights in ``official_dir`` as a run folder ``out``:

    ``base/{unet,image_controlnet}.safetensors`` (the frozen video model), ``sparse/
    motion_controlnet.safetensors`` (the trained motion ControlNet), ``camera/camera_lora`` and
    ``object/object_lora`` (+ the camera adapter beside it, as the object stage leaves it), each
    stage with its ``done.json`` (``"source": "official"``, ``steps`` 0, so ``ic train camera|
    object --run OUT`` trains a new adapter on this base). Tensors keep the release's dtype.
    ``cfg``: the sd15 ModelConfig to write (default: the preset, whose ``motion_norm`` is
    "per_frame" as the release needs); ``sd15_path`` fills its ``sd15_path`` (VAE, text encoder,
    tokenizer).
    Returns a summary (per file: tensors, parameters, dropped position tables).
    """
    from ic_model.config import save_json, sd15_config
    from ic_model.models import lora
    from ic_model.models.files import write_safetensors
    from ic_model.training.run import LORA_FILES, stage_dir

    say = progress or (lambda message: None)
    official_dir, out = Path(official_dir), Path(out)
    if not official_dir.is_dir():
        raise OfficialWeightsError(f"{official_dir}: not a folder (expected one holding {', '.join(OFFICIAL_FILES.values())})")
    missing = [f for f in OFFICIAL_FILES.values() if not (official_dir / f).is_file()]
    if missing:
        raise OfficialWeightsError(f"{official_dir} lacks {', '.join(missing)} (the TencentARC/ImageConductor release)")
    if (out / "config.json").exists():
        raise OfficialWeightsError(f"{out} already holds a run (config.json): choose a new --out folder")
    cfg = cfg or sd15_config()
    if sd15_path:
        cfg.sd15_path = str(sd15_path)
    if wrong := release_mismatches(cfg):
        raise OfficialWeightsError(f"the released weights were trained with the sd15 preset's {'; '.join(wrong)}")
    rank, alpha = cfg.lora_rank, cfg.lora_alpha

    # Read and check all three before writing anything.
    say("building the target models on the meta device")
    targets = official_targets(cfg, rank, alpha)
    summary: dict = {"source": "official", "official_dir": str(official_dir.resolve()), "files": {}}
    converted: dict[str, dict] = {}
    adapters: dict[str, dict] = {}
    for part, filename in OFFICIAL_FILES.items():
        say(f"reading {filename}")
        state = read_official_checkpoint(official_dir / filename)
        converted[part], part_adapters, summary["files"][filename] = convert_part(
            part, state, targets[part], source=str(official_dir / filename)
        )
        adapters.update(part_adapters)
    say(f"writing the run folder {out}")
    out.mkdir(parents=True, exist_ok=True)
    stamp = {"source": "official", "steps": 0, "official_dir": summary["official_dir"]}

    def write(tensors: dict, path: Path, metadata: dict | None = None) -> None:
        write_safetensors({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)

    write(converted["unet"], stage_dir(out, "base") / "unet.safetensors")
    write(converted["image_controlnet"], stage_dir(out, "base") / "image_controlnet.safetensors")
    write(converted["motion_controlnet"], stage_dir(out, "sparse") / "motion_controlnet.safetensors")
    for name, stage in (("camera", "camera"), ("object", "object"), ("camera", "object")):
        description = {"adapter": name, "rank": rank, "alpha": alpha, "targets": cfg.lora_targets}
        write(adapters[name], stage_dir(out, stage) / LORA_FILES[name], {lora.METADATA_KEY: json.dumps(description)})
    for stage, files in (("base", ("unet.ckpt", "image_controlnet.ckpt")), ("sparse", ("flow_controlnet.ckpt",)),
                         ("camera", ("flow_controlnet.ckpt",)), ("object", ("flow_controlnet.ckpt",))):
        save_json(stage_dir(out, stage) / "config.json", cfg.to_dict())
        save_json(stage_dir(out, stage) / "done.json", {**stamp, "stage": stage, "from_files": list(files)})
    save_json(out / "official.json", summary)
    save_json(out / "config.json", cfg.to_dict())  # last: the folder is a run only once complete
    return summary


# Part of the cache key of ``official_run``: raise it when the conversion's output changes (key
# rules, file layout, the ModelConfig it writes), so cached runs are converted again.
CONVERSION_VERSION = 1


def official_cache_key(official_dir: str | os.PathLike) -> str:
    """The folder, its three files' sizes and modification times, and ``CONVERSION_VERSION``."""
    import hashlib

    official_dir = Path(official_dir).expanduser()
    stats = [(f, (official_dir / f).stat()) for f in OFFICIAL_FILES.values()]
    ident = (CONVERSION_VERSION, str(official_dir.resolve()), [(f, st.st_size, st.st_mtime_ns) for f, st in stats])
    return hashlib.sha256(repr(ident).encode()).hexdigest()[:16]


def official_run(
    official_dir: str | os.PathLike, *, sd15_path: str = "", cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The run folder converted from ``official_dir`` (``--official DIR``): converted once into
    ``cache_dir`` (default ``$IC_CACHE_DIR`` or ``~/.cache/image-conductor``)/``official-<key>``,
    keyed to the folder, its files' sizes and modification times and the converter's version, and
    reused after that.
    ``sd15_path``, when given, is written into the run's config (a machine-specific setting)."""
    from ic_model.config import load_json, save_json

    official_dir = Path(official_dir).expanduser()
    missing = [f for f in OFFICIAL_FILES.values() if not (official_dir / f).is_file()]
    if not official_dir.is_dir() or missing:
        raise OfficialWeightsError(
            f"{official_dir}: " + ("no such folder; " if not official_dir.exists() else "")
            + f"expected a folder holding {', '.join(OFFICIAL_FILES.values())}"
            + (f" (missing: {', '.join(missing)})" if official_dir.is_dir() else "")
        )
    key = official_cache_key(official_dir)
    root = Path(cache_dir or os.environ.get("IC_CACHE_DIR") or Path.home() / ".cache" / "image-conductor")
    run = root / f"official-{key}"
    if not (run / "config.json").is_file():
        if run.exists():  # an interrupted conversion: start over
            import shutil

            shutil.rmtree(run)
        convert_official(official_dir, run, sd15_path=sd15_path, progress=progress)
    elif sd15_path:
        config = load_json(run / "config.json")
        if config.get("sd15_path") != str(sd15_path):
            save_json(run / "config.json", {**config, "sd15_path": str(sd15_path)})
    return run


__all__ = [
    "BOOKKEEPING_KEYS",
    "CONVERSION_VERSION",
    "OFFICIAL_ADAPTERS",
    "OFFICIAL_FILES",
    "OfficialWeightsError",
    "check_against",
    "convert_official",
    "convert_part",
    "official_cache_key",
    "official_key",
    "official_run",
    "official_targets",
    "read_official_checkpoint",
    "rename",
    "split_peft",
]
