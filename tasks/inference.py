"""Prefect tasks around generation and evaluation: progress, tables, preview GIFs."""
from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from ic_data.errors import BadInputError
from ic_data.settings import require_writable
from ic_model.evaluation.evalsets import read_eval_set
from ic_model.evaluation.evaluate import EvalSettings, check_guidance, evaluate_set
from ic_model.pipelines.generate import generate_to_files, request_problems
from ic_model.pipelines.image_conductor import ImageConductorPipeline
from tasks.artifacts import Embedder
from tasks.failures import bad_input_fails


def _artifact_key(text: str) -> str:
    """Artifact keys take lowercase letters, digits and dashes only; a set file's name may hold more."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower())


REQUEST_DEFAULTS = dict(mode="object", trajs_scale=1.0, guidance_scale=8.5, steps=25, seed=0, trajectory_space="image")


def _pipeline(run: str, device: str, base_model: str | None, base_loras: list[str] | None,
              dtype: str = "fp32") -> ImageConductorPipeline:
    pipe = ImageConductorPipeline.from_run(run, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)  # the flow reports progress as an artifact
    if base_model or base_loras:
        from ic_model.pipelines.personalize import apply_personalization

        apply_personalization(pipe, base_model, base_loras or [])
    return pipe


def _gif_markdown(path: Path, title: str, embed: Embedder) -> str:
    return f"### {title}\n\n{embed.image(path, title)}\n"


@task(name="generate-videos", cache_policy=NO_CACHE)
@bad_input_fails
def generate_videos(
    run: str, requests: list[dict], device: str = "cpu", base_model: str | None = None,
    base_loras: list[str] | None = None, dtype: str = "fp32",
) -> list[dict]:
    log = get_run_logger()
    pipe = _pipeline(run, device, base_model, base_loras, dtype)
    progress = create_progress_artifact(0.0, key="generate-progress", description=f"Generating {len(requests)} videos")
    records, problems = [], []
    for i, request in enumerate(requests, 1):
        try:
            wrong = request_problems(request, max_steps=pipe.cfg.num_train_timesteps)
            if wrong:  # before the call: an unknown key would be a TypeError there
                raise BadInputError(f"request {i}: " + "; ".join(wrong))
            record = generate_to_files(pipe, **{**REQUEST_DEFAULTS, **request})
        except Exception as exc:  # one bad request is reported; the others still run
            record = {"request": request, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            problems.append(record["error"])
            if not isinstance(exc, BadInputError):  # a bug, not the request's fault: keep its traceback
                log.exception("request %d of %d failed", i, len(requests))
        else:
            record["status"] = "ok"
            log.info("%s: %s in %.1f s", record["video"], record["mode"], record["seconds"])
            for note in record.get("notes", []):  # what was made of the input (also in its .json)
                log.warning("%s: %s", record["video"], note)
        records.append(record)
        update_progress_artifact(progress, 100.0 * i / len(requests))
    table = [{k: r.get(k) for k in ("status", "video", "mode", "trajs_scale", "seconds", "error")} for r in records]
    create_table_artifact(table, key="generate-results", description="Generated videos")
    ok, embed = [r for r in records if r["status"] == "ok"][:4], Embedder()
    if ok:
        create_markdown_artifact(
            "# Generated videos\n\n" + "\n".join(
                _gif_markdown(Path(r["preview"]), Path(r["video"]).name, embed) for r in ok),
            key="generate-previews", description="Generated videos with their trajectories",
        )
    if problems:  # recorded in the table above; the flow run ends Failed with them
        return Failed(message=f"{len(problems)} of {len(requests)} requests failed: " + "; ".join(problems))
    return records


@task(name="evaluate-set", task_run_name="evaluate {set_name}", cache_policy=NO_CACHE, tags=["gpu"])
@bad_input_fails
def evaluate_task(run: str, set_name: str, out: str, settings: EvalSettings, device: str = "cpu",
                  base_model: str | None = None, base_loras: list[str] | None = None, dtype: str = "fp32") -> dict:
    evalset = read_eval_set(set_name)  # a bad set file fails here, before the weights load
    require_writable(out, "out")
    check_guidance(evalset, settings)  # and so does guidance outside the object mode
    pipe = _pipeline(run, device, base_model, base_loras, dtype)
    progress = create_progress_artifact(0.0, key=_artifact_key(f"evaluate-{evalset.name}-progress"),
                                        description=f"Evaluating {run} on {evalset.name} ({settings.mode or evalset.kind} mode)")

    def on_case(done: int, total: int, row: dict) -> None:
        update_progress_artifact(progress, 100.0 * done / total)
        get_run_logger().info("%d/%d %s λ_trajs=%s: %.2f px", done, total, row["case"], row["trajs_scale"], row["mc_px"])

    return evaluate_set(pipe, evalset, out, settings, on_case=on_case)


@task(name="publish-evaluation", cache_policy=NO_CACHE)
def publish_evaluation(metrics: dict, out: str, previews: int = 3) -> None:
    """Table 1's columns, Figure 7's sweep when run, and sample GIFs (requested + tracked)."""
    kind = metrics.get("kind", metrics["set"])
    name = "CamMC" if kind == "camera" else "ObjMC"
    key = _artifact_key(f"evaluate-{metrics['set']}")
    key += "" if metrics["mode"] == kind else f"-{metrics['mode']}"  # the set's own adapter: no suffix
    row = {"run set": metrics["set"], "mode": metrics["mode"], "FID": metrics.get("FID"), "FVD": metrics.get("FVD"),
           name: metrics[name], "videos": metrics["num_videos"], "s/video": metrics["seconds_per_video"], "tracker": metrics["tracker"]}
    create_table_artifact([row], key=f"{key}-metrics", description="Paper Table 1 columns")
    if len(metrics["by_trajs_scale"]) > 1:
        sweep = [{"λ_trajs": k, **v} for k, v in metrics["by_trajs_scale"].items()]
        create_table_artifact(sweep, key=f"{key}-ablation",
                              description="Camera-free guidance sweep (Figure 7): ObjMC and background motion")
    md = [f"# Evaluation: {metrics['set']} set, {metrics['mode']} mode", "",
          "Requested trajectories and the tracked ones are drawn over each video.", ""]
    embed = Embedder()
    for r in metrics["cases"][:previews]:
        md.append(_gif_markdown(Path(out) / r["gif"], f"{r['case']} (λ_trajs={r['trajs_scale']}): {r['mc_px']} px",
                                embed))
    create_markdown_artifact("\n".join(md), key=f"{key}-samples", description="Sample generations")
