"""How long a demo scale takes on this machine, and the step counts that fit a time budget.

    python -m ic_demo.calibrate --scale proof-gpu --budget-min 8 \\
        [--widths 192,256,320 256,384,512] [--json calibration.json] [--then-run OUT]

A rehearsal of the whole chain (``ic_demo.chain.run_chain``, the same code the proof runs) at the
scale's model, batch, evaluation and reference sizes, with a few videos of each kind and
``--rehearsal-steps`` steps per stage. From its timings:

- curation: seconds per video (world, curation and the held-out clips together);
- training, per stage: samples/s (``train_stage``'s own figure, its first logging window left out)
  and the stage's fixed cost (its wall time less its steps at that rate: building, loading, saving);
- evaluation: sampling seconds per video of every variant, and the rest (FID/FVD references, the
  response probe, loading), which does not grow with the number of cases.

Each width in ``--widths`` trains every stage again on the rehearsal's shards; its sampling time is
the rehearsal's scaled by the two widths' `dense` step times.

The estimate for the full scale is linear in videos, steps and cases, so it errs long where work
runs in parallel. The fit multiplies every stage's steps by one factor (rounded down to 25) so that
the estimate meets the budget; ``--then-run OUT`` then runs the chain with those steps at the
scale's own width (its report names them in its command).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

from ic_demo.scales import SCALES, DemoScale, sampling_device_problem
from ic_model.config import tiny_config
from ic_model.evaluation.evalsets import load_eval_set

ROUND_STEPS = 25


def rehearsal_scale(scale: DemoScale, videos: int, steps: int) -> DemoScale:
    """The scale with ``videos`` videos of each kind, ``steps`` steps per stage and one case per
    evaluation set; model, batch, sampling steps, reference clips and probe samples unchanged, so
    that what does not grow with the data costs what it will cost."""
    log_every = max(1, steps // 5)
    return dataclasses.replace(
        scale, mixed=videos, objects=videos, camera=videos, steps=dict.fromkeys(scale.steps, steps), eval_cases=1,
        train_options={**scale.train_options, "log_every": log_every, "save_every": 10 * steps})


def world_videos(scale: DemoScale) -> int:
    """Videos curated at this scale (the two real clips when it takes them)."""
    return scale.mixed + scale.objects + scale.camera + (2 if scale.real_clips else 0)


def eval_videos(scale: DemoScale) -> dict[str, int]:
    """Generated videos per evaluation variant (object/object sweeps λ_trajs over 4 values)."""
    from ic_model.evaluation.evaluate import ABLATION_TRAJS_SCALES

    out = {}
    for set_name, mode in (("object", "object"), *scale.variants):
        cases = len(load_eval_set(set_name)[: scale.eval_cases])
        sweep = len(ABLATION_TRAJS_SCALES) if (set_name, mode) == ("object", "object") else 1
        out[f"{set_name}/{mode}"] = cases * sweep
    return out


def stage_timing(summary: dict, seconds: float) -> dict:
    """samples/s and the fixed cost of one stage from ``train_stage``'s summary and its wall time."""
    rate = summary.get("samples_per_s")
    if not rate:
        raise ValueError(f"no samples/s in the stage summary {summary}: raise --rehearsal-steps")
    steps, batch = summary.get("steps") or 0, summary["global_batch"]
    return {"samples_per_s": rate, "s_per_step": round(batch / rate, 5),
            "fixed_s": round(max(0.0, seconds - steps * batch / rate), 2)}


def estimate(scale: DemoScale, rehearsal: DemoScale, measured: dict) -> dict:
    """Seconds the full ``scale`` would take from the rehearsal's figures (``measured``: curation_s,
    stages {stage: stage_timing}, eval_wall_s, eval {variant: {seconds_per_video, num_videos}},
    sampling_factor)."""
    curation = measured["curation_s"] * world_videos(scale) / world_videos(rehearsal)
    training = {s: scale.steps[s] * t["s_per_step"] + t["fixed_s"] for s, t in measured["stages"].items()}
    factor = measured.get("sampling_factor", 1.0)
    sampled = sum(e["seconds_per_video"] * e["num_videos"] for e in measured["eval"].values())
    full = eval_videos(scale)
    evaluation = (measured["eval_wall_s"] - sampled
                  + factor * sum(e["seconds_per_video"] * full[k] for k, e in measured["eval"].items()))
    total = curation + sum(training.values()) + evaluation
    return {"curation_s": round(curation, 1), "training_s": {s: round(v, 1) for s, v in training.items()},
            "evaluation_s": round(evaluation, 1), "total_s": round(total, 1)}


def fit_steps(scale: DemoScale, measured: dict, budget_s: float, rehearsal: DemoScale) -> dict | None:
    """Every stage's steps times one factor, rounded down to ``ROUND_STEPS`` (to 1 for scales of
    under 100 steps a stage) and at least that, so the estimate is within ``budget_s``; None when
    even that many steps do not fit."""
    est = estimate(scale, rehearsal, measured)
    stages = measured["stages"]
    fixed = est["curation_s"] + est["evaluation_s"] + sum(t["fixed_s"] for t in stages.values())
    variable = sum(scale.steps[s] * t["s_per_step"] for s, t in stages.items())
    factor = (budget_s - fixed) / variable
    unit = ROUND_STEPS if min(scale.steps.values()) >= 100 else 1
    steps = {s: max(unit, math.floor(scale.steps[s] * factor / unit) * unit) for s in scale.steps}
    fitted = dataclasses.replace(scale, steps=steps)
    if estimate(fitted, rehearsal, measured)["total_s"] > budget_s:
        return None
    return steps


def train_width(width: tuple[int, ...], rehearsal: DemoScale, curated: dict[str, str], work: Path, seed: int) -> dict:
    """Every stage trained ``rehearsal.steps`` steps at another width on the rehearsal's shards."""
    from ic_demo.chain import train_stages

    s = dataclasses.replace(rehearsal, model={**rehearsal.model, "block_out_channels": width})
    training = train_stages(str(work / f"run-{'x'.join(map(str, width))}"), s, curated, seed)
    return {stage: stage_timing(t, t["seconds"]) for stage, t in training.items()}


def parse_width(text: str) -> tuple[int, ...]:
    try:
        width = tuple(int(x) for x in text.split(","))
    except ValueError:
        width = ()
    if len(width) < 2 or min(width) < 8:
        raise argparse.ArgumentTypeError(f"a width is block widths like 128,192,256; got {text!r}")
    return width


def calibrate(scale_name: str, budget_s: float, device: str | None, dtype: str | None, widths: list[tuple[int, ...]],
              videos: int, steps: int, work: Path, seed: int = 0, reference_metrics: bool = True) -> dict:
    from ic_demo.chain import run_chain

    scale = SCALES[scale_name]
    rehearsal = rehearsal_scale(scale, videos, steps)
    t0 = time.time()
    result = run_chain(str(work), scale_name, seed, device, dtype, settings=rehearsal,
                       reference_metrics=reference_metrics)
    own = tuple(tiny_config(num_frames=scale.num_frames, **scale.model).block_out_channels)
    measured = {
        "curation_s": result["seconds"]["world_and_curation"],
        "stages": {s: stage_timing(t, t["seconds"]) for s, t in result["training"].items()},
        "eval_wall_s": result["seconds"]["evaluation"],
        "eval": {k: {"seconds_per_video": v["seconds_per_video"], "num_videos": v["num_videos"]}
                 for k, v in result["evaluations"].items()},
    }
    report = {"scale": scale_name, "budget_s": budget_s, "device": device or scale.eval_device,
              "dtype": dtype or scale.eval_dtype,
              "machine": machine(), "rehearsal": dataclasses.asdict(rehearsal), "rehearsal_seconds": result["seconds"],
              "widths": {}}
    curated = {src: str(work / scale_name / "curated" / src / "shards") for src in ("realestate10k", "webvid")}
    for width in [own, *[w for w in widths if w != own]]:
        try:
            m = measured if width == own else {
                **measured, "stages": train_width(width, rehearsal, curated, work, seed)}
        except Exception as error:  # one width failing (out of memory, say) keeps the others' figures
            print(f"  width {width}: {type(error).__name__}: {error}", file=sys.stderr)
            report["widths"]["x".join(map(str, width))] = {"error": f"{type(error).__name__}: {error}"}
            continue
        if width != own:
            m["sampling_factor"] = m["stages"]["dense"]["s_per_step"] / measured["stages"]["dense"]["s_per_step"]
        full = scale if width == own else dataclasses.replace(scale, model={**scale.model, "block_out_channels": width})
        report["widths"]["x".join(map(str, width))] = {
            "measured": m, "estimate_as_written": estimate(full, rehearsal, m),
            "fitted_steps": fit_steps(full, m, budget_s, rehearsal)}
    report["calibration_s"] = round(time.time() - t0, 1)
    return report


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": len(_affinity())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _affinity():
    import os

    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return range(os.cpu_count() or 1)


def print_table(report: dict) -> None:
    print(f"\n{report['scale']} on {report['machine'].get('gpu', 'CPU')}: budget {report['budget_s']:.0f} s")
    for name, w in report["widths"].items():
        if "error" in w:
            print(f"width {name}: failed ({w['error']})")
            continue
        est = w["estimate_as_written"]
        rates = ", ".join(f"{s} {t['samples_per_s']:.0f}/s" for s, t in w["measured"]["stages"].items())
        print(f"width {name}: as written {est['total_s']:.0f} s (curation {est['curation_s']:.0f}, training "
              f"{sum(est['training_s'].values()):.0f}, evaluation {est['evaluation_s']:.0f}); {rates}")
        fitted = w["fitted_steps"]
        print("  fits the budget with --steps " + (",".join(f"{k}={v}" for k, v in fitted.items()) if fitted
                                                  else "(none: fixed costs alone exceed it)"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="proof-gpu")
    ap.add_argument("--budget-min", type=float, default=8.0, help="minutes the whole chain may take")
    ap.add_argument("--device", default=None, help="where evaluation samples (default: the scale's)")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="evaluation's (default: the scale's)")
    ap.add_argument("--widths", nargs="*", type=parse_width, default=[],
                    help="other block widths to time besides the scale's, e.g. 96,160,224")
    ap.add_argument("--videos", type=int, default=6, help="rehearsal videos of each kind")
    ap.add_argument("--rehearsal-steps", type=int, default=40, help="steps per stage in the rehearsal")
    ap.add_argument("--work", default=None, help="rehearsal folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the calibration here")
    ap.add_argument("--then-run", default=None, metavar="OUT",
                    help="run the chain into OUT with the fitted steps at the scale's width")
    ap.add_argument("--reference-metrics", choices=["now", "later"], default="now",
                    help="as ic_demo.chain's (later: FID/FVD left to ic_demo.finish), rehearsal and run alike")
    ap.add_argument("--deadline-min", type=float, default=None,
                    help="with --then-run: minutes for calibration and run together; the run is fitted to what "
                         "the calibration leaves (at most --budget-min), less a 30 s margin")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    now = args.reference_metrics == "now"
    if args.budget_min <= 0 or args.videos < 1 or args.rehearsal_steps < 5:
        ap.error("--budget-min must be > 0, --videos ≥ 1 and --rehearsal-steps ≥ 5")
    if args.deadline_min is not None and (args.deadline_min <= 0 or not args.then_run):
        ap.error("--deadline-min wants --then-run and a positive number of minutes")
    if problem := sampling_device_problem(args.scale, args.device):
        ap.error(problem)
    groups = tiny_config(**SCALES[args.scale].model).norm_num_groups
    for width in args.widths:
        if any(c % groups for c in width):
            ap.error(f"--widths {','.join(map(str, width))}: every width must divide by the scale's "
                     f"{groups} norm groups")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ic-calibrate-") as tmp:
        work = Path(args.work or tmp)
        report = calibrate(args.scale, args.budget_min * 60, args.device, args.dtype, args.widths, args.videos,
                           args.rehearsal_steps, work, args.seed, reference_metrics=now)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.then_run:
        own = next(iter(report["widths"].values()))
        fitted = own["fitted_steps"]
        if args.deadline_min is not None:
            left = args.deadline_min * 60 - (time.time() - started) - 30
            budget = min(args.budget_min * 60, left)
            scale = SCALES[args.scale]
            rehearsal = rehearsal_scale(scale, args.videos, args.rehearsal_steps)
            fitted = fit_steps(scale, own["measured"], budget, rehearsal) if budget > 0 else None
            print(f"the run's budget: {budget:.0f} s of the {args.deadline_min:g} min deadline → steps {fitted}")
        if fitted is None:
            print("the scale does not fit the budget at any step count: not run", file=sys.stderr)
            return 1
        from ic_demo.chain import run_chain

        settings = dataclasses.replace(SCALES[args.scale], steps=fitted)
        print(json.dumps(run_chain(args.then_run, args.scale, args.seed, args.device, args.dtype, settings,
                                   reference_metrics=now), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["calibrate", "estimate", "fit_steps", "rehearsal_scale"]
