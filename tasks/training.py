"""Prefect task around one training stage: GPU slot, progress, metrics artifacts.

The stage runs in this process (one device), or under ``accelerate launch`` in child processes
when ``num_processes > 1`` (multi-GPU DDP). Either way its metrics land in RUN/STAGE/metrics.jsonl,
which this task turns into artifacts.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from ic_model.config import ModelConfig, TrainConfig
from ic_model.training.run import stage_dir
from ic_model.training.loop import launch_command, train_stage
from tasks.artifacts import Embedder
from tasks.failures import bad_input_fails

# Tag-based concurrency limit: `prefect concurrency-limit create gpu N` (N GPUs on the worker)
# keeps two stages from sharing a GPU. deployments/serve.py creates it when missing.
GPU_TAG = "gpu"


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _launch(stage: str, shards: str, run: str, train_cfg: TrainConfig, model_cfg: ModelConfig, num_processes: int,
            on_log) -> dict:
    """``accelerate launch`` the same entry point on ``num_processes`` processes; they get the
    whole model config, so weight paths given to this run reach them too."""
    paths = []
    for data in (train_cfg.to_dict(), model_cfg.to_dict()):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(data, fh)
            paths.append(fh.name)
    cfg_path, model_path = paths
    cmd, env = launch_command(num_processes, stage, shards, run, cfg_path, train_cfg.mixed_precision,
                              model_config_json=model_path)
    metrics = stage_dir(run, stage) / "metrics.jsonl"
    stop = threading.Event()

    def follow():  # progress from the metrics file the rank-0 process appends to
        seen = 0
        while not stop.wait(2.0):
            records = _read_metrics(metrics)
            for record in records[seen:]:
                on_log({**record, "total_steps": train_cfg.steps})
            seen = len(records)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # Ctrl-C, `ic` stopped by SIGTERM
        stop_launch(proc)
        pass_on_the_saved_step(proc)
        raise
    finally:
        stop.set()
        for path in paths:
            os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch failed ({proc.returncode}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def stop_launch(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop ``accelerate launch`` and every rank it started. The ranks run in sessions of their
    own (PyTorch's launcher starts them so), where no terminal signal reaches them, and killing
    the launcher alone (what ``subprocess.run`` does when interrupted) left them training on,
    orphaned. SIGTERM lets the launcher stop its ranks; whatever still runs after ``grace_s``
    is killed."""
    import psutil

    try:
        ranks = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:  # the launcher is already gone
        ranks = []
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(ranks, timeout=grace_s)
    for rank in alive:
        with contextlib.suppress(psutil.Error):
            rank.kill()


def pass_on_the_saved_step(proc: subprocess.Popen) -> None:
    """After a stop, the line in which the ranks say which step they saved (their output is read
    only when the launcher ends, and the rest of it is the launcher's teardown)."""
    try:
        _, stderr = proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return
    for line in (stderr or "").splitlines():
        if ": stopped by " in line and "the same command resumes" in line:
            print(line, file=sys.stderr, flush=True)


@task(name="train", task_run_name="train {stage}", tags=[GPU_TAG], cache_policy=NO_CACHE)
@bad_input_fails
def run_stage(
    stage: str, shards: str, run: str, train_cfg: TrainConfig, model_cfg: ModelConfig, num_processes: int = 1
) -> dict:
    log = get_run_logger()
    progress = create_progress_artifact(0.0, key=f"train-{stage}-progress", description=f"Training {stage} in {run}")

    def on_log(record: dict) -> None:
        update_progress_artifact(progress, min(100.0, 100.0 * record["step"] / record["total_steps"]))
        log.info(
            "%s step %d/%d loss %.5f lr %.2e %.2f samples/s peak %.0f MB",
            stage, record["step"], record["total_steps"], record["loss"], record["lr"],
            record["samples_per_s"], record["peak_memory_mb"],
        )

    def on_validation(records: list[dict]) -> None:
        for r in records:
            log.info("%s validation at step %d: %s %.2f px (%s, λ_trajs %g)", stage, r["step"], r["metric"], r["value"],
                     r["case"], r["trajs_scale"])
        publish_validation(stage, records)

    if num_processes > 1:
        summary = _launch(stage, shards, run, train_cfg, model_cfg, num_processes, on_log)
        if summary.get("resumed_from_step"):  # said by the ranks, whose output is not shown
            log.info("%s resumed from step %d", stage, summary["resumed_from_step"])
    else:
        summary = train_stage(stage, shards, run, train_cfg, model_cfg, on_log=on_log, progress=False,
                              on_validation=on_validation)
    update_progress_artifact(progress, 100.0)
    for note in summary.get("damaged_checkpoints", []):  # a resume went past a damaged checkpoint
        log.warning("%s: %s", stage, note)
    return summary


def publish_validation(stage: str, records: list[dict]) -> None:
    """The validation sample of one step as an artifact: its metric and the GIF (requested and
    tracked paths drawn), so the UI shows whether control is emerging while the stage trains."""
    parts, embed = [f"# `{stage}` at step {records[0]['step']}\n"], Embedder()
    for r in records:
        parts.append(f"**{r['metric']} {r['value']:.2f} px** ({r['set']} set, case `{r['case']}`, mode `{r['mode']}`, "
                     f"λ_trajs {r['trajs_scale']:g})\n\n{embed.image(r['gif'], r['case'])}\n")
    create_markdown_artifact("\n".join(parts), key=f"train-{stage}-validation",
                             description=f"{stage}: validation sample at step {records[0]['step']}")


@task(name="publish-training", cache_policy=NO_CACHE)
def publish_training(stage: str, run: str, summary: dict, max_rows: int = 40) -> None:
    """A table of the logged metrics (thinned to ``max_rows``) and a summary artifact."""
    records = _read_metrics(stage_dir(run, stage) / "metrics.jsonl")
    if len(records) > max_rows:
        stride = -(-len(records) // max_rows)
        records = records[::stride] + ([records[-1]] if (len(records) - 1) % stride else [])
    if records:
        create_table_artifact(records, key=f"train-{stage}-metrics", description=f"{stage}: loss, lr, throughput, memory")
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    create_markdown_artifact(
        f"# Stage `{stage}` of `{run}`\n\n| field | value |\n|---|---|\n{rows}\n",
        key=f"train-{stage}-summary",
        description=f"Training summary for {stage}",
    )


@task(name="cache-latents", cache_policy=NO_CACHE, tags=[GPU_TAG])
@bad_input_fails
def cache_latents_task(shards: str, run: str, out: str | None, device: str, dtype: str) -> dict:
    """Encode the shards' frames once with the run's VAE; progress per shard in the UI."""
    from ic_model.pipelines.image_conductor import DTYPES
    from ic_model.training.latent_cache import cache_run_latents

    log = get_run_logger()
    artifact = create_progress_artifact(0.0, key="cache-latents-progress", description="Shards encoded")

    def progress(shard: str, done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / total)
        log.info("%d/%d %s", done, total, shard)

    stats = cache_run_latents(shards, run, out, device=device, dtype=DTYPES[dtype], progress=progress)
    create_table_artifact([{k: str(v) for k, v in stats.items()}], key="cache-latents",
                          description=f"Latent cache for {run}")
    return stats
