"""Training config files: `ic train STAGE --config FILE`, validated on load, flags win."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ic_model.config import ConfigFileError, read_config_file, train_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_configs_load_for_every_stage():
    tiny = read_config_file(ROOT / "configs" / "tiny.yaml", "dense")
    assert tiny["preset"] == "tiny" and tiny["model"]["codec"] == "space_to_depth"
    assert tiny["train"] == {"batch_size": 4, "frame_stride": 4, "high_noise_prob": 0.3, "motion_loss_weight": 4.0,
                             "log_every": 10, "save_every": 100, "steps": 2500, "learning_rate": 3e-4}
    cfg = train_config(tiny["preset"], **tiny["train"], stage="dense")
    assert (cfg.steps, cfg.learning_rate, cfg.batch_size) == (2500, 3e-4, 4)
    sd15 = read_config_file(ROOT / "configs" / "sd15.yaml", "object")
    cfg = train_config(sd15["preset"], **sd15["train"], stage="object")
    assert (cfg.mixed_precision, cfg.batch_size, cfg.grad_accum_steps, cfg.steps) == ("bf16", 1, 8, 5000)
    assert sd15["num_processes"] == 8 and set(sd15["weights"]) == {"sd15_path", "motion_adapter_path",
                                                                   "sparsectrl_rgb_path"}


@pytest.mark.parametrize("text, problem", [
    ("trian: {steps: 3}", "unknown key 'trian'"),
    ("train: {stpes: 3}", "train: 'stpes' is not a TrainConfig field"),
    ("train: {steps: three}", "train: 'steps' must be int, got \"three\""),
    ("train: {learning_rate: [1]}", "train: 'learning_rate' must be float"),
    ("stages: {dens: {steps: 3}}", "stages: 'dens' is not a stage"),
    ("stages: {dense: {gradient_checkpointing: 1}}", "stages.dense: 'gradient_checkpointing' must be bool, got 1"),
    ("model: {codec: 3}", "model: 'codec' must be str, got 3"),
    ("model: {sd15_path: /w}", "model: 'sd15_path' belongs under weights"),
    ("weights: {sd15: /w}", "weights: 'sd15' is not one of"),
    ("preset: sd21", "preset: 'sd21' is not one of"),
    ("train: {stage: dense}", "train: 'stage' is given on the command line"),
    ("- a list", "must be a mapping"),
    ("train: {steps: [1, 2}", "not valid YAML"),
    ("run: runs/a\nshards: s\nrun: runs/b\n", "not valid YAML (the key 'run' is given twice"),  # was the last, unsaid
    ("train: {steps: 3, steps: 4}", "the key 'steps' is given twice"),
    ('{"run": "a", "run": "b"}', "the key 'run' is given twice"),  # JSON is YAML
])
def test_each_problem_is_one_line_naming_the_file_and_the_key(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as err:
        read_config_file(path, "dense")
    assert len(err.value.problems) == 1, err.value.problems
    assert err.value.problems[0].startswith(f"{path}: ") and problem in err.value.problems[0]


def test_a_missing_file_and_all_problems_at_once(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read it"):
        read_config_file(tmp_path / "nope.yaml", "dense")
    path = tmp_path / "bad.yaml"
    path.write_text("train: {stpes: 3, seed: x}\nrunn: r\n")
    with pytest.raises(ConfigFileError) as err:
        read_config_file(path, "dense")
    assert len(err.value.problems) == 3


def test_ic_train_merges_the_file_under_the_flags(tmp_path, training_shards, monkeypatch, capsys):
    """What `ic train` hands the flow: the file's values, each flag (and --options key) over them."""
    import flows.cli as cli

    path = tmp_path / "run.yaml"
    path.write_text(f"run: {tmp_path / 'run'}\nshards: {training_shards}\n"
                    "model: {codec: space_to_depth, latent_scaling_factor: 4.0, num_frames: 8}\n"
                    "train: {batch_size: 2, log_every: 1, frame_stride: 4}\n"
                    "stages: {base: {steps: 3, learning_rate: 5.0e-4}}\n")
    seen = {}
    monkeypatch.setattr(cli, "_train", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["train", "base", "--config", str(path), "--steps", "2", "--options", '{"log_every": 5}']) == 0
    assert seen["run"] == str(tmp_path / "run") and seen["shards"] == str(training_shards)
    assert seen["steps"] == 2 and seen["lr"] == 5e-4 and seen["batch_size"] == 2  # flag, stage, train
    assert json.loads(seen["options"]) == {"log_every": 5, "frame_stride": 4}
    assert json.loads(seen["model"]) == {"codec": "space_to_depth", "latent_scaling_factor": 4.0, "num_frames": 8}
    # A bad file is refused before anything runs, naming the file and the key.
    path.write_text("train: {batch_sizes: 2}\n")
    assert cli.main(["train", "base", "--config", str(path), "--shards", str(training_shards),
                     "--run", str(tmp_path / "r2")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ic train: --config {path}: train: 'batch_sizes' is not a TrainConfig field")
    # A value of the right type but out of range names where it was set: the file's key or the flag.
    path.write_text(f"run: {tmp_path / 'r3'}\nshards: {training_shards}\ntrain: {{batch_size: 0, steps: 5}}\n"
                    "stages: {vae: {steps: -3}}\n")
    assert cli.main(["train", "vae", "--config", str(path), "--lr", "-1", "--grad-accum", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ic train: --config {path}: stages.vae.steps must be at least 1, got -3",
        f"ic train: --config {path}: train.batch_size must be at least 1, got 0",
        "ic train: --grad-accum must be at least 1, got 0",
        "ic train: --lr must be > 0.0, got -1.0",
    ]


def test_a_wrong_value_is_shown_short_whatever_its_size(tmp_path):
    """YAML aliases make a few lines a value of 10⁵ items (10⁹ in a few more): the problem
    names it in one short line, not its whole text."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcd", "bcde"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    path = tmp_path / "aliases.yaml"
    path.write_text("\n".join(["x:"] + ["  " + line for line in lines]) + "\nrun: *e\n")
    with pytest.raises(ConfigFileError) as err:
        read_config_file(path, "dense")
    (problem,) = [p for p in err.value.problems if "run: wrong type" in p]
    assert len(problem) < 300 and "more" in problem, problem[:300]
