"""Sampling with camera-free guidance, input preparation, and `ic generate` / `ic evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ic_data.errors import TrajectoryError
from ic_model.models import lora
from ic_model.config import tiny_config
from ic_model.pipelines.image_conductor import ImageConductorPipeline, clip_tracks_to_source, prepare_image_and_tracks


@pytest.fixture(scope="module")
def pipe(tiny_run):
    run, _ = tiny_run
    return ImageConductorPipeline.from_run(run)


def _inputs(pipe, tracks=None):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 384, 3), dtype=np.uint8)
    prepared = prepare_image_and_tracks(image, tracks or [[[60, 60], [200, 120]], [[300, 200]]], pipe.cfg)
    return prepared


def test_image_and_trajectories_are_mapped_like_curation():
    cfg = tiny_config()
    image = np.zeros((512, 768, 3), np.uint8)  # 2× the 384×256 clip: resize only, no crop
    prepared = prepare_image_and_tracks(image, [[[200, 100], [600, 400]]], cfg)
    assert prepared.image.shape == (64, 96, 3)
    # source → clip: (x + 0.5)·0.5 − 0.5; clip → model: (x + 0.5)·0.25 − 0.5
    expected0 = ((np.array([200, 100]) + 0.5) * 0.5 - 0.5 + 0.5) * 0.25 - 0.5
    assert np.allclose(prepared.tracks[0, 0], expected0, atol=1e-4)
    assert prepared.tracks.shape == (cfg.num_frames, 1, 2)
    back = clip_tracks_to_source(prepared.tracks, prepared.geometry, cfg)
    assert np.allclose(back[[0, -1], 0], [[200, 100], [600, 400]], atol=1e-3)

    wide = np.zeros((300, 1200, 3), np.uint8)  # wider: resized to height 256, then centre-cropped
    p = prepare_image_and_tracks(wide, [[[599.5, 149.5]]], cfg)
    assert np.allclose(p.tracks[0, 0], [47.5, 31.5], atol=0.1)  # the image centre stays the centre


def test_a_point_outside_the_centre_crop_is_refused_not_clamped():
    """A 1280×256 image keeps its centre 384×256: a point drawn at x 5 used to map to model
    x ≈ −22 and be clamped to the crop's border, a motion nobody drew."""
    wide = np.zeros((256, 1280, 3), np.uint8)
    with pytest.raises(TrajectoryError) as err:
        prepare_image_and_tracks(wide, [[[700, 100], [640, 100]], [[5, 100], [700, 100]]], tiny_config())
    assert str(err.value) == ("track 1, point 0 (5, 100) is outside the centre crop the model sees, "
                              "x 447.5–831.5 and y 0–255 of 1280×256")
    inside = prepare_image_and_tracks(wide, [[[447.5, 0], [831.5, 255]]], tiny_config())  # the box's corners
    assert np.all((inside.tracks >= -0.5) & (inside.tracks <= [95.5, 63.5]))
    model_space = prepare_image_and_tracks(wide, [[[5, 10]]], tiny_config(), trajectory_space="model")
    assert np.allclose(model_space.tracks[0, 0], [5, 10])  # the model frame's pixels: all of it is seen


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "at least one track"),
        ([[]], "no points"),
        ([[[10, float("nan")]]], "not finite"),
        ([[[10, 999]]], "outside"),
        ([[["a", 3]]], "must be a number"),
        ([[[1, 1]]] * 9, "too many tracks"),
        ({"x": 1}, "must be a list"),
    ],
)
def test_bad_trajectories_get_one_clear_error(bad, match):
    with pytest.raises(TrajectoryError, match=match):
        prepare_image_and_tracks(np.zeros((256, 384, 3), np.uint8), bad, tiny_config())


def test_camera_free_guidance_is_equation_5(pipe):
    """One DDIM step: the pipeline's latents equal eq. 5 computed by hand from the three
    evaluations ε_θ0(∅), ε_θ0(c) (no LoRA) and ε_θobj(c) (object adapter)."""
    prepared = _inputs(pipe)
    cfg_scale, lam = 7.0, 1.4
    got = pipe(prepared.image, "a prompt", prepared.tracks, mode="object", num_inference_steps=1,
               guidance_scale=cfg_scale, trajs_scale=lam, seed=3, output_type="latent")

    from ic_data.trajectories import tracks_to_flow_maps
    from ic_model.models.codec import encode_video
    from ic_model.models.components import encode_text

    c = pipe.cfg
    with torch.no_grad():
        pixels = torch.from_numpy(prepared.image).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
        first = encode_video(pipe.comps.vae, pixels)[:, :, 0]
        text = encode_text(pipe.comps, ["", "a prompt"], "cpu")
        flow = torch.from_numpy(tracks_to_flow_maps(prepared.tracks, height=c.height, width=c.width,
                                                    kernel_size=c.flow_kernel_size, sigma=c.flow_sigma))[None]
        pipe.scheduler.set_timesteps(1)
        t = pipe.scheduler.timesteps[0]
        x = torch.randn(1, c.latent_channels, c.num_frames, *c.latent_size, generator=torch.Generator().manual_seed(3))
        x = x * pipe.scheduler.init_noise_sigma
        mc = pipe.comps.motion_controlnet
        with lora.adapters_disabled(mc):
            e_u = pipe.denoiser(x, t[None], text[:1], first, flow=flow)
            e_c = pipe.denoiser(x, t[None], text[1:], first, flow=flow)
        lora.set_active_adapters(mc, ["object"])
        e_obj = pipe.denoiser(x, t[None], text[1:], first, flow=flow)
        guided = e_u + cfg_scale * (e_c - e_u) + lam * (e_obj - e_c)
        expected = pipe.scheduler.step(guided, t, x).prev_sample
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(e_obj, e_c)  # the adapter really changes the prediction


def test_adapters_switch_without_reloading(pipe):
    prepared = _inputs(pipe)
    params_before = {n: p.data_ptr() for n, p in pipe.comps.motion_controlnet.named_parameters()}
    run = lambda mode: pipe(prepared.image, "x", prepared.tracks, mode=mode, num_inference_steps=2,  # noqa: E731
                            seed=1, output_type="latent")
    cam, obj, none, cam_again = run("camera"), run("object"), run("none"), run("camera")
    assert torch.equal(cam, cam_again)
    assert not torch.equal(cam, obj) and not torch.equal(obj, none)
    assert params_before == {n: p.data_ptr() for n, p in pipe.comps.motion_controlnet.named_parameters()}


def test_guidance_too_strong_to_sample_is_an_error_not_a_black_video(pipe):
    """cfg 1e30 drives the latents to inf/NaN (decoded, a black video written as "ok"): refused,
    naming the settings; sane settings are untouched by the check."""
    from ic_model.pipelines.image_conductor import SamplingDiverged

    prepared = _inputs(pipe)
    with pytest.raises(SamplingDiverged, match=r"sampling diverged to NaN/inf latents \(mode object, "
                                               r"guidance_scale 1e\+30, trajs_scale 1, float32\)"):
        pipe(prepared.image, "x", prepared.tracks, mode="object", num_inference_steps=2, guidance_scale=1e30)
    frames = pipe(prepared.image, "x", prepared.tracks, mode="object", num_inference_steps=2)
    assert frames.dtype == np.uint8 and frames.std() > 0


@pytest.mark.parametrize("change, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be a whole number in [1, 1000], got 0"),
    (dict(num_inference_steps=1.5), "num_inference_steps must be a whole number, got 1.5"),
    (dict(seed=-1), "seed must be a whole number in [0, 9223372036854775807], got -1"),
    (dict(motion_scale=float("nan")), "motion_scale must be a finite number, got nan"),
    (dict(prompt=None), "prompt must be a string, got None"),
    (dict(output_type="pil"), "output_type must be 'np' or 'latent', got 'pil'"),
])
def test_sampling_settings_out_of_range_are_refused_before_sampling(pipe, change, message):
    prepared = _inputs(pipe)
    kwargs = dict(image=prepared.image, prompt="x", tracks=prepared.tracks, mode="object", num_inference_steps=2)
    with pytest.raises(ValueError) as err:
        pipe(**{**kwargs, **change})
    assert str(err.value) == f"ImageConductorPipeline: {message}"


def test_an_image_not_in_uint8_pixels_is_refused(pipe):
    """A float image in [0, 1] used to be read as 0–255 levels: the model saw a black frame."""
    prepared = _inputs(pipe)
    h, w = pipe.cfg.height, pipe.cfg.width
    with pytest.raises(ValueError, match=rf"image must be uint8 {h}×{w}×3 \(use prepare_image_and_tracks\), "
                                         rf"got float32 \({h}, {w}, 3\)"):
        pipe(prepared.image.astype(np.float32) / 255, "x", prepared.tracks, num_inference_steps=2)


def test_a_run_with_no_trained_base_is_refused_not_run_on_random_weights(tmp_path):
    from ic_model.pipelines.image_conductor import RunNotTrainedError
    from ic_model.training.run import run_model_config

    run_model_config(tmp_path / "run", "tiny")
    with pytest.raises(RunNotTrainedError, match="the tiny preset's 'base' stage has not finished"):
        ImageConductorPipeline.from_run(tmp_path / "run")


@pytest.mark.parametrize("settings, message", [
    (dict(trajs_scale=1.3), "trajs_scale 1.3: camera-free guidance needs the object mode (this evaluation samples "
                            "in 'camera')"),
    (dict(ablation=True), "ablation sweeps camera-free guidance's λ_trajs: it needs the object mode (this "
                          "evaluation samples in 'camera')"),
])
def test_evaluation_refuses_guidance_outside_the_object_mode_before_sampling(pipe, tmp_path, settings, message):
    """The deployments skip ic's checks: the library refuses it itself, before any case (the
    ablation was silently ignored, λ_trajs a ValueError at the first case)."""
    from ic_data.errors import BadInputError
    from ic_model.evaluation.evaluate import EvalSettings, evaluate_set

    with pytest.raises(BadInputError) as err:
        evaluate_set(pipe, "camera", tmp_path / "out", EvalSettings(steps=1, **settings))
    assert str(err.value) == message and not (tmp_path / "out").exists()
    with pytest.raises(BadInputError, match="in 'base'"):
        evaluate_set(pipe, "object", tmp_path / "out", EvalSettings(steps=1, mode="base", **settings))


def test_base_mode_ignores_the_trajectories(pipe):
    """`base` is the image-to-video baseline: the motion ControlNet is off, so the trajectories
    change nothing; with the ControlNet on (`none`) they do."""
    a, b = _inputs(pipe), _inputs(pipe, [[[300, 40], [20, 200]]])
    run = lambda prepared, mode: pipe(prepared.image, "x", prepared.tracks, mode=mode,  # noqa: E731
                                      num_inference_steps=2, seed=3, output_type="latent")
    assert torch.equal(run(a, "base"), run(b, "base"))
    assert not torch.equal(run(a, "none"), run(b, "none"))
    assert not torch.equal(run(a, "base"), run(a, "none"))


GOOD_REQUEST = {"image": "a.png", "prompt": "", "trajectories": [[[1, 2]]], "out": "a.mp4"}


@pytest.mark.parametrize("change, problem", [
    ({"steps": 0}, "steps must be a whole number from 1 to 1000, got 0"),
    ({"steps": 2.5}, "steps must be a whole number from 1 to 1000, got 2.5"),
    ({"seed": -1}, "seed must be a whole number from 0 to 2**63 - 1, got -1"),
    ({"trajs_scale": "1.3"}, "trajs_scale must be a finite number ≥ 0, got '1.3'"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number ≥ 0, got inf"),
    ({"mode": "objekt"}, "mode must be one of ['camera', 'object', 'none', 'base'], got 'objekt'"),
    ({"trajectory_space": "clip"}, "trajectory_space must be one of ['image', 'model'], got 'clip'"),
    ({"out": "a.gif"}, "out must be an .mp4 file (its .gif preview and .json record go beside it), got a.gif"),
    ({"prompt": None}, "prompt must be a string, got NoneType"),
    ({"trajectories": {"x": 1}}, "trajectories must be a file path or a list of tracks, got dict"),
    ({"stpes": 3}, "unknown key(s) ['stpes']; a request has ['image', 'prompt', 'trajectories', 'out', 'mode', "
                   "'trajs_scale', 'guidance_scale', 'steps', 'seed', 'trajectory_space', 'negative_prompt']"),
    ({"negative_prompt": ["blurry"]}, "negative_prompt must be a string, got list"),
])
def test_a_generation_request_out_of_range_is_named(change, problem):
    from ic_model.pipelines.generate import request_problems

    assert request_problems(GOOD_REQUEST) == []
    assert request_problems({**GOOD_REQUEST, **change}) == [problem]
    assert request_problems({"image": "a.png"}) == ["missing ['prompt', 'trajectories', 'out']"]


def test_ic_generate_writes_video_preview_and_record(prefect_api, tiny_run, tmp_path):
    from flows.cli import main as ic_main
    from ic_data.mp4 import decode_mp4

    run, _ = tiny_run
    import cv2

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    traj = tmp_path / "traj.json"
    traj.write_text(json.dumps([[[100, 100], [250, 150], [400, 160]], [[50, 250]]]))
    out = tmp_path / "video.mp4"
    code = ic_main(["generate", "--image", str(image), "--prompt", "a ball rolls", "--trajectories", str(traj),
                    "--run", str(run), "--mode", "object", "--trajs-scale", "1.2", "--steps", "2",
                    "--out", str(out)])
    assert code == 0
    frames = decode_mp4(out.read_bytes())
    assert frames.shape == (8, 64, 96, 3)
    assert out.with_suffix(".gif").stat().st_size > 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["trajs_scale"] == 1.2 and (record["device"], record["dtype"]) == ("cpu", "float32")

    traj.write_text('[[[100, 100], [250, "x"]]]')
    assert ic_main(["generate", "--image", str(image), "--trajectories", str(traj), "--run", str(run),
                    "--out", str(tmp_path / "bad.mp4"), "--steps", "1"]) == 2  # refused before any flow
    assert not (tmp_path / "bad.mp4").exists()


def test_ic_evaluate_camera_set_writes_metrics(prefect_api, tiny_run, tmp_path):
    from flows.cli import main as ic_main

    run, _ = tiny_run
    out = tmp_path / "eval"
    assert ic_main(["evaluate", "camera", "--run", str(run), "--out", str(out), "--steps", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == 10 and metrics["tracker"] == "lk"
    assert metrics["CamMC"] >= 0 and len(metrics["cases"]) == 10
    assert len(list((out / "videos").glob("*.mp4"))) == 10


def test_ic_evaluate_runs_a_set_file_of_your_own(prefect_api, tiny_run, tmp_path, capsys):
    """A user's set file: its cases in order, named by their ids, scored by its kind, in
    RUN/eval/<stem>/; a broken one is refused by `ic` and fails a deployment's run in one line."""
    import shutil

    import cv2

    from flows.cli import main as ic_main
    from flows.evaluate import evaluate

    run, _ = tiny_run
    cv2.imwrite(str(tmp_path / "first.png"), np.random.default_rng(2).integers(0, 256, (128, 192, 3), dtype=np.uint8))
    spec = tmp_path / "held-out.json"
    spec.write_text(json.dumps({"kind": "object", "frame_size": [192, 128], "cases": [
        {"id": "right", "prompt": "it moves right", "trajectories": [[[40, 60], [150, 60]]], "image": "first.png"},
        {"id": "up", "trajectories": [[[96, 110], [96, 20]], [[20, 20]]]}]}))
    out = run / "eval" / "held-out"
    try:
        assert ic_main(["evaluate", str(spec), "--run", str(run), "--steps", "1"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert (metrics["set"], metrics["kind"], metrics["set_file"], metrics["mode"]) == (
        "held-out", "object", str(spec), "object")
    assert [c["case"] for c in metrics["cases"]] == ["right", "up"] and metrics["num_videos"] == 2
    # The set's ObjMC is the mean of the unrounded case errors; the cases show them to 3 decimals.
    assert metrics["ObjMC"] == pytest.approx(np.mean([c["mc_px"] for c in metrics["cases"]]), abs=1.5e-3)
    assert all("background_motion_px" in c for c in metrics["cases"])
    assert [c["gif"] for c in metrics["cases"]] == ["videos/right.gif", "videos/up.gif"]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"kind": "object", "frame_size": [192, 128], "cases": [{"id": "a"}]}))
    capsys.readouterr()
    assert ic_main(["evaluate", str(broken), "--run", str(run), "--steps", "1"]) == 2
    assert f"evaluation set {broken}, case 'a': missing 'trajectories'" in capsys.readouterr().err
    state = evaluate(set_name=str(broken), run=str(run), out=str(tmp_path / "eval"), steps=1, return_state=True)
    assert state.is_failed() and state.message == f"evaluation set {broken}, case 'a': missing 'trajectories'"


def test_bad_input_ends_generate_and_evaluate_in_one_line_naming_it(prefect_api, tiny_run, training_shards,
                                                                     tmp_path):
    """A request, image or reference shard that cannot be used fails its flow run with one line
    naming it, not a traceback; the good requests of the same batch are still written."""
    import cv2

    from flows.evaluate import evaluate
    from flows.generate import generate

    run, _ = tiny_run
    good, bad = tmp_path / "frame.png", tmp_path / "broken.png"
    cv2.imwrite(str(good), np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    bad.write_bytes(b"\x89PNG not really")
    request = dict(prompt="", trajectories=[[[10, 10], [40, 30]]], steps=1)
    state = generate(run=str(run), requests=[dict(request, image=str(good), out=str(tmp_path / "ok.mp4")),
                                             dict(request, image=str(bad), out=str(tmp_path / "no.mp4")),
                                             dict(request, image=str(good), out=str(tmp_path / "n2.mp4"), steps=0)],
                     return_state=True)
    assert state.is_failed()
    first, third = state.message.split("; ")
    assert first == (f"2 of 3 requests failed: BadInputError: {bad} is not an image in a format read here (JPEG, "
                     "PNG, WebP, BMP, TIFF, GIF or PPM)")
    assert third == "BadInputError: request 3: steps must be a whole number from 1 to 1000, got 0"
    assert (tmp_path / "ok.mp4").is_file() and not (tmp_path / "no.mp4").exists() and not (tmp_path / "n2.mp4").exists()

    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(bad.read_bytes())
    settings = dict(set_name="object", run=str(run), steps=1, max_cases=1, return_state=True)
    state = evaluate(out=str(tmp_path / "eval-images"), images=str(images), **settings)
    assert state.is_failed() and state.message.startswith(f"{images / 'a.png'} is not an image in a format read here")

    reference = tmp_path / "reference"
    reference.mkdir()
    shard = sorted(training_shards.glob("*.tar"))[0]
    (reference / shard.name).write_bytes(shard.read_bytes()[:5000])  # cut inside the first sample: refused up front
    state = evaluate(out=str(tmp_path / "eval-early"), reference=str(reference), **{**settings, "max_cases": 2})
    assert state.is_failed() and not (tmp_path / "eval-early").exists()
    assert state.message == (f"reference {reference}: shard {reference / shard.name}: not a readable tar file "
                             "(ReadError: unexpected end of data)")
    import tarfile

    with tarfile.open(shard) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".mp4")][-1]
    (reference / shard.name).write_bytes(shard.read_bytes()[: last.offset_data + last.size // 2])  # in the last clip
    state = evaluate(out=str(tmp_path / "eval-reference"), reference=str(reference), **{**settings, "max_cases": 2})
    assert state.is_failed()
    assert state.message == f"shard {reference / shard.name}: not a readable tar file (ReadError: unexpected end of data)"
    # Read after the videos were generated: their ObjMC is kept, FID and FVD are not made up.
    kept = json.loads((tmp_path / "eval-reference" / "metrics.json").read_text())
    assert kept["num_videos"] == 2 and kept["ObjMC"] >= 0 and "FID" not in kept and "FVD" not in kept


def test_the_last_ddim_step_lands_on_the_predicted_clean_latents(pipe):
    """As in the official inference (DDIM with AnimateDiff's settings, diffusers' default
    ``set_alpha_to_one``): after the last of 25 steps no predicted noise is left in the latents
    (before, √(1 − ᾱ₀) ≈ 0.03 of it)."""
    import copy

    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(25)
    t = scheduler.timesteps[-1]
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(1, 4, 2, 8, 12, generator=g), torch.randn(1, 4, 2, 8, 12, generator=g)
    noisy = scheduler.add_noise(clean, noise, t.reshape(1))
    prediction = {"epsilon": noise, "sample": clean,
                  "v_prediction": scheduler.get_velocity(clean, noise, t.reshape(1))}[scheduler.config.prediction_type]
    out = scheduler.step(prediction, t, noisy).prev_sample
    assert torch.allclose(out, clean, atol=1e-4), float((out - clean).abs().max())


def test_the_vae_decode_in_chunks_equals_one_decode(pipe):
    from ic_model.models.codec import decode_latents

    g = torch.Generator().manual_seed(0)
    h, w = pipe.cfg.latent_size
    latents = torch.randn(1, pipe.cfg.latent_channels, pipe.cfg.num_frames, h, w, generator=g)
    whole = decode_latents(pipe.comps.vae, latents)
    for chunk in (1, 3):
        torch.testing.assert_close(decode_latents(pipe.comps.vae, latents, chunk), whole, atol=1e-5, rtol=1e-5)


def test_bf16_sampling_stays_close_to_fp32_and_keeps_the_latents_in_fp32(tiny_run, pipe, capsys):
    """The networks in bf16, the DDIM latents and the guidance in fp32. The bound is the bf16
    rounding carried through 4 steps: measured 0.0074 of the latents' std on this model (native
    and ATEN_CPU_CAPABILITY=default with MKL/oneDNN at AVX2, 1 thread); 0.05 allowed."""
    run, _ = tiny_run
    half = ImageConductorPipeline.from_run(run, dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.comps.unet.dtype == torch.bfloat16
    prepared = _inputs(pipe)
    kwargs = dict(mode="object", num_inference_steps=4, guidance_scale=1.0, trajs_scale=1.3, output_type="latent")
    ref = pipe(prepared.image, "", prepared.tracks, **kwargs)
    half.set_progress_bar_config(disable=False)  # shown even off a terminal
    got = half(prepared.image, "", prepared.tracks, **kwargs)
    assert got.dtype == torch.float32
    rel = ((got - ref).pow(2).mean().sqrt() / ref.std()).item()
    assert rel < 0.05, rel
    assert "sampling (object)" in capsys.readouterr().err


def test_read_image_refuses_a_jpeg_cut_short_and_turns_a_photo_upright(tmp_path):
    """OpenCV alone reads a cut JPEG as a grey-filled frame (a warning on stderr): refused.
    A photo's EXIF orientation is applied, as a viewer shows it."""
    from PIL import Image

    from ic_data.errors import BadInputError
    from ic_model.pipelines.generate import read_image

    rng = np.random.default_rng(1)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    assert read_image(whole).shape == (64, 96, 3)
    with pytest.raises(BadInputError, match="cannot decode image .*cut.jpg"):
        read_image(cut)
    marked = np.zeros((64, 96, 3), np.uint8)
    marked[:8, :8] = 255  # stored top-left
    photo = Image.fromarray(marked)
    exif = photo.getexif()
    exif[0x0112] = 6  # shown turned clockwise: the mark lands top-right
    photo.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (96, 64, 3) and upright[:8, -8:].mean() > 200 and upright[:8, :8].mean() < 50


def test_a_generation_request_whose_out_cannot_be_a_file_is_named_before_sampling(tmp_path):
    """Both used to fail only when the video was written, after the sampling."""
    from ic_model.pipelines.generate import request_problems

    (tmp_path / "x.mp4").mkdir()
    assert request_problems({**GOOD_REQUEST, "out": str(tmp_path / "x.mp4")}) == [
        f"out {tmp_path / 'x.mp4'} is a folder, not a file to write"]
    (tmp_path / "notes").write_text("a file")
    assert request_problems({**GOOD_REQUEST, "out": str(tmp_path / "notes" / "v.mp4")}) == [
        f"out {tmp_path / 'notes' / 'v.mp4'}: a part of its folder is a file, not a folder"]
    (tmp_path / "y.gif").mkdir()  # where the preview of y.mp4 goes: it was written after the video, and failed
    assert request_problems({**GOOD_REQUEST, "out": str(tmp_path / "y.mp4")}) == [
        f"out {tmp_path / 'y.mp4'}: {tmp_path / 'y.gif'} is a folder, not a file to write"]
    if Path("/proc/self/stat").exists():  # Linux: no new files there, even for root (which os.access lets by)
        (problem,) = request_problems({**GOOD_REQUEST, "out": "/proc/v.mp4"})
        assert problem.startswith("out /proc/v.mp4: cannot create files in /proc (")


def test_a_generation_that_cannot_write_keeps_nothing_and_says_so(pipe, tmp_path, monkeypatch):
    """The disk fills up while the preview is written: one BadInputError naming the file, and the
    video already written goes too (a video without its record passes for a finished one)."""
    import ic_model.pipelines.generate as generate
    from ic_data.errors import BadInputError

    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)).save(image)

    def full(frames, tracks, indices, path, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(generate, "preview_gif", full)
    out = tmp_path / "out" / "v.mp4"
    with pytest.raises(BadInputError, match=rf"cannot write {tmp_path / 'out' / 'v.gif'} \(No space left on device\); "
                                            "nothing was kept"):
        generate.generate_to_files(pipe, image, "", [[[60, 60], [200, 120]]], out, steps=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_what_generation_made_of_its_input_is_in_the_record(pipe, tmp_path):
    """A transparent image (shown over white) and a prompt past the text encoder's 77 tokens (the
    rest is not read): said in the record, where they used to go unmentioned."""
    from ic_model.pipelines.generate import generate_to_files

    rgba = np.random.default_rng(0).integers(0, 256, (256, 384, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    prompt = "a red fox runs " * 30
    tokens = len(pipe.comps.tokenizer(prompt, verbose=False).input_ids)
    assert tokens > 77
    record = generate_to_files(pipe, tmp_path / "cutout.png", prompt, [[[60, 60], [200, 120]]], tmp_path / "v.mp4",
                               steps=1)
    assert record["notes"] == ["cutout.png has transparent pixels: they are shown over white",
                               f"the prompt is {tokens} tokens long: the text encoder reads its first 77"]
    assert json.loads((tmp_path / "v.json").read_text())["notes"] == record["notes"]
    plain = generate_to_files(pipe, tmp_path / "cutout.png", "a red fox", [[[60, 60], [200, 120]]],
                              tmp_path / "w.mp4", steps=1)
    assert plain["notes"] == ["cutout.png has transparent pixels: they are shown over white"]


def test_the_negative_prompt_is_the_text_of_guidance_s_unconditional_branch(pipe, tmp_path, monkeypatch):
    """ε = ε(∅) + λ(ε(c) − ε(∅)): at λ = 1 the negative text drops out, above it moves the sample;
    ic generate's request carries it to the pipeline and into the record."""
    from ic_model.pipelines.generate import generate_to_files, request_problems

    prepared = _inputs(pipe)
    negative = "worst quality, low quality, letterboxed"  # the official examples' n_prompt

    def sample(text, cfg):
        return pipe(prepared.image, "a red fox", prepared.tracks, num_inference_steps=2, guidance_scale=cfg,
                    negative_prompt=text, output_type="latent")

    torch.testing.assert_close(sample("", 1.0), sample(negative, 1.0), atol=1e-5, rtol=0)
    assert (sample("", 8.5) - sample(negative, 8.5)).abs().max() > 1e-2

    seen = []
    call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **kw: seen.append(kw) or call(self, *a, **kw))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)).save(tmp_path / "frame.png")
    record = generate_to_files(pipe, tmp_path / "frame.png", "a red fox", [[[60, 60], [200, 120]]], tmp_path / "v.mp4",
                               steps=1, negative_prompt=negative)
    assert seen[-1]["negative_prompt"] == negative and record["negative_prompt"] == negative
    assert json.loads((tmp_path / "v.json").read_text())["negative_prompt"] == negative
    assert request_problems(dict(image="a.png", prompt="", trajectories=[], out=str(tmp_path / "x.mp4"),
                                 negative_prompt=3)) == ["negative_prompt must be a string, got int"]


def test_an_evaluation_samples_every_case_with_its_negative_prompt(pipe, tmp_path, monkeypatch):
    from ic_model.evaluation.evaluate import EvalSettings, evaluate_set

    seen = []
    call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **kw: seen.append(kw) or call(self, *a, **kw))
    negative = "worst quality, low quality, letterboxed"
    metrics = evaluate_set(pipe, "camera", tmp_path / "eval", EvalSettings(steps=1, max_cases=2, negative_prompt=negative))
    assert [kw["negative_prompt"] for kw in seen] == [negative, negative]
    assert metrics["settings"]["negative_prompt"] == negative
    with pytest.raises(ValueError, match="negative_prompt must be a string, got None"):
        EvalSettings(negative_prompt=None)
