"""Prefect tasks around the ic_data curation chain: retries, artifacts, logs.

Tasks exchange chunk descriptions, paths and small records, never frames. Idempotency comes
from the library (a chunk whose result file exists is not recomputed), so the tasks do not
use Prefect's input-hash cache.
"""
from __future__ import annotations

import errno
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ic_data import pipeline
from ic_data.pipeline import Chunk, CurationConfig, MotionDecision
from tasks.artifacts import Embedder


# No task-level timeout: these sync tasks run in worker threads, which Prefect cannot interrupt
# (3.9 warns once per task run that such a timeout only takes effect after the call returns). A
# hung decode is bounded inside the library instead (``CurationConfig.decode_timeout_s``).


def _transient(task, task_run, state) -> bool:
    """Retry only what may pass on a second try: I/O trouble, not a deterministic bug.

    Per-video problems (corrupt files, too short, …) never reach here: the library records
    them as failed rows. What escapes a chunk is an error writing our own outputs (disk full,
    NFS hiccup) or a timeout raised by the I/O layer. A refusal of permission, or a read-only
    file system, is the same on every try: the run fails at once with it.
    """
    try:
        state.result()
    except PermissionError:
        return False
    except OSError as exc:  # TimeoutError among them
        return exc.errno != errno.EROFS
    except Exception:
        return False
    return False


@task(
    name="score-chunk",
    task_run_name="score {chunk.key}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)
def score_chunk(chunk: Chunk, config: CurationConfig, out: str) -> str:
    """Stage 1 for a chunk: decode once, cuts, longest scene, clip sampling, motion score."""
    t0 = time.perf_counter()
    done = pipeline.stage1_result_path(out, chunk).exists()
    path = pipeline.run_stage1_chunk(chunk, config, out)
    get_run_logger().info(
        "%s: %s %d videos in %.1f s", chunk.key, "reused" if done else "scored", len(chunk.videos), time.perf_counter() - t0
    )
    return str(path)


@task(name="motion-threshold", cache_policy=NO_CACHE)
def motion_threshold(stage1_results: list[str], drop_fraction: float) -> MotionDecision:
    """The barrier: the dataset-wide bottom-``drop_fraction`` threshold over every score."""
    decision = pipeline.decide_motion_threshold(stage1_results, drop_fraction)
    get_run_logger().info(
        "motion threshold %.4f px: %d of %d scored clips kept", decision.threshold, decision.num_kept, decision.num_scored
    )
    return decision


@task(
    name="finish-chunk",
    task_run_name="finish {chunk.key}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)
def finish_chunk(chunk: Chunk, threshold: float, config: CurationConfig, out: str) -> str:
    """Stage 2 for a chunk: tracking, sparse sampling, captions and the chunk's shard."""
    t0 = time.perf_counter()
    path = pipeline.run_stage2_chunk(chunk, threshold, config, out)
    get_run_logger().info("%s: finished in %.1f s", chunk.key, time.perf_counter() - t0)
    return str(path)


@task(name="assemble-manifest", cache_policy=NO_CACHE)
def assemble_manifest(out: str, chunks: list[Chunk], threshold: float,
                      other_files: dict[str, int] | None = None) -> pipeline.CurationSummary:
    return pipeline.assemble_manifest(out, chunks, threshold, other_files)


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(summary: pipeline.CurationSummary, source: str, seconds: float, previews: int = 3) -> None:
    """Table artifact (counts, reasons, percentiles, threshold, throughput) + preview markdown."""
    n = summary.num_videos
    table = [{"metric": f"videos {k}", "value": v} for k, v in summary.counts.items()]
    table += [{"metric": f"reason: {k}", "value": v} for k, v in summary.reasons.items()]
    table += [{"metric": "videos damaged (frames lost in decoding; the manifest's damage)", "value": summary.damaged},
              {"metric": "videos with bars cut off, black or blurred (the manifest's bars)", "value": summary.letterboxed},
              {"metric": "kept clips without a caption", "value": summary.uncaptioned}]
    table += [{"metric": f"other files, no video by their extension: {ext or 'none'}", "value": k}
              for ext, k in summary.other_files.items()]
    table += [{"metric": f"motion score {k} (px)", "value": round(v, 4)} for k, v in summary.score_percentiles.items()]
    table += [
        {"metric": "motion threshold (px)", "value": summary.threshold},
        {"metric": "wall time (s)", "value": round(seconds, 1)},
        {"metric": "throughput (videos/s)", "value": round(n / seconds, 3) if seconds > 0 else None},
    ]
    create_table_artifact(table, key=f"curate-{source}-summary", description=f"Curation of {n} videos ({source})")
    create_markdown_artifact(
        _preview_markdown(Path(summary.out_dir), previews), key=f"curate-{source}-previews",
        description="Curated clips with their sampled sparse trajectories",
    )


def _preview_markdown(out: Path, limit: int) -> str:
    from ic_data.manifest import read_manifest
    from ic_data.preview import preview_gif, preview_png
    from ic_data.shards import read_shard

    rows = [r for r in read_manifest(out / "manifest.parquet") if r.status == "ok"][:limit]
    # Previews of an earlier run's clips (ids have no dots: "<id>.png", "<id>.small.gif") go.
    shown = {r.key for r in rows}
    for old in sorted((out / "previews").glob("*")) if (out / "previews").is_dir() else []:
        if old.is_file() and old.suffix in (".png", ".gif") and old.name.split(".")[0] not in shown:
            old.unlink()
    lines = [f"# Curated clips: {out}", ""]
    if not rows:
        return "\n".join(lines + ["No clip passed curation."])
    embed = Embedder()
    for i, r in enumerate(rows):
        sample = next(s for s in read_shard(out / r.shard) if s.key == r.key)
        frames = sample.decode_frames()
        png = preview_png(frames, sample.tracks, sample.sparse, out / "previews" / f"{r.key}.png")
        gif = preview_gif(frames, sample.tracks, sample.sparse, out / "previews" / f"{r.key}.gif", scale=0.5)
        # The artifact embeds a lighter copy (every other frame at half size; every fourth at a
        # quarter where detailed footage would leave too little room for the other clips).
        small = out / "previews" / f"{r.key}.small.gif"
        for step, scale in ((2, 0.5), (4, 0.25)):
            preview_gif(frames[::step], sample.tracks[::step], sample.sparse, small, fps=8.0 / step, scale=scale)
            if embed.fits(small, share=len(rows) - i):
                break
        lines += [
            f"## {r.key}",
            f"motion score {r.motion_score:.3f} px · {len(sample.sparse)} sparse tracks · caption: {sample.caption or '—'}",
            "",
            embed.image(small, r.key),
            "",
            f"Files: `{png}`, `{gif}`",
            "",
        ]
    return "\n".join(lines)
