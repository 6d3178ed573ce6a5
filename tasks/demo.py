"""Tasks of the `demo` flow: thin wrappers around ``ic_demo`` (the toy world, the held-out
reference clips, the probe, the report) that add the Prefect artifacts. The scales live in
``ic_demo.scales``; ``ic_demo.chain`` runs the same chain without Prefect.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ic_demo import world
from ic_demo.chain import probe_response as _probe_response, write_demo_report
from ic_demo.report import metric_rows, response_rows, sweep_rows
from ic_demo.scales import SCALES, STAGES, DemoScale, demo_model_config, stage_shards
from ic_demo.world import finished_evaluation
from tasks.artifacts import Embedder


@task(name="toy-world", cache_policy=NO_CACHE)
def make_toy_world(videos_dir: str, scale: DemoScale, seed: int) -> dict[str, str]:
    return world.make_toy_world(videos_dir, scale, seed)


@task(name="held-out-clips", cache_policy=NO_CACHE)
def make_heldout(out: str, scale: DemoScale, seed: int) -> str:
    return world.make_heldout(out, scale, seed)


@task(name="trajectory-response", cache_policy=NO_CACHE)
def probe_response(run: str, heldout: str, scale: DemoScale, seed: int) -> dict:
    return _probe_response(run, heldout, scale, seed)


def _gif_md(path: Path, title: str, embed: Embedder) -> str:
    return f"**{title}**\n\n{embed.image(path, title)}\n"


@task(name="demo-report", cache_policy=NO_CACHE)
def publish_report(outs: list[str], run: str, scale_name: str, seed: int, command: str, evaluations: dict[str, dict],
                   eval_dirs: dict[str, str], curation: dict[str, dict], training: dict[str, dict],
                   seconds: dict[str, float], response: dict | None = None) -> dict:
    """report.md / report.html / metrics.json / curves / GIFs, and the same as artifacts."""
    report = write_demo_report(outs, run, scale_name, seed, command, evaluations, eval_dirs, curation, training,
                               seconds, response)
    summary, gifs, out_dir = report["summary"], report["gifs"], Path(outs[0])
    curves_png, paths = Path(report["curves_png"]), report["paths"]

    create_table_artifact(metric_rows(summary), key="demo-metrics", description="Metrics per variant (Table 1)")
    create_table_artifact(sweep_rows(summary), key="demo-trajs-sweep", description="Camera-free guidance (Figure 7)")
    if response:
        create_table_artifact(response_rows(response), key="demo-trajectory-response",
                              description="x0 error with and without trajectories (motion ControlNet)")
    headline = "\n".join(f"- **{k}**: {v}" for k, v in (
        ("objmc_ratio", summary["objmc_ratio"]), ("background_ratio", summary["background_ratio"]),
        *summary["targets"].items()))
    embed = Embedder()
    md = [f"# Image Conductor demo ({scale_name})", "", headline, "", embed.image(curves_png, "training curves"), ""]
    md += [_gif_md(out_dir / rel, title, embed) for title, rel in gifs[:3]]
    create_markdown_artifact("\n".join(md), key="demo-report", description=f"Report: {paths['md']}")
    return {"report": str(paths["md"]), "html": str(paths["html"]), "metrics": str(paths["metrics"]),
            "objmc_ratio": summary["objmc_ratio"], "background_ratio": summary["background_ratio"],
            "targets": summary["targets"]}


__all__ = ["SCALES", "STAGES", "demo_model_config", "finished_evaluation", "make_heldout", "make_toy_world",
           "probe_response", "publish_report", "stage_shards"]
