"""Argument checks for `ic`: every problem with a command's input, found before any flow starts.

Each ``check_*`` returns a list of problems, one line each, naming the flag and what is wrong
with it; an empty list means the command may run. They only look at files and parse small ones
(JSON, the image header), so a bad invocation answers in well under a second and never starts a
Prefect server. What can only be known while running (a corrupt video among thousands, a
diverging loss) stays the flows' business.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

from ic_data.images import IMAGE_SUFFIXES
from ic_data.settings import cannot_write_in, unique_keys
from ic_model.config import LORA_STAGES, ModelConfig, TrainConfig, device_problem, field_problems, preset_config
from ic_model.evaluation.evalsets import EvalSetError, read_eval_set

# Weight paths are machine settings of a run, passed apart from its architecture.
WEIGHT_FLAGS = {"sd15_path": "--sd15-path", "motion_adapter_path": "--motion-adapter-path",
                "sparsectrl_rgb_path": "--sparsectrl-rgb-path"}


def _named(args, flag: str) -> str:
    """``flag``, or the ``--config`` file's key its value came from (``FILE: stages.dense.steps``)."""
    source = getattr(args, "config_sources", {}).get(flag[2:].replace("-", "_"))
    return f"--config {args.config}: {source}" if source else flag


def _positive(problems: list[str], flag: str, value, minimum=1) -> None:
    if value is not None and not value >= minimum:
        problems.append(f"{flag} must be at least {minimum}, got {value}")


def _sampling_steps(problems: list[str], value, cfg: ModelConfig | None) -> None:
    """1 ≤ --steps ≤ the run's training timesteps (a DDIM schedule has no more steps to take)."""
    _positive(problems, "--steps", value)
    if value is not None and cfg is not None and value > cfg.num_train_timesteps:
        problems.append(f"--steps must be at most {cfg.num_train_timesteps} (the run's diffusion timesteps), "
                        f"got {value}")


def _seed(problems: list[str], flag: str, value) -> None:
    """0 ≤ seed < 2**63: numpy's generators take no negative seed, torch's no wider than int64."""
    if value is not None and not 0 <= value < 2**63:
        problems.append(f"{flag} must be a whole number from 0 to 2**63 - 1, got {value}")


def _prompt(problems: list[str], flag: str, value) -> None:
    """A prompt of at most ``MAX_PROMPT_CHARS`` characters, in the words a request's check uses."""
    from ic_data.settings import MAX_PROMPT_CHARS, text

    if problem := text(flag, value, longest=MAX_PROMPT_CHARS):
        problems.append(problem)


def _finite(problems: list[str], flag: str, value: float, low: float | None = None, strict: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        problems.append(f"{flag} must be a finite number, got {value}")
    elif low is not None and (value <= low if strict else value < low):
        problems.append(f"{flag} must be {'>' if strict else '≥'} {low}, got {value}")


def _device(problems: list[str], flag: str, value: str | None) -> None:
    problem = device_problem(value)
    if problem:
        problems.append(f"{flag} {value}: {problem}")


def _existing(problems: list[str], flag: str, value: str | None, kind: str = "any") -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        problems.append(f"{flag} {value}: no such {'folder' if kind == 'dir' else 'file'}")
        return None
    if kind == "dir" and not path.is_dir():
        problems.append(f"{flag} {value}: not a folder")
        return None
    if kind == "file" and not path.is_file():
        problems.append(f"{flag} {value}: not a file")
        return None
    return path


def _writable_target(problems: list[str], flag: str, value: str, want_dir: bool) -> None:
    path = Path(value).expanduser()
    if path.exists() and want_dir and not path.is_dir():
        problems.append(f"{flag} {value}: exists and is not a folder")
    elif path.exists() and not want_dir and path.is_dir():
        problems.append(f"{flag} {value}: is a folder, not a file name")
    problem = cannot_write_in(path if want_dir and path.is_dir() else path.parent)
    if problem:
        problems.append(f"{flag} {value}: {problem}")


def _json_object(problems: list[str], flag: str, text: str | None, cls) -> dict:
    """A JSON object of ``cls``'s dataclass fields, each of the field's type."""
    if not text:
        return {}
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except ValueError as err:  # not JSON, or a key given twice
        problems.append(f"{flag}: not valid JSON ({err})")
        return {}
    problems += field_problems(data, cls, flag)
    return data if isinstance(data, dict) else {}


def run_config(run: str | Path) -> ModelConfig | None:
    path = Path(run) / "config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    wrong = field_problems(data, ModelConfig, "config.json")
    if wrong:
        raise ValueError("; ".join(wrong))
    cfg = ModelConfig.from_dict(data)
    cfg.validate()
    return cfg


def _done(run: Path, stage: str) -> bool:
    return (run / stage / "done.json").is_file()


def _read_run(problems: list[str], run_arg: str) -> tuple[Path, ModelConfig | None, bool]:
    """(folder, its ModelConfig or None for a new run, whether the folder is usable)."""
    run = Path(run_arg).expanduser()
    if run.exists() and not run.is_dir():
        problems.append(f"--run {run_arg}: exists and is not a folder")
        return run, None, False
    try:
        return run, run_config(run), True
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        problems.append(f"--run {run_arg}: config.json is not a ModelConfig ({err})")
        return run, None, False
    except OSError as err:  # no permission to read it, an I/O error
        problems.append(f"--run {run_arg}: cannot read config.json ({err.strerror or err})")
        return run, None, False


def _run_problems(problems: list[str], run_arg: str, mode: str | None, who: str | None = None) -> ModelConfig | None:
    """A finished run that has what ``mode`` samples with; ``who`` asks for it (default: the
    flag, ``--mode MODE``)."""
    who = who or f"--mode {mode}"
    run, cfg, usable = _read_run(problems, run_arg)
    if not usable:
        return None
    if not run.exists():
        problems.append(f"--run {run_arg}: not a run folder (it does not exist)")
        return None
    if cfg is None:
        problems.append(f"--run {run_arg}: not a run folder (no config.json); train one with `ic train`")
        return None
    if mode in LORA_STAGES and not _done(run, mode):
        problems.append(f"{who}: the run has no finished {mode} stage ({run / mode / 'done.json'} is "
                        f"missing); train it with `ic train {mode} --run {run_arg} …`")
    elif mode == "none" and not (_done(run, "dense") or _done(run, "sparse")):
        problems.append(f"{who}: the run has no trained motion ControlNet (no finished dense or sparse stage)")
    elif mode == "base" and "base" in cfg.stages and not _done(run, "base"):
        problems.append(f"{who}: the run has no finished base stage")
    return cfg


def _backend_weights(problems: list[str], flag: str, name: str) -> None:
    """The local weights backend ``name`` of ``flag`` needs, resolved as the backend will resolve
    them (nothing is loaded): a missing setting is one line now, not a failed run (or, for a
    captioner, every video's failed row) later."""
    from ic_data.errors import MissingWeightsError

    try:
        if flag == "--flow" and name == "raft":
            from ic_data.motion import find_raft_weights

            find_raft_weights()
        elif flag == "--tracker" and name == "cotracker":
            from ic_data.tracking.cotracker import find_cotracker

            find_cotracker()
        elif flag == "--captioner" and name == "blip2":
            from ic_data.captions import Blip2Captioner

            Blip2Captioner()  # cheap: it checks its folder, the weights load at the first caption
    except MissingWeightsError as err:
        problems.append(f"{flag} {name}: {err}")


def _dask_address(problems: list[str], value: str | None) -> None:
    from urllib.parse import urlsplit

    if not value:
        return
    try:
        parts = urlsplit(value if "://" in value else f"tcp://{value}")
        port = parts.port
    except ValueError as err:
        problems.append(f"--dask-address {value}: not a scheduler address ({err}); e.g. tcp://scheduler:8786")
        return
    if not parts.hostname or port is None:
        problems.append(f"--dask-address {value}: not a scheduler address (host and port needed), "
                        "e.g. tcp://scheduler:8786")
    elif parts.scheme in ("tcp", "tls"):  # else the flow waits 30 s for it and fails with tracebacks
        import socket

        try:
            socket.create_connection((parts.hostname, port), timeout=5).close()
        except OSError as err:
            problems.append(f"--dask-address {value}: no scheduler answers there ({err.strerror or err}); "
                            "is `dask scheduler` running?")


def check_curate(args) -> list[str]:
    from ic_data.captions import webvid_csv_header
    from ic_data.errors import BadInputError
    from ic_data.pipeline import VIDEO_EXTENSIONS, discover_videos, other_files_line

    problems: list[str] = []
    videos = _existing(problems, "--videos", args.videos, "dir")
    others = Counter()
    try:
        found = videos and discover_videos(videos, out_dir=Path(args.out).expanduser(), others=others)
    except BadInputError as err:  # the folder cannot be listed
        problems.append(f"--videos: {err}")
    else:
        if videos and not found:
            held = f"; it holds {other_files_line(others)}" if others else ""
            problems.append(f"--videos {args.videos}: no video files in it (looked for {', '.join(VIDEO_EXTENSIONS)}{held})")
    _writable_target(problems, "--out", args.out, want_dir=True)
    if _existing(problems, "--captions", args.captions, "file"):
        try:
            webvid_csv_header(Path(args.captions).expanduser())
        except UnicodeDecodeError as err:
            problems.append(f"--captions {args.captions}: not UTF-8 text ({err.reason} at byte {err.start})")
        except ValueError as err:  # names the file
            problems.append(f"--captions: {err}")
        except (csv.Error, OSError) as err:
            problems.append(f"--captions {args.captions}: not a readable CSV ({err})")
    _positive(problems, "--chunk-size", args.chunk_size)
    _seed(problems, "--seed", args.seed)
    _positive(problems, "--workers", args.workers)
    _positive(problems, "--processes", args.processes, 0)
    if not 0 <= args.drop_fraction < 1:
        problems.append(f"--drop-fraction must be in [0, 1), got {args.drop_fraction}")
    for flag, name in (("--flow", args.flow), ("--tracker", args.tracker), ("--captioner", args.captioner)):
        _backend_weights(problems, flag, name)
    _dask_address(problems, args.dask_address)
    return problems


def check_train(args) -> list[str]:
    from ic_data.shards import shard_paths

    problems: list[str] = [f"--{flag} is required (or `{flag}:` in --config)" for flag in ("shards", "run")
                            if getattr(args, flag) is None]
    if problems:
        return problems
    try:
        shard_paths(args.shards)
    except FileNotFoundError as err:
        problems.append(f"{_named(args, '--shards')} {args.shards}: {err}")
    _positive(problems, _named(args, "--steps"), args.steps)
    _positive(problems, _named(args, "--batch-size"), args.batch_size)
    _positive(problems, _named(args, "--grad-accum"), args.grad_accum)
    _positive(problems, _named(args, "--num-processes"), args.num_processes)
    _positive(problems, _named(args, "--validate-every"), args.validate_every, 0)
    _seed(problems, _named(args, "--seed"), args.seed)
    _finite(problems, _named(args, "--lr"), args.lr, 0.0, strict=True)
    if args.report_to not in (None, "tensorboard", "wandb", "none"):
        problems.append(f"{_named(args, '--report-to')} must be tensorboard, wandb or none, got {args.report_to!r}")
    if args.mixed_precision not in (None, "no", "fp16", "bf16"):
        problems.append(f"{_named(args, '--mixed-precision')} must be no, fp16 or bf16, got {args.mixed_precision!r}")
    if args.report_to == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            problems.append("--report-to wandb: the wandb package is not installed (pip install wandb)")
    typed = len(problems)
    options = _json_object(problems, "--options", args.options, TrainConfig)
    flagged = ("stage", "steps", "batch_size", "learning_rate", "grad_accum_steps", "seed",
               "mixed_precision", "gradient_checkpointing", "report_to", "validate_every")
    if len(problems) == typed:  # of the right types: now their ranges (TrainConfig's own rules)
        try:
            TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k not in flagged})
        except ValueError as err:
            problems.append(f"--options: {str(err).removeprefix('TrainConfig: ')}")
    model = _json_object(problems, "--model", args.model, ModelConfig)
    # A value of the wrong type is named above, once: the model is made of the others.
    typed_model = {k: v for k, v in model.items() if not field_problems({k: v}, ModelConfig, "--model")}
    for key in flagged:
        if key in options:
            problems.append(f"--options: set {key!r} with its own flag")
    for key, flag in WEIGHT_FLAGS.items():
        if key in model:
            problems.append(f"--model: set {key!r} with {flag}")
        _existing(problems, flag, getattr(args, key, None))
    run, cfg, usable = _read_run(problems, args.run)
    if not usable:
        return problems
    _writable_target(problems, "--run", args.run, want_dir=True)
    if cfg is None:  # a new run: the flags describe its model
        try:
            cfg = preset_config(args.preset or "tiny", **{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in typed_model.items()})
        except (ValueError, TypeError) as err:
            problems.append(f"--model: {err}")
            return problems
    else:
        from ic_model.training.run import config_clashes, has_trained

        known = {f.name for f in dataclasses.fields(ModelConfig)}  # the others are reported above
        asked = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k in known}
        clashes = [f"--preset {want}: the run was created with preset {have!r} (leave --preset out to use "
                   "the run's)" if key == "preset" else f"--model: the run has {key}={have!r}, not {want!r}"
                   for key, have, want in config_clashes(cfg, args.preset, asked)]
        if clashes and not has_trained(run):  # nothing trained with its config.json: set anew
            try:
                cfg = preset_config(args.preset or cfg.preset, **asked)
            except (ValueError, TypeError) as err:
                problems.append(f"--model: {err}")
                return problems
        else:
            problems += clashes
    if args.stage not in cfg.stages:
        problems.append(f"stage {args.stage!r} does not exist for preset {cfg.preset!r} "
                        f"(its stages: {', '.join(cfg.stages)})")
    else:
        before = cfg.prerequisite(args.stage)
        if before is not None and not _done(run, before):
            problems.append(f"stage {args.stage!r} needs the finished {before!r} stage first "
                            f"({run / before / 'done.json'} is missing): run `ic train {before} --run {args.run} …`")
    return problems


def _check_image(problems: list[str], flag: str, value: str) -> tuple[int, int] | None:
    path = _existing(problems, flag, value, "file")
    if path is None:
        return None
    from ic_data.errors import BadInputError
    from ic_model.pipelines.generate import read_image

    try:  # read as generation reads it: whole (a file cut short is refused), upright (EXIF)
        height, width = read_image(path).shape[:2]
    except BadInputError as err:
        problems.append(f"{flag} {value}: not a readable image ({err})")
        return None
    return width, height


def check_generate(args) -> list[str]:
    from ic_data.errors import TrajectoryError, VideoTooSmall
    from ic_data.trajectories import load_trajectory_file, require_in_view
    from ic_model.pipelines.image_conductor import GENERATE_MAX_UPSCALE

    problems: list[str] = []
    size = _check_image(problems, "--image", args.image)
    if size is not None:
        from ic_data.clips import resized_size

        try:  # the limit prepare_image_and_tracks applies
            resized_size(*size, max_upscale=GENERATE_MAX_UPSCALE)
        except VideoTooSmall as err:
            problems.append(f"--image {args.image}: too small: {err.args[0]}")
    traj = _existing(problems, "--trajectories", args.trajectories, "file")
    if getattr(args, "trajectory_space", "image") == "model":  # the model frame's pixels, not the image's
        cfg = _read_run([], args.run)[1] if args.run else None
        size = (cfg.width, cfg.height) if cfg is not None else None
    if traj is not None and size is not None:
        try:
            tracks = load_trajectory_file(traj, *size)
            if getattr(args, "trajectory_space", "image") != "model":
                require_in_view(tracks, *size, GENERATE_MAX_UPSCALE)
        except TrajectoryError as err:
            problems.append(f"--trajectories {err}" if str(err).startswith(str(traj)) else
                            f"--trajectories {traj}: {err}")
        except VideoTooSmall:  # named above
            pass
    elif traj is not None:  # the image is unusable: still say what is wrong with the file's form
        try:
            json.loads(traj.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problems.append(f"--trajectories {args.trajectories}: malformed JSON ({err})")
    cfg = _run_problems(problems, args.run, args.mode)
    _device(problems, "--device", args.device)
    _sampling_steps(problems, args.steps, cfg)
    _seed(problems, "--seed", args.seed)
    _finite(problems, "--cfg", args.cfg, 0.0)
    _finite(problems, "--trajs-scale", args.trajs_scale, 0.0)
    _prompt(problems, "--prompt", args.prompt)
    _prompt(problems, "--negative-prompt", args.negative_prompt)
    if args.trajs_scale is not None and math.isfinite(args.trajs_scale) and args.trajs_scale != 1.0 and args.mode != "object":
        problems.append(f"--trajs-scale {args.trajs_scale}: camera-free guidance needs --mode object")
    if Path(args.out).suffix.lower() != ".mp4":
        problems.append(f"--out {args.out}: must end in .mp4")
    _writable_target(problems, "--out", args.out, want_dir=False)
    from ic_model.pipelines.generate import output_paths

    for beside in output_paths(Path(args.out).expanduser())[1:]:  # the preview and the record
        if beside.is_dir():
            problems.append(f"--out {args.out}: {beside} is a folder, and the output's {beside.suffix} goes there")
    if _existing(problems, "--base-model", args.base_model):
        _checkpoint_suffix(problems, "--base-model", args.base_model)
    for spec in args.base_lora or []:
        file, _, scale = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
        if _existing(problems, "--base-lora", file or spec, "file"):
            _checkpoint_suffix(problems, "--base-lora", file or spec)
        if scale:
            try:
                if not math.isfinite(float(scale)):
                    problems.append(f"--base-lora {spec}: the scale after ':' must be a finite number")
            except ValueError:
                problems.append(f"--base-lora {spec}: the scale after ':' must be a number")
    return problems


def _checkpoint_suffix(problems: list[str], flag: str, value: str) -> None:
    """A weights file must be one the loaders read (a folder is read as diffusers')."""
    from ic_model.models.sd15 import CHECKPOINT_SUFFIXES

    path = Path(value).expanduser()
    if path.is_file() and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        problems.append(f"{flag} {value}: not a weights file ({'/'.join(CHECKPOINT_SUFFIXES)}) or a diffusers folder")


def check_evaluate(args) -> list[str]:
    problems: list[str] = []
    try:
        evalset = read_eval_set(args.set_name)
    except EvalSetError as err:
        problems.append(str(err))
        evalset = None
    kind = evalset.kind if evalset else None
    # Without --mode, a set samples with the adapter of its kind.
    cfg = _run_problems(problems, args.run, args.mode or kind,
                        None if args.mode else f"the {kind} set (without --mode, the {kind} adapter's)")
    if args.reference:
        from ic_model.evaluation.evaluate import reference_problems

        # The number of videos is known once the set and --max-cases are (a bad one is named below).
        known = evalset is not None and (args.max_cases is None or args.max_cases >= 1)
        num_videos = len(evalset.cases[: args.max_cases]) if known else None
        problems += [f"--{p}" for p in reference_problems(args.reference, num_videos)]
    images = _existing(problems, "--images", args.images, "dir")
    if images and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
        problems.append(f"--images {args.images}: no images ({'/'.join(IMAGE_SUFFIXES)}) in it")
    elif evalset is not None and (images or (args.images is None and any(c.image for c in evalset.cases))):
        from ic_model.evaluation.evaluate import first_frame_problems

        problems += first_frame_problems(evalset, args.images, args.max_cases)  # read now, not after the model
    if args.out:
        _writable_target(problems, "--out", args.out, want_dir=True)
    elif args.run and Path(args.run).is_dir():  # RUN/eval/SET/
        _writable_target(problems, "--run", args.run, want_dir=True)
    _sampling_steps(problems, args.steps, cfg)
    _positive(problems, "--max-reference", args.max_reference, 2)
    _device(problems, "--device", args.device)
    _positive(problems, "--max-cases", args.max_cases)
    _seed(problems, "--seed", args.seed)
    _finite(problems, "--cfg", args.cfg, 0.0)
    _finite(problems, "--trajs-scale", args.trajs_scale, 0.0)
    _prompt(problems, "--negative-prompt", args.negative_prompt)
    if kind is not None and args.trajs_scale is not None and math.isfinite(args.trajs_scale):
        from ic_model.evaluation.evaluate import guidance_problems

        problems += guidance_problems(args.mode or kind, args.trajs_scale, args.ablation,
                                      names=("--trajs-scale", "--ablation"))
    _backend_weights(problems, "--tracker", args.tracker)
    return problems


def check_studio(args) -> list[str]:
    problems: list[str] = []
    _run_problems(problems, args.run, None)
    _device(problems, "--device", args.device)
    if not 1 <= args.port <= 65535:
        problems.append(f"--port must be in 1–65535, got {args.port}")
    if args.out:
        _writable_target(problems, "--out", args.out, want_dir=True)
    return problems


def check_convert_official(args) -> list[str]:
    from ic_model.models.official import OFFICIAL_FILES

    problems: list[str] = []
    folder = _existing(problems, "official_dir", args.official_dir, "dir")
    if folder is not None:
        missing = [name for name in OFFICIAL_FILES.values() if not (folder / name).is_file()]
        if missing:
            problems.append(f"{args.official_dir} lacks {', '.join(missing)} (the TencentARC/ImageConductor release)")
    out = Path(args.out).expanduser()
    if (out / "config.json").exists():
        problems.append(f"--out {args.out}: already holds a run (config.json); choose a new folder")
    else:
        _writable_target(problems, "--out", args.out, want_dir=True)
    if args.sd15_path:
        _existing(problems, "--sd15-path", args.sd15_path)
    typed = len(problems)
    overrides = _json_object(problems, "--model", args.model, ModelConfig)
    if overrides.get("preset", "sd15") != "sd15":
        problems.append("--model: the released weights are the sd15 preset's architecture; 'preset' cannot change")
    elif overrides and len(problems) == typed:  # each field's own problem is said once
        from ic_model.models.official import release_mismatches

        try:
            cfg = preset_config("sd15", **overrides)
        except (ValueError, TypeError) as err:
            problems.append(f"--model: {err}")
        else:
            problems += [f"--model: the released weights were trained with {wrong}" for wrong in release_mismatches(cfg)]
    return problems


def check_cache_latents(args) -> list[str]:
    from ic_data.shards import shard_paths

    problems: list[str] = []
    try:
        shard_paths(args.shards)
    except FileNotFoundError as err:
        problems.append(f"--shards {args.shards}: {err}")
    run, cfg, usable = _read_run(problems, args.run)
    if usable and cfg is None:
        problems.append(f"--run {args.run}: not a run folder (no config.json)")
    elif cfg is not None and cfg.preset != "sd15" and cfg.codec == "vae" and not _done(run, "vae"):
        problems.append(f"--run {args.run}: its VAE is not trained yet (no finished vae stage)")
    if args.out:
        _writable_target(problems, "--out", args.out, want_dir=True)
    elif usable and cfg is not None:  # RUN/latents/
        _writable_target(problems, "--run", args.run, want_dir=True)
    _device(problems, "--device", args.device)
    return problems
