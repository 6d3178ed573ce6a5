"""Personalised generation: swapping the SD 1.5 base under the trained motion ControlNet.

The tiny preset's video UNet stands in for SD 1.5 + AnimateDiff: a "community model" is a
UNet2DConditionModel with the same spatial config and other weights, saved as a single file with
the original LDM key names (as community checkpoints ship) or as a diffusers folder.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from ic_data.errors import MissingWeightsError
from ic_model.models.tiny import build_tiny_components
from ic_model.config import tiny_config
from ic_model.pipelines.personalize import (
    IncompatibleWeightsError,
    apply_personalization,
    base_lora_scales,
    extract_unet2d,
    load_base_lora,
    load_personalized_base,
    parse_lora_spec,
    remove_base_loras,
    set_base_lora_scale,
    spatial_state_dict,
    unet2d_config,
)
from ic_model.pipelines.image_conductor import ImageConductorPipeline

# diffusers → original LDM key names: the same mapping test_sd15.py checks its loaders with.
from test_sd15 import unet_ldm_key, vae_ldm_key  # noqa: E402


def ldm_checkpoint(unet2d, vae=None, text_encoder=None) -> dict[str, torch.Tensor]:
    """A community-style single file: ``model.diffusion_model.*`` (+ VAE and CLIP if given)."""
    layers = unet2d.config.layers_per_block
    state = {f"model.diffusion_model.{unet_ldm_key(k, layers)}": v.contiguous()
             for k, v in unet2d.state_dict().items()}
    if vae is not None:
        for k, v in vae.state_dict().items():
            if ".attentions." in k and k.endswith("weight") and v.ndim == 2:
                v = v[:, :, None, None]  # LDM's VAE attention projections are 1×1 convs
            state[f"first_stage_model.{vae_ldm_key(k, len(vae.config.block_out_channels))}"] = v.contiguous()
    if text_encoder is not None:
        for k, v in text_encoder.state_dict().items():
            state[f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}"] = v.contiguous()
    return state


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``module`` with every floating tensor moved by noise, so no tensor equals the original."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return module


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is several times faster than two on a busy
    2-core machine (where two threads mostly wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def comps():
    return build_tiny_components(tiny_config(num_frames=8))


@pytest.fixture(scope="module")
def pipe(comps):
    return ImageConductorPipeline(comps)


@pytest.fixture(scope="module")
def inputs(comps):
    cfg = comps.cfg
    image = np.random.default_rng(0).integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8)
    t = np.linspace(0, 1, cfg.num_frames, dtype=np.float32)[:, None]
    tracks = np.stack([20 + 40 * t, 30 + 10 * t], axis=-1).astype(np.float32)  # (T, 1, 2)
    return image, tracks


def generate(pipe, inputs) -> np.ndarray:
    image, tracks = inputs
    return pipe(image, "a red car", tracks, mode="none", num_inference_steps=2, guidance_scale=7.5, seed=3)


def denoise(pipe) -> torch.Tensor:
    """One denoiser evaluation on fixed inputs: cheaper than a pipeline run."""
    cfg = pipe.cfg
    gen = torch.Generator().manual_seed(0)
    h, w = cfg.latent_size
    noisy = torch.randn(1, cfg.latent_channels, cfg.num_frames, h, w, generator=gen)
    text = torch.randn(1, 77, cfg.cross_attention_dim, generator=gen)
    first = torch.randn(1, cfg.latent_channels, h, w, generator=gen)
    flow = torch.randn(1, 2, cfg.num_frames, cfg.height, cfg.width, generator=gen)
    with torch.no_grad():
        return pipe.denoiser(noisy, torch.tensor([500]), text, first, flow=flow)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def original(comps, tmp_path_factory):
    """The tiny base as a diffusers pipeline folder (to restore it), and its tensors."""
    folder = tmp_path_factory.mktemp("original")
    extract_unet2d(comps.unet).save_pretrained(folder / "unet")
    comps.vae.save_pretrained(folder / "vae")
    comps.text_encoder.save_pretrained(folder / "text_encoder")
    return folder, snapshot(comps.unet), snapshot(comps.vae), snapshot(comps.text_encoder)


@pytest.fixture(scope="module")
def personal(comps):
    """A "community fine-tune" of the tiny base: UNet, VAE and text encoder all changed."""
    torch.manual_seed(123)
    unet2d = perturbed(UNet2DConditionModel(**unet2d_config(comps.unet)), 1)
    vae = perturbed(type(comps.vae).from_config(comps.vae.config), 2)
    text_encoder = perturbed(type(comps.text_encoder)(comps.text_encoder.config), 3)
    return unet2d.eval(), vae.eval(), text_encoder.eval()


# --------------------------------------------------------------------------- base model


def test_unet2d_config_matches_the_spatial_part(comps):
    config = unet2d_config(comps.unet)
    assert config["down_block_types"] == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert config["up_block_types"] == ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    assert config["attention_head_dim"] == comps.cfg.attention_head_dim
    spatial = spatial_state_dict(comps.unet)
    reference = UNet2DConditionModel(**config).state_dict()
    assert {k: tuple(v.shape) for k, v in spatial.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert not any("motion_modules" in k for k in spatial)


def test_sd15_video_unet_maps_back_to_sd15(comps):
    """At the real size (on the meta device: no memory): the derived config is SD 1.5's, and an
    original SD 1.5 checkpoint's UNet keys convert to exactly the video UNet's spatial tensors."""
    from diffusers import UNetMotionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from ic_model.models import sd15

    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(sd15.sd15_unet_2d(), sd15.animatediff_v3_adapter())
        config = unet2d_config(unet)
        image_unet = UNet2DConditionModel(**config)
    for key, value in sd15.SD15_UNET_CONFIG.items():
        got = image_unet.config[key]
        assert (tuple(got) if isinstance(got, list) else got) == value, key
    spatial = {k: tuple(v.shape) for k, v in spatial_state_dict(unet).items()}
    ldm = {f"model.diffusion_model.{unet_ldm_key(k, 2)}": v for k, v in image_unet.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(ldm, config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == spatial


def test_single_file_and_folders_swap_the_base(comps, pipe, inputs, original, personal, tmp_path):
    folder, unet0, vae0, text0 = original
    unet2d, vae, text_encoder = personal
    single = tmp_path / "dreamshaper_tiny.safetensors"
    save_file(ldm_checkpoint(unet2d, vae, text_encoder), str(single))
    torch.save({"state_dict": ldm_checkpoint(unet2d), "global_step": 1}, tmp_path / "unet_only.ckpt")
    unet2d.save_pretrained(tmp_path / "unet_folder")

    before = generate(pipe, inputs)
    parts = load_personalized_base(comps.unet, single, vae=comps.vae, text_encoder=comps.text_encoder)
    assert parts == ["unet", "vae", "text_encoder"]
    loaded = comps.unet.state_dict()
    for key, tensor in unet2d.state_dict().items():
        assert torch.equal(loaded[key], tensor), key
    motion = [k for k in unet0 if "motion_modules" in k]
    assert motion and all(torch.equal(loaded[k], unet0[k]) for k in motion)
    for module, reference in [(comps.vae, vae), (comps.text_encoder, text_encoder)]:
        got = module.state_dict()
        assert all(torch.equal(got[k], v) for k, v in reference.state_dict().items())
    after = generate(pipe, inputs)
    assert not np.array_equal(before, after)

    # The original weights back (a diffusers pipeline folder): exactly the original output.
    assert load_personalized_base(
        comps.unet, folder, vae=comps.vae, text_encoder=comps.text_encoder
    ) == ["unet", "vae", "text_encoder"]
    assert all(torch.equal(v, unet0[k]) for k, v in comps.unet.state_dict().items())
    np.testing.assert_array_equal(generate(pipe, inputs), before)

    # A UNet-only .ckpt (Lightning wrapper) and a bare UNet folder: only the UNet changes.
    for source in (tmp_path / "unet_only.ckpt", tmp_path / "unet_folder"):
        assert load_personalized_base(comps.unet, source, vae=comps.vae) == ["unet"]
        loaded = comps.unet.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in unet2d.state_dict().items())
        assert all(torch.equal(v, vae0[k]) for k, v in comps.vae.state_dict().items())
    load_personalized_base(comps.unet, folder)
    assert all(torch.equal(v, unet0[k]) for k, v in comps.unet.state_dict().items())


def test_incompatible_base_is_one_clear_error(comps, original, personal, tmp_path):
    _, unet0, _, _ = original
    wide = UNet2DConditionModel(**{**unet2d_config(comps.unet), "block_out_channels": (32, 64, 96)})
    state = ldm_checkpoint(wide)
    # diffusers' detector recognises SDXL by its second text encoder.
    state["conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"] = torch.zeros(4)
    save_file(state, str(tmp_path / "sdxl_like.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match=r"sdxl_like\.safetensors: not an SD 1\.5-compatible UNet"
                       r".*SDXL.*wrong shape"):
        load_personalized_base(comps.unet, tmp_path / "sdxl_like.safetensors")
    deeper = UNet2DConditionModel(**{**unet2d_config(comps.unet), "layers_per_block": 2})
    save_file(ldm_checkpoint(deeper), str(tmp_path / "deeper.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match=r"deeper\.safetensors: not an SD 1\.5-compatible"):
        load_personalized_base(comps.unet, tmp_path / "deeper.safetensors")
    # A fitting UNet with a broken VAE: all or nothing, the UNet is not swapped either.
    state = ldm_checkpoint(personal[0], vae=personal[1])
    del state[next(k for k in state if k.startswith("first_stage_model.encoder.conv_in"))]
    save_file(state, str(tmp_path / "broken_vae.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match=r"broken_vae\.safetensors: not an SD 1\.5-compatible VAE"
                       r".*missing"):
        load_personalized_base(comps.unet, tmp_path / "broken_vae.safetensors", vae=comps.vae)
    assert all(torch.equal(v, unet0[k]) for k, v in comps.unet.state_dict().items())  # untouched

    with pytest.raises(MissingWeightsError, match="nowhere.safetensors' does not exist"):
        load_personalized_base(comps.unet, tmp_path / "nowhere.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "style.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match="LoRA \\(use --base-lora\\)"):
        load_personalized_base(comps.unet, tmp_path / "style.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IncompatibleWeightsError, match="without unet/"):
        load_personalized_base(comps.unet, tmp_path / "empty")


# --------------------------------------------------------------------------- LoRA


ATTN = "down_blocks.{}.attentions.0.transformer_blocks.0.{}"


def kohya_lora(unet, modules: list[str], seed: int, rank: int = 2, alpha: float | list[float] = 1.0) -> dict:
    """kohya-ss format, as community SD 1.5 LoRAs ship: lora_unet_<module with _>.lora_down/up/alpha."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    alphas = alpha if isinstance(alpha, list) else [alpha] * len(modules)
    for name, alpha in zip(modules, alphas):
        weight = unet.get_submodule(name).weight
        key = "lora_unet_" + name.replace(".", "_")
        extra = (1, 1) if weight.ndim == 4 else ()
        state[f"{key}.lora_down.weight"] = torch.randn(rank, weight.shape[1], *extra, generator=gen)
        state[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *extra, generator=gen)
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def diffusers_lora(unet, modules: list[str], seed: int, rank: int = 2) -> dict:
    """diffusers/peft format (``pytorch_lora_weights.safetensors``): unet.<module>.lora_A/lora_B."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in modules:
        weight = unet.get_submodule(name).weight
        extra = (1, 1) if weight.ndim == 4 else ()
        state[f"unet.{name}.lora_A.weight"] = torch.randn(rank, weight.shape[1], *extra, generator=gen)
        state[f"unet.{name}.lora_B.weight"] = torch.randn(weight.shape[0], rank, *extra, generator=gen)
    return state


def test_base_loras_load_scale_and_stack(comps, pipe, tmp_path):
    unet = comps.unet
    base = denoise(pipe)
    kohya_modules = [ATTN.format(0, "attn1.to_q"), ATTN.format(1, "attn2.to_v"),
                     "down_blocks.0.attentions.0.proj_in"]  # proj_in: a 1×1 conv in SD 1.5
    style = kohya_lora(unet, kohya_modules, seed=1, alpha=[1.0, 1.0, 4.0])  # mixed alphas, rank 2
    save_file(style, str(tmp_path / "style.safetensors"))
    # A text-encoder part as kohya writes it (CLIP's module names with "_").
    # transformers < 5.6 nests CLIP's layers under text_model; kohya's names always include it.
    clip = getattr(comps.text_encoder, "text_model", comps.text_encoder)
    te = kohya_lora(clip, ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.self_attn.out_proj"], seed=4)
    te = {k.replace("lora_unet_", "lora_te_text_model_"): v for k, v in te.items()}
    save_file({**kohya_lora(unet, kohya_modules, seed=1), **te}, str(tmp_path / "with_te.safetensors"))
    save_file(diffusers_lora(unet, [ATTN.format(0, "ff.net.2"), "up_blocks.1.attentions.0.proj_out"], seed=2),
              str(tmp_path / "pytorch_lora_weights.safetensors"))
    try:
        name = load_base_lora(unet, tmp_path / "style.safetensors", scale=1.0)
        assert name == "style"
        assert {n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "style" in m.lora_A} == set(
            kohya_modules
        )
        assert not any(p.requires_grad for n, p in unet.named_parameters() if "lora_" in n)
        # ΔW = alpha / rank · up · down per layer (attention layers included, whatever the alphas).
        set_base_lora_scale(unet, "style", 0.5)
        for module_name, alpha in [(kohya_modules[0], 1.0), (kohya_modules[2], 4.0)]:
            layer, key = unet.get_submodule(module_name), "lora_unet_" + module_name.replace(".", "_")
            down, up = style[f"{key}.lora_down.weight"].flatten(1), style[f"{key}.lora_up.weight"].flatten(1)
            x = torch.randn(3, down.shape[1])
            with torch.no_grad():
                x_in = x[:, :, None, None] if isinstance(layer.base_layer, torch.nn.Conv2d) else x
                got = layer(x_in).reshape(3, -1) - layer.base_layer(x_in).reshape(3, -1)
            torch.testing.assert_close(got, 0.5 * alpha / 2 * x @ down.T @ up.T, rtol=1e-4, atol=1e-5)
        set_base_lora_scale(unet, "style", 1.0)
        styled = denoise(pipe)
        assert not torch.allclose(styled, base, atol=1e-4)
        set_base_lora_scale(unet, "style", 0.0)
        torch.testing.assert_close(denoise(pipe), base, rtol=0, atol=1e-6)
        set_base_lora_scale(unet, "style", 1.0)
        torch.testing.assert_close(denoise(pipe), styled, rtol=0, atol=0)

        second = load_base_lora(unet, tmp_path / "pytorch_lora_weights.safetensors", 0.5, name="detail")
        assert base_lora_scales(unet) == {"style": 1.0, "detail": 0.5}
        both = denoise(pipe)
        assert not torch.allclose(both, styled, atol=1e-4)
        set_base_lora_scale(unet, "detail", 0.0)
        torch.testing.assert_close(denoise(pipe), styled, rtol=0, atol=1e-6)
        assert second == "detail"

        # The text-encoder part is ignored (with a warning) without a text encoder …
        with pytest.warns(UserWarning, match="text-encoder LoRA tensors are ignored"):
            load_base_lora(unet, tmp_path / "with_te.safetensors", 0.0)
        # … and loaded into it when one is given.
        load_base_lora(unet, tmp_path / "with_te.safetensors", 1.0, name="te", text_encoder=comps.text_encoder)
        assert base_lora_scales(comps.text_encoder) == {"te": 1.0}
        q_proj = clip.get_submodule("encoder.layers.0.self_attn.q_proj")
        assert "te" in q_proj.lora_A and q_proj.scaling["te"] == 1.0  # alpha / rank folded into lora_B
        ids = torch.tensor([[49406, 320, 1125, 49407]])
        with torch.no_grad():
            styled_text = comps.text_encoder(ids).last_hidden_state
            set_base_lora_scale(unet, "te", 0.0, text_encoder=comps.text_encoder)
            plain_text = comps.text_encoder(ids).last_hidden_state
        assert not torch.allclose(styled_text, plain_text, atol=1e-4)
    finally:
        remove_base_loras(unet, comps.text_encoder)
    assert base_lora_scales(unet) == {}
    torch.testing.assert_close(denoise(pipe), base, rtol=0, atol=0)


def test_apply_personalization_and_lora_errors(comps, pipe, original, personal, tmp_path):
    folder, unet0, _, _ = original
    unet2d, _, _ = personal
    save_file(ldm_checkpoint(unet2d), str(tmp_path / "base.safetensors"))
    save_file(kohya_lora(comps.unet, [ATTN.format(0, "attn1.to_k")], seed=5), str(tmp_path / "a.safetensors"))
    before = denoise(pipe)
    try:
        report = apply_personalization(pipe, str(tmp_path / "base.safetensors"), [f"{tmp_path / 'a.safetensors'}:0.7"])
        assert report == {"base_model": ["unet"], "base_loras": {"a": 0.7}}
        assert base_lora_scales(comps.unet) == {"a": 0.7}
        assert not torch.allclose(denoise(pipe), before, atol=1e-4)

        wrong = kohya_lora(comps.unet, [ATTN.format(1, "attn1.to_q")], seed=6)
        wrong = {k: torch.cat([v, v], dim=-1) if "lora_down" in k else v for k, v in wrong.items()}
        save_file(wrong, str(tmp_path / "sdxl_lora.safetensors"))
        with pytest.raises(IncompatibleWeightsError, match=r"sdxl_lora\.safetensors: not an SD 1\.5-compatible LoRA"):
            load_base_lora(comps.unet, tmp_path / "sdxl_lora.safetensors")
        # One layer fits, one is not in this UNet (peft alone would skip it silently).
        partial = diffusers_lora(comps.unet, [ATTN.format(0, "attn2.to_k")], seed=7)
        partial.update({"unet.down_blocks.7.attentions.0.proj_in.lora_A.weight": torch.ones(2, 4, 1, 1),
                        "unet.down_blocks.7.attentions.0.proj_in.lora_B.weight": torch.ones(4, 2, 1, 1)})
        save_file(partial, str(tmp_path / "partial.safetensors"))
        with pytest.raises(IncompatibleWeightsError, match=r"partial\.safetensors: .*1 of its 2 target layers"):
            load_base_lora(comps.unet, tmp_path / "partial.safetensors")
        save_file({"unet.conv_in.bias": torch.zeros(4)}, str(tmp_path / "no_lora.safetensors"))
        with pytest.raises(IncompatibleWeightsError, match="no LoRA tensors"):
            load_base_lora(comps.unet, tmp_path / "no_lora.safetensors")
        with pytest.raises(MissingWeightsError, match="does not exist"):
            load_base_lora(comps.unet, tmp_path / "missing.safetensors")
        assert base_lora_scales(comps.unet) == {"a": 0.7}  # failures leave the loaded ones alone
        assert set(comps.unet.peft_config) == {"a"}
        assert not torch.allclose(denoise(pipe), before, atol=1e-4)
    finally:
        remove_base_loras(comps.unet)
        load_personalized_base(comps.unet, folder)
    torch.testing.assert_close(denoise(pipe), before, rtol=0, atol=0)


def test_parse_lora_spec():
    assert parse_lora_spec("style.safetensors") == (parse_lora_spec("style.safetensors:1")[0], 1.0)
    assert parse_lora_spec("style.safetensors:0.8")[1] == 0.8
    assert parse_lora_spec("dir/a:b.safetensors") == (parse_lora_spec("dir/a:b.safetensors:1.0")[0], 1.0)
    assert str(parse_lora_spec("C:\\loras\\x.safetensors:-0.5")[0]) == "C:\\loras\\x.safetensors"
    assert parse_lora_spec("C:\\loras\\x.safetensors:-0.5")[1] == -0.5
    assert str(parse_lora_spec("dir/a:b.safetensors")[0]) == "dir/a:b.safetensors"


def test_lora_saved_by_diffusers_keeps_its_alpha(comps, pipe, tmp_path):
    """A LoRA trained on the SD 1.5 UNet with diffusers/peft (lora_alpha ≠ r, saved with its
    LoraConfig in the safetensors header), loaded from its folder: the video UNet's layers compute
    exactly what the image UNet's do."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    image_unet = extract_unet2d(comps.unet)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "proj_in"])
    image_unet.add_adapter(config)
    with torch.no_grad():
        for name, param in image_unet.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path / "trained", unet_lora_layers=get_peft_model_state_dict(image_unet),
        unet_lora_adapter_metadata=config.to_dict(),
    )
    base = denoise(pipe)
    try:
        assert load_base_lora(comps.unet, tmp_path / "trained") == "trained"
        # Only the layers the file holds (its config's suffix targets would also hit the motion modules).
        wrapped = {n for n, m in comps.unet.named_modules() if hasattr(m, "lora_A") and "trained" in m.lora_A}
        assert wrapped == {n for n, _ in image_unet.named_modules() if n.endswith(("to_q", "to_k", "proj_in"))}
        assert not torch.allclose(denoise(pipe), base, atol=1e-4)
        for module in [ATTN.format(0, "attn1.to_q"), "down_blocks.1.attentions.0.proj_in"]:
            ours, theirs = comps.unet.get_submodule(module), image_unet.get_submodule(module)
            x = torch.randn(2, ours.base_layer.in_features if hasattr(ours.base_layer, "in_features")
                            else ours.base_layer.in_channels, *(() if hasattr(ours.base_layer, "in_features")
                                                                else (2, 2)))
            with torch.no_grad():
                torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
                assert not torch.allclose(ours(x), ours.base_layer(x), atol=1e-3)
    finally:
        remove_base_loras(comps.unet)


class _Runs:
    """Unpickling this would run ``open(path, "w")``: a stand-in for a hostile checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_with_python_objects_is_refused_as_bad_input_without_running_them(tmp_path):
    """The refusal is bad input (the flow ends Failed with its one line, no traceback), it says
    why, and the object's code never ran."""
    from ic_data.errors import BadInputError
    from ic_model.pipelines.personalize import _read_file, parse_lora_spec

    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "x": _Runs(marker)}, tmp_path / "hostile.ckpt")
    with pytest.raises(BadInputError) as err:
        _read_file(tmp_path / "hostile.ckpt")
    assert isinstance(err.value, IncompatibleWeightsError) and "\n" not in str(err.value)
    assert re.search(r"it holds Python objects other than tensors \(.*GLOBAL (builtins\.|io\.)?open\b.*\): refused, never run$",
                     str(err.value)), str(err.value)
    assert "weights_only" not in str(err.value) and "safe_globals" not in str(err.value)  # torch's advice, not ours
    assert not marker.exists()
    # Files that are no checkpoint are said to be so (a text file had been called one holding objects).
    (tmp_path / "notes.ckpt").write_text("hello")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00")
    for name, words in (("notes.ckpt", "not a PyTorch checkpoint"), ("cut.safetensors", "not a whole safetensors file")):
        with pytest.raises(IncompatibleWeightsError, match=rf"{name}: cannot read the checkpoint: {words} \("):
            _read_file(tmp_path / name)
    assert parse_lora_spec("a:b.safetensors:0.5") == (Path("a:b.safetensors"), 0.5)
    with pytest.raises(BadInputError, match="finite number"):
        parse_lora_spec("style.safetensors:nan")
