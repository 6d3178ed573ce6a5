"""`ic`: the command line. Each command runs the same Prefect flow as its deployment.

Without PREFECT_API_URL the flows run against Prefect's temporary local server (SQLite); with
`make serve` running, export PREFECT_API_URL=http://127.0.0.1:4200/api to see them in the UI.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from flows import checks
from flows.server import temporary_server

# The project runs offline: Prefect's temporary server would log an ERROR line in every command
# for each usage report it cannot send. Set PREFECT_SERVER_ANALYTICS_ENABLED=true to send them.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _curate(args: argparse.Namespace) -> int:
    from flows.curate import curate, make_task_runner, nothing_kept

    runner = make_task_runner(args.dask_address, args.workers)
    state = curate.with_options(task_runner=runner)(
        videos=args.videos,
        out=args.out,
        source=args.source,
        captions=args.captions,
        flow_backend=args.flow,
        tracker=args.tracker,
        captioner=args.captioner,
        seed=args.seed,
        chunk_size=args.chunk_size,
        drop_fraction=args.drop_fraction,
        processes=args.processes,
        return_state=True,
    )
    if not state.is_completed():
        print(f"ic curate: the flow run ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    summary = state.result()
    print(json.dumps(summary, indent=1, sort_keys=True))
    if summary["num_videos"] and not summary["counts"]["ok"]:
        print(f"ic curate: {nothing_kept(summary)}", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from flows.train import train_stage_flow

    options = json.loads(args.options) if args.options else None
    model = json.loads(args.model) if args.model else None
    weights = {
        k: v
        for k, v in (
            ("sd15_path", args.sd15_path),
            ("motion_adapter_path", args.motion_adapter_path),
            ("sparsectrl_rgb_path", args.sparsectrl_rgb_path),
        )
        if v
    }
    state = train_stage_flow(
        stage=args.stage,
        shards=args.shards,
        run=args.run,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        grad_accum_steps=args.grad_accum,
        num_processes=args.num_processes or 1,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        report_to=args.report_to,
        validate_every=args.validate_every,
        options=options,
        weights=weights or None,
        model=model,
        return_state=True,
    )
    if not state.is_completed():
        print(f"ic train: the flow run ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=1, sort_keys=True))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from flows.generate import generate

    request = dict(image=args.image, prompt=args.prompt, trajectories=args.trajectories, out=args.out,
                   mode=args.mode, trajs_scale=args.trajs_scale, guidance_scale=args.cfg, steps=args.steps,
                   seed=args.seed, trajectory_space=args.trajectory_space, negative_prompt=args.negative_prompt)
    state = generate(run=args.run, requests=[request], device=args.device, base_model=args.base_model,
                     base_loras=args.base_lora or None, dtype=args.dtype, return_state=True)
    if not state.is_completed():
        print(f"ic generate: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result()[0], indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate

    state = evaluate(set_name=args.set_name, run=args.run, out=args.out, reference=args.reference,
                     images=args.images, steps=args.steps, guidance_scale=args.cfg, trajs_scale=args.trajs_scale,
                     ablation=args.ablation, seed=args.seed, tracker=args.tracker,
                     max_reference=args.max_reference, device=args.device, mode=args.mode,
                     max_cases=args.max_cases, dtype=args.dtype, negative_prompt=args.negative_prompt,
                     return_state=True)
    if not state.is_completed():
        print(f"ic evaluate: the flow run ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=1, sort_keys=True))
    return 0


def _studio(args: argparse.Namespace) -> int:
    from ic_studio.app import launch

    try:
        launch(args.run, port=args.port, out=args.out, device=args.device, dtype=args.dtype)
    except OSError as err:  # typically the port is taken
        print(f"ic studio: cannot serve on 127.0.0.1:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


def _cache_latents(args: argparse.Namespace) -> int:
    from flows.cache import cache_latents

    state = cache_latents(shards=args.shards, run=args.run, out=args.out, device=args.device, dtype=args.dtype,
                          return_state=True)
    if not state.is_completed():
        print(f"ic cache-latents: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=1))
    return 0


def _convert_official(args: argparse.Namespace) -> int:
    from ic_model.config import sd15_config
    from ic_model.models.official import convert_official

    cfg = sd15_config(**(json.loads(args.model) if args.model else {}))
    summary = convert_official(args.official_dir, args.out, sd15_path=args.sd15_path or "", cfg=cfg,
                               progress=lambda message: print(f"ic convert-official: {message}", file=sys.stderr))
    print(json.dumps({"run": args.out, **summary}, indent=1))
    return 0


def resolve_official(args: argparse.Namespace) -> list[str]:
    """``--official DIR``: the run converted from the released weights (converted once, cached),
    put in ``args.run``; or the problems that prevent it. ``--run`` and ``--official`` exclude
    each other and one is required."""
    official = getattr(args, "official", None)
    if official is None:
        if getattr(args, "run", None) is None:
            return ["one of --run RUN or --official DIR is required"]
        if getattr(args, "sd15_path", None):
            return ["--sd15-path goes with --official (a run keeps its own weight paths in RUN/config.json)"]
        return []
    if args.run is not None:
        return ["give --run or --official, not both"]
    from ic_model.models.official import OfficialWeightsError, official_run

    try:
        args.run = str(official_run(
            official, sd15_path=args.sd15_path or "",
            progress=lambda message: print(f"ic {args.command}: converting {official}: {message}", file=sys.stderr),
        ))
    except OfficialWeightsError as err:
        return [f"--official {err}"]
    except Exception as err:  # e.g. a full disk while writing the converted run
        if args.debug:
            raise
        return [f"--official {official}: the conversion failed ({type(err).__name__}: {err})"]
    return []


def _official_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--official", default=None, metavar="DIR",
                        help="the released Image Conductor weights (unet.ckpt, image_controlnet.ckpt, flow_controlnet.ckpt) "
                             "instead of --run; converted once into a cached run folder")
    parser.add_argument("--sd15-path", default=None,
                        help="with --official: SD 1.5 folder or .safetensors for the VAE, text encoder and tokenizer "
                             "(default: $IC_SD15_PATH)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ic", description="Image Conductor pipeline")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = ap.add_subparsers(dest="command", required=True)

    cur = sub.add_parser("curate", help="curate a folder of videos into WebDataset shards")
    cur_sub = cur.add_subparsers(dest="source", required=True)
    for source, help_ in (
        ("webvid", "mixed camera + object motion (WebVid-like); captions from a WebVid CSV"),
        ("realestate10k", "camera-only footage (RealEstate10K-like); every clip is flagged camera_only"),
    ):
        p = cur_sub.add_parser(source, help=help_)
        p.add_argument("--videos", required=True, help="folder of input videos (searched recursively)")
        p.add_argument("--out", required=True, help="output folder: shards/, manifest.parquet, summary.json")
        p.add_argument("--captions", default=None, help="WebVid CSV with videoid,name columns")
        p.add_argument("--captioner", choices=["none", "blip2"], default="none", help="BLIP-2 needs IC_BLIP2_PATH")
        p.add_argument("--flow", choices=["dis", "raft"], default="dis", help="motion-score flow backend")
        p.add_argument("--tracker", choices=["lk", "cotracker"], default="lk", help="point tracker backend")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--chunk-size", type=int, default=16, help="videos per task")
        p.add_argument("--drop-fraction", type=float, default=0.25, help="share of lowest-motion clips dropped")
        p.add_argument("--dask-address", default=None, help="run chunk tasks on this Dask scheduler (tcp://…)")
        p.add_argument("--workers", type=int, default=None, help="local worker threads (default: CPU count)")
        p.add_argument("--processes", type=int, default=None,
                       help="worker processes for the per-video work (default: one per usable core, as "
                            "many as memory holds, with dis/lk/no captioner on the local runner, else "
                            "0; 0: in the worker threads)")
        p.set_defaults(func=_curate, check=checks.check_curate)

    tr = sub.add_parser("train", help="train one stage (vae, base: tiny preset only; dense, sparse, camera, object)")
    tr.add_argument("stage", choices=["vae", "base", "dense", "sparse", "camera", "object"])
    tr.add_argument("--config", default=None,
                    help="YAML (or JSON) training config: preset, run, shards, model, weights, train, "
                         "stages.STAGE (configs/*.yaml); a flag given here wins over the file")
    tr.add_argument("--shards", default=None, help="folder of .tar shards, a glob, or one shard")
    tr.add_argument("--run", default=None, help="run folder; each stage writes RUN/STAGE/")
    tr.add_argument("--preset", choices=["tiny", "sd15"], default=None,
                    help="a new run's preset (default tiny); an existing run keeps its own")
    tr.add_argument("--steps", type=int, default=None, help="default 1000")
    tr.add_argument("--batch-size", type=int, default=None,
                    help="per process and micro-step (default: tiny 4, sd15 1; the paper's global 64 = "
                         "batch × --grad-accum × --num-processes)")
    tr.add_argument("--lr", type=float, default=None, help="default 1e-4 (the paper's)")
    tr.add_argument("--grad-accum", type=int, default=None, help="default 1")
    tr.add_argument("--num-processes", type=int, default=None, help=">1: accelerate launch (one per GPU); default 1")
    tr.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                    help="default: tiny no, sd15 bf16")
    tr.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                    help="default: on for sd15, off for tiny")
    tr.add_argument("--seed", type=int, default=None, help="default 0")
    tr.add_argument("--validate-every", type=int, default=None,
                    help="generate and score one held-out case at step 0 and every N steps (default 0: never)")
    tr.add_argument("--report-to", choices=["tensorboard", "wandb", "none"], default=None,
                    help="training curves: TensorBoard event files in RUN/STAGE/logs/ (the default; "
                         "`tensorboard --logdir RUN`), Weights & Biases (WANDB_MODE=offline works without "
                         "a network), or none")
    tr.add_argument("--options", default=None, help='JSON of other TrainConfig fields, e.g. \'{"ortho_weight": 0.1}\'')
    tr.add_argument("--model", default=None,
                    help='JSON of ModelConfig fields for a new run (an existing run must match), e.g. '
                         '\'{"codec": "space_to_depth", "latent_scaling_factor": 4}\' (tiny: no vae stage)')
    tr.add_argument("--sd15-path", default=None, help="SD 1.5 diffusers folder (or IC_SD15_PATH)")
    tr.add_argument("--motion-adapter-path", default=None, help="AnimateDiff v3 motion module (or IC_MOTION_ADAPTER_PATH)")
    tr.add_argument("--sparsectrl-rgb-path", default=None, help="SparseCtrl RGB (or IC_SPARSECTRL_RGB_PATH)")
    tr.set_defaults(func=_train, check=checks.check_train)

    ge = sub.add_parser("generate", help="image + prompt + trajectories → video (camera-free guidance)")
    ge.add_argument("--image", required=True)
    ge.add_argument("--prompt", default="")
    ge.add_argument("--negative-prompt", default="",
                    help="guidance's unconditional text (default empty, as training's caption dropout; "
                         "the official examples use \"worst quality, low quality, letterboxed\")")
    ge.add_argument("--trajectories", required=True, help="JSON list of tracks of [x, y] (pixels: see --trajectory-space)")
    ge.add_argument("--trajectory-space", choices=["image", "model"], default="image",
                    help="image: the input image's pixels; model: the model frame's (384×256 for sd15), "
                         "as in the official example files")
    ge.add_argument("--run", default=None, help="a trained run folder")
    ge.add_argument("--mode", choices=["camera", "object", "none", "base"], default="object",
                    help="none: motion ControlNet without LoRA; base: motion ControlNet off")
    ge.add_argument("--trajs-scale", type=float, default=1.0, help="λ_trajs of camera-free guidance (1.0 = off)")
    ge.add_argument("--cfg", type=float, default=8.5)
    ge.add_argument("--steps", type=int, default=25)
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--out", required=True, help="output .mp4 (a .gif preview is written beside it)")
    ge.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    ge.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="bf16/fp16: on a GPU")
    ge.add_argument("--base-model", default=None, help="SD 1.5-compatible folder or single .safetensors")
    ge.add_argument("--base-lora", action="append", default=[], help="UNet LoRA FILE[:SCALE] (repeatable)")
    _official_flags(ge)
    ge.set_defaults(func=_generate, check=checks.check_generate)

    ev = sub.add_parser("evaluate", help="FID, FVD, CamMC/ObjMC on the paper's evaluation sets or your own")
    ev.add_argument("set_name", metavar="SET",
                    help="camera or object (the paper's sets), or a set file (JSON: kind, frame_size, cases)")
    ev.add_argument("--run", default=None, help="a trained run folder")
    ev.add_argument("--out", default=None, help="default: RUN/eval/SET")
    ev.add_argument("--reference", default=None, help="shards of reference clips for FID/FVD")
    ev.add_argument("--images", default=None, help="folder of first frames (default: synthetic)")
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--cfg", type=float, default=8.5)
    ev.add_argument("--negative-prompt", default="", help="guidance's unconditional text for every case (as ic generate)")
    ev.add_argument("--trajs-scale", type=float, default=1.0)
    ev.add_argument("--ablation", action="store_true", help="object set: sweep λ_trajs ∈ {1.0, 1.1, 1.3, 1.5}")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--tracker", choices=["lk", "cotracker"], default="lk")
    ev.add_argument("--max-reference", type=int, default=5000)
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    ev.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="bf16/fp16: on a GPU")
    ev.add_argument("--mode", choices=["camera", "object", "none", "base"], default=None,
                    help="default: the set's own adapter; base/none are the baselines")
    ev.add_argument("--max-cases", type=int, default=None, help="only the first N cases")
    _official_flags(ev)
    ev.set_defaults(func=_evaluate, check=checks.check_evaluate)

    st = sub.add_parser("studio", help="local web page: draw trajectories on an image, generate, watch the result")
    st.add_argument("--run", default=None, help="a trained run folder")
    st.add_argument("--port", type=int, default=7860, help="served on 127.0.0.1:PORT")
    st.add_argument("--out", default=None, help="where each generation's files go (default: RUN/studio)")
    st.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    st.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="bf16/fp16: on a GPU")
    _official_flags(st)
    st.set_defaults(func=_studio, check=checks.check_studio)

    ca = sub.add_parser("cache-latents", help="encode curated shards once with a run's VAE (training reads them)")
    ca.add_argument("--shards", required=True, help="shard folder, glob or file")
    ca.add_argument("--run", required=True, help="the run whose VAE encodes (sd15: its sd15_path)")
    ca.add_argument("--out", default=None, help="default: RUN/latents/<VAE fingerprint>-<W>x<H>")
    ca.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    ca.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="the VAE's dtype (train with the same mixed precision for latents identical to uncached)")
    ca.set_defaults(func=_cache_latents, check=checks.check_cache_latents)

    co = sub.add_parser("convert-official", help="the released Image Conductor weights → a run folder")
    co.add_argument("official_dir", help="folder with unet.ckpt, image_controlnet.ckpt, flow_controlnet.ckpt")
    co.add_argument("--out", required=True, help="the new run folder")
    co.add_argument("--sd15-path", default=None, help="SD 1.5 folder or .safetensors (VAE, text encoder, tokenizer); "
                                                      "default: $IC_SD15_PATH when the run is used")
    co.add_argument("--model", default=None, help="JSON of ModelConfig fields over the sd15 preset's")
    co.set_defaults(func=_convert_official, check=checks.check_convert_official)
    return ap


# Flags of `ic train` that set a TrainConfig field (the others go through --options).
TRAIN_FLAGS = {"steps": "steps", "batch_size": "batch_size", "learning_rate": "lr", "grad_accum_steps": "grad_accum",
               "mixed_precision": "mixed_precision", "gradient_checkpointing": "gradient_checkpointing", "seed": "seed",
               "report_to": "report_to", "validate_every": "validate_every"}


def apply_config_file(args: argparse.Namespace) -> list[str]:
    """Fill what `ic train` was not given from ``--config``: flags win over the file, and
    ``--options``/``--model`` win over its ``train``/``model`` fields key by key."""
    from ic_model.config import ConfigFileError, read_config_file

    try:
        spec = read_config_file(args.config, args.stage)
    except ConfigFileError as err:
        return [f"--config {p}" for p in err.problems]
    args.config_sources = {}  # dest → the file's key it was filled from (checks name it)
    for key in ("run", "shards", "preset", "num_processes"):
        if getattr(args, key) is None and key in spec:
            setattr(args, key, spec[key])
            args.config_sources[key] = spec["sources"][key]
    for key, value in spec["weights"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    train = dict(spec["train"])
    for field, dest in TRAIN_FLAGS.items():
        value = train.pop(field, None)
        if getattr(args, dest) is None:
            setattr(args, dest, value)
            if value is not None:
                args.config_sources[dest] = spec["sources"][field]
    for flag, from_file in (("options", train), ("model", spec["model"])):
        try:
            given = json.loads(getattr(args, flag)) if getattr(args, flag) else {}
        except json.JSONDecodeError:
            continue  # the flag's own check names the malformed JSON
        if from_file and isinstance(given, dict):
            setattr(args, flag, json.dumps({**from_file, **given}))
    return []


class Stopped(BaseException):
    """SIGTERM reached `ic` (`kill PID`, a scheduler's stop): it ends through the normal exit
    path, so what runs at exit (stopping Prefect's temporary server, the curation workers)
    still runs. Left to the default action the process would vanish at once and the server,
    its child, would run on, orphaned."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM raises `Stopped` in this process (a forked child, such as a DataLoader worker,
    keeps the default action); the previous handler comes back on leaving. While a flow runs,
    Prefect's own handler comes first: it marks the run Crashed, then hands the signal on."""
    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Stopped(signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The commands that run flows, against Prefect's temporary server unless PREFECT_API_URL is set.
FLOW_COMMANDS = ("curate", "train", "generate", "evaluate", "studio", "cache-latents")


# What names a file or folder (dest: how the user wrote it). An empty one would mean the current
# folder: a curation writing its shards there, a training run made in it.
PATH_ARGUMENTS = {
    "videos": "--videos", "out": "--out", "captions": "--captions", "shards": "--shards", "run": "--run",
    "config": "--config", "image": "--image", "trajectories": "--trajectories", "reference": "--reference",
    "images": "--images", "official": "--official", "base_model": "--base-model", "base_lora": "--base-lora",
    "official_dir": "OFFICIAL_DIR", "set_name": "SET",
}


def empty_paths(args: argparse.Namespace) -> list[str]:
    """A line for each path argument given as an empty string (an unset shell variable)."""
    from ic_data.settings import empty_path

    found = []
    for dest, flag in PATH_ARGUMENTS.items():
        value = getattr(args, dest, None)
        for one in value if isinstance(value, list) else [value]:
            problem = empty_path(flag, one)
            if problem:
                found.append(problem)
                break
    return found


def expand_home(args: argparse.Namespace) -> None:
    """``~`` and ``~user`` at the start of every path argument made the home folder's path, as
    a shell does for a word of its own (not after ``--out=``, nor in a config file): the checks
    and the flows then read the same path."""
    for dest in PATH_ARGUMENTS:
        value = getattr(args, dest, None)
        if isinstance(value, str):
            setattr(args, dest, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, dest, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every problem with the arguments, before any flow (and its Prefect server) starts.
    try:
        problems = empty_paths(args)
        if not problems and getattr(args, "config", None):
            args.config = os.path.expanduser(args.config)
            problems = apply_config_file(args)
        if not problems:
            expand_home(args)
        if not problems and args.command in ("generate", "evaluate", "studio"):
            problems = resolve_official(args)
        problems = problems or args.check(args)
    except Exception as err:  # a check that did not foresee this input: still one line
        if args.debug:
            raise
        problems = [f"checking the arguments failed: {type(err).__name__}: {err} "
                    "(rerun with `ic --debug …` for the traceback)"]
    if problems:
        for problem in problems:
            print(f"ic {args.command}: {problem}", file=sys.stderr)
        return 2
    try:
        with stop_on_sigterm():
            # A Dask cluster's workers could not reach a server on this machine's loopback: with
            # one, Prefect's own arrangement stays (better: a real server and PREFECT_API_URL).
            own_server = args.command in FLOW_COMMANDS and not getattr(args, "dask_address", None)
            with temporary_server() if own_server else contextlib.nullcontext():
                return args.func(args)
    except KeyboardInterrupt:
        print(f"ic {args.command}: interrupted", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print(f"ic {args.command}: stopped by {signal.Signals(stopped.signum).name}", file=sys.stderr)
        return 128 + stopped.signum
    except Exception as err:  # one line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"ic {args.command}: {type(err).__name__}: {err} (rerun with `ic --debug …` for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
