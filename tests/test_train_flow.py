"""The `train-stage` flow and `ic train` under Prefect: artifacts, prerequisites, resume."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("prefect")
from conftest import latest_artifact, server_now  # noqa: E402
from flows.cli import main as ic_main  # noqa: E402
from flows.train import train_stage_flow  # noqa: E402


def test_flow_trains_a_stage_and_publishes_its_metrics(prefect_api, training_shards, tmp_path):
    run = tmp_path / "run"
    started = server_now()
    state = train_stage_flow(
        stage="vae", shards=str(training_shards), run=str(run), steps=3, batch_size=1,
        options={"log_every": 1, "vae_frames_per_clip": 1}, return_state=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["steps"] == 3 and summary["outputs"] == ["vae.safetensors"]
    assert (run / "vae" / "done.json").exists()

    table = latest_artifact("train-vae-metrics", after=started)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "lr", "samples_per_s", "peak_memory_mb"} <= set(rows[0])
    progress = latest_artifact("train-vae-progress", after=started)
    assert float(progress.data) == 100.0
    assert "final_loss" in latest_artifact("train-vae-summary", after=started).data
    # The server is the session's: an artifact older than the run under test does not count.
    assert latest_artifact("train-vae-summary", after=server_now()) is None

    # `ic train` runs the same flow: the finished stage is kept, not retrained.
    assert ic_main(["train", "vae", "--shards", str(training_shards), "--run", str(run), "--steps", "3"]) == 0
    assert len((run / "vae" / "metrics.jsonl").read_text().splitlines()) == 3


def test_stage_without_prerequisite_fails_with_a_clear_message(prefect_api, training_shards, tmp_path, capsys):
    state = train_stage_flow(stage="object", shards=str(training_shards), run=str(tmp_path / "r"), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("stage 'object' needs the finished 'camera' stage")  # its line alone
    with pytest.raises(Exception, match="needs the finished 'camera' stage"):
        state.result()
    # `ic train` finds it before the flow starts: one line, exit 2.
    assert ic_main(["train", "camera", "--shards", str(training_shards), "--run", str(tmp_path / "r")]) == 2
    assert "needs the finished 'sparse' stage" in capsys.readouterr().err


def test_an_unreadable_shard_ends_the_flow_with_one_line_naming_it(prefect_api, training_shards, tmp_path, capsys,
                                                                   caplog):
    bad = tmp_path / "shards"
    bad.mkdir()
    for shard in sorted(training_shards.glob("*.tar")):
        data = shard.read_bytes()
        (bad / shard.name).write_bytes(data[: len(data) // 2])  # cut off: tar finds out at the cut
    args = dict(stage="vae", shards=str(bad), run=str(tmp_path / "run"), steps=2, batch_size=1)
    state = train_stage_flow(**args, options={"vae_frames_per_clip": 1}, return_state=True)
    assert state.is_failed()
    assert re.fullmatch(r"shard .*/shards/\S+\.tar: not a readable tar file \(ReadError: unexpected end of data\)",
                        state.message), state.message
    assert ic_main(["train", "vae", "--shards", str(bad), "--run", str(tmp_path / "run"), "--steps", "2"]) == 1
    assert f"ic train: the flow run ended Failed: {state.message}" in capsys.readouterr().err
    # Prefect's log of the runs (pytest captures it; the console handler bypasses capsys) names the
    # shard and carries no traceback.
    assert any(state.message in r.getMessage() for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if r.exc_info]  # not even an empty one ("NoneType: None")


def test_ic_train_model_option_starts_a_space_to_depth_run(prefect_api, training_shards, tmp_path, capsys):
    run = tmp_path / "run"
    model = '{"codec": "space_to_depth", "latent_scaling_factor": 4.0}'
    args = ["--shards", str(training_shards), "--run", str(run), "--steps", "2", "--batch-size", "1"]
    # The codec has nothing to train, so base is the first stage of such a run.
    assert ic_main(["train", "base", *args, "--model", model, "--options", '{"log_every": 1}']) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["codec"] == "space_to_depth" and config["latent_channels"] == 192
    assert (run / "base" / "unet.safetensors").exists() and not (run / "vae").exists()
    # An existing run keeps its model: a different one is refused by name.
    assert ic_main(["train", "dense", *args, "--model", '{"codec": "vae"}']) == 2
    assert "has codec='space_to_depth', not 'vae'" in capsys.readouterr().err
    assert ic_main(["train", "dense", *args, "--model", '{"codecs": "vae"}']) == 2
    assert "--model: 'codecs' is not a ModelConfig field" in capsys.readouterr().err


def test_ic_train_config_file_round_trip(prefect_api, training_shards, tmp_path):
    """file → TrainConfig/ModelConfig → the stage's saved configs → the same values."""
    run = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text(f"run: {run}\nshards: {training_shards}\n"
                    "model: {codec: space_to_depth, latent_scaling_factor: 4.0, num_frames: 8, flow_gain: 20.0}\n"
                    "train: {batch_size: 1, log_every: 1, frame_stride: 4, motion_loss_weight: 2.0}\n"
                    "stages: {base: {steps: 2, learning_rate: 5.0e-4}}\n")
    assert ic_main(["train", "base", "--config", str(path)]) == 0
    model = json.loads((run / "base" / "config.json").read_text())
    assert (model["codec"], model["latent_scaling_factor"], model["num_frames"], model["flow_gain"]) == (
        "space_to_depth", 4.0, 8, 20.0)
    train = json.loads((run / "base" / "train_config.json").read_text())
    assert {k: train[k] for k in ("steps", "learning_rate", "batch_size", "log_every", "frame_stride",
                                  "motion_loss_weight")} == {
        "steps": 2, "learning_rate": 5e-4, "batch_size": 1, "log_every": 1, "frame_stride": 4, "motion_loss_weight": 2.0}
    assert len((run / "base" / "metrics.jsonl").read_text().splitlines()) == 2


def test_validation_samples_reach_the_ui_while_the_stage_trains(prefect_api, training_shards, tmp_path):
    run = tmp_path / "run"
    started = server_now()
    state = train_stage_flow(
        stage="base", shards=str(training_shards), run=str(run), steps=2, batch_size=1, validate_every=2,
        options={"log_every": 1, "frame_stride": 4}, report_to="none",
        model={"codec": "space_to_depth", "latent_scaling_factor": 4.0, "num_frames": 8}, return_state=True,
    )
    assert state.is_completed(), state.message
    artifact = latest_artifact("train-base-validation", after=started)
    assert artifact is not None and "at step 2" in artifact.data and "ObjMC" in artifact.data
    assert "data:image/gif;base64," in artifact.data
    steps = [json.loads(x)["step"] for x in (run / "base" / "validation.jsonl").read_text().splitlines()]
    assert steps == [0, 2]


def test_the_train_stage_deployment_form_has_typed_validated_fields(prefect_api, training_shards, tmp_path):
    """What the UI's Run form is built from: the deployment's parameter schema, read back from
    the Prefect API, names every TrainConfig/ModelConfig field with its choices and bounds."""
    from prefect.client.orchestration import get_client

    train_stage_flow.to_deployment(name="dense", parameters={"stage": "dense"}).apply()
    with get_client(sync_client=True) as client:
        schema = client.read_deployment_by_name("train-stage/dense").parameter_openapi_schema
    defs = schema.get("definitions") or schema.get("$defs")
    train = defs["TrainOptions"]["properties"]
    assert {"ortho_weight", "latent_cache", "frame_stride", "motion_loss_weight"} <= set(train)
    assert {"enum": ["no", "fp16", "bf16"], "type": "string"} in train["mixed_precision"]["anyOf"]
    assert {"minimum": 1, "type": "integer"} in train["batch_size"]["anyOf"]
    model = defs["ModelOptions"]["properties"]
    assert {"enum": ["joint", "per_frame"], "type": "string"} in model["motion_norm"]["anyOf"]
    assert "sd15_path" in defs["WeightPaths"]["properties"] and "sd15_path" not in model
    assert {"minimum": 1, "type": "integer"} in schema["properties"]["steps"]["anyOf"]

    # The form's validation is the flow's: an unknown option or a value out of bounds is refused.
    for bad in ({"options": {"ortho_wieght": 1.0}}, {"options": {"caption_dropout": 2.0}}, {"steps": 0}):
        state = train_stage_flow(stage="dense", shards=str(training_shards), run=str(tmp_path / "r"),
                                 return_state=True, **bad)
        assert state.is_failed()
        assert not (tmp_path / "r").exists()


def test_the_flow_takes_the_same_config_file_as_ic_train(prefect_api, training_shards, tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(f"preset: tiny\nrun: {run}\nshards: {training_shards}\nmodel:\n  num_frames: 8\n"
                      "train:\n  batch_size: 1\n  log_every: 1\n  vae_frames_per_clip: 1\nstages:\n  vae:\n    steps: 2\n")
    state = train_stage_flow(stage="vae", config=str(config), options={"seed": 3}, return_state=True)
    assert state.is_completed(), state.message
    saved = json.loads((run / "vae" / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["batch_size"] == 1 and saved["seed"] == 3
    assert json.loads((run / "config.json").read_text())["num_frames"] == 8
