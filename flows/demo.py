"""`make demo` / `make proof`: the whole method at toy scale, on CPU, with a report.

toy world → curate/realestate10k + curate/webvid → train-stage base, dense, sparse, camera,
object (tiny preset with the lossless space-to-depth codec, so no vae stage) → evaluate/camera +
evaluate/object on held-out cases (every variant) → report: OUT/report.md, report.html,
metrics.json, training_curves.png, gifs/ (the latest run) and the same in OUT/SCALE/, beside that
scale's work (videos, curated, run, eval).

Every step is resumable: curation skips finished chunks, training resumes from checkpoints and
skips finished stages, so rerunning the same command finishes what a killed run left.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.curate import curate
from flows.evaluate import evaluate
from flows.server import temporary_server
from flows.train import train_stage_flow
from ic_demo.chain import evaluation_settings
from ic_demo.scales import sampling_device_problem
from tasks.demo import (
    SCALES,
    demo_model_config,
    finished_evaluation,
    make_heldout,
    make_toy_world,
    probe_response,
    publish_report,
    stage_shards,
)


@flow(name="demo", log_prints=True)
def demo(out: str = "demo_out", scale: Literal["test", "demo", "proof", "proof-gpu"] = "demo",
         seed: Annotated[int, Field(ge=0)] = 0) -> dict:
    s = SCALES[scale]
    root, seconds, t0 = Path(out) / scale, {}, time.time()  # each scale's work apart; reports in both
    videos = make_toy_world(str(root / "videos"), s, seed)
    curated, curation = {}, {}
    for source in ("realestate10k", "webvid"):
        target = root / "curated" / source
        curation[source] = curate(videos=videos[source], out=str(target), source=source, seed=seed, chunk_size=8)
        curated[source] = str(target / "shards")
    heldout = make_heldout(str(root / "heldout"), s, seed)
    seconds["world_and_curation"] = round(time.time() - t0, 1)

    run = str(root / "run")
    cfg = demo_model_config(run, s)
    training = {}
    for stage in cfg.stages:
        t1 = time.time()
        summary = train_stage_flow(
            stage=stage, shards=stage_shards(stage, curated), run=run, steps=s.steps[stage],
            batch_size=s.batch_size, learning_rate=s.learning_rate[stage], seed=seed,
            options={**s.train_options, "frame_stride": s.frame_stride},
        )
        training[stage] = {**summary, "seconds": round(time.time() - t1, 1)}
        print(f"{stage}: {s.steps[stage]} steps in {time.time() - t1:.0f} s, loss "
              f"{training[stage].get('first_loss')} → {training[stage].get('final_loss')}")
    seconds["training"] = round(time.time() - t0 - seconds["world_and_curation"], 1)

    evaluations, eval_dirs = {}, {}
    for set_name, mode in (("object", "object"), *s.variants):
        key = f"{set_name}/{mode}"
        eval_dirs[key] = str(root / "eval" / f"{set_name}-{mode}")
        settings = evaluation_settings(s, key, mode, heldout, seed)
        evaluations[key] = finished_evaluation(eval_dirs[key], run, settings)
        if evaluations[key] is not None:
            print(f"{key}: already evaluated with these settings ({eval_dirs[key]}/metrics.json)")
        else:
            evaluations[key] = evaluate(set_name=set_name, run=run, out=eval_dirs[key], device=s.eval_device,
                                        dtype=s.eval_dtype, **settings)
    response = probe_response(run, heldout, s, seed)
    seconds["evaluation"] = round(time.time() - t0 - seconds["world_and_curation"] - seconds["training"], 1)
    seconds["total"] = round(time.time() - t0, 1)
    command = {"demo": "make demo", "proof": "make proof", "proof-gpu": "make proof"}.get(
        scale, f"python -m flows.demo --scale {scale}")
    result = publish_report([str(root), out], run, scale, seed, command, evaluations, eval_dirs, curation, training,
                            seconds, response)
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--scale", choices=sorted(SCALES), default="demo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if problem := sampling_device_problem(args.scale):
        ap.error(problem)
    if args.seed < 0:
        ap.error(f"--seed must be at least 0, got {args.seed}")
    try:
        with temporary_server():  # Ctrl-C stops the chain, and the server records it
            demo(out=args.out, scale=args.scale, seed=args.seed)
    except KeyboardInterrupt:
        print("demo: interrupted; the same command resumes from the finished steps", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
