"""Evaluation on the paper's camera and object sets (appendix C.2): FID, FVD, CamMC, ObjMC.

For every case (fixed seeds): generate a video, track it from the requested trajectories' first
points and measure the distance to them (CamMC on the camera set, ObjMC on the object set), and
for the object set also the motion of the background (points away from the objects), which
camera-free guidance is meant to suppress. FID (frames) and FVD (16-frame clips) compare the
generated videos with a reference set of curated clips.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ic_data.clips import CLIP_HEIGHT, CLIP_WIDTH
from ic_data.errors import BadInputError, MissingInputError
from ic_data.images import IMAGE_SUFFIXES
from ic_data.mp4 import write_mp4
from ic_data.preview import preview_gif
from ic_data.settings import MAX_PROMPT_CHARS, number, one_of, refuse, text, truth, whole
from ic_data.tracking import TRACKERS
from ic_model.evaluation.evalsets import EvalCase, EvalSet, read_eval_set, synthetic_first_frame
from ic_model.evaluation.metrics.motion_control import motion_control_error
from ic_model.pipelines.generate import read_image
from ic_model.pipelines.image_conductor import (
    GENERATE_MAX_UPSCALE,
    MODES,
    ImageConductorPipeline,
    prepare_image_and_tracks,
)

ABLATION_TRAJS_SCALES = (1.0, 1.1, 1.3, 1.5)  # Figure 7's sweep of λ_trajs
MIN_FRECHET_SET = 2  # FID and FVD compare the mean and covariance of two sets: at least 2 a side


@dataclass
class EvalSettings:
    steps: int = 25
    guidance_scale: float = 8.5
    trajs_scale: float = 1.0
    seed: int = 0
    tracker: str = "lk"
    images: str | None = None  # folder of first frames (sorted, one per case); None = synthetic
    reference: str | None = None  # shards of reference clips for FID/FVD; None = skip them
    max_reference: int = 5000
    ablation: bool = False  # object set: sweep λ_trajs over ABLATION_TRAJS_SCALES
    # The pipeline mode; None = the set's own (camera set → camera adapter, object set → object
    # adapter). "base" (motion ControlNet off) and "none" (no LoRA) are the baselines; the camera
    # adapter on the object set shows what the object adapter must not do (Figure 6).
    mode: str | None = None
    max_cases: int | None = None  # the first N cases only (quick runs); None = all
    # Also write the frames FID/FVD score (λ_trajs's first value) losslessly to frames.npz, so they
    # can be computed later where the metric networks' weights are (ic_demo.finish).
    keep_frames: bool = False
    # Classifier-free guidance's unconditional text ("": training's caption dropout; the official
    # examples give "worst quality, low quality, letterboxed").
    negative_prompt: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Refused when made: max_cases=-9 ran one case of ten, 0 reported ObjMC NaN, an unknown
        # tracker failed after the first video was generated.
        refuse("EvalSettings", [
            whole("steps", self.steps, 1),
            number("guidance_scale", self.guidance_scale, 0), number("trajs_scale", self.trajs_scale, 0),
            whole("seed", self.seed, 0, 2**63 - 1),
            one_of("tracker", self.tracker, TRACKERS),
            None if self.images is None else text("images", str(self.images), empty=False),
            None if self.reference is None else text("reference", str(self.reference), empty=False),
            whole("max_reference", self.max_reference, MIN_FRECHET_SET),
            truth("ablation", self.ablation),
            None if self.mode is None else one_of("mode", self.mode, MODES),
            None if self.max_cases is None else whole("max_cases", self.max_cases, 1),
            truth("keep_frames", self.keep_frames),
            text("negative_prompt", self.negative_prompt, longest=MAX_PROMPT_CHARS),
        ])


def _first_frames(cases: list[EvalCase], images: str | None, seed: int) -> list[np.ndarray]:
    """Each case's first frame at its ``frame_size``: the case's own image, else the ``images``
    folder's (sorted, one per case, reused in turn), else a synthetic one."""
    paths = []
    if images is not None and any(c.image is None for c in cases):
        if not Path(images).is_dir():
            raise MissingInputError(f"images {images}: no such folder")
        paths = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise BadInputError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in {images}")
    frames = []
    for i, case in enumerate(cases):
        if case.image is None and images is None:
            frames.append(synthetic_first_frame(case, seed=seed))
            continue
        path = case.image or paths[i % len(paths)]
        img = read_image(path)
        # The set's trajectories are in frame_size pixels: bring the image to that frame first,
        # enlarged no more than generation enlarges an image (a 1×1 picture is no first frame).
        (fw, fh), (h, w) = case.frame_size, img.shape[:2]
        if max(fw / w, fh / h) > GENERATE_MAX_UPSCALE:
            raise BadInputError(f"case {case.id}: the image {path} is {w}x{h}, which would need "
                                f"{max(fw / w, fh / h):.1f}x upscaling to the set's {fw}x{fh} frames "
                                f"(limit {GENERATE_MAX_UPSCALE:g}x)")
        frames.append(cv2.resize(img, case.frame_size, interpolation=cv2.INTER_AREA))
    return frames


def first_frame_problems(evalset: EvalSet, images: str | None, max_cases: int | None = None) -> list[str]:
    """What :func:`evaluate_set` would refuse in the cases' first frames (an image it cannot
    read, one too small for the set's frames), found before a model is loaded."""
    try:
        _first_frames(evalset.cases[:max_cases], images, seed=0)
    except BadInputError as err:
        return [str(err)]
    return []


#: How far (pixels of a 384×256 frame) a background point keeps from every requested track: an
#: object drawn on a track covers about that much around it (the toy world's and the synthetic
#: first frames' objects are 40 px across their radius at 384×256).
BACKGROUND_MARGIN_PX = 48.0


def background_points(tracks: np.ndarray, width: int, height: int, grid: int = 6,
                      margin_px: float = BACKGROUND_MARGIN_PX) -> np.ndarray:
    """A ``grid``×``grid`` of points of a ``width``×``height`` frame (model pixels) farther than
    ``margin_px`` from every requested track (model pixels), measured in 384×256 pixels: the
    same points of the picture whatever the model's size (in model pixels, 12 px had been an
    object's whole radius at 96×64 and a quarter of it at 384×256)."""
    xs = (np.arange(grid) + 0.5) * width / grid
    ys = (np.arange(grid) + 0.5) * height / grid
    pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    to_reference = np.array([CLIP_WIDTH / width, CLIP_HEIGHT / height])
    apart = (pts[:, None, None, :] - tracks.transpose(1, 0, 2)[None]) * to_reference
    return pts[np.linalg.norm(apart, axis=-1).min(axis=(1, 2)) > margin_px]


def background_motion_px(frames: np.ndarray, tracks: np.ndarray, tracker: str) -> float:
    """Mean displacement from frame 0 of background points (384×256 pixels): camera motion."""
    h, w = frames.shape[1:3]
    pts = background_points(tracks, w, h)
    if len(pts) == 0:
        return float("nan")
    still = np.repeat(pts[None].astype(np.float32), frames.shape[0], axis=0)
    return motion_control_error(frames, still, tracker).error_px


def guidance_problems(mode: str, trajs_scale: float, ablation: bool,
                      names: tuple[str, str] = ("trajs_scale", "ablation")) -> list[str]:
    """Camera-free guidance (``trajs_scale`` ≠ 1, ``ablation``'s sweep) is eq. 5 of the object
    adapter: in any other mode it is a problem (``ablation`` used to be ignored silently).
    ``names``: what the caller calls the two settings."""
    if mode == "object":
        if ablation and trajs_scale != 1.0:  # no video would use it, yet metrics.json would record it
            return [f"{names[0]} {trajs_scale:g} with {names[1]}: the sweep sets λ_trajs itself "
                    f"({', '.join(f'{x:g}' for x in ABLATION_TRAJS_SCALES)}); give one or the other"]
        return []
    problems = []
    if trajs_scale != 1.0:
        problems.append(f"{names[0]} {trajs_scale:g}: camera-free guidance needs the object mode "
                        f"(this evaluation samples in {mode!r})")
    if ablation:
        problems.append(f"{names[1]} sweeps camera-free guidance's λ_trajs: it needs the object mode "
                        f"(this evaluation samples in {mode!r})")
    return problems


def check_guidance(evalset: EvalSet, settings: EvalSettings) -> None:
    """:func:`guidance_problems` of an evaluation's settings, as one BadInputError."""
    problems = guidance_problems(settings.mode or evalset.kind, settings.trajs_scale, settings.ablation)
    if problems:
        raise BadInputError("; ".join(problems))


def evaluate_set(
    pipe: ImageConductorPipeline, set_name: str | EvalSet, out: str | os.PathLike, settings: EvalSettings,
    on_case=None,
) -> dict:
    """Generate every case of ``set_name`` (``camera``, ``object``, a set file, see
    :func:`~ic_model.evaluation.evalsets.read_eval_set`, or the set it read) into ``out`` and
    compute the metrics; writes ``out/metrics.json`` and returns the same dict."""
    evalset = set_name if isinstance(set_name, EvalSet) else read_eval_set(set_name)
    check_guidance(evalset, settings)
    if not 1 <= settings.steps <= pipe.cfg.num_train_timesteps:
        raise BadInputError(f"steps must be from 1 to {pipe.cfg.num_train_timesteps} (the noise schedule's length), "
                            f"got {settings.steps}")
    kind = evalset.kind
    cases = evalset.cases[: settings.max_cases]
    problems = reference_problems(settings.reference, len(cases))
    if problems:  # found before any video is generated, not after all of them
        raise BadInputError("; ".join(problems))
    images = _first_frames(cases, settings.images, settings.seed)
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    mode = settings.mode or kind
    scales = ABLATION_TRAJS_SCALES if (settings.ablation and mode == "object") else (settings.trajs_scale,)
    rows, videos, seconds = [], {s: [] for s in scales}, []
    for i, (case, image) in enumerate(zip(cases, images)):
        prepared = prepare_image_and_tracks(image, case.trajectories, pipe.cfg)
        for scale in scales:
            t0 = time.perf_counter()
            frames = pipe(
                prepared.image, case.prompt, prepared.tracks, mode=mode,
                num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                trajs_scale=scale, seed=settings.seed + i, negative_prompt=settings.negative_prompt,
            )
            seconds.append(time.perf_counter() - t0)
            videos[scale].append(frames)
            mc = motion_control_error(frames, prepared.tracks, settings.tracker)
            row = {"case": case.id, "trajs_scale": scale, "mc_px": round(mc.error_px, 3), "tracker": mc.tracker}
            if kind == "object":
                row["background_motion_px"] = round(background_motion_px(frames, prepared.tracks, settings.tracker), 3)
            stem = f"{case.id}" + (f"-trajs{scale:g}" if len(scales) > 1 else "")
            write_mp4(out / "videos" / f"{stem}.mp4", frames, fps=8.0)
            # Requested (all tracks) drawn over the video; the tracked positions beside them.
            gif = preview_gif(frames, np.concatenate([prepared.tracks, mc.tracked], axis=1),
                              np.arange(2 * prepared.tracks.shape[1]), out / "videos" / f"{stem}.gif",
                              scale=max(1.0, 384 / frames.shape[2]))
            row["gif"] = str(gif.relative_to(out))
            rows.append(row)
            if on_case is not None:
                on_case(len(rows), len(cases) * len(scales), row)

    name = "CamMC" if kind == "camera" else "ObjMC"
    per_scale = {}
    for scale in scales:
        sel = [r for r in rows if r["trajs_scale"] == scale]
        entry = {name: round(float(np.mean([r["mc_px"] for r in sel])), 3)}
        if kind == "object":
            bg = [r["background_motion_px"] for r in sel]
            # Mean and median over cases: the separation target is judged on the median, which one
            # case whose background the tracker loses cannot move.
            entry["background_motion_px"] = round(float(np.nanmean(bg)), 3)
            entry["background_motion_median_px"] = round(float(np.nanmedian(bg)), 3)
        per_scale[f"{scale:g}"] = entry
    metrics = {
        "set": evalset.name,
        "kind": kind,
        **({"set_file": evalset.path} if evalset.path else {}),
        "mode": mode,
        "preset": pipe.cfg.preset,
        "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
        "num_videos": len(rows),
        "seconds_per_video": round(float(np.mean(seconds)), 3),
        "settings": {k: v for k, v in vars(settings).items() if k != "extra"},
        "tracker": rows[0]["tracker"] if rows else settings.tracker,
        name: per_scale[f"{scales[0]:g}"][name],
        "by_trajs_scale": per_scale,
        "cases": rows,
    }
    if settings.keep_frames:
        np.savez_compressed(out / "frames.npz", **{r["case"]: v for r, v in zip(
            [r for r in rows if r["trajs_scale"] == scales[0]], videos[scales[0]])})
    # Written before FID/FVD too: a reference set that fails to read loses them, not the rest.
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if settings.reference:
        metrics.update(reference_metrics(videos[scales[0]], settings.reference, pipe.cfg, settings.max_reference))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def reference_problems(reference: str | None, num_videos: int | None) -> list[str]:
    """What would stop FID/FVD only after every video has been generated: a reference that
    names no shards, shards that cannot be read up to the first that yields a clip (not a tar,
    members missing; the shards after it are read, and refused by name, as FID/FVD go), no
    clip at all, fewer than ``MIN_FRECHET_SET`` videos to score (unless ``num_videos`` is None:
    not known yet), the Inception or I3D weights missing or not loading (a wrong file behind
    ``$IC_FID_INCEPTION`` or ``$IC_I3D_WEIGHTS``: both networks are loaded here, a few seconds).
    One line each; none without a reference."""
    if not reference:
        return []
    from ic_data.errors import MissingWeightsError, ShardError
    from ic_data.shards import read_shard, shard_paths
    from ic_model.evaluation.metrics.fid import InceptionFeatures, locate_inception_weights
    from ic_model.evaluation.metrics.i3d import find_i3d_weights, load_i3d

    problems = []
    try:
        paths = shard_paths(reference)
    except FileNotFoundError as err:
        problems.append(f"reference {reference}: {err}")
    else:
        try:  # a reference may be a whole curated dataset: not every shard is opened here
            if not any(next(iter(read_shard(path)), None) is not None for path in paths):
                problems.append(f"reference {reference}: its shards hold no clips")
        except ShardError as err:
            problems.append(f"reference {reference}: {err}")
    if num_videos is not None and num_videos < MIN_FRECHET_SET:
        problems.append(f"reference {reference}: FID and FVD need at least {MIN_FRECHET_SET} generated videos, "
                        f"this evaluation makes {num_videos} (more cases, or no reference)")
    for network, locate, load in (
            ("FID's Inception", locate_inception_weights, lambda path: InceptionFeatures(device="cpu", weights=path)),
            ("FVD's I3D", find_i3d_weights, lambda path: load_i3d(path, device="cpu"))):
        try:
            path = locate()
        except MissingWeightsError as err:
            problems.append(f"reference {reference}: {err}")
            continue
        try:
            load(path)
        except Exception as err:  # noqa: BLE001 - a file that is no such network: whatever its loader raises
            first = (str(err).strip().splitlines() or [""])[0]
            first = first.split(". ")[0].rstrip(".")[:300] + "."  # torch's own advice follows the first sentence
            problems.append(f"reference {reference}: {network} weights {path} do not load ({type(err).__name__}: "
                            f"{first})")
    return problems


def iter_reference_clips(shards: str, cfg, limit: int):
    """Up to ``limit`` reference clips from curated shards, at the model's size and frame count
    (``cfg.num_frames`` spread evenly over each clip), one at a time.

    Raises:
        BadInputError: naming the shard and clip, for a clip that does not decode or is shorter
            than the model's videos (FID and FVD would compare frames shown repeatedly).
    """
    from ic_data.shards import read_shard, shard_paths

    count = 0
    for path in shard_paths(shards):
        for sample in read_shard(path):
            where = f"reference clip {sample.key!r} of {path}"
            try:
                frames = sample.decode_frames()
            except Exception as err:  # PyAV raises many types for damaged data
                raise BadInputError(f"{where}: its mp4 does not decode ({err})") from None
            if len(frames) < cfg.num_frames:
                raise BadInputError(f"{where}: {len(frames)} frames, fewer than the {cfg.num_frames} of the "
                                    "generated videos it would be compared with")
            idx = np.linspace(0, len(frames) - 1, cfg.num_frames).round().astype(int)
            yield np.stack([cv2.resize(f, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA) for f in frames[idx]])
            count += 1
            if count >= limit:
                return


# Reference features per (shards, size, frames, limit): several variants of one run are usually
# compared with the same reference set, and I3D costs seconds per clip on a CPU.
_REFERENCE_FEATURES: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = {}
REFERENCE_BATCH = 32  # a multiple of the networks' batches (Inception 32 frames, I3D 4 videos)


def _fvd_frames(videos: list[np.ndarray], num_frames: int) -> list[np.ndarray]:
    """I3D's FVD is defined on 16 frames: shorter clips show each frame repeatedly (nearest)."""
    from ic_model.evaluation.metrics.fvd import FVD_NUM_FRAMES

    if num_frames >= FVD_NUM_FRAMES:
        return videos
    idx = np.round(np.linspace(0, num_frames - 1, FVD_NUM_FRAMES)).astype(int)
    return [v[idx] for v in videos]


def reference_metrics(generated: list[np.ndarray], reference: str, cfg, limit: int) -> dict:
    """FID over all frames and FVD over clips, generated vs reference (real networks only)."""
    from ic_model.evaluation.metrics.fid import default_extractor as inception
    from ic_model.evaluation.metrics.fid import fid_from_features
    from ic_model.evaluation.metrics.fvd import FVD_NUM_FRAMES, fvd_from_features
    from ic_model.evaluation.metrics.fvd import default_extractor as i3d

    key = (os.path.abspath(reference), cfg.width, cfg.height, cfg.num_frames, limit)
    if key not in _REFERENCE_FEATURES:
        # REFERENCE_BATCH clips at a time: the paper's 5000 reference clips, held decoded at
        # 16×256×384, would take 24 GB (and as much again concatenated for Inception).
        frames, videos = [], []
        clips = iter_reference_clips(reference, cfg, limit)
        while batch := list(itertools.islice(clips, REFERENCE_BATCH)):
            frames.append(inception()(np.concatenate(batch)))
            videos.append(i3d()(_fvd_frames(batch, cfg.num_frames)))
        num_ref = sum(len(v) for v in videos)
        if num_ref < MIN_FRECHET_SET:
            raise BadInputError(f"reference {reference}: {num_ref} clip(s); FID and FVD need at least "
                                f"{MIN_FRECHET_SET}")
        _REFERENCE_FEATURES[key] = (np.concatenate(frames), np.concatenate(videos), num_ref)
    ref_inception, ref_i3d, num_ref = _REFERENCE_FEATURES[key]
    fid = fid_from_features(ref_inception, inception()(np.concatenate(generated)))
    fvd = fvd_from_features(ref_i3d, i3d()(_fvd_frames(generated, cfg.num_frames)))
    result = {"FID": round(float(fid), 3), "FVD": round(float(fvd), 3), "num_reference": num_ref}
    if cfg.num_frames < FVD_NUM_FRAMES:
        result["FVD_note"] = f"{cfg.num_frames} frames resampled (nearest) to {FVD_NUM_FRAMES} for I3D"
    return result


__all__ = [
    "ABLATION_TRAJS_SCALES",
    "EvalSettings",
    "BACKGROUND_MARGIN_PX",
    "background_motion_px",
    "background_points",
    "check_guidance",
    "guidance_problems",
    "evaluate_set",
    "iter_reference_clips",
    "reference_metrics",
    "reference_problems",
]
