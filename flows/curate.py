"""The `curate` flow (deployments `curate/webvid` and `curate/realestate10k`), paper Fig. 2b.

    plan chunks → score every chunk (decode once, cuts, clip, motion) → dataset-wide motion
    threshold → finish every chunk (crop, track, sparse sample, caption, shard) → manifest
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from typing import Annotated, Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from ic_data.errors import BadInputError
from ic_data.pipeline import CurationConfig, discover_videos, other_files_line, plan_chunks, uncaptioned_line
from ic_data.settings import require_writable
from ic_data.workers import default_processes
from tasks.curation import assemble_manifest, finish_chunk, motion_threshold, publish_summary, score_chunk

SOURCES = {"webvid": False, "realestate10k": True}  # source → camera_only


def make_task_runner(dask_address: str | None = None, workers: int | None = None):
    """A Dask cluster when an address is given (scale-out), else a local thread pool.

    The heavy stages (decoding, OpenCV flow and tracking, H.264) release the GIL, so threads
    use every core without copying frames between processes.
    """
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=workers or os.cpu_count() or 1)


def _gather(futures, progress_id, start: float, end: float, what: str) -> list:
    """Wait for every future, advancing the progress artifact; fail only after all are done."""
    results, errors = {}, []
    for done, fut in enumerate(as_completed(futures), 1):
        try:
            results[fut] = fut.result()
        except Exception as exc:  # reported below with the others, after the rest finished
            errors.append(f"{what} task {fut.task_run_id}: {exc}")
        update_progress_artifact(progress_id, start + (end - start) * done / max(1, len(futures)))
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(futures)} {what} tasks failed (finished chunks are kept; "
            "run the same command again to resume):\n" + "\n".join(errors)
        )
    return [results[f] for f in futures]


# Deployments run this module in a fresh process: IC_DASK_ADDRESS there picks the runner.
@flow(name="curate", log_prints=True, task_runner=make_task_runner(os.environ.get("IC_DASK_ADDRESS") or None))
def curate(
    videos: str,
    out: str,
    source: Literal["webvid", "realestate10k"] = "webvid",
    captions: str | None = None,
    flow_backend: Literal["dis", "raft"] = "dis",
    tracker: Literal["lk", "cotracker"] = "lk",
    captioner: Literal["none", "blip2"] = "none",
    seed: Annotated[int, Field(ge=0)] = 0,
    chunk_size: Annotated[int, Field(ge=1)] = 16,
    drop_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.25,
    processes: Annotated[int | None, Field(ge=0)] = None,
) -> dict:
    """Curate a folder of videos into trajectory-annotated WebDataset shards + a manifest.

    processes: worker processes for the per-video work inside each chunk task (0: the task's
    own thread). Default: one per usable core, as many as memory holds (``default_processes``),
    under the local thread pool with the CPU backends (dis, lk, no captioner), where threads
    alone leave cores idle while Python holds the GIL; else 0: Dask workers are processes
    already (daemonic ones, which may not start children), and RAFT, CoTracker and BLIP-2
    would each load their weights once per process.
    """
    t0 = time.perf_counter()
    log = get_run_logger()
    config = CurationConfig(
        source=source, camera_only=SOURCES[source], seed=seed, flow=flow_backend, tracker=tracker,
        captions_csv=captions, captioner=captioner, drop_fraction=drop_fraction, processes=processes or 0,
    )
    if processes is None:
        local = isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner)
        cpu_only = flow_backend == "dis" and tracker == "lk" and captioner == "none"
        if local and cpu_only:
            config = dataclasses.replace(config, processes=default_processes(config.max_decode_frames))
    try:
        require_writable(out, "out")
        others = Counter()
        chunks = plan_chunks(discover_videos(videos, out_dir=out, others=others), config, chunk_size)
    except BadInputError as err:  # a captions CSV that breaks further in than the arguments' check read
        return Failed(message=str(err))
    log.info("%d videos from %s in %d chunks → %s (%d worker processes)", sum(len(c.videos) for c in chunks), videos,
             len(chunks), out, config.processes)
    if others:
        log.warning("left out %d files that are no video by their extension: %s", sum(others.values()),
                    other_files_line(others))
    if line := uncaptioned_line(chunks, config):
        log.warning("%s", line)
    progress = create_progress_artifact(0.0, key=f"curate-{source}-progress", description=f"Curating {videos}")

    scored = _gather(score_chunk.map(chunks, unmapped(config), unmapped(out)), progress, 0, 50, "score")
    decision = motion_threshold(scored, drop_fraction)
    _gather(finish_chunk.map(chunks, unmapped(decision.threshold), unmapped(config), unmapped(out)), progress, 50, 95, "finish")
    summary = assemble_manifest(out, chunks, decision.threshold, others)
    publish_summary(summary, source, time.perf_counter() - t0)
    update_progress_artifact(progress, 100.0)

    log.info("curated %d videos: %s; reasons filtered or failed: %s; damaged: %d; bars cut off: %d",
             summary.num_videos, summary.counts, summary.reasons, summary.damaged, summary.letterboxed)
    result = summary.to_json()
    if summary.num_videos and not summary.counts["ok"]:
        log.warning("%s", nothing_kept(result))
    return result


def nothing_kept(summary: dict) -> str:
    """The line for a curation (its summary.json) that kept no clip: its shards are empty, and
    nothing can train on them."""
    why = ", ".join(f"{n} {reason}" for reason, n in summary["reasons"].items())
    return (f"no clip was kept of {summary['num_videos']} videos ({why}): the shards are empty; "
            "the manifest's reason and error columns say what happened to each")
