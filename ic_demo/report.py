"""The demo report: does control work? Table 1's metrics, Figures 6–7 as GIFs, training curves.

``summarize`` turns the evaluation results of each variant into the report's numbers, including
the two headline ratios:

- ``objmc_ratio`` = ObjMC(object adapter) / ObjMC(motion ControlNet off): trajectory control is
  learned when it is well below 1;
- ``background_ratio`` = median background motion(object adapter) / median background
  motion(camera adapter), medians over the object set's cases, both on its trajectories: camera and
  object motion are separated when it is small.

``write_report`` writes ``report.md``, ``report.html`` and ``metrics.json`` into one folder. No
Prefect here: the flow turns the same content into artifacts.
"""
from __future__ import annotations

import functools
import html
import itertools
import json
import os
from pathlib import Path

import cv2
import numpy as np

from ic_data.preview import draw_tracks, write_gif

# The targets of `make proof` (issue text; paper Figures 6–7).
OBJMC_RATIO_TARGET = 0.5
BACKGROUND_RATIO_TARGET = 0.3
# Camera adapter on the camera set: CamMC ≤ 0.7 × the base's (motion ControlNet off).
CAMMC_RATIO_TARGET = 0.7
# Camera-free guidance: background motion falls by ≥ 10 % from λ_trajs 1.0 to 1.5, while ObjMC at
# 1.5 stays within 1.1 × its value at 1.0.
GUIDANCE_DROP_TARGET = 0.10
GUIDANCE_OBJMC_TARGET = 1.1


def variant_key(set_name: str, mode: str) -> str:
    return f"{set_name}/{mode}"


def _ratio(a, b) -> float | None:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b <= 0:
        return None
    return round(float(a) / float(b), 4)


def summarize(evaluations: dict[str, dict]) -> dict:
    """``evaluations``: ``"set/mode"`` → the metrics dict of ``evaluate_set``. Returns the
    report's numbers: per variant, the λ_trajs sweep, the two ratios and the targets."""
    variants = {}
    for key, m in evaluations.items():
        entry = {"set": m["set"], "mode": m["mode"], "videos": m["num_videos"],
                 "seconds_per_video": m["seconds_per_video"], "tracker": m["tracker"]}
        base = m["by_trajs_scale"].get("1", next(iter(m["by_trajs_scale"].values())))
        entry.update(base)
        for k in ("FID", "FVD", "FVD_note", "num_reference"):
            if k in m:
                entry[k] = m[k]
        variants[key] = entry
    obj = variants.get(variant_key("object", "object"), {})
    off = variants.get(variant_key("object", "base"), {})
    cam = variants.get(variant_key("object", "camera"), {})
    cam_set, cam_base = variants.get(variant_key("camera", "camera"), {}), variants.get(variant_key("camera", "base"), {})
    sweep = evaluations.get(variant_key("object", "object"), {}).get("by_trajs_scale", {})
    out = {
        "variants": variants,
        "trajs_scale_sweep": sweep,
        "objmc_ratio": _ratio(obj.get("ObjMC"), off.get("ObjMC")),
        "background_ratio": _ratio(obj.get("background_motion_median_px"), cam.get("background_motion_median_px")),
        "cammc_ratio": _ratio(cam_set.get("CamMC"), cam_base.get("CamMC")),
    }
    # Camera-free guidance over λ_trajs (ABLATION_TRAJS_SCALES: 1.0, 1.1, 1.3, 1.5).
    levels = sorted(sweep, key=float)
    bg = [sweep[k].get("background_motion_px") for k in levels]
    lo, hi = (sweep[levels[0]], sweep[levels[-1]]) if len(levels) > 1 else ({}, {})
    drop = _ratio(hi.get("background_motion_px"), lo.get("background_motion_px"))
    out["guidance_background_drop"] = None if drop is None else round(1 - drop, 4)
    out["guidance_objmc_ratio"] = _ratio(hi.get("ObjMC"), lo.get("ObjMC"))
    falls = None
    if len(bg) > 1 and all(b is not None and np.isfinite(b) for b in bg):
        falls = all(b < a for a, b in itertools.pairwise(bg))

    def at_most(value, limit):
        return None if value is None else value <= limit

    out["targets"] = {
        "objmc_ratio <= 0.5": at_most(out["objmc_ratio"], OBJMC_RATIO_TARGET),
        "background_ratio <= 0.3": at_most(out["background_ratio"], BACKGROUND_RATIO_TARGET),
        "cammc_ratio <= 0.7": at_most(out["cammc_ratio"], CAMMC_RATIO_TARGET),
        "background motion falls at every λ_trajs step": falls,
        "background motion 1.0 → 1.5 falls by >= 10 %": None if out["guidance_background_drop"] is None
        else out["guidance_background_drop"] >= GUIDANCE_DROP_TARGET,
        "ObjMC at λ_trajs 1.5 <= 1.1 × at 1.0": at_most(out["guidance_objmc_ratio"], GUIDANCE_OBJMC_TARGET),
    }
    return out


# --------------------------------------------------------------------------- pictures


@functools.cache
def _label_font(size: int = 11):
    """DejaVu Sans (shipped with matplotlib): OpenCV's Hershey fonts are ASCII only and drew
    "λ_trajs" as "?_trajs"."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    bar = Image.new("RGB", (img.shape[1], 16), (24, 24, 24))
    ImageDraw.Draw(bar).text((3, 1), text, font=_label_font(), fill=(240, 240, 240))
    return np.concatenate([np.asarray(bar), img], axis=0)


def side_by_side_gif(
    first_frame: np.ndarray, tracks: np.ndarray, panels: list[tuple[str, np.ndarray]], path: str | os.PathLike,
    scale: float = 2.0, fps: float = 6.0,
) -> Path:
    """One GIF: the input frame with the requested trajectories, then each labelled video.

    first_frame (H, W, 3); tracks (T, N, 2) in its pixels; panels: (title, frames (T, H, W, 3)).
    """
    def up(img):
        return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    scaled = tracks * scale + (scale - 1) / 2
    still = _label(draw_tracks(up(first_frame), scaled, np.arange(tracks.shape[1])), "input + trajectories")
    length = max(len(f) for _, f in panels)
    images = []
    for t in range(length):
        row = [still] + [_label(up(f[min(t, len(f) - 1)]), title) for title, f in panels]
        sep = np.full((still.shape[0], 4, 3), 255, np.uint8)
        images.append(np.concatenate([x for im in row for x in (im, sep)][:-1], axis=1))
    return write_gif(images, path, fps)


def running_mean(values: np.ndarray, window: int = 9) -> np.ndarray:
    """Centred running mean (shorter windows at the ends)."""
    half = window // 2
    return np.array([values[max(0, i - half): i + half + 1].mean() for i in range(len(values))])


def loss_summary(records: list[dict], fraction: float = 0.2) -> dict:
    """Mean logged loss over the first and the last ``fraction`` of a stage's records."""
    if not records:
        return {"loss, first 20 %": None, "loss, last 20 %": None}
    n = max(1, int(round(len(records) * fraction)))
    mean = lambda rs: round(float(np.mean([r["loss"] for r in rs])), 4)  # noqa: E731
    return {"loss, first 20 %": mean(records[:n]), "loss, last 20 %": mean(records[-n:])}


def training_curves_png(curves: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Loss against step, one panel per stage (log scale): ``curves`` stage → metrics records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s, records in curves.items() if records]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(3.0 * max(1, len(stages)), 2.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        records = curves[stage]
        steps = np.array([r["step"] for r in records])
        loss = np.array([r["loss"] for r in records])
        # Each logged loss is one batch at random timesteps: noisy. The bold line is a running mean.
        ax.plot(steps, loss, lw=0.8, alpha=0.35, color="C0")
        ax.plot(steps, running_mean(loss), lw=1.6, color="C0", label="loss (running mean)")
        if "ortho" in records[0]:  # the object stage: denoising + orthogonal loss
            ax.plot(steps, running_mean(np.array([r["mse"] for r in records])), lw=1.2, ls="--", color="C1",
                    label="denoising term")
        ax.legend(fontsize=6)
        ax.set_yscale("log")
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- documents


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def metric_rows(summary: dict) -> list[dict]:
    """The metrics table: one row per (set, mode)."""
    rows = []
    for key, v in summary["variants"].items():
        rows.append({
            "variant": key, "ObjMC px": v.get("ObjMC"), "CamMC px": v.get("CamMC"),
            "background motion px": v.get("background_motion_px"),
            "background median px": v.get("background_motion_median_px"), "FID": v.get("FID"), "FVD": v.get("FVD"),
            "videos": v["videos"], "s/video": v["seconds_per_video"],
        })
    return rows


def sweep_rows(summary: dict) -> list[dict]:
    return [{"λ_trajs": k, "ObjMC px": v.get("ObjMC"), "background motion px": v.get("background_motion_px")}
            for k, v in sorted(summary["trajs_scale_sweep"].items(), key=lambda kv: float(kv[0]))]


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def response_rows(response: dict) -> list[dict]:
    """One row per condition of :func:`ic_demo.response.trajectory_response`, a column per
    (t, region)."""
    rows: dict[str, dict] = {}
    for r in response["rows"]:
        row = rows.setdefault(r["condition"], {"condition": r["condition"]})
        row[f"t={r['t']} whole"] = r["whole"]
        row[f"t={r['t']} moving"] = r["moving"]
    return list(rows.values())


def report_sections(summary: dict, context: dict) -> list[tuple[str, str, list[dict] | None]]:
    """(title, text, table rows or None) in reading order, shared by markdown, HTML and artifacts."""
    t = summary["targets"]
    headline = [
        {"figure": "objmc_ratio = ObjMC(object) / ObjMC(ControlNet off)", "value": summary["objmc_ratio"],
         "target": f"≤ {OBJMC_RATIO_TARGET}", "met": t["objmc_ratio <= 0.5"]},
        {"figure": "background_ratio = median background(object) / median background(camera)",
         "value": summary["background_ratio"], "target": f"≤ {BACKGROUND_RATIO_TARGET}", "met": t["background_ratio <= 0.3"]},
        {"figure": "cammc_ratio = CamMC(camera adapter) / CamMC(ControlNet off), camera set",
         "value": summary.get("cammc_ratio"), "target": f"≤ {CAMMC_RATIO_TARGET}", "met": t.get("cammc_ratio <= 0.7")},
        {"figure": "background motion over λ_trajs 1.0 → 1.1 → 1.3 → 1.5", "value": None,
         "target": "falls at every step", "met": t.get("background motion falls at every λ_trajs step")},
        {"figure": "background motion drop, λ_trajs 1.0 → 1.5", "value": summary.get("guidance_background_drop"),
         "target": f"≥ {GUIDANCE_DROP_TARGET:.0%}", "met": t.get("background motion 1.0 → 1.5 falls by >= 10 %")},
        {"figure": "ObjMC(λ_trajs 1.5) / ObjMC(λ_trajs 1.0)", "value": summary.get("guidance_objmc_ratio"),
         "target": f"≤ {GUIDANCE_OBJMC_TARGET}", "met": t.get("ObjMC at λ_trajs 1.5 <= 1.1 × at 1.0")},
    ]
    deferred = context.get("reference_metrics", "now")
    when = {"now": "", "later": " (not computed yet: this run left them to `python -m ic_demo.finish`)"}.get(
        deferred, f" ({deferred})")
    intro = (
        f"Scale `{context.get('scale')}`, seed {context.get('seed')}, command `{context.get('command')}`. "
        f"Held-out toy cases: the paper's 10 camera and 10 object trajectories on synthetic first frames the "
        f"training never saw; FID/FVD against {context.get('reference_clips', '?')} held-out toy clips{when}. "
        "Distances are pixels of a 384×256 frame; a case's background motion is the mean displacement from "
        "frame 0 of grid points away from the requested tracks; a variant's is the mean over its cases, and "
        "background_ratio compares medians over cases."
    )
    return [
        ("Image Conductor toy-scale report", intro, None),
        ("Headline figures", "", headline),
        ("Metrics per variant", "`set/mode`: `object` and `camera` are the adapters, `none` the motion "
         "ControlNet without LoRA, `base` the image-to-video base with the motion ControlNet off.",
         metric_rows(summary)),
        ("Camera-free guidance sweep (object set, object adapter)", "", sweep_rows(summary)),
        *([("What the motion ControlNet learned (x0 error with and without trajectories)",
            f"Held-out clips with moving objects ({response['num_samples']} windows), noised at each t with the "
            "same noise for every condition; the error of the model's x0 estimate on frames 1… in the scaled latent "
            "space, over the whole frame and over the 10 % of positions that change most. Own trajectories well "
            "below `off` and `other clip` on `moving` = the ControlNet uses them; all equal = it ignores them. "
            f"Weights: the `{response['stage']}` stage, no LoRA.", response_rows(response))]
          if (response := context.get("trajectory_response")) else []),
        ("Training", "", context.get("training_rows") or []),
        ("Curation", "", context.get("curation_rows") or []),
    ]


def write_report(out: str | os.PathLike, summary: dict, context: dict, gifs: list[tuple[str, str]],
                 curves: str | None) -> dict[str, Path]:
    """``report.md``, ``report.html`` and ``metrics.json`` in ``out``; ``gifs``: (title, path
    relative to ``out``); ``curves``: the training-curve PNG relative to ``out``."""
    out = Path(out)
    sections = report_sections(summary, context)
    md, body = [], []
    for i, (title, text, rows) in enumerate(sections):
        md.append(("# " if i == 0 else "## ") + title + "\n")
        body.append(f"<h{1 if i == 0 else 2}>{html.escape(title)}</h{1 if i == 0 else 2}>")
        if text:
            md.append(text + "\n")
            body.append(f"<p>{html.escape(text)}</p>")
        if rows is not None:
            md.append(_md_table(rows))
            body.append(_html_table(rows))
    if curves:
        md.append(f"## Training curves\n\n![training curves]({curves})\n")
        body.append(f'<h2>Training curves</h2><img src="{html.escape(curves)}" alt="training curves">')
    if gifs:
        md.append("## Side by side (Figures 6–7)\n")
        body.append("<h2>Side by side (Figures 6–7)</h2>")
        for title, rel in gifs:
            md.append(f"**{title}**\n\n![{title}]({rel})\n")
            body.append(f'<h3>{html.escape(title)}</h3><img src="{html.escape(rel)}" alt="{html.escape(title)}">')
    paths = {"md": out / "report.md", "html": out / "report.html", "metrics": out / "metrics.json"}
    paths["md"].write_text("\n".join(md))
    style = "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}"
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Image Conductor report"
                             f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    paths["metrics"].write_text(json.dumps({**summary, "context": context}, indent=1, default=str))
    return paths


__all__ = [
    "BACKGROUND_RATIO_TARGET",
    "CAMMC_RATIO_TARGET",
    "GUIDANCE_DROP_TARGET",
    "GUIDANCE_OBJMC_TARGET",
    "OBJMC_RATIO_TARGET",
    "loss_summary",
    "metric_rows",
    "report_sections",
    "response_rows",
    "running_mean",
    "side_by_side_gif",
    "summarize",
    "sweep_rows",
    "training_curves_png",
    "variant_key",
    "write_report",
]
