"""The sd15 preset: real-size architecture on the meta device, and offline loaders.

No real weights exist here, so the loaders are checked on tiny random models written in both
formats the real ones are published in: diffusers folders (``save_pretrained``) and original
single-file checkpoints (SD 1.5 LDM keys, AnimateDiff/SparseCtrl keys), produced by the
``*_ldm_*``/``animatediff_original`` helpers below. The tiny sizes are swapped in by replacing the
embedded configs of ``ic_model.models.sd15``; every other line of the loading code runs as for SD 1.5.
"""
from __future__ import annotations

import re

import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from ic_data.errors import MissingWeightsError
from ic_model.models import sd15
from ic_model.config import WEIGHT_ENV, sd15_config
from ic_model.models.motion_controlnet import build_image_controlnet, flow_to_controlnet_cond
from ic_model.models.tokenizer import clip_tokenizer

# Parameter counts of the meta build, as measured (diffusers 0.42, transformers 5.24).
MEASURED = {
    "sd15_unet": 859_520_964,
    "motion_adapter": 417_137_600,
    "unet": 1_276_658_564,
    "image_controlnet": 496_730_880,
    "motion_controlnet": 497_085_120,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
}
# Published sizes: SD 1.5 UNet 859.52 M, SD VAE 83.65 M, CLIP ViT-L/14 text tower 123.06 M.
WELL_KNOWN = {"sd15_unet": 859.52e6, "vae": 83.65e6, "text_encoder": 123.06e6}


@pytest.fixture(scope="module")
def meta():
    return sd15.build_sd15_on_meta(sd15_config())


def test_parameter_counts(meta):
    counts = sd15.parameter_counts(meta)
    print("\nsd15 parameter counts:")
    for name, n in counts.items():
        print(f"  {name:18s} {n:>14,d}  ({n / 1e6:.2f} M)")
    for name, expected in WELL_KNOWN.items():
        assert abs(counts[name] - expected) / expected < 1e-3, name
    assert counts["unet"] == counts["sd15_unet"] + counts["motion_adapter"]
    assert counts == MEASURED
    assert all(p.is_meta for m in meta.values() if isinstance(m, torch.nn.Module) for p in m.parameters())


def test_embedded_configs_agree_with_builders(meta):
    """The SparseCtrl RGB config equals what motion_controlnet.py mirrors from the video UNet, and
    the motion ControlNet takes 2 flow channels × 8² through its conditioning conv."""
    with torch.device("meta"):
        mirrored = build_image_controlnet(meta["unet"], 4)
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(mirrored) == shapes(meta["image_controlnet"])
    assert meta["image_controlnet"].controlnet_cond_embedding.in_channels == 4 + 1  # latent + mask
    assert meta["motion_controlnet"].controlnet_cond_embedding.in_channels == 128
    assert not meta["motion_controlnet"].config.concat_conditioning_mask
    assert not meta["unet"].config.use_motion_mid_block  # AnimateDiff v3
    assert meta["scheduler"].config.beta_schedule == "linear"
    assert meta["scheduler"].config.prediction_type == "epsilon"


def test_residual_wiring_on_meta(meta):
    """Both ControlNets' residuals, summed, match the video UNet's skip connections at 256×384."""
    unet, motion_cn, image_cn = meta["unet"], meta["motion_controlnet"], meta["image_controlnet"]
    b, t, h, w = 1, 16, 32, 48
    skips, mids = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: skips.append(o.shape))]
    for block in unet.down_blocks:  # a down block returns (hidden states, its skip tensors)
        hooks.append(block.register_forward_hook(lambda m, i, o: skips.extend(r.shape for r in o[1])))
    hooks.append(unet.mid_block.register_forward_hook(lambda m, i, o: mids.append(o.shape)))
    with torch.device("meta"), torch.no_grad():
        latents = torch.empty(b, 4, t, h, w)
        timestep = torch.tensor([500])
        text = torch.empty(b * t, 77, 768)  # prompt embeddings repeated per frame
        flow = flow_to_controlnet_cond(torch.empty(b, 2, t, 8 * h, 8 * w), 8)
        assert flow.shape == (b, 128, t, h, w)
        motion_down, motion_mid = motion_cn(latents, timestep, text, controlnet_cond=flow, return_dict=False)
        image_down, image_mid = image_cn(
            latents, timestep, text,
            controlnet_cond=torch.empty(b, 4, t, h, w), conditioning_mask=torch.empty(b, 1, t, h, w),
            return_dict=False,
        )
        down = [m + i for m, i in zip(motion_down, image_down, strict=True)]
        out = unet(
            latents, timestep, text,
            down_block_additional_residuals=down, mid_block_additional_residual=motion_mid + image_mid,
        ).sample
    for hook in hooks:
        hook.remove()
    assert len(down) == 12 and len(skips) == 12
    assert [r.shape for r in down] == skips
    assert [r.shape for r in image_down] == skips
    assert skips[0] == (b * t, 320, h, w) and skips[-1] == (b * t, 1280, h // 8, w // 8)
    assert (motion_mid + image_mid).shape == mids[0] == (b * t, 1280, h // 8, w // 8)
    assert out.shape == (b, 4, t, h, w)


# --------------------------------------------------------------------------- missing weights


@pytest.fixture
def no_weight_env(monkeypatch):
    for var in WEIGHT_ENV.values():
        monkeypatch.delenv(var, raising=False)


def test_missing_weights_names_every_setting(no_weight_env):
    with pytest.raises(MissingWeightsError) as err:
        sd15.load_sd15_components(sd15_config())
    for name, var in WEIGHT_ENV.items():
        assert f"{name} / {var} is not set" in str(err.value)


def test_missing_weights_names_the_bad_path(no_weight_env, monkeypatch, tmp_path):
    monkeypatch.setenv("IC_MOTION_ADAPTER_PATH", str(tmp_path / "nowhere" / "v3_sd15_mm.ckpt"))
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "unet").mkdir()
    (tmp_path / "notes.txt").write_text("not weights")
    cfg = sd15_config(sd15_path=str(tmp_path / "sd"), sparsectrl_rgb_path=str(tmp_path / "notes.txt"))
    with pytest.raises(MissingWeightsError) as err:
        sd15.load_sd15_components(cfg)
    message = str(err.value)
    assert f"{tmp_path / 'nowhere' / 'v3_sd15_mm.ckpt'}' does not exist" in message
    assert "without vae, text_encoder, tokenizer/" in message
    assert "notes.txt' is neither a folder nor" in message


# --------------------------------------------------------------------------- tiny round trips

# The mini networks of sd15.MINI_CONFIGS with two layers per block (and a 2-level VAE, a 2-layer
# text encoder), so that the checkpoint key conversions are exercised past each block's first layer.
_MINI = sd15.MINI_CONFIGS
TINY_UNET = {**_MINI["SD15_UNET_CONFIG"], "layers_per_block": 2}
TINY_VAE = {**_MINI["SD15_VAE_CONFIG"], "block_out_channels": (8, 16), "sample_size": 32,
            "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2}
TINY_TEXT = {**_MINI["SD15_TEXT_CONFIG"], "num_hidden_layers": 2}
TINY_ADAPTER = {**_MINI["ANIMATEDIFF_V3_CONFIG"], "motion_layers_per_block": 2}
TINY_SPARSECTRL = {**_MINI["SPARSECTRL_RGB_CONFIG"], "layers_per_block": 2}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return dict(
        unet=UNet2DConditionModel(**TINY_UNET),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_TEXT)),
        adapter=MotionAdapter(**TINY_ADAPTER),
        sparsectrl=SparseControlNetModel(**TINY_SPARSECTRL),
    )


@pytest.fixture
def tiny_configs(monkeypatch):
    """Make the loaders build tiny architectures where they would build the SD 1.5 ones."""
    for name, value in [
        ("SD15_UNET_CONFIG", TINY_UNET), ("SD15_VAE_CONFIG", TINY_VAE), ("SD15_TEXT_CONFIG", TINY_TEXT),
        ("ANIMATEDIFF_V3_CONFIG", TINY_ADAPTER), ("SPARSECTRL_RGB_CONFIG", TINY_SPARSECTRL),
    ]:
        monkeypatch.setattr(sd15, name, value)


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module, prefix: str = "") -> None:
    """Every tensor of ``original`` is in ``loaded`` (under ``prefix``) with the same values."""
    got = loaded.state_dict()
    for key, tensor in original.state_dict().items():
        assert torch.equal(got[prefix + key], tensor), key


def check_components(parts: dict, tiny: dict) -> None:
    assert set(parts) == {
        "vae", "text_encoder", "tokenizer", "unet", "image_controlnet", "scheduler", "motion_controlnet",
    }
    assert_same_weights(parts["vae"], tiny["vae"])
    assert_same_weights(parts["text_encoder"], tiny["text_encoder"])
    assert_same_weights(parts["image_controlnet"], tiny["sparsectrl"])
    assert_same_weights(parts["unet"], tiny["unet"])  # UNetMotionModel keeps the 2-D UNet's names
    assert_same_weights(parts["unet"], tiny["adapter"])  # ... and the motion modules' names
    assert parts["tokenizer"]("a cat").input_ids[:1] == [49406]
    assert parts["motion_controlnet"].controlnet_cond_embedding.in_channels == 2 * 2**2  # tiny VAE: f=2
    assert torch.equal(parts["motion_controlnet"].conv_in.weight, parts["unet"].conv_in.weight)


def test_load_diffusers_folders(tiny, tmp_path, no_weight_env):
    sd = tmp_path / "sd15"
    tiny["unet"].save_pretrained(sd / "unet")
    tiny["vae"].save_pretrained(sd / "vae")
    tiny["text_encoder"].save_pretrained(sd / "text_encoder")
    clip_tokenizer().save_pretrained(sd / "tokenizer")
    tiny["adapter"].save_pretrained(tmp_path / "adapter")
    tiny["sparsectrl"].save_pretrained(tmp_path / "sparsectrl")
    cfg = sd15_config(
        sd15_path=str(sd), motion_adapter_path=str(tmp_path / "adapter"),
        sparsectrl_rgb_path=str(tmp_path / "sparsectrl"),
    )
    check_components(sd15.load_sd15_components(cfg), tiny)


def unet_ldm_key(key: str, layers: int) -> str:
    """Diffusers UNet2DConditionModel key → original LDM (``openaimodel.UNetModel``) key, for
    SD's layout: the first up block is the one without attention."""
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head, _, leaf = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{leaf}"
    if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        side, i, kind, j, rest = m.groups()
        i, j = int(i), int(j)
        index = 1 + i * (layers + 1) + j if side == "down" else i * (layers + 1) + j
        if kind == "resnets":
            part, _, leaf = rest.rpartition(".")
            rest = f"{resnet[part]}.{leaf}"
        blocks = "input_blocks" if side == "down" else "output_blocks"
        return f"{blocks}.{index}.{0 if kind == 'resnets' else 1}.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * (layers + 1) + layers}.{1 if i == 0 else 2}.conv.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, j, rest = m.groups()
        if kind == "resnets":
            part, _, leaf = rest.rpartition(".")
            return f"middle_block.{2 * int(j)}.{resnet[part]}.{leaf}"
        return f"middle_block.1.{rest}"
    raise KeyError(key)


def vae_ldm_key(key: str, n_blocks: int) -> str:
    """Diffusers AutoencoderKL key → original LDM key (decoder blocks are numbered bottom-up)."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    key = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = re.sub(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)",
                 lambda m: f"mid.attn_1.{attn[m[1]]}", key)
    key = re.sub(r"down_blocks\.(\d+)\.resnets", r"down.\1.block", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets", lambda m: f"up.{n_blocks - 1 - int(m[1])}.block", key)
    return re.sub(r"up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"up.{n_blocks - 1 - int(m[1])}.upsample",
                  key)


def sd15_ldm_checkpoint(tiny: dict) -> dict:
    """A single-file SD checkpoint as CompVis wrote them, with the tiny models' tensors."""
    layers = TINY_UNET["layers_per_block"]
    state = {f"model.diffusion_model.{unet_ldm_key(k, layers)}": v for k, v in tiny["unet"].state_dict().items()}
    for k, v in tiny["vae"].state_dict().items():
        if ".attentions." in k and k.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM's VAE attention projections are 1×1 convs
        state[f"first_stage_model.{vae_ldm_key(k, len(TINY_VAE['block_out_channels']))}"] = v
    for k, v in tiny["text_encoder"].state_dict().items():
        state[f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}"] = v
    return {"state_dict": state, "global_step": 840000}


def animatediff_original(state_dict: dict) -> dict:
    """Diffusers motion-module keys → the original AnimateDiff ones, sinusoidal tables included."""
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"(.*\.motion_modules\.\d+\.)(.*)", key)
        if m is None:
            out[key] = value
            continue
        rest = m[2]
        for new, old in [(".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."),
                         (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")]:
            rest = rest.replace(new, old)
        rest = rest.replace(".pos_embed.pe", ".attention_blocks.0.pos_encoder.pe")
        out[f"{m[1]}temporal_transformer.{rest}"] = value
    return out


def test_load_original_checkpoints(tiny, tmp_path, no_weight_env, tiny_configs):
    torch.save(sd15_ldm_checkpoint(tiny), tmp_path / "v1-5-pruned-emaonly.ckpt")
    torch.save(animatediff_original(tiny["adapter"].state_dict()), tmp_path / "v3_sd15_mm.ckpt")
    sparsectrl = animatediff_original(tiny["sparsectrl"].state_dict())
    torch.save({"controlnet": {**sparsectrl, "animatediff_config": {"note": "x"}}}, tmp_path / "rgb.ckpt")
    cfg = sd15_config(
        sd15_path=str(tmp_path / "v1-5-pruned-emaonly.ckpt"),
        motion_adapter_path=str(tmp_path / "v3_sd15_mm.ckpt"),
        sparsectrl_rgb_path=str(tmp_path / "rgb.ckpt"),
    )
    check_components(sd15.load_sd15_components(cfg), tiny)
    half = sd15.load_motion_adapter(tmp_path / "v3_sd15_mm.ckpt", torch.float16)
    assert {p.dtype for p in half.state_dict().values()} == {torch.float16}


def test_wrong_checkpoint_is_an_error(tiny, tmp_path, tiny_configs):
    """The motion module given as the SD checkpoint: the UNet's tensors are missing, not random."""
    torch.save(animatediff_original(tiny["adapter"].state_dict()), tmp_path / "mm.ckpt")
    with pytest.raises(MissingWeightsError, match="lacks .* SD 1.5 UNet's tensors"):
        sd15.load_sd15(tmp_path / "mm.ckpt")
    # A v2-style adapter (with a mid-block motion module) is not the v3 one the config describes.
    v2 = MotionAdapter(**{**TINY_ADAPTER, "use_motion_mid_block": True})
    torch.save(animatediff_original(v2.state_dict()), tmp_path / "v2.ckpt")
    with pytest.raises(ValueError, match="tensors the AnimateDiff motion adapter does not"):
        sd15.load_motion_adapter(tmp_path / "v2.ckpt")


def test_folder_missing_tensors_is_an_error(tiny, tmp_path):
    """diffusers only warns and initialises a tensor missing from a folder at random; we refuse."""
    tiny["adapter"].save_pretrained(tmp_path / "adapter")
    weights = next((tmp_path / "adapter").glob("*.safetensors"))
    tensors = load_file(weights)
    del tensors["down_blocks.0.motion_modules.0.proj_in.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match="proj_in.weight"):
        sd15.load_motion_adapter(tmp_path / "adapter")
