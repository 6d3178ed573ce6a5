"""The sd15 preset through ``train_stage`` itself, on mini models in SD 1.5's layout: mixed
precision keeps the noise schedule in fp32 and trained weights in fp32 while frozen ones load
straight into the half dtype; stages of different precision run in one process; the preset
comes from the run; its GPU defaults apply unless a flag is given."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from ic_model.config import TrainConfig
from ic_model.models import sd15
from ic_model.training.loop import StageModule, train_stage


@pytest.fixture(scope="module")
def mini_weights(mini_sd15_weights):
    return mini_sd15_weights


def _cfg(weights):
    return sd15.mini_config(**weights)


def _train_cfg(**kw):
    return TrainConfig(**{"steps": 1, "batch_size": 1, "log_every": 1, "save_every": 1000, "frame_stride": 4,
                          "gradient_checkpointing": False, "num_workers": 0, **kw})


@pytest.fixture
def spies(monkeypatch):
    """What add_noise computes in, and the dtypes of the stage's modules after it is set up."""
    seen = {"add_noise": [], "modules": []}
    add_noise = DDPMScheduler.add_noise

    def spy_add_noise(self, original, noise, timesteps):
        seen["add_noise"].append((original.dtype, noise.dtype))
        return add_noise(self, original, noise, timesteps)

    init = StageModule.__init__

    def spy_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen["modules"].append(self)

    monkeypatch.setattr(DDPMScheduler, "add_noise", spy_add_noise)
    monkeypatch.setattr(StageModule, "__init__", spy_init)
    return seen


def _dtypes(module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_bf16_training_keeps_the_noise_schedule_and_trained_weights_in_fp32(
        mini_weights, training_shards, tmp_path, spies):
    run, cfg = tmp_path / "run", _cfg(mini_weights)
    # fp32 first, then bf16, in one process: each stage gets its own accelerator state.
    dense = train_stage("dense", str(training_shards), run, _train_cfg(mixed_precision="no"), cfg)
    assert spies["add_noise"] == [(torch.float32, torch.float32)]
    sparse = train_stage("sparse", str(training_shards), run, _train_cfg(mixed_precision="bf16"), cfg)
    assert spies["add_noise"][1] == (torch.float32, torch.float32)  # fp32 although the VAE is bf16
    module = spies["modules"][1]
    assert _dtypes(module.vae) == _dtypes(module.text_encoder) == {torch.bfloat16}
    assert _dtypes(module.denoiser.unet) == _dtypes(module.denoiser.image_controlnet) == {torch.bfloat16}
    assert _dtypes(module.motion_controlnet) == {torch.float32}  # trained
    assert all(torch.isfinite(torch.tensor(s["final_loss"])) for s in (dense, sparse))

    # A LoRA stage: the motion ControlNet's own weights are frozen too, only the adapter is fp32.
    train_stage("camera", str(training_shards), run, _train_cfg(mixed_precision="bf16"), cfg)
    mc = spies["modules"][2].motion_controlnet
    trained = {p.dtype for p in mc.parameters() if p.requires_grad}
    frozen = {p.dtype for p in mc.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    saved = run / "sparse" / "motion_controlnet.safetensors"
    assert saved.exists()
    # What the bf16 stage saved is the fp32 ControlNet it trained.
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(saved)).values()} == {torch.float32}


def test_fp16_keeps_the_vae_in_fp32(mini_weights):
    """fp16 autocast needs a GPU; the casting itself is checked on the module."""
    from ic_model.models.presets import build_components
    from ic_model.training.loop import _cast_frozen

    cfg = _cfg(mini_weights)
    comps = build_components(cfg, torch.float16)
    assert _dtypes(comps.vae) == {torch.float32}  # SD's VAE overflows in fp16
    assert _dtypes(comps.unet) == _dtypes(comps.text_encoder) == {torch.float16}
    assert _dtypes(comps.motion_controlnet) == {torch.float32}
    module = StageModule(comps, "dense", _train_cfg(mixed_precision="fp16"))
    _cast_frozen(module, "fp16")
    assert _dtypes(module.vae) == {torch.float32} and _dtypes(module.motion_controlnet) == {torch.float32}


def test_the_preset_brings_its_training_defaults_and_a_flag_overrides_each():
    from ic_model.config import train_config

    sd15 = train_config("sd15", stage="dense", steps=10, batch_size=None, mixed_precision=None)
    assert (sd15.batch_size, sd15.mixed_precision, sd15.gradient_checkpointing) == (1, "bf16", True)
    assert sd15.num_workers > 0 and sd15.pin_memory
    assert train_config("sd15", mixed_precision="no", gradient_checkpointing=False).mixed_precision == "no"
    tiny = train_config("tiny", batch_size=None)
    assert (tiny.batch_size, tiny.mixed_precision, tiny.gradient_checkpointing) == (4, "no", False)


def test_ic_train_on_an_sd15_run_takes_the_runs_preset_and_its_defaults(mini_weights, training_shards, tmp_path,
                                                                         monkeypatch):
    """`ic train sparse --run RUN` on an sd15 run: no --preset, the sd15 defaults, the weight
    flags reach the stage; the flow's arguments are what the CLI passes on."""
    import flows.cli as cli
    import flows.train as train_flow

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_cfg({}).to_dict()))
    (run / "dense").mkdir()
    (run / "dense" / "done.json").write_text("{}")
    seen = {}

    class Completed:
        def __init__(self, result):
            self._result = result

        def is_completed(self):
            return True

        def result(self):
            return self._result

    def fake_run_stage(stage, shards, run, train_cfg, model_cfg, num_processes=1, return_state=False):
        seen.update(stage=stage, train=train_cfg, model=model_cfg)
        return Completed({"steps": train_cfg.steps})

    monkeypatch.setattr(train_flow, "run_stage", fake_run_stage)
    monkeypatch.setattr(train_flow, "publish_training", lambda *a, **k: None)
    monkeypatch.setattr(train_flow, "get_run_logger", lambda: __import__("logging").getLogger("test"))
    body = train_flow.train_stage_flow.fn  # the flow's body, run here without a Prefect server

    monkeypatch.setattr(train_flow, "train_stage_flow",
                        lambda return_state=False, **kwargs: Completed(body(**kwargs)))
    weights = ["--sd15-path", mini_weights["sd15_path"], "--motion-adapter-path", mini_weights["motion_adapter_path"],
               "--sparsectrl-rgb-path", mini_weights["sparsectrl_rgb_path"]]
    assert cli.main(["train", "sparse", "--shards", str(training_shards), "--run", str(run), "--steps", "3",
                     *weights]) == 0
    assert seen["model"].preset == "sd15" and seen["model"].sd15_path == mini_weights["sd15_path"]
    assert (seen["train"].batch_size, seen["train"].mixed_precision, seen["train"].gradient_checkpointing) == (
        1, "bf16", True)
    assert cli.main(["train", "sparse", "--shards", str(training_shards), "--run", str(run), "--steps", "3",
                     "--batch-size", "2", "--no-gradient-checkpointing", *weights]) == 0
    assert seen["train"].batch_size == 2 and seen["train"].gradient_checkpointing is False

