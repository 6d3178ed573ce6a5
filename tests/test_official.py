"""The released Image Conductor weights: the key mapping against the official schema, strict and
safe reading, numerical identities of the converted LoRA layers, and the commands on converted
(random) weights. No released weights exist here: the mapping is tested, not the numbers.

``tests/fixtures/official_schema.json`` lists every key, shape and dtype of the three released
files, recorded from the official model definitions (``tools/official_schema.py`` says how).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ic_model.config import sd15_config
from ic_model.models import lora, sd15
from ic_model.models.components import PerFrameGroupNorm
from ic_model.models.official import (
    OFFICIAL_FILES,
    OfficialWeightsError,
    convert_official,
    convert_part,
    official_key,
    official_targets,
    read_official_checkpoint,
)

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "official_schema.json").read_text())["files"]
PART = {filename: part for part, filename in OFFICIAL_FILES.items()}


def _meta_state(filename: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            for k, (shape, dtype) in SCHEMA[filename].items()}


# --------------------------------------------------------------------------- the schema, full size


@pytest.fixture(scope="module")
def full_size_targets():
    return official_targets(sd15_config(), rank=64, alpha=64)  # on the meta device: no memory


def test_the_fixture_is_the_released_files():
    """Tensor and parameter counts of the official definitions (in fp16: the released sizes)."""
    counts = {f: (len(s), sum(int(np.prod(shape)) for shape, _ in s.values())) for f, s in SCHEMA.items()}
    assert counts == {"unet.ckpt": (1246, 1_277_784_964), "image_controlnet.ckpt": (486, 496_956_160),
                      "flow_controlnet.ckpt": (1286, 578_833_600)}
    assert {dtype for s in SCHEMA.values() for _, dtype in s.values()} == {"float16"}


@pytest.mark.parametrize("filename", list(OFFICIAL_FILES.values()))
def test_every_released_key_maps_exactly_once_onto_our_models(full_size_targets, filename):
    part = PART[filename]
    state = _meta_state(filename)
    ours, adapters, summary = convert_part(part, state, full_size_targets[part], source=filename)
    assert summary["tensors"] == len(state)
    # Strict both ways: every tensor of our model is supplied, except the computed position tables.
    target = {k.replace(".base_layer.", "."): v for k, v in full_size_targets[part].state_dict().items()
              if ".lora_" not in k}
    assert set(target) - set(ours) == {k for k in target if k.endswith("pos_embed.pe")}
    assert all(tuple(ours[k].shape) == tuple(target[k].shape) for k in ours)
    tables = [k for k in state if k.endswith("pos_encoder.pe")]
    assert summary["position_tables_dropped"] == len(tables) > 0
    if part == "motion_controlnet":
        assert sorted(adapters) == ["camera", "object"]
        # 200 wrapped layers × (A, B), on exactly the layers our LoRA targets select.
        assert {len(t) for t in adapters.values()} == {400}
        wrapped = {k.rsplit(".lora_", 1)[0] for k in adapters["camera"]}
        ours_wrapped = {name for name, _ in lora._lora_layers(full_size_targets[part])}
        assert wrapped == ours_wrapped
    else:
        assert adapters == {}


def test_motion_module_keys_are_renamed_by_explicit_rules():
    head = "up_blocks.1.motion_modules.2."
    mm = head + "temporal_transformer."
    assert official_key(mm + "transformer_blocks.0.attention_blocks.1.to_out.0.weight") == \
        head + "transformer_blocks.0.attn2.to_out.0.weight"
    assert official_key(mm + "transformer_blocks.0.norms.0.bias") == head + "transformer_blocks.0.norm1.bias"
    assert official_key(mm + "transformer_blocks.0.ff_norm.weight") == head + "transformer_blocks.0.norm3.weight"
    assert official_key(mm + "proj_in.lora_A.weight") == head + "proj_in.lora_A.weight"
    assert official_key(mm + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe") is None
    assert official_key("down_blocks.0.resnets.0.conv1.weight") == "down_blocks.0.resnets.0.conv1.weight"
    with pytest.raises(KeyError):
        official_key(mm + "transformer_blocks.0.something_new.weight")


# --------------------------------------------------------------------------- a mini release


def _official_name(key: str, attention_blocks: int) -> list[str]:
    """Our key → the official layout's key(s): the inverse of the converter's renaming, written
    independently from the AnimateDiff layout (the position table is one per attention block)."""
    m = re.match(r"^(.*motion_modules\.\d+\.)(.*)$", key)
    if m is None:
        return [key]
    head, rest = m[1] + "temporal_transformer.", m[2]
    if rest.endswith("pos_embed.pe"):
        block = rest.removesuffix("pos_embed.pe")
        return [f"{head}{block}attention_blocks.{k}.pos_encoder.pe" for k in range(attention_blocks)]
    rest = re.sub(r"\.attn(\d)\.", lambda g: f".attention_blocks.{int(g[1]) - 1}.", rest)
    rest = re.sub(r"\.norm([12])\.", lambda g: f".norms.{int(g[1]) - 1}.", rest)
    rest = rest.replace(".norm3.", ".ff_norm.")
    return [head + rest]


def _official_state(module, attention_blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in module.state_dict().items():
        key = key.replace(".lora_A.camera.", ".lora_A.cmcm_weights.").replace(".lora_B.camera.", ".lora_B.cmcm_weights.")
        key = key.replace(".lora_A.object.", ".lora_A.omcm_weights.").replace(".lora_B.object.", ".lora_B.omcm_weights.")
        for name in _official_name(key, attention_blocks):
            out[name] = value.detach().clone().half()
    return out


@pytest.fixture(scope="module")
def mini_release(tmp_path_factory):
    """Random mini models in SD 1.5's block layout, saved as the three released files are
    (official key names, fp16, the flow ControlNet with both peft adapters), plus an SD 1.5
    folder for the VAE, text encoder and tokenizer."""
    from ic_model.models.tokenizer import clip_tokenizer

    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    with sd15.mini_architecture():
        cfg = sd15.mini_config(lora_rank=64, lora_alpha=64)  # the release's rank and alpha
        parts = sd15.build_sd15_on_meta(cfg, device="cpu")
        mc = parts["motion_controlnet"]
        for name in ("object", "camera"):
            lora.add_lora_adapter(mc, name, 64, 64, cfg.lora_targets)
        with torch.no_grad():
            for p in list(mc.parameters()) + list(parts["unet"].parameters()) + list(parts["image_controlnet"].parameters()):
                p.normal_(0, 0.05)  # zero-initialised convs and LoRA B included: every tensor matters
        folder = root / "release"
        folder.mkdir()
        torch.save(_official_state(parts["unet"], 2), folder / "unet.ckpt")
        torch.save({"state_dict": _official_state(parts["image_controlnet"], 1)}, folder / "image_controlnet.ckpt")
        flow = _official_state(mc, 1)
        flow["animatediff_config"] = {"note": "a non-tensor entry, dropped as the official loader does"}
        torch.save({"controlnet": flow}, folder / "flow_controlnet.ckpt")
        parts["vae"].save_pretrained(root / "sd15" / "vae")
        parts["text_encoder"].save_pretrained(root / "sd15" / "text_encoder")
        sd15.sd15_unet_2d().save_pretrained(root / "sd15" / "unet")
    clip_tokenizer().save_pretrained(root / "sd15" / "tokenizer")
    return {"dir": folder, "sd15_path": str(root / "sd15"), "cfg": cfg, "parts": parts,
            "flow": {k: v for k, v in flow.items() if isinstance(v, torch.Tensor)}}


@pytest.fixture(scope="module")
def converted(mini_release, tmp_path_factory):
    run = tmp_path_factory.mktemp("converted") / "run"
    cfg = sd15.mini_config(lora_rank=64, lora_alpha=64, motion_norm="per_frame", sd15_path=mini_release["sd15_path"])
    with sd15.mini_architecture():
        summary = convert_official(mini_release["dir"], run, cfg=cfg)
    return run, summary


def test_conversion_writes_the_run_folder_with_the_release_tensors(converted, mini_release):
    from safetensors.torch import load_file

    run, summary = converted
    for stage in ("base", "sparse", "camera", "object"):
        done = json.loads((run / stage / "done.json").read_text())
        assert done["source"] == "official" and done["steps"] == 0
    assert json.loads((run / "config.json").read_text())["motion_norm"] == "per_frame"
    unet = load_file(str(run / "base" / "unet.safetensors"))
    original = mini_release["parts"]["unet"].state_dict()
    assert set(unet) == {k for k in original if not k.endswith("pos_embed.pe")}
    assert all(torch.equal(unet[k], original[k].half()) for k in unet)
    assert summary["files"]["flow_controlnet.ckpt"]["adapters"] == ["camera", "object"]


def test_converted_lora_layers_compute_the_official_formula(converted, mini_release):
    """W·x + b + B·(A·x)·α/r with the official file's tensors, for a linear, a 3×3 conv, a strided
    conv and a motion-module projection, equals our converted layer's output."""
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    run, _ = converted
    with sd15.mini_architecture():
        pipe = ImageConductorPipeline.from_run(run)
    mc = pipe.comps.motion_controlnet
    assert pipe.adapters == ["camera", "object"]
    flow = mini_release["flow"]
    layers = dict(lora._lora_layers(mc))
    cases = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.resnets.0.conv1": "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.downsamplers.0.conv": "down_blocks.0.downsamplers.0.conv",
        "down_blocks.1.motion_modules.0.proj_in": "down_blocks.1.motion_modules.0.temporal_transformer.proj_in",
    }
    torch.manual_seed(1)
    for ours, theirs in cases.items():
        layer = layers[ours]
        base = layer.base_layer
        conv = isinstance(base, torch.nn.Conv2d)
        x = torch.randn(2, base.in_channels, 8, 8) if conv else torch.randn(2, 5, base.in_features)
        for adapter, official in (("camera", "cmcm_weights"), ("object", "omcm_weights")):
            w, a, b = (flow[f"{theirs}.{part}"].float() for part in
                       ("base_layer.weight", f"lora_A.{official}.weight", f"lora_B.{official}.weight"))
            bias = flow.get(f"{theirs}.base_layer.bias")
            bias = None if bias is None else bias.float()
            if conv:
                kw = dict(stride=base.stride, padding=base.padding)
                expected = F.conv2d(x, w, bias, **kw) + F.conv2d(F.conv2d(x, a, None, **kw), b) * (64 / 64)
            else:
                expected = F.linear(x, w, bias) + F.linear(F.linear(x, a), b) * (64 / 64)
            lora.set_active_adapters(mc, [adapter])
            with torch.no_grad():
                got = layer(x)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_converted_models_run_their_motion_norm_per_frame(converted):
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    run, _ = converted
    with sd15.mini_architecture():
        pipe = ImageConductorPipeline.from_run(run)
    norms = [m.norm for model in (pipe.comps.unet, pipe.comps.image_controlnet, pipe.comps.motion_controlnet)
             for m in model.modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
    assert norms and all(isinstance(n, PerFrameGroupNorm) for n in norms)
    # Per frame: a frame's output does not depend on the other frames' statistics.
    x = torch.randn(1, 32, 4, 3, 3)
    y = norms[0](x)
    x2 = x.clone()
    x2[:, :, 1:] *= 10
    torch.testing.assert_close(norms[0](x2)[:, :, 0], y[:, :, 0])


def test_generation_runs_in_each_mode_on_converted_weights(converted):
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    run, _ = converted
    with sd15.mini_architecture():
        pipe = ImageConductorPipeline.from_run(run)
        pipe.set_progress_bar_config(disable=True)
        cfg = pipe.cfg
        image = np.random.default_rng(0).integers(0, 255, (cfg.height, cfg.width, 3), dtype=np.uint8)
        tracks = np.stack([np.linspace([10, 10], [40, 30], cfg.num_frames)], axis=1).astype(np.float32)
        videos = {
            (mode, scale): pipe(image, "", tracks, mode=mode, num_inference_steps=2, trajs_scale=scale, seed=0)
            for mode, scale in (("camera", 1.0), ("object", 1.0), ("object", 1.3))
        }
    for video in videos.values():
        assert video.shape == (cfg.num_frames, cfg.height, cfg.width, 3) and video.dtype == np.uint8
    # The adapters and the guidance scale each change the result.
    assert not np.array_equal(videos[("camera", 1.0)], videos[("object", 1.0)])
    assert not np.array_equal(videos[("object", 1.0)], videos[("object", 1.3)])


# --------------------------------------------------------------------------- bad files


def test_corrupt_truncated_and_foreign_files_are_one_clear_error(tmp_path, mini_release):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    whole = (mini_release["dir"] / "image_controlnet.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole[: len(whole) // 2])

    class Payload:  # unpickling it would call a function: weights_only loading must refuse
        def __reduce__(self):
            return (print, ("code ran while loading",))

    pickled = tmp_path / "object.ckpt"
    torch.save({"weights": Payload()}, pickled)
    strings = tmp_path / "strings.ckpt"
    torch.save({"conv_in.weight": torch.zeros(1), "note": [1, 2]}, strings)
    for path, words in ((empty, "empty"), (garbage, "not a PyTorch checkpoint"), (truncated, "truncated"),
                        (pickled, "not a plain tensor checkpoint"), (strings, "neither tensors")):
        with pytest.raises(OfficialWeightsError, match=words) as info:
            read_official_checkpoint(path)
        assert str(path) in str(info.value)
        # torch's advice to turn the check off or to allow the object is not passed on
        assert "weights_only" not in str(info.value).replace("weights_only loading", "")
        assert "safe_globals" not in str(info.value)
    with pytest.raises(OfficialWeightsError, match=r"GLOBAL (builtins\.)?print\b"):  # what was refused, named
        read_official_checkpoint(pickled)


def test_a_missing_extra_or_misshapen_tensor_names_the_key(mini_release):
    with sd15.mini_architecture():
        targets = official_targets(mini_release["cfg"], 64, 64)
    state = read_official_checkpoint(mini_release["dir"] / "image_controlnet.ckpt")
    key = "down_blocks.0.resnets.0.conv1.weight"
    for change, words in (
        (lambda s: s.pop(key), "lacks 1"),
        (lambda s: s.__setitem__("down_blocks.0.resnets.0.conv9.weight", torch.zeros(1)), "does not have"),
        (lambda s: s.__setitem__(key, torch.zeros(3, 3)), "wrong shape"),
        (lambda s: s.__setitem__("down_blocks.0.motion_modules.0.temporal_transformer.extra.weight", torch.zeros(1)),
         "no rule maps"),
    ):
        bad = dict(state)
        change(bad)
        with pytest.raises(OfficialWeightsError, match=words) as info:
            convert_part("image_controlnet", bad, targets["image_controlnet"], source="image_controlnet.ckpt")
        assert "image_controlnet.ckpt" in str(info.value)
    flow = read_official_checkpoint(mini_release["dir"] / "flow_controlnet.ckpt")
    no_camera = {k: v for k, v in flow.items() if "cmcm_weights" not in k}
    with pytest.raises(OfficialWeightsError, match="LoRA adapters"):
        convert_part("motion_controlnet", no_camera, targets["motion_controlnet"], source="flow_controlnet.ckpt")


# --------------------------------------------------------------------------- the commands


def test_a_run_of_the_release_keeps_what_it_was_trained_with(mini_release, tmp_path):
    """A config with another objective, schedule or map scale would sample noise from the
    released weights: refused before anything is read or written."""
    cfg = sd15.mini_config(motion_norm="per_frame", flow_gain=2.0, num_train_timesteps=500)
    with pytest.raises(OfficialWeightsError, match=r"trained with the sd15 preset's num_train_timesteps 1000, not 500; "
                                                   r"flow_gain 1\.0, not 2\.0$"):
        convert_official(mini_release["dir"], tmp_path / "run", cfg=cfg)
    assert not (tmp_path / "run").exists()


MINI_GEOMETRY = json.dumps({"width": 64, "height": 64, "num_frames": 4, "flow_kernel_size": 25, "flow_sigma": 2.5})


def test_ic_convert_official_writes_a_run_and_names_each_bad_input(capsys, mini_release, tmp_path):
    from flows import cli

    out = tmp_path / "run"
    args = ["convert-official", str(mini_release["dir"]), "--out", str(out), "--sd15-path", mini_release["sd15_path"],
            "--model", MINI_GEOMETRY]
    with sd15.mini_architecture():
        assert cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"]["unet.ckpt"]["tensors"] == len(read_official_checkpoint(mini_release["dir"] / "unet.ckpt"))
    assert json.loads((out / "config.json").read_text())["sd15_path"] == mini_release["sd15_path"]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "unet.ckpt").write_bytes(b"")
    for argv, words in (
        (args, "already holds a run"),
        (["convert-official", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")], "no such folder"),
        (["convert-official", str(partial), "--out", str(tmp_path / "r2")], "lacks image_controlnet.ckpt, flow_controlnet.ckpt"),
        (["convert-official", str(mini_release["dir"]), "--out", str(tmp_path / "r2"), "--model", '{"preset": "tiny"}'],
         "'preset' cannot change"),
        (["convert-official", str(mini_release["dir"]), "--out", str(tmp_path / "r2"), "--model",
          '{"flow_gain": 20, "prediction_type": "sample"}'],
         "ic convert-official: --model: the released weights were trained with prediction_type 'epsilon', not 'sample'\n"
         "ic convert-official: --model: the released weights were trained with flow_gain 1.0, not 20"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


def _official_request(tmp_path) -> tuple[Path, Path]:
    """A 640×480 image and a trajectory file in the official examples' form: a list of tracks of
    [x, y] in the model frame's 384×256 pixels (one a single click)."""
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(image)
    traj = tmp_path / "trajs.json"
    traj.write_text(json.dumps([[[213, 111], [246, 113], [253, 100], [241, 91.5]], [[72.0, 233.0]]]))
    return image, traj


@pytest.mark.e2e  # `ic generate` ×2 and `ic evaluate` through their flows at the release's geometry
def test_ic_generate_and_studio_take_the_released_weights(prefect_api, capsys, mini_release, tmp_path, monkeypatch):
    from flows import cli

    monkeypatch.setenv("IC_CACHE_DIR", str(tmp_path / "cache"))
    image, traj = _official_request(tmp_path)
    with sd15.mini_architecture():  # the release's geometry (384×256, 16 frames) on mini networks
        for mode, scale in (("object", "1.3"), ("camera", "1.0")):
            out = tmp_path / f"{mode}.mp4"
            argv = ["generate", "--official", str(mini_release["dir"]), "--sd15-path", mini_release["sd15_path"],
                    "--image", str(image), "--trajectories", str(traj), "--trajectory-space", "model",
                    "--mode", mode, "--trajs-scale", scale, "--steps", "1", "--out", str(out)]
            assert cli.main(argv) == 0, capsys.readouterr().err
            assert out.stat().st_size > 0
            record = json.loads(capsys.readouterr().out)
            assert record["mode"] == mode and record["trajectory_space"] == "model" and record["num_tracks"] == 2
        assert cli.main(["evaluate", "object", "--official", str(mini_release["dir"]), "--max-cases", "1",
                         "--steps", "1", "--out", str(tmp_path / "eval")]) == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out)
    assert metrics and (tmp_path / "eval").is_dir()
    runs = list((tmp_path / "cache").iterdir())
    assert len(runs) == 1  # converted once, then reused
    assert json.loads((runs[0] / "config.json").read_text())["width"] == 384

    launched = {}
    monkeypatch.setattr("ic_studio.app.launch", lambda run, **kw: launched.update(run=run))
    assert cli.main(["studio", "--official", str(mini_release["dir"])]) == 0
    assert launched["run"] == str(runs[0])
    assert cli.main(["studio", "--official", str(mini_release["dir"]), "--run", str(runs[0])]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["studio", "--run", str(runs[0]), "--sd15-path", mini_release["sd15_path"]]) == 2
    assert "--sd15-path goes with --official" in capsys.readouterr().err
    assert cli.main(["generate", "--image", str(image), "--trajectories", str(traj), "--out", "x.mp4"]) == 2
    assert "one of --run RUN or --official DIR is required" in capsys.readouterr().err
    absent = tmp_path / "absent"
    assert cli.main(["studio", "--official", str(absent)]) == 2
    assert f"--official {absent}: no such folder; expected a folder holding unet.ckpt" in capsys.readouterr().err
    from ic_model.models import official

    assert runs[0].name == f"official-{official.official_cache_key(mini_release['dir'])}"
    monkeypatch.setattr(official, "CONVERSION_VERSION", official.CONVERSION_VERSION + 1)
    assert runs[0].name != f"official-{official.official_cache_key(mini_release['dir'])}"  # a newer converter


def test_model_space_trajectories_are_the_model_frames_pixels():
    """The official files' points are pixels of the 384×256 frame the model sees: they pass through
    unchanged, whatever the input image's size; in image space they are mapped through the crop."""
    from ic_model.pipelines.image_conductor import prepare_image_and_tracks

    cfg = sd15_config()
    image = np.zeros((480, 640, 3), np.uint8)
    track = [[[10.0, 20.0], [370.0, 250.0]]]
    model = prepare_image_and_tracks(image, track, cfg, trajectory_space="model")
    np.testing.assert_allclose(model.tracks[[0, -1], 0], [[10, 20], [370, 250]], atol=1e-4)
    mapped = prepare_image_and_tracks(image, [[[10.0, 40.0], [370.0, 250.0]]], cfg, trajectory_space="image")
    # 640×480 covers 384×256 at scale 0.6 (384×288), centre-cropped by 16 rows.
    np.testing.assert_allclose(mapped.tracks[0, 0], [(10.5) * 0.6 - 0.5, (40.5) * 0.6 - 16 - 0.5], atol=1e-3)
    with pytest.raises(Exception, match=r"\(10, 20\) is outside the centre crop"):  # in the 16 rows cropped
        prepare_image_and_tracks(image, track, cfg, trajectory_space="image")
    with pytest.raises(Exception, match="outside"):
        prepare_image_and_tracks(np.zeros((100, 150, 3), np.uint8), [[[380.0, 10.0]]], cfg, trajectory_space="image")


def test_a_converted_run_fine_tunes_a_new_object_adapter(converted, training_shards, tmp_path):
    """`ic train object --run CONVERTED` trains a new object adapter against the released camera
    adapter, on the released base and motion ControlNet."""
    import shutil

    from ic_model.config import TrainConfig
    from ic_model.training.loop import train_stage

    run = tmp_path / "run"
    shutil.copytree(converted[0], run)
    before = (run / "object" / "object_lora.safetensors").read_bytes()
    train_cfg = TrainConfig(steps=1, batch_size=1, log_every=1, save_every=1000, frame_stride=4,
                            gradient_checkpointing=False, num_workers=0, report_to="none")
    with sd15.mini_architecture():
        summary = train_stage("object", training_shards, run, train_cfg)
    assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])
    assert (run / "object" / "object_lora.safetensors").read_bytes() != before
    # The camera adapter it trained against is the released one.
    assert (run / "object" / "camera_lora.safetensors").read_bytes() == \
        (converted[0] / "camera" / "camera_lora.safetensors").read_bytes()


def test_convert_official_says_each_model_problem_once(capsys, tmp_path):
    """A wrong --model field is one line (it was also said again by the preset's constructor)."""
    from flows import cli

    argv = ["convert-official", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
            "--model", '{"nope": 1, "num_frames": "16"}']
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "nope" in line] == [
        "ic convert-official: --model: 'nope' is not a ModelConfig field"]
    assert len([line for line in err.splitlines() if "num_frames" in line]) == 1
