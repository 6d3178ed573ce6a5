"""The ``sd15`` preset's networks: SD 1.5 + AnimateDiff v3 + SparseCtrl RGB, from local files only.

Image Conductor sits on a frozen AnimateDiff v3 image-to-video model: the SD 1.5 UNet with the v3
motion module (a diffusers ``UNetMotionModel``), the SparseCtrl RGB ControlNet fed the first
frame's latent, the SD VAE and the CLIP ViT-L/14 text encoder. Only the motion ControlNet is new;
it is initialised from the video UNet's encoder.

Machines here reach no model hub, so every pretrained part is read from a path in the
``ModelConfig`` (or its ``IC_*`` environment variable), in either of the two formats the weights
are published in:

- ``sd15_path``: a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) or
  one original ``.ckpt``/``.safetensors`` checkpoint (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.transformer.*``). With a single file the tokenizer
  is the real CLIP BPE one rebuilt from the vocabulary shipped by open_clip_torch
  (``ic_model.models.tokenizer``), so no folder is needed.
- ``motion_adapter_path``: a diffusers ``MotionAdapter`` folder or the original
  ``v3_sd15_mm.ckpt``.
- ``sparsectrl_rgb_path``: a diffusers ``SparseControlNetModel`` folder or the original
  ``v3_sd15_sparsectrl_rgb.ckpt``.

diffusers' ``from_single_file`` would fetch each model's config from the hub (it only knows the
checkpoint, not the architecture), so original checkpoints are instead read with diffusers' own
key converters into models built from the configs embedded below — the published configs of
``runwayml/stable-diffusion-v1-5``, ``guoyww/animatediff-motion-adapter-v1-5-3`` and
``guoyww/animatediff-sparsectrl-rgb``. Loading is strict: a tensor the model needs but the file
lacks is an error, never a silently random weight.

The same configs build the whole model on the ``meta`` device (:func:`build_sd15_on_meta`), which
gives exact parameter counts and lets shapes be checked without any weights or memory.
"""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    MotionAdapter,
    SparseControlNetModel,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    load_single_file_checkpoint,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ic_data.errors import MissingWeightsError
from ic_model.config import WEIGHT_ENV, ModelConfig, sd15_config
from ic_model.models.components import make_scheduler, parameter_count
from ic_model.models.motion_controlnet import build_motion_controlnet
from ic_model.models.tokenizer import clip_tokenizer

# runwayml/stable-diffusion-v1-5 unet/config.json.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

# runwayml/stable-diffusion-v1-5 vae/config.json.
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

# runwayml/stable-diffusion-v1-5 text_encoder/config.json: CLIP ViT-L/14's text tower.
SD15_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)

# guoyww/animatediff-motion-adapter-v1-5-3 config.json. v3 has no motion module in the mid block
# (diffusers' single-file detector tells v2 from v3 by exactly that tensor).
ANIMATEDIFF_V3_CONFIG = dict(
    block_out_channels=(320, 640, 1280, 1280),
    motion_layers_per_block=2,
    motion_transformer_layers_per_block=1,
    motion_mid_block_layers_per_block=1,
    motion_transformer_layers_per_mid_block=1,
    motion_num_attention_heads=8,
    motion_norm_num_groups=32,
    motion_max_seq_length=32,
    use_motion_mid_block=False,
    conv_in_channels=None,
)

# guoyww/animatediff-sparsectrl-rgb config.json: the SD 1.5 encoder with v3 motion modules, a
# 4-channel latent condition plus a mask channel, through the simplified (single conv) embedding.
SPARSECTRL_RGB_CONFIG = dict(
    in_channels=4,
    conditioning_channels=4,
    concat_conditioning_mask=True,
    use_simplified_condition_embedding=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=(
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "DownBlockMotion",
    ),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    transformer_layers_per_block=1,
    temporal_transformer_layers_per_block=1,
    attention_head_dim=8,
    use_linear_projection=False,
    controlnet_conditioning_channel_order="rgb",
    motion_max_seq_length=32,
    motion_num_attention_heads=8,
)

# SD 1.5's block types at minimal widths (the VAE downsamples 8× like SD's): the sd15 code paths,
# training and sampling included, on a CPU in seconds (benchmarks/gpu_check.py --dry-run, the
# sd15 training tests). Swapped in for the configs above by :func:`mini_architecture`.
MINI_CONFIGS = dict(
    SD15_UNET_CONFIG=dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4,
    ),
    SD15_VAE_CONFIG=dict(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, scaling_factor=0.18215,
    ),
    SD15_TEXT_CONFIG=dict(
        vocab_size=49408, hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
    ),
    ANIMATEDIFF_V3_CONFIG=dict(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
        motion_num_attention_heads=2, motion_max_seq_length=32, use_motion_mid_block=False,
    ),
    SPARSECTRL_RGB_CONFIG=dict(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
        motion_num_attention_heads=2, conditioning_channels=4, concat_conditioning_mask=True,
        use_simplified_condition_embedding=True,
    ),
)


def mini_config(**overrides) -> ModelConfig:
    """The sd15 preset's schedule and conditioning for the mini networks: 4 frames at 64×64."""
    base = dict(width=64, height=64, num_frames=4, flow_kernel_size=25, flow_sigma=2.5, cross_attention_dim=32,
                lora_rank=4, lora_alpha=4)
    return sd15_config(**{**base, **overrides})


@contextlib.contextmanager
def mini_architecture():
    """Within the block, every sd15 builder (and so the loaders and ``build_sd15_on_meta``)
    makes the mini networks of ``MINI_CONFIGS`` instead of SD 1.5's."""
    module = sys.modules[__name__]
    saved = {name: getattr(module, name) for name in MINI_CONFIGS}
    for name, config in MINI_CONFIGS.items():
        setattr(module, name, config)
    try:
        yield
    finally:
        for name, config in saved.items():
            setattr(module, name, config)


CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
SD15_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")

# Tensors a model may lack in a checkpoint because it computes them itself: the motion modules'
# sinusoidal position tables (dropped by diffusers' AnimateDiff converter) and CLIP's position ids.
COMPUTED_BUFFERS = re.compile(r"(pos_embed\.pe|position_ids)$")


# --------------------------------------------------------------------------- architecture
# Builders read the configs above at call time, so the meta build and the single-file loaders
# share one description of each network (and tests can swap in tiny ones).


def sd15_unet_2d() -> UNet2DConditionModel:
    return UNet2DConditionModel(**SD15_UNET_CONFIG)


def sd15_vae() -> AutoencoderKL:
    return AutoencoderKL(**SD15_VAE_CONFIG)


def sd15_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))


def animatediff_v3_adapter() -> MotionAdapter:
    return MotionAdapter(**ANIMATEDIFF_V3_CONFIG)


def sparsectrl_rgb() -> SparseControlNetModel:
    return SparseControlNetModel(**SPARSECTRL_RGB_CONFIG)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell: each VAE block but the last halves the resolution."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_sd15_on_meta(cfg: ModelConfig, device: str | torch.device = "meta") -> dict:
    """Every sd15 network at its real size on the ``meta`` device: no weights, no memory.

    Another ``device`` gives randomly initialised real tensors (same compute and memory cost as
    the pretrained weights: what the GPU benchmark uses).

    Keys as :func:`load_sd15_components` (without the tokenizer) plus ``sd15_unet`` and
    ``motion_adapter``, the two parts the video UNet is assembled from, so that each size can be
    reported. Meta tensors carry shapes through a forward pass, so wiring can be checked too.
    """
    with torch.device(device):
        sd15_unet = sd15_unet_2d()
        motion_adapter = animatediff_v3_adapter()
        unet = UNetMotionModel.from_unet2d(sd15_unet, motion_adapter)
        vae = sd15_vae()
        parts = dict(
            vae=vae,
            text_encoder=sd15_text_encoder(),
            unet=unet,
            image_controlnet=sparsectrl_rgb(),
            motion_controlnet=build_motion_controlnet(unet, vae_scale_factor(vae)),
        )
    return dict(parts, scheduler=make_scheduler(cfg), sd15_unet=sd15_unet, motion_adapter=motion_adapter)


def parameter_counts(components: dict) -> dict[str, int]:
    """Number of parameters of every ``nn.Module`` among ``components`` (others are skipped)."""
    return {name: parameter_count(m) for name, m in components.items() if isinstance(m, nn.Module)}


# --------------------------------------------------------------------------- paths


def _setting(name: str) -> str:
    return f"{name} / {WEIGHT_ENV[name]}"


def _path_problem(name: str, value: str) -> str | None:
    """Why the configured path cannot be loaded, or None. Checks layout, not contents."""
    if not value:
        return f"{_setting(name)} is not set"
    path = Path(value).expanduser()
    if not path.exists():
        return f"{_setting(name)} = {value!r} does not exist"
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            suffixes = "/".join(CHECKPOINT_SUFFIXES)
            return f"{_setting(name)} = {value!r} is neither a folder nor a {suffixes} file"
        return None
    if name == "sd15_path":
        missing = [sub for sub in SD15_SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            return f"{_setting(name)} = {value!r} is a folder without {', '.join(missing)}/"
    elif not (path / "config.json").is_file():
        return f"{_setting(name)} = {value!r} is a folder without config.json"
    return None


def resolve_weight_paths(cfg: ModelConfig, names=tuple(WEIGHT_ENV)) -> dict[str, Path]:
    """The weight paths ``names`` (default: all three), each a folder or a checkpoint file, all
    checked before anything is loaded so that one error lists every setting to fix."""
    values = {name: cfg.weight_path(name) for name in names}
    problems = [p for p in (_path_problem(n, v) for n, v in values.items()) if p]
    if problems:
        raise MissingWeightsError(
            "the sd15 preset needs local weights (no model hub is reachable):\n  - "
            + "\n  - ".join(problems)
            + "\nSet the ModelConfig field or the environment variable to a diffusers folder or an "
            "original .ckpt/.safetensors file."
        )
    return {name: Path(value).expanduser() for name, value in values.items()}


# --------------------------------------------------------------------------- loading


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an original checkpoint, unwrapped from ``state_dict`` (Lightning) or
    ``controlnet`` (SparseCtrl) and without bookkeeping entries such as ``animatediff_config``."""
    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    if "controlnet" in checkpoint and isinstance(checkpoint["controlnet"], dict):
        checkpoint = checkpoint["controlnet"]
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _source(name: str, path: Path) -> str:
    return f"{_setting(name)} = {str(path)!r}"


def load_converted(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, what: str, source: str, dtype: torch.dtype
) -> nn.Module:
    """Assign ``state_dict`` to ``model`` (built under ``init_empty_weights``), requiring that it
    supplies exactly the model's tensors; only buffers the model computes itself may differ."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not COMPUTED_BUFFERS.search(k)]
    unexpected = [k for k in state_dict if k not in expected and not COMPUTED_BUFFERS.search(k)]
    if missing:
        raise MissingWeightsError(
            f"{source} lacks {len(missing)} of the {what}'s tensors (e.g. {missing[:3]}): "
            "is it the right checkpoint?"
        )
    if unexpected:
        raise ValueError(
            f"{source} has {len(unexpected)} tensors the {what} does not (e.g. {unexpected[:3]}): "
            "is it the right checkpoint?"
        )
    mismatched = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{source}: {len(mismatched)} {what} tensors have the wrong shape, e.g. {mismatched[:3]}"
        )
    state_dict = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items() if k in expected
    }
    model.load_state_dict(state_dict, strict=False, assign=True)
    return model.to(dtype).eval()  # also casts the computed buffers


def from_folder(
    cls, path: Path, *, what: str, source: str, dtype: torch.dtype | None = None, subfolder: str = "",
    error: type[Exception] = MissingWeightsError, may_lack: str | None = None,
):
    """``cls.from_pretrained`` offline. diffusers and transformers both only *warn* about tensors a
    folder lacks and initialise them at random; here that is an ``error`` (tensors the model
    computes itself, and names containing ``may_lack``, excepted)."""
    kwargs = {}
    if dtype is not None:
        kwargs["dtype" if issubclass(cls, CLIPTextModel) else "torch_dtype"] = dtype
    try:
        model, info = cls.from_pretrained(
            str(path), subfolder=subfolder, local_files_only=True, output_loading_info=True, **kwargs
        )
    except Exception as exc:
        raise error(f"{source}: cannot load the {what} from {Path(path) / subfolder} ({exc})") from exc
    missing = [
        k for k in info["missing_keys"]
        if not COMPUTED_BUFFERS.search(k) and not (may_lack and may_lack in k)
    ]
    if missing:
        raise error(
            f"{source}: {subfolder or path} lacks {len(missing)} of the {what}'s tensors "
            f"(e.g. {sorted(missing)[:3]})"
        )
    return model.eval()


def load_sd15(path: Path, torch_dtype: torch.dtype = torch.float32, unet: bool = True) -> dict:
    """SD 1.5's ``unet_2d``, ``vae``, ``text_encoder`` and ``tokenizer`` from a diffusers folder or
    an original single-file checkpoint. Where a checkpoint holds both, the EMA UNet weights are
    used (those of the published diffusers release). ``unet=False``: all but the UNet."""
    source = _source("sd15_path", path)
    if path.is_dir():
        parts = dict(
            vae=from_folder(
                AutoencoderKL, path, subfolder="vae", what="SD 1.5 VAE", source=source, dtype=torch_dtype
            ),
            text_encoder=from_folder(
                CLIPTextModel, path, subfolder="text_encoder", what="CLIP text encoder", source=source,
                dtype=torch_dtype,
            ),
            tokenizer=CLIPTokenizer.from_pretrained(str(path), subfolder="tokenizer", local_files_only=True),
        )
        if unet:
            parts["unet_2d"] = from_folder(
                UNet2DConditionModel, path, subfolder="unet", what="SD 1.5 UNet", source=source,
                dtype=torch_dtype,
            )
        return parts
    checkpoint = read_checkpoint(path)
    with init_empty_weights():
        unet_2d, vae, text_encoder = sd15_unet_2d(), sd15_vae(), sd15_text_encoder()
    parts = {}
    if unet:
        unet_sd = convert_ldm_unet_checkpoint(checkpoint, dict(unet_2d.config), extract_ema=True)
        parts["unet_2d"] = load_converted(unet_2d, unet_sd, what="SD 1.5 UNet", source=source, dtype=torch_dtype)
    vae_sd = convert_ldm_vae_checkpoint(checkpoint, dict(vae.config))
    text_sd = convert_ldm_clip_checkpoint(checkpoint)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        text_sd = {k.removeprefix("text_model."): v for k, v in text_sd.items()}
    return dict(
        parts,
        vae=load_converted(vae, vae_sd, what="SD 1.5 VAE", source=source, dtype=torch_dtype),
        text_encoder=load_converted(
            text_encoder, text_sd, what="CLIP text encoder", source=source, dtype=torch_dtype
        ),
        tokenizer=clip_tokenizer(SD15_TEXT_CONFIG["max_position_embeddings"]),
    )


def _load_animatediff(cls, build, path: Path, *, name: str, what: str, dtype: torch.dtype):
    """A diffusers folder through ``from_pretrained``; an original AnimateDiff/SparseCtrl
    checkpoint through diffusers' AnimateDiff key converter into ``build()``'s architecture."""
    source = _source(name, path)
    if path.is_dir():
        return from_folder(cls, path, what=what, source=source, dtype=dtype)
    with init_empty_weights():
        model = build()
    state_dict = convert_animatediff_checkpoint_to_diffusers(read_checkpoint(path))
    return load_converted(model, state_dict, what=what, source=source, dtype=dtype)


def load_motion_adapter(path: Path, torch_dtype: torch.dtype = torch.float32) -> MotionAdapter:
    """The AnimateDiff v3 motion module: a diffusers folder or ``v3_sd15_mm.ckpt``."""
    return _load_animatediff(
        MotionAdapter, animatediff_v3_adapter, path,
        name="motion_adapter_path", what="AnimateDiff motion adapter", dtype=torch_dtype,
    )


def load_sparsectrl_rgb(path: Path, torch_dtype: torch.dtype = torch.float32) -> SparseControlNetModel:
    """The SparseCtrl RGB image ControlNet: a diffusers folder or ``v3_sd15_sparsectrl_rgb.ckpt``."""
    return _load_animatediff(
        SparseControlNetModel, sparsectrl_rgb, path,
        name="sparsectrl_rgb_path", what="SparseCtrl RGB ControlNet", dtype=torch_dtype,
    )


def load_sd15_components(cfg: ModelConfig, torch_dtype: torch.dtype = torch.float32, base_dir=None) -> dict:
    """The sd15 preset's components from the configured local weights.

    Returns ``vae``, ``text_encoder``, ``tokenizer``, ``unet`` (SD 1.5 + AnimateDiff v3 as a
    ``UNetMotionModel``), ``image_controlnet`` (SparseCtrl RGB), ``scheduler`` (AnimateDiff's
    training schedule from ``cfg``) and ``motion_controlnet`` (fresh, encoder copied from
    ``unet``; float32 whatever ``torch_dtype``, since it is the module being trained). Under
    fp16 the VAE is float32: SD's VAE overflows in fp16.
    All paths are checked first: one :class:`MissingWeightsError` names every setting to fix.

    ``base_dir``: a folder holding ``unet.safetensors`` and ``image_controlnet.safetensors`` in
    our names (``ic convert-official`` writes one): the video UNet and image ControlNet come from
    there, and only ``sd15_path`` (VAE, text encoder, tokenizer) is needed.
    """
    if base_dir is not None:
        paths = resolve_weight_paths(cfg, ("sd15_path",))
        sd15 = load_sd15(paths["sd15_path"], torch_dtype, unet=False)
        unet, image_controlnet = load_video_base(Path(base_dir), torch_dtype)
    else:
        paths = resolve_weight_paths(cfg)
        sd15 = load_sd15(paths["sd15_path"], torch_dtype)
        adapter = load_motion_adapter(paths["motion_adapter_path"], torch_dtype)
        unet = UNetMotionModel.from_unet2d(sd15.pop("unet_2d"), adapter).to(torch_dtype).eval()
        del adapter  # its weights now live in ``unet``: free them before the ControlNet is read
        image_controlnet = load_sparsectrl_rgb(paths["sparsectrl_rgb_path"], torch_dtype)
    if torch_dtype == torch.float16:
        sd15["vae"].float()  # SD's VAE overflows in fp16
    return dict(
        vae=sd15["vae"],
        text_encoder=sd15["text_encoder"],
        tokenizer=sd15["tokenizer"],
        unet=unet,
        image_controlnet=image_controlnet,
        scheduler=make_scheduler(cfg),
        motion_controlnet=build_motion_controlnet(unet, vae_scale_factor(sd15["vae"])),
    )


def load_video_base(base_dir: Path, torch_dtype: torch.dtype = torch.float32):
    """The video UNet (``UNetMotionModel``) and image ControlNet from ``base_dir``'s
    ``unet.safetensors`` and ``image_controlnet.safetensors``, built empty from the preset's
    configs and filled strictly."""
    from ic_model.models.files import load_safetensors

    with init_empty_weights():
        unet = UNetMotionModel.from_unet2d(sd15_unet_2d(), animatediff_v3_adapter(), load_weights=False)
        image_controlnet = sparsectrl_rgb()
    loaded = []
    for model, name, what in ((unet, "unet", "video UNet"), (image_controlnet, "image_controlnet", "image ControlNet")):
        path = base_dir / f"{name}.safetensors"
        if not path.is_file():
            raise MissingWeightsError(f"{base_dir} lacks {path.name}: the run's base stage is incomplete")
        loaded.append(load_converted(model, load_safetensors(path), what=what, source=str(path), dtype=torch_dtype))
    return loaded


__all__ = [
    "MINI_CONFIGS",
    "mini_architecture",
    "mini_config",
    "COMPUTED_BUFFERS",
    "from_folder",
    "ANIMATEDIFF_V3_CONFIG",
    "SD15_TEXT_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "SPARSECTRL_RGB_CONFIG",
    "animatediff_v3_adapter",
    "build_sd15_on_meta",
    "load_converted",
    "load_motion_adapter",
    "load_sd15",
    "load_sd15_components",
    "load_video_base",
    "load_sparsectrl_rgb",
    "parameter_counts",
    "read_checkpoint",
    "resolve_weight_paths",
    "sd15_text_encoder",
    "sd15_unet_2d",
    "sd15_vae",
    "sparsectrl_rgb",
    "vae_scale_factor",
]
