"""The proof's calibration arithmetic (ic_demo.calibrate) and the chain's --steps, from known timings."""
from __future__ import annotations

import dataclasses

import pytest

from ic_demo.calibrate import (
    ROUND_STEPS,
    estimate,
    eval_videos,
    fit_steps,
    rehearsal_scale,
    world_videos,
)
from ic_demo.chain import parse_steps
from ic_demo.scales import SCALES, STAGES

SCALE = SCALES["proof-gpu"]


def _measured(s_per_step=0.05, fixed=3.0, curation_s=20.0, spv=0.5, eval_wall=40.0):
    rehearsal = rehearsal_scale(SCALE, videos=4, steps=40)
    per_variant = eval_videos(rehearsal)
    return rehearsal, {
        "curation_s": curation_s,
        "stages": {s: {"samples_per_s": SCALE.batch_size / s_per_step, "s_per_step": s_per_step, "fixed_s": fixed}
                   for s in STAGES},
        "eval_wall_s": eval_wall,
        "eval": {k: {"seconds_per_video": spv, "num_videos": n} for k, n in per_variant.items()},
    }


def test_rehearsal_keeps_what_does_not_grow_with_the_data():
    r = rehearsal_scale(SCALE, videos=4, steps=40)
    assert (r.mixed, r.objects, r.camera, r.eval_cases) == (4, 4, 4, 1)
    assert r.steps == dict.fromkeys(STAGES, 40)
    for field in ("batch_size", "model", "eval_steps", "reference_clips", "response_samples", "real_clips"):
        assert getattr(r, field) == getattr(SCALE, field), field
    assert r.train_options["mixed_precision"] == "bf16" and r.train_options["log_every"] == 8
    # All 10 cases of each set; the object adapter sweeps four λ_trajs.
    assert eval_videos(SCALE)["object/object"] == 40 and eval_videos(SCALE)["camera/camera"] == 10
    assert eval_videos(r)["object/object"] == 4


def test_estimate_is_linear_in_videos_steps_and_cases():
    rehearsal, m = _measured()
    est = estimate(SCALE, rehearsal, m)
    assert est["curation_s"] == pytest.approx(20.0 * world_videos(SCALE) / world_videos(rehearsal), abs=0.1)
    assert est["training_s"]["base"] == pytest.approx(SCALE.steps["base"] * 0.05 + 3.0, abs=0.1)
    sampled = sum(0.5 * n for n in eval_videos(rehearsal).values())
    assert est["evaluation_s"] == pytest.approx(40.0 - sampled + sum(0.5 * n for n in eval_videos(SCALE).values()),
                                                abs=0.1)
    assert est["total_s"] == pytest.approx(est["curation_s"] + sum(est["training_s"].values()) + est["evaluation_s"],
                                           abs=0.5)


@pytest.mark.parametrize("budget_s", [480.0, 900.0, 1500.0])
def test_fitted_steps_meet_the_budget_and_keep_the_proportions(budget_s):
    rehearsal, m = _measured()
    steps = fit_steps(SCALE, m, budget_s, rehearsal)
    assert steps is not None and all(v % ROUND_STEPS == 0 and v >= ROUND_STEPS for v in steps.values())
    total = estimate(dataclasses.replace(SCALE, steps=steps), rehearsal, m)["total_s"]
    assert total <= budget_s
    # Rounding down to 25 steps per stage loses at most 25 steps' time per stage.
    assert total > budget_s - len(STAGES) * ROUND_STEPS * 0.05 - 1
    ratio = steps["base"] / SCALE.steps["base"]
    assert steps["dense"] / SCALE.steps["dense"] == pytest.approx(ratio, abs=ROUND_STEPS / SCALE.steps["dense"])


def test_nothing_fits_when_the_fixed_costs_exceed_the_budget():
    rehearsal, m = _measured(curation_s=100.0)
    assert fit_steps(SCALE, m, 60.0, rehearsal) is None


def test_steps_option():
    assert parse_steps("base=3000, dense=25") == {"base": 3000, "dense": 25}
    assert parse_steps("") == {}
    for bad in ("base", "vae=10", "base=0", "base=ten", "base=-5"):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_small_scales_fit_to_single_steps():
    small = SCALES["test"]  # 2 steps a stage
    rehearsal = rehearsal_scale(small, videos=2, steps=5)
    m = {"curation_s": 10.0, "eval_wall_s": 20.0, "eval": {}, "stages": {
        s: {"samples_per_s": 2.0, "s_per_step": 1.0, "fixed_s": 1.0} for s in small.steps}}
    steps = fit_steps(small, m, 10.0 * world_videos(small) / world_videos(rehearsal) + 20.0 + 5.0 + 33.0, rehearsal)
    assert steps == dict.fromkeys(small.steps, 6)  # 33 s of steps over five stages: 6 each (30 s)


def test_a_device_the_machine_lacks_is_refused_before_any_work(monkeypatch, capsys, tmp_path):
    """The proof-gpu scale samples on cuda: on a machine without one, chain and calibrate stop at
    once with one line (they used to build the world, curate and train first, then fail)."""
    import sys

    import torch

    from ic_demo import calibrate, chain
    from ic_model.config import device_problem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_problem("cpu") is None and device_problem(None) is None
    assert device_problem("cuda") == "this machine has no cuda device available to torch"
    assert device_problem("gpu0").startswith("not a device")
    assert device_problem("meta") == "the models cannot run on a 'meta' device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda:1") is None
    assert device_problem("cuda:2") == "this machine has 2 CUDA device(s) (cuda:0 … cuda:1)"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exit_:
        calibrate.main(["--scale", "proof-gpu", "--work", str(work)])
    assert exit_.value.code == 2 and not work.exists()
    assert "the proof-gpu scale's device cuda: this machine has no cuda device" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["chain", "--scale", "test", "--out", str(work), "--device", "cuda:0"])
    with pytest.raises(SystemExit) as exit_:
        chain.main()
    assert exit_.value.code == 2 and not work.exists()
    assert "--device cuda:0: this machine has no cuda device" in capsys.readouterr().err
