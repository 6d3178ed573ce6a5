"""The `demo` flow end to end at the `test` scale (a few steps per stage, `make test-e2e`): every
stage hands valid artifacts to the next and the report is written. No quality assertions at this
scale. Its helpers' tests below run in `make test`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("prefect")
from conftest import latest_artifact, server_now  # noqa: E402
from flows.demo import demo  # noqa: E402
from ic_data.manifest import read_manifest  # noqa: E402
from ic_data.shards import read_shard  # noqa: E402
from ic_model.evaluation.evalsets import load_eval_set  # noqa: E402
from ic_model.training.run import is_done, run_model_config  # noqa: E402
from tasks.demo import SCALES, STAGES  # noqa: E402


@pytest.fixture(scope="module")
def demo_run(prefect_api, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    started = server_now()
    state = demo(out=str(out), scale="test", seed=0, return_state=True)
    artifacts = {k: latest_artifact(k, after=started) for k in ("demo-report", "demo-metrics", "demo-trajs-sweep",
                                                                 "demo-trajectory-response")}
    return out, state, artifacts  # work in out/test/, the report in both


@pytest.mark.e2e  # the demo flow, whole
def test_curation_hands_shards_to_training(demo_run):
    out, state, _ = demo_run
    assert state.is_completed(), state.message
    scale = SCALES["test"]
    expected = {"webvid": scale.mixed + scale.objects, "realestate10k": scale.camera}
    for source, n in expected.items():
        rows = read_manifest(out / "test" / "curated" / source / "manifest.parquet")
        assert len(rows) == n and len({r.path for r in rows}) == n  # every video exactly once
        ok = [r for r in rows if r.status == "ok"]
        assert ok, f"{source}: nothing survived curation"
        sample = next(s for s in read_shard(out / "test" / "curated" / source / ok[0].shard) if s.key == ok[0].key)
        assert sample.decode_frames().shape == (32, 256, 384, 3)
        assert sample.meta["camera_only"] is (source == "realestate10k")


@pytest.mark.e2e  # the demo flow, whole
def test_every_stage_trained_in_order(demo_run):
    out, _, _ = demo_run
    run = out / "test" / "run"
    cfg = run_model_config(run)
    assert cfg.preset == "tiny" and cfg.num_frames == SCALES["test"].num_frames
    assert cfg.codec == "space_to_depth" and cfg.stages == STAGES and not (run / "vae").exists()
    for stage in STAGES:
        assert is_done(run, stage), stage
        records = [json.loads(x) for x in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(1, SCALES["test"].steps[stage] + 1))
        assert all(np.isfinite(r["loss"]) for r in records)
    # The chain without Prefect (ic_demo.chain) asks for exactly these training settings.
    from ic_demo.chain import stage_train_config

    for stage in STAGES:
        saved = json.loads((run / stage / "train_config.json").read_text())
        assert saved == json.loads(json.dumps(stage_train_config(SCALES["test"], "tiny", stage, 0).to_dict())), stage
    assert (run / "camera" / "camera_lora.safetensors").exists()
    assert (run / "object" / "object_lora.safetensors").exists()


@pytest.mark.e2e  # the demo flow, whole
def test_report_holds_every_number(demo_run):
    out, _, artifacts = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    n = SCALES["test"].eval_cases
    variants = metrics["variants"]
    assert set(variants) == {"object/object", *(f"{s}/{m}" for s, m in SCALES["test"].variants)}
    for key, v in variants.items():
        name = "CamMC" if v["set"] == "camera" else "ObjMC"
        assert np.isfinite(v[name]) and v[name] >= 0, key
        assert np.isfinite(v["FID"]) and np.isfinite(v["FVD"]), key
        assert v["FVD_note"] == "8 frames resampled (nearest) to 16 for I3D"  # I3D wants 16 frames
        if v["set"] == "object":
            assert np.isfinite(v["background_motion_px"]) and np.isfinite(v["background_motion_median_px"])
    assert variants["object/object"]["videos"] == 4 * n  # the λ_trajs sweep: 1.0, 1.1, 1.3, 1.5
    assert set(metrics["trajs_scale_sweep"]) == {"1", "1.1", "1.3", "1.5"}
    obj, off, cam = variants["object/object"], variants["object/base"], variants["object/camera"]
    assert metrics["objmc_ratio"] == pytest.approx(obj["ObjMC"] / off["ObjMC"], rel=1e-3)
    assert metrics["background_ratio"] == pytest.approx(
        obj["background_motion_median_px"] / cam["background_motion_median_px"], rel=1e-3)
    # The videos behind the numbers: one per case and variant.
    cases = [c.id for c in load_eval_set("object")[:n]]
    for c in cases:
        assert (out / "test" / "eval" / "object-base" / "videos" / f"{c}.mp4").exists()
        assert (out / "test" / "eval" / "object-object" / "videos" / f"{c}-trajs1.5.mp4").exists()

    # The trajectory-response probe: five conditions at two timesteps on held-out windows.
    response = metrics["context"]["trajectory_response"]
    assert response["num_samples"] == SCALES["test"].response_samples and response["stage"] == "sparse"
    assert len(response["rows"]) == 10 and all(np.isfinite(r["moving"]) for r in response["rows"])
    assert artifacts["demo-trajectory-response"] is not None

    md = (out / "report.md").read_text()
    assert "objmc_ratio" in md and "training_curves.png" in md and "gifs/object-" in md
    assert "What the motion ControlNet learned" in md
    assert "<table>" in (out / "report.html").read_text()
    with Image.open(out / "training_curves.png") as png:
        assert png.format == "PNG" and png.width > 300
    gif_path = out / "gifs" / f"object-{cases[0]}.gif"
    with Image.open(gif_path) as gif:  # input + 4 variant panels, one frame per video frame
        assert gif.n_frames == SCALES["test"].num_frames and gif.width > 5 * 96
    for name in ("report.md", "report.html", "metrics.json", "training_curves.png", f"gifs/object-{cases[0]}.gif"):
        assert (out / "test" / name).read_bytes() == (out / name).read_bytes(), name
    assert artifacts["demo-report"] is not None and "objmc_ratio" in artifacts["demo-report"].data
    rows = artifacts["demo-metrics"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {r["variant"] for r in rows} == set(variants)


def test_a_run_of_another_model_is_moved_aside_not_reused(tmp_path):
    from tasks.demo import demo_model_config

    run = tmp_path / "run"
    run_model_config(run, "tiny", num_frames=8)  # an older demo's run: the tiny VAE codec
    (run / "vae").mkdir()
    cfg = demo_model_config(str(run), SCALES["test"])
    assert cfg.codec == "space_to_depth" and run_model_config(run) == cfg
    assert (tmp_path / "run.old-1" / "vae").is_dir() and not (run / "vae").exists()
    assert demo_model_config(str(run), SCALES["test"]) == cfg  # the same model: kept
    assert not (tmp_path / "run.old-2").exists()
    # A field the scale leaves at its default counts too: a run trained with a clean first frame.
    other = tmp_path / "other"
    run_model_config(other, "tiny", num_frames=8, **SCALES["test"].model, first_frame_latent="clean")
    assert demo_model_config(str(other), SCALES["test"]).first_frame_latent == "noisy"
    assert run_model_config(tmp_path / "other.old-1").first_frame_latent == "clean"


def test_finished_evaluation_is_reused_only_when_current(tmp_path):
    import os

    from tasks.demo import finished_evaluation

    run, out = tmp_path / "run", tmp_path / "eval"
    (run / "object").mkdir(parents=True)
    out.mkdir()
    done, metrics = run / "object" / "done.json", out / "metrics.json"
    done.write_text("{}")
    settings = {"steps": 25, "mode": "object"}
    assert finished_evaluation(str(out), str(run), settings) is None  # nothing evaluated yet
    metrics.write_text(json.dumps({"settings": {**settings, "seed": 0}, "ObjMC": 1.5, "cases": [{"case": "a"}]}))
    os.utime(done, (1_000, 1_000))
    assert finished_evaluation(str(out), str(run), settings) == {"settings": {**settings, "seed": 0}, "ObjMC": 1.5}
    assert finished_evaluation(str(out), str(run), {**settings, "steps": 10}) is None  # other settings
    os.utime(metrics, (500, 500))
    assert finished_evaluation(str(out), str(run), settings) is None  # a stage retrained since
    metrics.write_text('{"settings": {"steps": 2')  # cut short by a kill
    assert finished_evaluation(str(out), str(run), settings) is None


def test_gif_labels_render_greek_letters():
    """λ_trajs in the GIF titles is drawn as λ (OpenCV's fonts drew '?')."""
    from ic_demo.report import _label

    img = np.zeros((8, 80, 3), np.uint8)
    lam, question, blank = _label(img, "λ"), _label(img, "?"), _label(img, "")
    assert lam.shape == (24, 80, 3)
    assert not np.array_equal(lam, blank) and not np.array_equal(lam, question)



def test_every_scale_gives_the_flow_and_the_chain_one_train_config():
    """The demo flow hands the train-stage flow a scale's train_options beside explicit settings
    (proof-gpu's include mixed_precision); both paths must build the same TrainConfig."""
    from flows.train import flow_train_config
    from ic_demo.chain import stage_train_config

    for name, scale in SCALES.items():
        for stage in STAGES:
            expected = stage_train_config(scale, "tiny", stage, 0)
            assert expected.mixed_precision == scale.train_options.get("mixed_precision", "no"), name
            got = flow_train_config("tiny", {**scale.train_options, "frame_stride": scale.frame_stride}, stage=stage,
                                    steps=scale.steps[stage], batch_size=scale.batch_size,
                                    learning_rate=scale.learning_rate[stage], seed=0, mixed_precision=None,
                                    gradient_checkpointing=None, grad_accum_steps=None, report_to=None,
                                    validate_every=None)
            assert got == expected, (name, stage)
