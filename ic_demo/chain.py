"""The demo chain without Prefect: what the `demo` flow does, through the same library functions.

    python -m ic_demo.chain --scale test|demo|proof|proof-gpu [--out demo_out] [--device cuda]

toy world → curation (``ic_data.curate``, whose output equals the `curate` flow's byte for byte)
→ ``train_stage`` for each stage with the TrainConfig the `train-stage` flow builds → every
variant through ``evaluate_set`` with the evaluate flow's settings → the trajectory-response probe
→ the same report, ``metrics.json``, curves and GIFs. For machines without Prefect (a lent GPU
box) and for reading the method in one file; the flow adds the UI, artifacts and retries.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ic_demo.report import loss_summary, summarize, training_curves_png, write_report
from ic_demo.response import trajectory_response
from ic_demo.scales import (
    SCALES,
    STAGES,
    DemoScale,
    demo_model_config,
    sampling_device_problem,
    stage_shards,
)
from ic_demo.world import (
    finished_evaluation,
    make_heldout,
    make_toy_world,
    side_by_side_gifs,
)
from ic_model.config import train_config
from ic_model.training.run import run_model_config, stage_dir

SOURCES = {"webvid": False, "realestate10k": True}  # source → camera_only, as the curate flow


def probe_response(run: str, heldout: str, scale: DemoScale, seed: int, device: str | None = None) -> dict:
    """x0 error of the motion ControlNet with and without the clips' own trajectories
    (ic_demo.response): does it use them, apart from whether sampling draws them well. On
    ``device`` (default: where the scale evaluates)."""
    result = trajectory_response(run, heldout, num_samples=scale.response_samples, batch_size=max(2, scale.batch_size),
                                 frame_stride=scale.frame_stride, seed=seed, device=device or scale.eval_device)
    print("trajectory response (moving-region x0 error, own dense vs off, 1 − ratio):", result["moving_gain"])
    return result


def stage_train_config(scale: DemoScale, preset: str, stage: str, seed: int):
    """The TrainConfig the demo flow asks the train-stage flow for."""
    return train_config(preset, **{**scale.train_options, "frame_stride": scale.frame_stride, "stage": stage,
                                   "steps": scale.steps[stage], "batch_size": scale.batch_size,
                                   "learning_rate": scale.learning_rate[stage], "seed": seed})


def train_stages(run: str, scale: DemoScale, curated: dict[str, str], seed: int) -> dict[str, dict]:
    """Every stage of the scale's model in order on the curated shards, as the demo flow asks the
    train-stage flow: each stage's summary with its wall ``seconds``."""
    from ic_model.training.loop import train_stage

    cfg = demo_model_config(run, scale)
    training = {}
    for stage in cfg.stages:
        t1 = time.time()
        summary = train_stage(stage, stage_shards(stage, curated), run,
                              stage_train_config(scale, cfg.preset, stage, seed), cfg)
        training[stage] = {**summary, "seconds": round(time.time() - t1, 1)}
        print(f"{stage}: {scale.steps[stage]} steps in {training[stage]['seconds']:.0f} s, loss "
              f"{summary.get('first_loss')} → {summary.get('final_loss')}")
    return training


def evaluation_settings(scale: DemoScale, key: str, mode: str, heldout: str, seed: int,
                        reference_metrics: bool = True) -> dict:
    """The evaluate flow's parameters for one variant (CFG 1: the tiny text encoder is random and
    frozen, so captions carry no information). ``reference_metrics`` False: no FID/FVD now (the
    lent GPU box has no room for their networks' weights); ``python -m ic_demo.finish`` adds them."""
    settings = dict(steps=scale.eval_steps, guidance_scale=1.0, ablation=key == "object/object", mode=mode,
                    max_cases=scale.eval_cases, seed=seed, max_reference=scale.reference_clips, reference=heldout)
    if not reference_metrics:
        settings.update(reference=None, keep_frames=True)
    return settings


def write_demo_report(outs: list[str], run: str, scale_name: str, seed: int, command: str,
                      evaluations: dict[str, dict], eval_dirs: dict[str, str], curation: dict[str, dict],
                      training: dict[str, dict], seconds: dict[str, float], response: dict | None = None,
                      settings: DemoScale | None = None, reference_metrics: str = "now") -> dict:
    """report.md / report.html / metrics.json / training_curves.png / gifs/ in ``outs[0]``, copied
    to the other folders. ``settings``: the scale as run, where it differs from ``SCALES[scale_name]``
    (``--steps``). ``reference_metrics``: "now", or "later" (FID/FVD left to ``ic_demo.finish``).
    Returns the summary, the written paths and the GIFs."""
    out_dir = Path(outs[0])
    settings = settings or SCALES[scale_name]
    cfg = run_model_config(run)
    summary = summarize(evaluations)
    curves = {}
    for stage in cfg.stages:
        path = stage_dir(run, stage) / "metrics.jsonl"
        curves[stage] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    curves_png = training_curves_png(curves, out_dir / "training_curves.png")
    # Seconds are this invocation's: a stage finished by an earlier (resumed) run costs ~0 here.
    training_rows = [{"stage": s, "steps": t.get("steps"), **loss_summary(curves[s]),
                      "samples/s": t.get("samples_per_s"), "seconds (this run)": t.get("seconds")}
                     for s, t in training.items()]
    curation_rows = [{"source": s, **c.get("counts", {}), "threshold": c.get("threshold")} for s, c in curation.items()]
    context = {"scale": scale_name, "scale_settings": asdict(settings), "seed": seed, "command": command,
               "reference_clips": settings.reference_clips, "seconds": seconds,
               "training_rows": training_rows, "curation_rows": curation_rows, "model": cfg.to_dict(),
               "trajectory_response": response, "reference_metrics": reference_metrics}
    gifs = side_by_side_gifs(out_dir, eval_dirs, cfg, num=3)
    paths = write_report(out_dir, summary, context, gifs, curves_png.name)
    for extra in outs[1:]:  # the latest report also at the top of the output folder
        shutil.copytree(out_dir / "gifs", Path(extra) / "gifs", dirs_exist_ok=True)
        for name in ("report.md", "report.html", "metrics.json", curves_png.name):
            shutil.copy(out_dir / name, Path(extra) / name)
    return {"summary": summary, "paths": paths, "gifs": gifs, "curves_png": str(curves_png)}


def run_chain(out: str = "demo_out", scale: str = "demo", seed: int = 0, device: str | None = None,
              dtype: str | None = None, settings: DemoScale | None = None, reference_metrics: bool = True) -> dict:
    """The demo flow's chain in this process; resumable like the flow (finished curation chunks,
    stages and evaluations are reused). ``settings`` replaces ``SCALES[scale]`` (its work still goes
    to OUT/SCALE): the calibration's short rehearsal, or other step counts (``--steps``).
    ``reference_metrics`` False: FID/FVD are left to ``python -m ic_demo.finish OUT/SCALE``."""
    from ic_data import CurationConfig, curate
    from ic_data.workers import default_processes
    from ic_model.evaluation.evaluate import EvalSettings, evaluate_set
    from ic_model.pipelines.image_conductor import ImageConductorPipeline

    s = settings or SCALES[scale]
    device, dtype = device or s.eval_device, dtype or s.eval_dtype  # as the demo flow evaluates
    root, seconds, t0 = Path(out) / scale, {}, time.time()
    videos = make_toy_world(str(root / "videos"), s, seed)
    curated, curation = {}, {}
    for source in ("realestate10k", "webvid"):
        target = root / "curated" / source
        config = CurationConfig(source=source, camera_only=SOURCES[source], seed=seed)
        config = dataclasses.replace(config, processes=default_processes(config.max_decode_frames))
        curation[source] = curate(videos[source], target, config, chunk_size=8).to_json()
        curated[source] = str(target / "shards")
        print(f"curated {source}: {curation[source]['counts']}")
    heldout = make_heldout(str(root / "heldout"), s, seed)
    seconds["world_and_curation"] = round(time.time() - t0, 1)

    run = str(root / "run")
    training = train_stages(run, s, curated, seed)
    seconds["training"] = round(time.time() - t0 - seconds["world_and_curation"], 1)

    evaluations, eval_dirs, pipe = {}, {}, None
    for set_name, mode in (("object", "object"), *s.variants):
        key = f"{set_name}/{mode}"
        eval_dirs[key] = str(root / "eval" / f"{set_name}-{mode}")
        eval_settings = evaluation_settings(s, key, mode, heldout, seed, reference_metrics)
        evaluations[key] = finished_evaluation(eval_dirs[key], run, eval_settings)
        if evaluations[key] is None:
            if pipe is None:
                pipe = ImageConductorPipeline.from_run(run, device=device, dtype=dtype)
                pipe.set_progress_bar_config(disable=True)
            metrics = evaluate_set(pipe, set_name, eval_dirs[key], EvalSettings(**eval_settings))
            evaluations[key] = {k: v for k, v in metrics.items() if k != "cases"}
        name = "CamMC" if set_name == "camera" else "ObjMC"
        print(f"{key}: {name} {evaluations[key][name]} px")
    response = probe_response(run, heldout, s, seed, device)
    seconds["evaluation"] = round(time.time() - t0 - seconds["world_and_curation"] - seconds["training"], 1)
    seconds["total"] = round(time.time() - t0, 1)
    command = f"python -m ic_demo.chain --scale {scale} --out {out} --device {device} --dtype {dtype}"
    if s.steps != SCALES[scale].steps:
        command += " --steps " + ",".join(f"{k}={v}" for k, v in s.steps.items())
    if not reference_metrics:
        command += f" --reference-metrics later && python -m ic_demo.finish {root}"
    report = write_demo_report([str(root), out], run, scale, seed, command, evaluations, eval_dirs, curation,
                               training, seconds, response, settings=s,
                               reference_metrics="now" if reference_metrics else "later")
    summary = report["summary"]
    return {"report": str(report["paths"]["md"]), "objmc_ratio": summary["objmc_ratio"],
            "background_ratio": summary["background_ratio"], "targets": summary["targets"], "seconds": seconds,
            "training": training, "evaluations": evaluations}


def parse_steps(text: str, stages=tuple(STAGES)) -> dict[str, int]:
    """``base=3000,dense=2500`` → {"base": 3000, "dense": 2500}; stages not named keep the scale's."""
    steps = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in stages:
            raise ValueError(f"--steps wants STAGE=N pairs (stages: {', '.join(stages)}); got {item!r}")
        try:
            steps[name] = int(value)
        except ValueError:
            steps[name] = -1
        if steps[name] < 1:
            raise ValueError(f"--steps {name}: {value!r} is not a positive whole number")
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--scale", choices=sorted(SCALES), default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None,
                    help="where evaluation samples (default: the scale's, as `make proof`; training: accelerate's choice)")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="evaluation's (default: the scale's)")
    ap.add_argument("--steps", default="", help="other step counts, e.g. base=3000,dense=2500 (the rest: the scale's)")
    ap.add_argument("--reference-metrics", choices=["now", "later"], default="now",
                    help="later: no FID/FVD here (their networks' weights are not on this machine); "
                         "`python -m ic_demo.finish OUT/SCALE` adds them where the weights are")
    args = ap.parse_args()
    try:
        steps = parse_steps(args.steps)
    except ValueError as error:
        ap.error(str(error))
    if problem := sampling_device_problem(args.scale, args.device):
        ap.error(problem)
    settings = dataclasses.replace(SCALES[args.scale], steps={**SCALES[args.scale].steps, **steps})
    print(json.dumps(run_chain(args.out, args.scale, args.seed, args.device, args.dtype, settings,
                               reference_metrics=args.reference_metrics == "now"), indent=1))


if __name__ == "__main__":
    main()


__all__ = ["evaluation_settings", "parse_steps", "probe_response", "run_chain", "stage_train_config",
           "train_stages", "write_demo_report"]
