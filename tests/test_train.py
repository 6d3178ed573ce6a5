"""Training stages on the tiny preset: overfitting, stop-gradient, exact resume, prerequisites,
multi-process DDP, and the model wiring."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ic_model.models import lora
from ic_model.models.components import Denoiser
from ic_model.models.tiny import build_tiny_components
from ic_model.config import TrainConfig, tiny_config
from ic_model.models.motion_controlnet import build_motion_controlnet, flow_to_controlnet_cond
from ic_model.training.run import MissingPrerequisiteError, load_module, run_model_config, stage_dir
from ic_model.training.loop import launch_command, train_stage

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from conftest import TEST_FRAMES, live_processes, overfit_config as _cfg  # noqa: E402


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    return tiny_run


def test_fresh_motion_controlnet_changes_nothing():
    """Zero-initialised conditioning conv and zero-convs: flow maps have no effect before training."""
    comps = build_tiny_components(tiny_config())
    den = Denoiser(comps.unet, comps.image_controlnet, comps.motion_controlnet, 8).eval()
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 16, 8, 12, generator=g)
    text = torch.randn(1, 77, 64, generator=g)
    first = torch.randn(1, 4, 8, 12, generator=g)
    flow = torch.randn(1, 2, 16, 64, 96, generator=g)
    with torch.no_grad():
        plain = den(noisy, torch.tensor([500]), text, first)
        with_flow = den(noisy, torch.tensor([500]), text, first, flow=flow)
    assert torch.equal(plain, with_flow)
    assert flow_to_controlnet_cond(flow, 8).shape == (1, 128, 16, 8, 12)


def test_fresh_motion_controlnet_copies_the_spatial_encoder_and_starts_its_motion_modules_as_identities():
    """As the official from_unet: the UNet's spatial encoder copied, its motion modules not (a v3
    module has two temporal attentions to the ControlNet's one); theirs pass features through."""
    comps = build_tiny_components(tiny_config())
    with torch.no_grad():  # a UNet whose motion modules are unlike any fresh module's
        for name, tensor in comps.unet.named_parameters():
            if ".motion_modules." in name:
                tensor.add_(0.5)
    net = build_motion_controlnet(comps.unet, 8)
    ours, unet = net.state_dict(), comps.unet.state_dict()
    spatial = [n for n in ours if n.startswith(("conv_in.", "down_blocks.", "mid_block.")) and ".motion_modules." not in n]
    assert len(spatial) > 50 and all(torch.equal(ours[n], unet[n]) for n in spatial)
    motion = [n for n in ours if ".motion_modules." in n and n.endswith("weight")]
    assert motion and not any(n in unet and torch.equal(ours[n], unet[n]) for n in motion)
    modules = [m for n, m in net.named_modules() if n.endswith("motion_modules.0")]
    assert len(modules) == len(net.down_blocks)
    g = torch.Generator().manual_seed(0)
    for module in modules:
        channels = module.proj_in.in_features
        x = torch.randn(2 * 8, channels, 4, 6, generator=g)  # (batch·frames, C, H, W)
        with torch.no_grad():
            assert torch.equal(module(x, num_frames=8), x)


def test_flow_gain_scales_the_trajectory_maps_the_motion_controlnet_sees():
    """gain·maps into a gain-1 ControlNet ≡ maps into a gain-g one; the gain comes from the config."""
    cfg = tiny_config(flow_gain=20.0)
    comps = build_tiny_components(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained ControlNet: non-zero input conv and zero-convs
        for name, p in comps.motion_controlnet.named_parameters():
            if "controlnet" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    den = comps.denoiser().eval()
    assert den.flow_gain == 20.0
    plain = Denoiser(comps.unet, comps.image_controlnet, comps.motion_controlnet, 8).eval()
    noisy = torch.randn(1, 4, 4, 8, 12, generator=g)
    text = torch.randn(1, 77, 64, generator=g)
    first = torch.randn(1, 4, 8, 12, generator=g)
    flow = 0.05 * torch.randn(1, 2, 4, 64, 96, generator=g)
    with torch.no_grad():
        gained = den(noisy, torch.tensor([500]), text, first, flow=flow)
        torch.testing.assert_close(gained, plain(noisy, torch.tensor([500]), text, first, flow=20 * flow))
        assert not torch.allclose(gained, plain(noisy, torch.tensor([500]), text, first, flow=flow), atol=1e-4)
    with pytest.raises(ValueError, match="flow_gain"):
        tiny_config(flow_gain=0.0)


def test_pixel_unshuffle_keeps_every_value_in_its_cell():
    flow = torch.arange(2 * 3 * 16 * 24, dtype=torch.float32).reshape(1, 2, 3, 16, 24)
    cond = flow_to_controlnet_cond(flow, 8)
    # channel c*64 + dy*8 + dx at cell (i, j) is pixel (8i+dy, 8j+dx) of flow channel c
    assert cond[0, 64 + 3 * 8 + 5, 2, 1, 2] == flow[0, 1, 2, 8 + 3, 16 + 5]


def test_stage_refuses_to_start_without_its_prerequisite(tmp_path, training_shards):
    cfg = run_model_config(tmp_path / "run", "tiny", num_frames=TEST_FRAMES)
    with pytest.raises(MissingPrerequisiteError, match="'camera'"):
        train_stage("object", str(training_shards), tmp_path / "run", _cfg("object"), cfg)
    assert not (tmp_path / "run" / "object").exists()


def test_each_adapter_trains_on_its_own_data(tmp_path, trained_run, training_shards):
    """Appendix C.1: the camera LoRA from camera-only clips, the object LoRA from mixed ones. The
    object stage took every clip, so a RealEstate10K clip taught the object adapter camera
    motion; given only camera-only clips it now stops, naming what it needs, before training."""
    import shutil

    from ic_data.errors import ShardError

    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "object")
    camera_only = tmp_path / "camera-shards"
    camera_only.mkdir()
    shutil.copy(training_shards / "camera-000000.tar", camera_only)
    cfg = run_model_config(copy, "tiny", num_frames=TEST_FRAMES)
    with pytest.raises(ShardError, match="no clips with camera_only=false in .*the object stage trains on mixed"):
        train_stage("object", str(camera_only), copy, _cfg("object", steps=1), cfg)
    assert not (copy / "object" / "done.json").exists()
    shutil.rmtree(copy / "camera")
    mixed = tmp_path / "mixed-shards"
    mixed.mkdir()
    shutil.copy(training_shards / "mixed-000000.tar", mixed)
    with pytest.raises(ShardError, match="no camera_only clips in .*the camera stage needs RealEstate10K"):
        train_stage("camera", str(mixed), copy, _cfg("camera", steps=1), cfg)


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "steps must be a whole number ≥ 1, got 0"),  # finished a stage untrained, done.json and all
    (dict(steps=1.5), "steps must be a whole number, got 1.5"),
    (dict(log_every=0), "log_every must be a whole number ≥ 1, got 0"),  # ZeroDivisionError after a step
    (dict(grad_accum_steps=0), "grad_accum_steps must be a whole number ≥ 1, got 0"),
    (dict(keep_checkpoints=-1), "keep_checkpoints must be a whole number ≥ 1, got -1"),  # kept every one
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number, got nan"),
    (dict(adam_betas=(0.9, 1.0)), "adam_betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    (dict(min_tracks=6, max_tracks=2), "min_tracks 6 is above max_tracks 2"),
    (dict(report_to="mlflow"), "report_to must be 'tensorboard' or 'wandb' or 'none', got 'mlflow'"),
])
def test_a_train_config_out_of_range_is_refused_when_made(change, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(**change)
    assert str(err.value) == f"TrainConfig: {message}"


def test_a_model_config_of_an_unknown_preset_is_refused():
    """preset='sd21' used to build the tiny model under another name."""
    from ic_model.config import ModelConfig

    with pytest.raises(ValueError, match=r"^ModelConfig: preset must be 'tiny' or 'sd15', got 'sd21'$"):
        ModelConfig(preset="sd21").validate()


def test_train_stage_rechecks_a_config_changed_after_it_was_made(tmp_path, training_shards):
    cfg = _cfg("base")
    cfg.steps = 0
    with pytest.raises(ValueError, match=r"^TrainConfig: steps must be a whole number ≥ 1, got 0$"):
        train_stage("base", str(training_shards), tmp_path / "run", cfg, tiny_config(num_frames=TEST_FRAMES))
    assert not (tmp_path / "run").exists()
    high = _cfg("base")
    high.high_noise_prob, high.high_noise_min_t = 0.5, 1000
    with pytest.raises(ValueError, match="high_noise_min_t 1000 must be below the model's num_train_timesteps 1000"):
        train_stage("base", str(training_shards), tmp_path / "run", high, tiny_config(num_frames=TEST_FRAMES))


def test_a_trained_run_refuses_another_model_config(tmp_path, training_shards):
    """Before, the stage trained with the config it was given and wrote it beside a run whose
    config.json said otherwise; a run keeps one model once a stage has trained with it."""
    run = tmp_path / "run"
    run_model_config(run, "tiny", num_frames=TEST_FRAMES)
    (run / "vae").mkdir()
    (run / "vae" / "done.json").write_text("{}")
    with pytest.raises(ValueError, match=f"has num_frames={TEST_FRAMES}, not {TEST_FRAMES + 2}"):
        train_stage("base", str(training_shards), run, _cfg("base"), tiny_config(num_frames=TEST_FRAMES + 2))
    assert not (run / "base").exists()


# How far each stage's loss on its one fixed batch falls: first step (the untrained model on that
# batch) ÷ last step. Measured over seeds 0–3 (the stage seeds of conftest.overfit_config plus
# 10·k) under ATEN_CPU_CAPABILITY native/avx2/default with MKL and oneDNN capped at AVX2, on 1
# and 2 threads, and reported from an AVX-512 machine (vae 4.0 at seed 0), the worst ratios were:
# vae 4.0, base 68, dense 3.8, sparse 5.5, camera 7.9, object 7.4 (spread: vae 4.0–13.2, dense
# 3.8–8.4, sparse 5.5–21.6). Since the LoRAs start as the official release starts them (A
# Gaussian, std 1/rank: half peft's default width) and the object stage trains on mixed clips
# only, measured again over seeds 0–3 natively (2 threads), at AVX2 (1 thread) and at the
# default ISA (2 threads): camera 4.6–10.2, object 3.6–16.2 (the others within the old spread:
# vae 4.2, base 58, dense 4.1, sparse 5.3 at worst). Each bar is about half the worst. A stage
# that does not learn keeps the same loss on the same batch (ratio 1).
OVERFIT_MIN_RATIO = {"vae": 2.0, "base": 30.0, "dense": 1.9, "sparse": 2.5, "camera": 2.3, "object": 1.8}


@pytest.mark.parametrize("stage", ["vae", "base", "dense", "sparse", "camera", "object"])
def test_each_stage_overfits_one_batch(trained_run, stage):
    run, summaries = trained_run
    s = summaries[stage]
    # The denoising (or reconstruction) loss; the object stage adds the orthogonal term, whose
    # paper form has a floor above zero (A_cam A_objᵀ cannot reach I when in < rank).
    assert s["first_mse"] / s["final_mse"] >= OVERFIT_MIN_RATIO[stage], s
    assert s["final_loss"] < s["first_loss"], s
    if stage == "object":
        assert s["final_ortho"] < s["first_ortho"], s
    assert (stage_dir(run, stage) / "done.json").exists()


def test_stage_outputs_are_published(trained_run):
    run, _ = trained_run
    names = {s: sorted(p.name for p in stage_dir(run, s).glob("*.safetensors")) for s in
             ("vae", "base", "dense", "sparse", "camera", "object")}
    assert names["vae"] == ["vae.safetensors"]
    assert names["base"] == ["image_controlnet.safetensors", "text_encoder.safetensors", "unet.safetensors"]
    assert names["dense"] == names["sparse"] == ["motion_controlnet.safetensors"]
    assert names["camera"] == ["camera_lora.safetensors"]
    assert names["object"] == ["camera_lora.safetensors", "object_lora.safetensors"]
    saved = json.loads((stage_dir(run, "object") / "config.json").read_text())
    assert saved["preset"] == "tiny" and saved["lora_rank"] == 64


def test_object_stage_stops_gradient_into_camera_and_base(trained_run):
    """After `object`: camera adapter bit-identical, object adapter trained, ControlNet unchanged."""
    run, _ = trained_run
    cam_before = load_file(str(stage_dir(run, "camera") / "camera_lora.safetensors"))
    cam_after = load_file(str(stage_dir(run, "object") / "camera_lora.safetensors"))
    assert cam_before.keys() == cam_after.keys()
    assert all(torch.equal(cam_before[k], cam_after[k]) for k in cam_before)

    comps = build_tiny_components(tiny_config(num_frames=TEST_FRAMES))
    mc = comps.motion_controlnet
    load_module(mc, stage_dir(run, "sparse") / "motion_controlnet.safetensors")
    base_before = {k: v.clone() for k, v in mc.state_dict().items()}
    lora.add_lora_adapter(mc, "object", 64, 64, tiny_config().lora_targets)
    fresh = {k: v.clone() for k, v in lora.lora_parameters(mc, "object").items()}
    lora.load_adapter(mc, "object", stage_dir(run, "object") / "object_lora.safetensors")
    trained = lora.lora_parameters(mc, "object")
    changed = [k for k in fresh if not torch.equal(fresh[k], trained[k])]
    assert len(changed) >= len(fresh) // 2
    # The object stage saved only its adapter: the base ControlNet weights are sparse's.
    for name, tensor in mc.state_dict().items():
        if "lora_" not in name and name.replace(".base_layer", "") in base_before:
            assert torch.equal(tensor, base_before[name.replace(".base_layer", "")]), name


def _prepared_run(src: Path, dst: Path, upto: str) -> Path:
    """A copy of ``src`` holding only the stages before ``upto``."""
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    for stage in ("vae", "base", "dense", "sparse", "camera"):
        if stage == upto:
            break
        shutil.copytree(src / stage, dst / stage)
    return dst


def test_resume_continues_exactly(trained_run, training_shards, tmp_path):
    """N steps straight == N/2 steps, then a resumed run to N (same weights, bit for bit)."""
    run, _ = trained_run
    kw = dict(batch_size=1, learning_rate=1e-3, log_every=1, save_every=2, steps=4)
    straight = _prepared_run(run, tmp_path / "straight", "dense")
    train_stage("dense", str(training_shards), straight, TrainConfig(**kw))
    halves = _prepared_run(run, tmp_path / "halves", "dense")
    train_stage("dense", str(training_shards), halves, TrainConfig(**{**kw, "steps": 2}))
    summary = train_stage("dense", str(training_shards), halves, TrainConfig(**kw))
    assert summary["steps"] == 4
    a = load_file(str(stage_dir(straight, "dense") / "motion_controlnet.safetensors"))
    b = load_file(str(stage_dir(halves, "dense") / "motion_controlnet.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ...and a step really changed them (the check is not vacuous).
    c = load_file(str(stage_dir(run, "sparse") / "motion_controlnet.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)
    losses = [json.loads(l)["loss"] for l in (stage_dir(halves, "dense") / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4
    # A damaged newest checkpoint (its state cut short): the resume starts from the one before it,
    # moves the damaged one aside and names it, and ends with the same weights.
    damaged = _prepared_run(run, tmp_path / "damaged", "dense")
    train_stage("dense", str(training_shards), damaged, TrainConfig(**{**kw, "steps": 2, "save_every": 1}))
    checkpoints = stage_dir(damaged, "dense") / "checkpoints"
    state = checkpoints / "step-0000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="checkpoint step-0000002 cannot be used"):
        summary = train_stage("dense", str(training_shards), damaged, TrainConfig(**{**kw, "save_every": 1}))
    assert summary["steps"] == 4 and summary["damaged_checkpoints"] == [
        f"checkpoint step-0000002 cannot be used ({state}: not a readable checkpoint state (not a whole torch.save "
        f"archive)); resumed from step-0000001, the unusable one moved to {checkpoints / 'damaged-step-0000002'}"]
    assert (checkpoints / "damaged-step-0000002" / "state.pt").stat().st_size == 1000
    d = load_file(str(stage_dir(damaged, "dense") / "motion_controlnet.safetensors"))
    assert all(torch.equal(a[k], d[k]) for k in a)


class _Stopped(BaseException):
    """What `ic`'s own SIGTERM handler raises (flows.cli.Stopped), for a test that must not die."""


def _raise_stopped(signum, frame):
    raise _Stopped


def _signal_at_step(signum: int, step: int, times: int = 1, group: bool = False):
    """An ``on_log`` that sends ``signum`` to this process at ``step`` (``group``: to its data
    loader's workers too, as a terminal or a batch scheduler signals a whole job)."""
    def on_log(record: dict) -> None:
        if record["step"] == step:
            workers = [str(w.pid) for w in multiprocessing.active_children()] if group else []
            assert not group or workers, "no loader workers to signal"
            if workers:  # from another process: PyTorch's workers take a SIGTERM of their parent's as a stop
                subprocess.run(["kill", f"-{signum}", *workers], check=True)
            for _ in range(times):
                os.kill(os.getpid(), signum)
    return on_log


@pytest.mark.parametrize("signum, workers", [(signal.SIGINT, 0), (signal.SIGTERM, 0), (signal.SIGTERM, 2)])
def test_a_stop_signal_saves_the_step_it_ends_and_the_rerun_ends_bit_for_bit(trained_run, training_shards, tmp_path,
                                                                              python_sigint, signum, workers):
    """Ctrl-C or a scheduler's SIGTERM at step 2 of 4, far from the next periodic checkpoint
    (save_every 1000): the step finishes and is saved, the signal then takes its usual effect,
    and the same command finishes with the weights and losses of an uninterrupted run. Before,
    the stage ended at once and every step since the last checkpoint was lost; with loader
    workers, a worker killed by the signal failed the step outright."""
    run, _ = trained_run
    kw = dict(batch_size=1, learning_rate=1e-3, log_every=1, save_every=1000, steps=4, num_workers=workers)
    straight = _prepared_run(run, tmp_path / "straight", "dense")
    train_stage("dense", str(training_shards), straight, TrainConfig(**kw))
    stopped = _prepared_run(run, tmp_path / "stopped", "dense")
    previous = signal.signal(signal.SIGTERM, _raise_stopped)  # as `ic` does: the default would end pytest
    try:
        with pytest.raises(KeyboardInterrupt if signum == signal.SIGINT else _Stopped):
            train_stage("dense", str(training_shards), stopped, TrainConfig(**kw),
                        on_log=_signal_at_step(signum, 2, group=workers > 0))
        assert signal.getsignal(signal.SIGTERM) is _raise_stopped
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = stage_dir(stopped, "dense")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    assert not (out / "done.json").exists()
    summary = train_stage("dense", str(training_shards), stopped, TrainConfig(**kw))
    assert summary["steps"] == 4
    a = load_file(str(stage_dir(straight, "dense") / "motion_controlnet.safetensors"))
    b = load_file(str(out / "motion_controlnet.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (stage_dir(straight, "dense"), out)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_a_second_signal_stops_at_once_and_an_ignored_one_stays_ignored(trained_run, training_shards, tmp_path,
                                                                       python_sigint):
    run, _ = trained_run
    kw = dict(batch_size=1, learning_rate=1e-3, log_every=1, save_every=1000, steps=3)
    twice = _prepared_run(run, tmp_path / "twice", "dense")
    with pytest.raises(KeyboardInterrupt):
        train_stage("dense", str(training_shards), twice, TrainConfig(**kw),
                    on_log=_signal_at_step(signal.SIGINT, 2, times=2))
    assert not (stage_dir(twice, "dense") / "checkpoints").exists()  # nothing waited for the step's end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # A job started with SIGINT ignored (`nohup`, a non-interactive shell's `&`) trains on.
    ignored = _prepared_run(run, tmp_path / "ignored", "dense")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = train_stage("dense", str(training_shards), ignored, TrainConfig(**kw),
                              on_log=_signal_at_step(signal.SIGINT, 2))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert summary["steps"] == 3 and (stage_dir(ignored, "dense") / "done.json").exists()


def test_a_diverging_stage_stops_with_one_error_and_is_not_marked_done(trained_run, training_shards, tmp_path):
    """An absurd learning rate: the weights go NaN within a few steps. The stage stops at the next
    logged or saved step, naming the cause, and writes neither done.json nor NaN outputs."""
    from ic_model.training.loop import TrainingDiverged

    run, _ = trained_run
    bad = _prepared_run(run, tmp_path / "bad", "dense")
    cfg = TrainConfig(batch_size=1, learning_rate=1e30, log_every=4, save_every=2, steps=8, warmup_steps=0)
    with pytest.raises(TrainingDiverged, match=r"stage dense: the weights became NaN or infinite by step [2468] .*"
                                               r"lr 1e\+30.*Checkpoints up to step [0246] are kept"):
        train_stage("dense", str(training_shards), bad, cfg)
    out = stage_dir(bad, "dense")
    assert not (out / "done.json").exists() and not (out / "motion_controlnet.safetensors").exists()
    for path in (out / "checkpoints").glob("step-*/*.safetensors"):  # whatever was kept is finite
        assert all(t.isfinite().all() for t in load_file(str(path)).values())


def test_overfitting_encodes_the_fixed_batch_once(trained_run, training_shards, tmp_path, monkeypatch):
    """One fixed batch: the frozen VAE encodes it at the first step only, later steps reuse those
    latents; without it every step encodes its own clips."""
    import ic_model.training.loop as loop

    encoded = []
    real = loop.encode_video
    monkeypatch.setattr(loop, "encode_video", lambda vae, pixels: encoded.append(pixels.shape) or real(vae, pixels))
    run, _ = trained_run
    summary = train_stage("dense", str(training_shards), _prepared_run(run, tmp_path / "fixed", "dense"),
                          _cfg("dense", steps=3))
    assert summary["steps"] == 3 and len(encoded) == 1
    encoded.clear()
    train_stage("dense", str(training_shards), _prepared_run(run, tmp_path / "plain", "dense"),
                _cfg("dense", steps=2, overfit_one_batch=False))
    assert len(encoded) == 2


def test_finished_stage_is_not_retrained(trained_run, training_shards):
    run, summaries = trained_run
    again = train_stage("camera", str(training_shards), run, _cfg("camera"))
    assert again["skipped"] and again["final_loss"] == summaries["camera"]["final_loss"]


def test_resuming_with_fewer_steps_than_the_checkpoint_is_refused(tmp_path, training_shards):
    """A stage stopped at step 4 and rerun with steps=3 finished at once and recorded 3 steps for
    weights trained 4; now it says so, and steps=4 resumes and finishes it."""
    from ic_model.training.checkpoint import past_steps_problem

    run = tmp_path / "run"
    cfg = run_model_config(run, "tiny", num_frames=TEST_FRAMES)
    train_stage("vae", str(training_shards), run, _cfg("vae", steps=4, save_every=2), cfg)
    stage = run / "vae"
    (stage / "done.json").unlink()  # as if stopped after its last checkpoint
    message = ("vae: the run's newest checkpoint is at step 4, past steps=3; train to 4 or more to resume it "
               "(or use a new run folder)")
    assert past_steps_problem(stage, 3) == message and past_steps_problem(stage, 4) is None
    with pytest.raises(ValueError, match=re.escape(message)):
        train_stage("vae", str(training_shards), run, _cfg("vae", steps=3, save_every=2), cfg)
    assert not (stage / "done.json").exists()
    summary = train_stage("vae", str(training_shards), run, _cfg("vae", steps=4, save_every=2), cfg)
    assert summary["steps"] == 4 and json.loads((stage / "done.json").read_text())["steps"] == 4
    assert past_steps_problem(stage, 3) is None  # done: a shorter request is skipped, not refused


def test_camera_stage_needs_camera_only_clips(trained_run, tmp_path, training_shards):
    run, _ = trained_run
    mixed_only = tmp_path / "mixed"
    mixed_only.mkdir()
    shutil.copy(training_shards / "mixed-000000.tar", mixed_only)
    prepared = _prepared_run(run, tmp_path / "cam", "camera")
    with pytest.raises(ValueError, match="camera_only"):
        train_stage("camera", str(mixed_only), prepared, _cfg("camera"))


@pytest.mark.e2e
def test_accelerate_launch_two_processes_keeps_replicas_identical(trained_run, training_shards, tmp_path):
    run, _ = trained_run
    prepared = _prepared_run(run, tmp_path / "ddp", "dense")
    cfg_path = tmp_path / "train.json"
    cfg_path.write_text(json.dumps(dict(batch_size=1, learning_rate=1e-3, log_every=1, steps=3)))
    # The children get the parent's whole ModelConfig: weight paths given to an existing run
    # (machine settings, not in RUN/config.json) reach them.
    model = {**json.loads((prepared / "config.json").read_text()), "sd15_path": "/weights/given-to-this-run"}
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model))
    cmd, env = launch_command(2, "dense", str(training_shards), str(prepared), str(cfg_path),
                              model_config_json=str(model_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["global_batch"] == 2
    assert summary["replicas_identical"] is True
    assert len(set(summary["replica_checksums"])) == 1
    assert json.loads((prepared / "dense" / "config.json").read_text())["sd15_path"] == "/weights/given-to-this-run"


def _processes_naming(text: str) -> list[int]:
    return [pid for pid, (_, cmd) in live_processes().items() if text in cmd]


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
def test_stopping_ic_train_stops_every_rank_of_a_multi_process_run(training_shards, tmp_path):
    """`kill PID` of `ic train --num-processes 2`: the launcher and both ranks stop with it, after
    the step in progress, which is saved (far from the periodic checkpoint, save_every 200), and
    the same command resumes from it. Before, `ic` killed the launcher alone, and the ranks, in
    sessions of their own, trained on, orphaned (on a GPU box: holding the GPUs); then they were
    stopped at once, and every step since the last periodic checkpoint was lost."""
    run = tmp_path / "ddp-stop"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    ic = Path(sys.executable).parent / "ic"
    proc = subprocess.Popen([str(ic), "train", "vae", "--run", str(run), "--shards", str(training_shards),
                             "--steps", "5000", "--num-processes", "2"], env=env, text=True,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not (run / "vae" / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        ranks = [pid for pid in _processes_naming(str(run)) if pid != proc.pid]
        assert len(ranks) >= 3, ranks  # the launcher and two ranks
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert "ic train: stopped by SIGTERM" in output
        deadline = time.time() + 60
        while _processes_naming(str(run)) and time.time() < deadline:
            time.sleep(0.5)
        assert _processes_naming(str(run)) == [], "processes of the run outlived `ic`"
        saved = re.search(r"vae: stopped by SIGTERM after step (\d+), which is saved in (\S+); the same command "
                          r"resumes from it", output)
        assert saved and output.rstrip().endswith("ic train: stopped by SIGTERM"), output[-3000:]
        step = int(saved[1])
        assert saved[2] == str(run / "vae" / "checkpoints") and 0 < step < 200
        assert f"step-{step:07d}" in [p.name for p in (run / "vae" / "checkpoints").iterdir()]
        again = subprocess.run([str(ic), "train", "vae", "--run", str(run), "--shards", str(training_shards),
                                "--steps", str(step + 1), "--num-processes", "2"], env=env, text=True,
                               capture_output=True, timeout=600)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        done = json.loads((run / "vae" / "done.json").read_text())
        assert done["resumed_from_step"] == step and done["steps"] == step + 1
        assert done["replicas_identical"] is True
        assert f"vae resumed from step {step}" in again.stdout + again.stderr
    finally:
        for pid in _processes_naming(str(run)):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_motion_weights_follow_what_moves():
    from ic_model.training.loop import motion_weights

    lat = torch.zeros(2, 4, 5, 8, 12)
    for t in range(5):  # clip 0: a bright cell moving right one cell per frame; clip 1: still
        lat[0, :, t, 3, 2 + t] = 1.0
    w = motion_weights(lat, strength=4.0)
    assert w.shape == (2, 1, 5, 8, 12)
    assert torch.equal(w[1], torch.ones_like(w[1]))  # nothing changes: the plain MSE
    assert torch.equal(w[0, :, 0], torch.ones_like(w[0, :, 0]))  # frame 0 has no previous frame
    for t in range(1, 5):  # the cell left and the cell entered weigh more than anything else
        moved = w[0, 0, t]
        assert moved[3, 1 + t] > 1 and moved[3, 2 + t] > 1
        rest = moved.clone()
        rest[3, 1 + t] = rest[3, 2 + t] = 1
        assert torch.equal(rest, torch.ones_like(rest))
    # 1 + strength × (change / mean change): the mean weight over the clip is 1 + strength.
    assert torch.isclose(w[0].mean(), torch.tensor(5.0), atol=1e-3)


def test_motion_weighting_spares_the_base_stage():
    """The base must learn to copy frame 0, which never moves: weighting its loss by motion
    starved that (measured: frame-0 x0 error 3.8× higher). Only the motion stages are weighted."""
    from ic_model.training.loop import StageModule

    cfg = tiny_config(num_frames=4)
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 4, cfg.height, cfg.width) * 2 - 1
    pixels[:, :, 1:, :16, :16] = 1.0  # a corner that changes after frame 0
    flow = torch.zeros(1, 2, 4, cfg.height, cfg.width)
    h, w = cfg.latent_size
    noise, ids, t = torch.randn(1, cfg.latent_channels, 4, h, w), torch.zeros(1, 77, dtype=torch.long), torch.tensor([500])
    for stage, weighted in (("base", False), ("dense", True)):
        module = StageModule(build_tiny_components(cfg), stage, TrainConfig(stage=stage, motion_loss_weight=4.0))
        with torch.no_grad():
            losses = module(pixels, flow, ids, noise, t)
        assert bool(losses["loss"] != losses["mse"]) is weighted, stage


def test_training_curves_reach_tensorboard_and_a_progress_bar(training_shards, tmp_path, capsys):
    """--report-to tensorboard (the default): the scalars in the event files are the logged ones."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = run_model_config(run, "tiny", num_frames=TEST_FRAMES)
    tc = TrainConfig(stage="vae", steps=4, batch_size=1, log_every=2, save_every=1000, vae_frames_per_clip=1)
    assert tc.report_to == "tensorboard"
    train_stage("vae", str(training_shards), run, tc, cfg, progress=True)
    assert "train vae: 100%" in capsys.readouterr().err
    records = [json.loads(x) for x in (run / "vae" / "metrics.jsonl").read_text().splitlines()]
    events = list((run / "vae" / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    for key in ("loss", "mse", "kl", "lr", "grad_norm", "samples_per_s", "peak_memory_mb"):
        scalars = acc.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [r["step"] for r in records] == [2, 4], key
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6), key
    with pytest.raises(ValueError, match="report_to"):
        train_stage("base", str(training_shards), run, TrainConfig(stage="base", steps=1, report_to="mlflow"), cfg)


def test_wandb_offline_writes_its_run_folder_with_the_logged_losses(training_shards, tmp_path, monkeypatch):
    """--report-to wandb without a network (WANDB_MODE=offline): a local run folder whose history
    holds the logged losses. Runs where wandb is installed (it is not a dependency)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    run = tmp_path / "run"
    cfg = run_model_config(run, "tiny", num_frames=TEST_FRAMES)
    tc = TrainConfig(stage="vae", steps=2, batch_size=1, log_every=1, save_every=1000, vae_frames_per_clip=1,
                     report_to="wandb")
    train_stage("vae", str(training_shards), run, tc, cfg)
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert len(runs) == 1, runs
    records = [json.loads(x) for x in (run / "vae" / "metrics.jsonl").read_text().splitlines()]
    history = [h for h in _wandb_history(next(runs[0].glob("*.wandb"))) if "train/loss" in h]
    assert [h["_step"] for h in history] == [r["step"] for r in records] == [1, 2]
    for key in ("loss", "mse", "kl", "lr", "grad_norm"):
        assert [h[f"train/{key}"] for h in history] == pytest.approx([r[key] for r in records], rel=1e-6), key


def _wandb_history(path) -> list[dict]:
    """The history rows of an offline ``.wandb`` file: a 7-byte header (":W&B", magic, version),
    then LevelDB-log records (crc32, length, type; 32 KiB blocks) of wandb's protobuf ``Record``."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_validation_samples_start_at_step_0_and_score_as_the_evaluate_flow(training_shards, tmp_path):
    """--validate-every N: the stage's held-out case at steps 0, N, 2N… from the weights being
    trained; the last one's ObjMC is what evaluating the finished run gives for that case and seed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ic_model.evaluation.evaluate import evaluate_set
    from ic_model.pipelines.image_conductor import ImageConductorPipeline
    from ic_model.training.validation import validation_settings

    run = tmp_path / "run"
    cfg = run_model_config(run, "tiny", num_frames=TEST_FRAMES, codec="space_to_depth", latent_scaling_factor=4.0)
    train_stage("base", str(training_shards), run, _cfg("base", steps=2, report_to="none"), cfg)
    seen = []
    tc = _cfg("dense", steps=4, validate_every=2)
    train_stage("dense", str(training_shards), run, tc, cfg, on_validation=seen.append)
    records = [json.loads(x) for x in (run / "dense" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4] and [b[0]["step"] for b in seen] == [0, 2, 4]
    assert {(r["set"], r["mode"], r["metric"]) for r in records} == {("object", "none", "ObjMC")}
    for r in records:
        assert Path(r["video"]).exists() and Path(r["gif"]).exists() and r["value"] >= 0
    acc = EventAccumulator(str(next((run / "dense" / "logs").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    scalars = acc.Scalars("validation/ObjMC")
    assert [s.step for s in scalars] == [0, 2, 4]
    assert [s.value for s in scalars] == pytest.approx([r["value"] for r in records])
    assert len(acc.Images("validation_video/ObjMC")) == 3

    pipe = ImageConductorPipeline.from_run(run)
    metrics = evaluate_set(pipe, "object", tmp_path / "eval", validation_settings(tc, "none", 1.0))
    assert metrics["ObjMC"] == records[-1]["value"]


def test_damaged_run_files_are_named(tmp_path):
    """Each of these used to end in an error that did not name the file or the setting."""
    from ic_model.config import load_json
    from ic_model.models.files import WeightsFileError, write_safetensors
    from ic_model.training.run import load_run_components

    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'config.json'}: not a readable JSON file"):
        load_json(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"^before_stage must be one of \('vae', 'base'"):
        load_run_components(tmp_path, tiny_config(), before_stage="bogus")
    weights = tmp_path / "linear.safetensors"
    write_safetensors({"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, weights)
    with pytest.raises(WeightsFileError, match=f"^{weights} does not match the model: .*size mismatch for weight"):
        load_module(torch.nn.Linear(4, 3), weights)


def test_a_trajectory_file_with_a_number_json_cannot_hold_is_malformed(tmp_path):
    from ic_data.errors import TrajectoryError
    from ic_data.trajectories import load_trajectory_file

    path = tmp_path / "t.json"
    path.write_text("[[[" + "9" * 5000 + ", 1]]]")
    with pytest.raises(TrajectoryError, match=f"^{path}: malformed JSON"):
        load_trajectory_file(path, 100, 100)
