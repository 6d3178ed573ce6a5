"""The trajectory studio: a local Gradio page to draw trajectories on an image and generate.

Every handler turns a problem into a message on the page (never a stack trace); the traceback of
anything unexpected goes to the server's log.
"""
from __future__ import annotations

import os

# Before gradio is imported: no usage statistics, no version check, no model hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Without PREFECT_API_URL the flow runs on Prefect's temporary local server, which can take
# longer than its default 20 s to start while generation keeps the CPUs busy.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from ic_data.errors import CurationError, TrajectoryError  # noqa: E402
from ic_data.images import IMAGE_SUFFIXES  # noqa: E402
from ic_model.config import ModelConfig, load_json  # noqa: E402
from ic_model.pipelines.generate import read_image, request_problems  # noqa: E402
from ic_model.pipelines.image_conductor import prepare_image_and_tracks  # noqa: E402
from ic_model.training.run import is_done  # noqa: E402

from .drawing import DrawingError, TrajectoryDrawing  # noqa: E402
from .generation import (  # noqa: E402
    STUDIO_MODES,
    StudioError,
    check_run_for_mode,
    measure_motion_control,
    overlay_video,
    run_generate_flow,
)
from .model_view import ModelView  # noqa: E402

log = logging.getLogger("ic_studio")
EXAMPLES_DIR = Path(__file__).parent / "examples"
# Problems whose message is meant for the user as it is.
USER_ERRORS = (StudioError, DrawingError, TrajectoryError, CurationError, FileNotFoundError, ValueError)


def example_images() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_run_config(run: str | os.PathLike) -> ModelConfig:
    """The run's model config, read only (``run_model_config`` would create a missing one)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise StudioError(f"{run} is not a run folder: {path} is missing (create one with `ic train`)")
    return ModelConfig.from_dict(load_json(path))


@dataclass
class Session:
    """One browser tab: the image being drawn on and its trajectories."""

    image_path: str | None = None  # the original file, as uploaded or picked
    view: ModelView | None = None
    drawing: TrajectoryDrawing | None = None


#: The most characters of a problem shown on the page: a message that quotes a request (a
#: refused flow run's parameters) can run to megabytes. The rest is left out (an unexpected
#: error's whole message and traceback go to the studio's log).
MESSAGE_CHARS = 2000


def _warning(message: str) -> str:
    if len(message) > MESSAGE_CHARS:
        message = f"{message[:MESSAGE_CHARS]}… ({len(message):,} characters in all; the rest is left out)"
    return f"**Problem:** {message}"


def shown_on_page(n_outputs: int, message_index: int):
    """Handlers return a tuple of updates; on an exception, every output is left as it was and
    the message output (at ``message_index``) says what went wrong."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as err:
                message = _warning(str(err))
            except Exception as err:  # noqa: BLE001 - the page gets a message, the log the traceback
                log.exception("studio handler %s failed", fn.__name__)
                message = _warning(f"unexpected error ({type(err).__name__}: {err}); see the studio's log")
            out = [gr.skip()] * n_outputs
            out[message_index] = message
            return tuple(out)

        return inner

    return wrap


class Studio:
    """The page for one run; ``out`` collects each generation's inputs and outputs."""

    def __init__(self, run: str | os.PathLike, out: str | os.PathLike | None = None, device: str = "cpu",
                 dtype: str = "fp32"):
        self.run = str(run)
        self.cfg = load_run_config(run)
        self.out = Path(out) if out else Path(run) / "studio"
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.dtype = dtype
        self.exports = self.out / "exports"  # the drawing as JSON, for the export button

    # --- helpers ----------------------------------------------------------------------------

    def adapters(self) -> list[str]:
        return [m for m in ("camera", "object") if is_done(self.run, m)]

    def header(self) -> str:
        c = self.cfg
        adapters = ", ".join(self.adapters()) or "none (only the `none` mode)"
        return (
            f"# Trajectory studio\n"
            f"Run `{self.run}`: preset **{c.preset}**, {c.width}×{c.height} pixels, {c.num_frames} frames; "
            f"adapters: {adapters}. Outputs go to `{self.out}`."
        )

    def _export_file(self, session: Session) -> str | None:
        if session.drawing is None or not session.drawing.tracks:
            return None
        text = session.drawing.to_json(session.view)
        path = self.exports / f"trajectories-{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        return str(path)

    def _drawing_outputs(self, session: Session, message: str = ""):
        """(session, canvas, drawing summary, exported JSON, export button, message)."""
        if session.view is None:
            no_export = gr.update(value=None, interactive=False)
            return session, None, "Upload or pick an image first.", "", no_export, message
        d = session.drawing
        export = self._export_file(session)
        return (
            session,
            d.render(session.view, self.cfg.num_frames),
            d.summary(),
            d.to_json(session.view) if d.tracks else "",
            gr.update(value=export, interactive=export is not None),
            message,
        )

    # --- handlers ---------------------------------------------------------------------------

    @shown_on_page(7, 6)
    def load_image(self, path: str | None, session: Session):
        """A new image: show it as the model sees it and start an empty drawing."""
        if not path:
            return (gr.skip(),) * 6 + ("",)
        rgb = read_image(path)
        view = ModelView.from_image(rgb, self.cfg)
        session = Session(str(path), view, TrajectoryDrawing(view.display_bounds()))
        info = f"**{Path(path).name}**: {view.describe()}"
        session, canvas, summary, tracks_json, export, message = self._drawing_outputs(session)
        return session, canvas, info, summary, tracks_json, export, message

    @shown_on_page(7, 6)
    def load_example(self, session: Session, evt: gr.SelectData):
        examples, index = example_images(), evt.index
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(examples)):
            raise StudioError(f"there is no example {index!r}: pick one of the {len(examples)} shown")
        return self.load_image(str(examples[index]), session)

    @shown_on_page(6, 5)
    def click(self, session: Session, evt: gr.SelectData):
        if session.view is None:
            raise StudioError("upload or pick an image first")
        x, y = evt.index
        session.drawing.click(x, y)
        return self._drawing_outputs(session)

    def edit(self, action: str):
        @shown_on_page(6, 5)
        def handler(session: Session):
            if session.drawing is not None:
                getattr(session.drawing, action)()
            return self._drawing_outputs(session)

        handler.__name__ = action
        return handler

    @shown_on_page(6, 5)
    def import_json(self, path: str | None, session: Session):
        if session.view is None:
            raise StudioError("upload or pick the image the trajectories belong to first")
        if not path:
            return (gr.skip(),) * 6
        try:
            tracks = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON, a 4300-digit integer
            raise TrajectoryError(f"{Path(path).name}: not a trajectory JSON file ({err})") from err
        except RecursionError:
            raise TrajectoryError(f"{Path(path).name}: not a trajectory JSON file (nested too deeply)") from None
        session.drawing.load_source(tracks, session.view)
        return self._drawing_outputs(session, f"Imported {len(session.drawing.tracks)} trajectories.")

    def generate(self, session: Session, mode: str, trajs_scale: float, guidance: float, steps: float,
                 seed: float, prompt: str, negative_prompt: str = "", progress=gr.Progress()):
        """(status, input with tracks, overlay video, metrics, files), step by step."""
        started = time.perf_counter()
        try:
            request, folder = self._request(session, mode, trajs_scale, guidance, steps, seed, prompt, negative_prompt)
        except USER_ERRORS as err:
            yield _warning(str(err)), None, None, "", None
            return
        name = f"studio-{folder.name}"
        progress(0.05, desc=f"generate flow run {name}")
        yield (f"**Generating:** Prefect flow run `{name}` ({request['steps']} steps, {mode} mode)…",
               session.drawing.render(session.view, self.cfg.num_frames), None, "", None)
        try:
            result = run_generate_flow(self.run, request, self.device, name, self.dtype)
            progress(0.8, desc="tracking the result")
            requested = prepare_image_and_tracks(read_image(request["image"]), request["trajectories"], self.cfg).tracks
            frames, mc = measure_motion_control(result.record["video"], requested)
            overlay = overlay_video(frames, requested, mc.tracked, folder / "overlay.mp4")
        except USER_ERRORS as err:
            yield _warning(str(err)), gr.skip(), None, "", None
            return
        except Exception as err:  # noqa: BLE001
            log.exception("studio generation failed")
            message = f"generation failed ({type(err).__name__}: {err}); see the studio's log"
            yield _warning(message), gr.skip(), None, "", None
            return
        metric = "CamMC" if mode == "camera" else "ObjMC"
        per_track = ", ".join(f"{i + 1}: {v:.1f}" for i, v in enumerate(mc.per_track_px))
        link = self._flow_run_link(result.flow_run_id)
        metrics = (
            f"**{metric} = {mc.error_px:.2f} px** (mean distance between requested and tracked points in "
            f"384×256 pixels, {mc.tracker} tracker; per trajectory {per_track}).\n\n"
            f"Thick lines with arrows: requested; thin lines with rings: tracked.\n\n"
            f"Flow run `{result.flow_run_name}`{link}: {result.record['seconds']:.1f} s sampling, "
            f"{time.perf_counter() - started:.1f} s in all. Replay from the command line:\n\n"
            f"```\n{self._replay_command(request, folder)}\n```"
        )
        video = Path(result.record["video"])
        files = [str(video), result.record["preview"], str(video.with_suffix(".json")), str(folder / "trajectories.json")]
        yield (f"**Done:** `{video.name}` in `{folder}`.",
               gr.skip(), str(overlay), metrics, [f for f in files if Path(f).exists()])

    # --- generation details -----------------------------------------------------------------

    def _request(self, session, mode, trajs_scale, guidance, steps, seed, prompt,
                 negative_prompt: str = "") -> tuple[dict, Path]:
        if session.view is None:
            raise StudioError("upload or pick an image first")
        if not session.drawing.tracks:
            raise StudioError(f"draw at least one trajectory (click on the image): the {mode} mode "
                              f"needs one; a single click with *Still anchor* makes a point that stays (nearly) put")
        check_run_for_mode(self.run, self.cfg, mode)
        if mode != "object":
            trajs_scale = 1.0  # camera-free guidance combines the object adapter with the base
        settings = {"λ_trajs": trajs_scale, "guidance": guidance, "steps": steps, "seed": seed}
        wrong = [f"{name} {value!r}" for name, value in settings.items()
                 if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                 or (name in ("steps", "seed") and value != int(value))]
        if wrong:  # a raw API call can send what the number fields never would
            raise StudioError(f"{', '.join(wrong)}: each setting is a finite number, steps and seed whole ones")
        folder = self.out / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        # The request reads its own copy: the upload cache may be cleaned, and the replay needs it.
        image = folder / f"input{Path(session.image_path).suffix.lower() or '.png'}"
        tracks = session.drawing.to_source(session.view)
        request = dict(
            image=str(image), prompt=prompt or "", trajectories=tracks, out=str(folder / "video.mp4"), mode=mode,
            trajs_scale=float(trajs_scale), guidance_scale=float(guidance), steps=int(steps), seed=int(seed),
            negative_prompt=negative_prompt or "",
        )
        wrong = request_problems(request, max_steps=self.cfg.num_train_timesteps)
        if wrong:  # before a folder is made for it
            raise StudioError("; ".join(wrong))
        folder.mkdir(parents=True)
        shutil.copyfile(session.image_path, image)
        (folder / "trajectories.json").write_text(json.dumps(tracks))
        return request, folder

    def _replay_command(self, request: dict, folder: Path) -> str:
        args = ["ic", "generate", "--run", self.run, "--image", request["image"], "--trajectories",
                str(folder / "trajectories.json"), "--prompt", request["prompt"], "--mode", request["mode"],
                "--trajs-scale", f"{request['trajs_scale']:g}", "--cfg", f"{request['guidance_scale']:g}",
                "--steps", str(request["steps"]), "--seed", str(request["seed"]), "--out", str(folder / "replay.mp4")]
        if request["negative_prompt"]:
            args[-2:-2] = ["--negative-prompt", request["negative_prompt"]]
        return shlex.join(args)

    @staticmethod
    def _flow_run_link(flow_run_id: str) -> str:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
        return f" ([Prefect UI]({ui}/runs/flow-run/{flow_run_id}))" if ui else ""

    # --- the page ---------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        adapters = self.adapters()
        default_mode = "object" if "object" in adapters else (adapters[0] if adapters else "none")
        examples = example_images()
        with gr.Blocks(title="Image Conductor: trajectory studio", analytics_enabled=False) as page:
            session = gr.State(Session())
            gr.Markdown(self.header())
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    upload = gr.UploadButton("Upload an image", file_types=["image"], type="filepath",
                                             variant="primary", elem_id="studio-upload")
                    gallery = gr.Gallery(value=[(str(p), p.stem) for p in examples], label="…or pick an example",
                                         columns=3, height=220, allow_preview=False, buttons=[],
                                         elem_id="studio-examples")
                    image_info = gr.Markdown("", elem_id="studio-image-info")
                with gr.Column(scale=2, min_width=420):
                    canvas = gr.Image(label="Model view: click to draw trajectories", interactive=False,
                                      format="png", type="numpy", buttons=[], elem_id="studio-canvas")
                    with gr.Row():
                        new_btn = gr.Button("New trajectory", size="sm", elem_id="studio-new")
                        still_btn = gr.Button("Still anchor", size="sm", elem_id="studio-still")
                        undo_btn = gr.Button("Undo", size="sm", elem_id="studio-undo")
                        clear_btn = gr.Button("Clear", size="sm", elem_id="studio-clear")
                    drawing_info = gr.Markdown("Upload or pick an image first.", elem_id="studio-drawing")
                    with gr.Row():
                        export_btn = gr.DownloadButton("Export trajectories (JSON)", interactive=False, size="sm",
                                                       elem_id="studio-export")
                        import_btn = gr.UploadButton("Import trajectories (JSON)", file_types=[".json"], size="sm",
                                                     type="filepath", elem_id="studio-import")
                    tracks_json = gr.Textbox(label="Trajectories in the original image's pixels (ic generate reads this)",
                                             interactive=False, lines=2, max_lines=6, buttons=["copy"],
                                             elem_id="studio-json")
            with gr.Row():
                mode = gr.Radio(list(STUDIO_MODES), value=default_mode, label="Mode", elem_id="studio-mode",
                                info="object / camera: that LoRA adapter; none: motion ControlNet alone; base: ControlNet off")
                trajs_scale = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="λ_trajs",
                                        info="camera-free guidance, object mode (1 = off)", elem_id="studio-trajs")
                guidance = gr.Slider(1.0, 15.0, value=8.5, step=0.5, label="CFG", elem_id="studio-cfg")
                steps = gr.Slider(1, 50, value=25, step=1, label="Steps", elem_id="studio-steps")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="studio-seed")
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", placeholder="a red ball rolls across the table",
                                    elem_id="studio-prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", elem_id="studio-negative-prompt",
                                             info="guidance's unconditional text (empty: as in training; the "
                                                  "released weights' examples: worst quality, low quality, letterboxed)")
            generate_btn = gr.Button("Generate", variant="primary", elem_id="studio-generate")
            message = gr.Markdown("", elem_id="studio-message")
            with gr.Row():
                result_input = gr.Image(label="Input (model view) with the requested trajectories", interactive=False,
                                        format="png", buttons=[], elem_id="studio-result-input")
                result_video = gr.Video(label="Generated, requested and tracked trajectories", autoplay=True, loop=True,
                                        interactive=False, elem_id="studio-result")
            metrics = gr.Markdown("", elem_id="studio-metrics")
            files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="studio-files")

            drawing_outputs = [session, canvas, drawing_info, tracks_json, export_btn, message]
            image_outputs = [session, canvas, image_info, drawing_info, tracks_json, export_btn, message]
            # Every edit of the session's image and drawing in one queue, in the order made: as
            # separate events they ran side by side, so a click right after "Still anchor" could
            # be handled first (it joined the open track) and one edit's state overwrote another's.
            edits = dict(concurrency_id="drawing", concurrency_limit=1)
            upload.upload(self.load_image, [upload, session], image_outputs, **edits)
            gallery.select(self.load_example, [session], image_outputs, **edits)
            canvas.select(self.click, [session], drawing_outputs, **edits)
            for button, action in ((new_btn, "new_track"), (still_btn, "still_anchor"), (undo_btn, "undo"),
                                   (clear_btn, "clear")):
                button.click(self.edit(action), [session], drawing_outputs, **edits)
            import_btn.upload(self.import_json, [import_btn, session], drawing_outputs, **edits)
            generate_btn.click(self.generate, [session, mode, trajs_scale, guidance, steps, seed, prompt, negative_prompt],
                               [message, result_input, result_video, metrics, files])
        return page

    def launch(self, port: int = 7860, block: bool = True):
        page = self.build()
        page.queue(default_concurrency_limit=1)  # one generation at a time: it takes the whole machine
        page.launch(
            server_name="127.0.0.1", server_port=port, share=False, inbrowser=False, ssr_mode=False,
            mcp_server=False, footer_links=["settings"], allowed_paths=[str(self.out), str(EXAMPLES_DIR)],
            prevent_thread_lock=True, quiet=True, show_error=False,
        )
        print(f"Trajectory studio for {self.run}: http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
        if block:
            page.block_thread()
        return page


def launch(run: str, port: int = 7860, out: str | None = None, device: str = "cpu", block: bool = True,
           dtype: str = "fp32"):
    return Studio(run, out, device, dtype).launch(port, block)


__all__ = ["Session", "Studio", "example_images", "launch", "load_run_config"]
