"""`ic curate …` as a user runs it: the console script, the embedded Prefect server, kill and resume."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ic_data.manifest import read_manifest
from ic_data.pipeline import CurationConfig, curate, discover_videos, plan_chunks, stage1_result_path
from tests.conftest import live_processes

ROOT = Path(__file__).resolve().parents[1]


def _ic() -> list[str]:
    exe = Path(sys.executable).parent / "ic"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the embedded default
    env["PREFECT_HOME"] = str(tmp_path / "prefect_home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The embedded server may start slowly on a loaded 2-core machine (default limit 20 s).
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    return env


@pytest.mark.e2e
def test_ic_curate_killed_then_rerun_matches_an_uninterrupted_run(input_dir, tmp_path):
    out = tmp_path / "out"
    args = [*_ic(), "curate", "realestate10k", "--videos", str(input_dir), "--out", str(out),
            "--seed", "5", "--chunk-size", "4", "--workers", "1"]
    config = CurationConfig(source="realestate10k", camera_only=True, seed=5)
    chunks = plan_chunks(discover_videos(input_dir), config, 4)
    first = stage1_result_path(out, chunks[0])

    log = tmp_path / "first_run.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(args, env=_env(tmp_path), cwd=ROOT, start_new_session=True,
                                stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.fail(f"the first run exited ({proc.returncode}) before finishing a chunk:\n{log.read_text()[-3000:]}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first.exists(), "the run was killed before it finished a chunk"
    assert not (out / "manifest.parquet").exists(), "the run was killed too late to test resuming"

    r = subprocess.run(args, env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["num_videos"] == 14 and summary["counts"]["failed"] == 6

    reference = tmp_path / "reference"
    curate(input_dir, reference, config, chunk_size=4)
    assert (out / "manifest.parquet").read_bytes() == (reference / "manifest.parquet").read_bytes()
    rows = read_manifest(out / "manifest.parquet")
    assert all(row.camera_only for row in rows)
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == sorted(
        p.name for p in (reference / "shards").glob("*.tar")
    )


def _children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines."""
    return {kid: cmd for kid, (parent, cmd) in live_processes().items() if parent == pid}


def _curate_until_a_chunk_is_done(input_dir, tmp_path):
    """`ic curate` in a process group of its own (as a shell starts a job), once it has finished
    its first chunk: the process, the output folder and the pid of its Prefect server."""
    out = tmp_path / "out"
    config = CurationConfig(source="webvid", seed=0)
    first = stage1_result_path(out, plan_chunks(discover_videos(input_dir), config, 1)[0])
    proc = subprocess.Popen([*_ic(), "curate", "webvid", "--videos", str(input_dir), "--out", str(out),
                             "--chunk-size", "1", "--workers", "1", "--processes", "0"],
                            env=_env(tmp_path), cwd=ROOT, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"ic exited ({proc.returncode}) before the kill:\n{proc.stdout.read()[-3000:]}"
        servers = [pid for pid, cmd in _children(proc.pid).items() if "uvicorn" in cmd]
        assert len(servers) == 1, _children(proc.pid)
    except BaseException:  # its server, in a session of its own, follows `ic` (parent-death signal)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    return proc, out, servers[0]


def _wait_gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.time() + timeout_s
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _flow_run_states(prefect_home: Path) -> list[str]:
    """The state of every flow run in the temporary server's SQLite database, read directly."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(prefect_home / "prefect.db")) as db:
        return [row[0] for row in db.execute("SELECT state_type FROM flow_run")]


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from Linux's /proc")
def test_sigterm_ends_ic_in_one_line_and_stops_its_prefect_server(input_dir, tmp_path):
    """`kill PID` (a scheduler's stop): the flow run ends Crashed, `ic` says so in one line with
    128 + 15, and Prefect's temporary server, its child, stops with it instead of running on."""
    proc, out, server = _curate_until_a_chunk_is_done(input_dir, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)  # to `ic` alone, not its process group
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "\nic curate: stopped by SIGTERM\n" in output, output[-3000:]
    assert "Traceback" not in output
    assert not (out / "manifest.parquet").exists(), "stopped before the end"
    assert _wait_gone(server), "Prefect's temporary server outlived `ic`"
    assert _flow_run_states(tmp_path / "prefect_home") == ["CRASHED"]


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from Linux's /proc")
def test_ctrl_c_marks_the_run_crashed_and_ends_ic_at_once(input_dir, tmp_path, python_sigint):
    """The terminal's Ctrl-C reaches the whole foreground process group. The Prefect server is
    in a session of its own, so it outlives the flow long enough to record the run as Crashed,
    and `ic` ends in one line with 130. Before, the server died with the flow: the run stayed
    Running in the database and `ic` spent about a minute retrying it, then printed a
    ConnectError and a dump of unsent events."""
    proc, out, server = _curate_until_a_chunk_is_done(input_dir, tmp_path)
    own_session = os.getsid(server) != os.getsid(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output[-3000:]
    assert output.endswith("\nic curate: interrupted\n"), output[-3000:]
    assert "Traceback" not in output and "Error logging to API" not in output, output[-3000:]
    assert _wait_gone(server), "Prefect's temporary server outlived `ic`"
    assert _flow_run_states(tmp_path / "prefect_home") == ["CRASHED"]
    assert own_session


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_prefect_server_does_not_outlive_ic_killed_by_sigkill(input_dir, tmp_path):
    """`kill -9` (or the OOM killer) gives `ic` no chance to stop its server: the server was
    started to receive SIGTERM when `ic` dies. Before, it ran on, orphaned, holding its port."""
    proc, out, server = _curate_until_a_chunk_is_done(input_dir, tmp_path)
    try:
        proc.kill()  # `ic` alone
        proc.communicate(timeout=30)
        assert _wait_gone(server), "Prefect's temporary server outlived `ic`"
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


THREADED_FLOW = """
import json, sys, threading
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from flows.server import temporary_server

@flow
def add(a, b):
    return a + b

seen = {}
def in_a_thread():  # as the studio runs its flows: in its web server's threads
    seen.update(api=PREFECT_API_URL.value(), ui=PREFECT_UI_URL.value(), state=add(2, 3, return_state=True))

with temporary_server() as url:
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
print(json.dumps(dict(url=url, api=seen["api"], ui=seen["ui"], state=seen["state"].type.value,
                      result=seen["state"].result(), after=PREFECT_API_URL.value(),
                      prefects_own=len(SubprocessASGIServer._instances))))
"""


@pytest.mark.e2e
def test_flows_in_other_threads_report_to_the_same_temporary_server(tmp_path):
    """The settings reach threads the command did not start (the studio's): one server, no
    second temporary server of Prefect's own, and nothing left configured afterwards."""
    r = subprocess.run([sys.executable, "-c", THREADED_FLOW], env=_env(tmp_path), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["url"].startswith("http://127.0.0.1:") and seen["api"] == seen["url"], seen
    assert seen["ui"] == "" and seen["state"] == "COMPLETED" and seen["result"] == 5, seen
    assert seen["after"] is None and seen["prefects_own"] == 0, seen
    assert "View at" not in r.stderr and "Error logging to API" not in r.stderr, r.stderr[-2000:]
    assert _flow_run_states(tmp_path / "prefect_home") == ["COMPLETED"]


def _alive(pid: int) -> bool:
    return pid in live_processes()


def test_ic_rejects_a_missing_folder_with_one_clear_error(tmp_path):
    r = subprocess.run([*_ic(), "curate", "webvid", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == f"ic curate: --videos {tmp_path / 'nope'}: no such folder"
    assert "Traceback" not in r.stdout + r.stderr


# ----------------------------------------------------------------------------- bad input, every problem at once


def _problems(capsys, argv: list[str]) -> list[str]:
    from flows.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.fixture
def trained_like_run(tmp_path):
    """A run folder with the files the checks read (the stages' done.json), no weights."""
    from ic_model.config import tiny_config

    run = tmp_path / "run"
    (run / "dense").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(tiny_config(codec="space_to_depth").to_dict()))
    for stage in ("base", "dense"):
        (run / stage).mkdir(exist_ok=True)
        (run / stage / "done.json").write_text("{}")
    return run


def test_curate_refuses_a_folder_without_videos_and_an_unreadable_captions_csv(capsys, tmp_path):
    (tmp_path / "videos" / "notes").mkdir(parents=True)
    (tmp_path / "videos" / "notes" / "readme.txt").write_text("no videos here")
    no_columns = tmp_path / "captions.csv"
    no_columns.write_text("id,title\n1,a cat\n", encoding="utf-8")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"videoid,name\n\xff\xfe\x00 not text")
    videos = tmp_path / "videos"
    lines = _problems(capsys, ["curate", "webvid", "--videos", str(videos), "--out", str(tmp_path / "o"),
                               "--captions", str(no_columns)])
    assert lines[0].startswith(f"ic curate: --videos {videos}: no video files in it (looked for .mp4, .avi")
    assert lines[0].endswith(".gif; it holds 1 .txt)")  # what it does hold, so a wrong folder shows
    assert lines[1] == (f"ic curate: --captions: {no_columns}: WebVid CSV lacks columns ['videoid', 'name'] "
                        "(found ['id', 'title'])")
    assert len(lines) == 2
    (videos / "notes" / "clip.MP4").write_bytes(b"a video by its name; decoding is the flow's business")
    lines = _problems(capsys, ["curate", "webvid", "--videos", str(videos), "--out", str(tmp_path / "o"),
                               "--captions", str(binary)])
    assert lines == [f"ic curate: --captions {binary}: not UTF-8 text (invalid start byte at byte 13)"]
    assert not (tmp_path / "o").exists()


def test_curate_refuses_a_video_folder_it_cannot_list(capsys, tmp_path, monkeypatch):
    """Without permission to list --videos, one line says so (a walk would find no videos and
    blame the folder's contents). The refusal is simulated: the tests may run as root."""
    videos = tmp_path / "videos"
    videos.mkdir()
    scandir = os.scandir

    def refuse(path="."):
        if os.fspath(path) == str(videos):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    lines = _problems(capsys, ["curate", "webvid", "--videos", str(videos), "--out", str(tmp_path / "o")])
    assert lines == [f"ic curate: --videos: cannot list the video folder {videos}: Permission denied"]


def test_curating_an_empty_folder_writes_an_empty_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    summary = curate(tmp_path / "empty", tmp_path / "out" / "nested")
    assert summary.num_videos == 0 and summary.counts == {"ok": 0, "filtered": 0, "failed": 0}
    assert len(read_manifest(tmp_path / "out" / "nested" / "manifest.parquet")) == 0
    assert json.loads((tmp_path / "out" / "nested" / "summary.json").read_text())["num_videos"] == 0


def test_generate_names_every_problem_before_anything_starts(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2], [3")
    lines = _problems(capsys, ["generate", "--image", "/nonexistent.png", "--trajectories", str(bad),
                               "--run", str(tmp_path / "norun"), "--out", str(tmp_path / "x.gif"), "--steps", "0"])
    assert lines == [
        "ic generate: --image /nonexistent.png: no such file",
        f"ic generate: --trajectories {bad}: malformed JSON (Expecting ',' delimiter: line 1 column 12 (char 11))",
        f"ic generate: --run {tmp_path / 'norun'}: not a run folder (it does not exist)",
        "ic generate: --steps must be at least 1, got 0",
        f"ic generate: --out {tmp_path / 'x.gif'}: must end in .mp4",
    ]


def test_generate_and_evaluate_refuse_prompts_no_text_encoder_reads(capsys, tmp_path):
    long = "a red ball rolls " * 1000  # 17,000 characters
    lines = _problems(capsys, ["generate", "--image", "/nonexistent.png", "--trajectories", "/nonexistent.json",
                               "--run", str(tmp_path / "norun"), "--out", str(tmp_path / "x.mp4"), "--prompt", long,
                               "--negative-prompt", long])
    assert "ic generate: --prompt is 17,000 characters long; at most 10,000 are taken" in lines, lines
    assert "ic generate: --negative-prompt is 17,000 characters long; at most 10,000 are taken" in lines, lines
    lines = _problems(capsys, ["evaluate", "object", "--run", str(tmp_path / "norun"), "--negative-prompt", long])
    assert "ic evaluate: --negative-prompt is 17,000 characters long; at most 10,000 are taken" in lines, lines


def test_generate_checks_the_trajectories_against_the_image_and_the_run_against_the_mode(
        capsys, tmp_path, trained_like_run):
    import cv2
    import numpy as np

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((64, 96, 3), np.uint8))
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[[10, 10], [500, 10]]]))  # x = 500 is outside a 96-px image
    lines = _problems(capsys, ["generate", "--image", str(image), "--trajectories", str(tracks),
                               "--run", str(trained_like_run), "--mode", "camera", "--trajs-scale", "1.3",
                               "--out", str(tmp_path / "v.mp4")])
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"ic generate: --trajectories {tracks}:") and "500" in lines[0]
    assert "--mode camera: the run has no finished camera stage" in lines[1]
    assert lines[2] == "ic generate: --trajs-scale 1.3: camera-free guidance needs --mode object"
    not_an_image = tmp_path / "frame.jpg"
    not_an_image.write_bytes(b"\x00" * 100)
    lines = _problems(capsys, ["generate", "--image", str(not_an_image), "--trajectories", str(tracks),
                               "--run", str(trained_like_run), "--out", str(tmp_path / "v.mp4")])
    assert lines[0].startswith(f"ic generate: --image {not_an_image}: not a readable image")
    assert "--mode object: the run has no finished object stage" in lines[1]


def test_sampling_steps_past_the_run_and_a_folder_in_the_outputs_way_are_named_up_front(capsys, tmp_path,
                                                                                      trained_like_run):
    """Both were found only after Prefect's server had started and the weights had loaded (exit
    1), the second after the whole sampling, with a traceback and the video left without its
    record."""
    import cv2
    import numpy as np

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((256, 384, 3), np.uint8))
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[[10, 10], [50, 10]]]))
    (tmp_path / "v.gif").mkdir()
    lines = _problems(capsys, ["generate", "--image", str(image), "--trajectories", str(tracks), "--run",
                               str(trained_like_run), "--mode", "none", "--steps", "1001", "--out",
                               str(tmp_path / "v.mp4")])
    assert lines == ["ic generate: --steps must be at most 1000 (the run's diffusion timesteps), got 1001",
                     f"ic generate: --out {tmp_path / 'v.mp4'}: {tmp_path / 'v.gif'} is a folder, and the output's "
                     ".gif goes there"]
    lines = _problems(capsys, ["evaluate", "camera", "--run", str(trained_like_run), "--mode", "none",
                               "--steps", "5000"])
    assert lines == ["ic evaluate: --steps must be at most 1000 (the run's diffusion timesteps), got 5000"]


def test_train_checks_shards_json_options_and_the_stage_order(capsys, tmp_path, trained_like_run, training_shards):
    lines = _problems(capsys, ["train", "dense", "--shards", str(tmp_path / "none"), "--run", str(tmp_path / "new"),
                               "--options", '{"foo": 1, "log_every": "x", "steps": 3}', "--model", "[1]",
                               "--lr", "-1"])
    assert lines == [
        f"ic train: --shards {tmp_path / 'none'}: shard {tmp_path / 'none'} does not exist",
        "ic train: --lr must be > 0.0, got -1.0",
        "ic train: --options: 'foo' is not a TrainConfig field",
        "ic train: --options: 'log_every' must be int, got \"x\"",
        "ic train: --model: must be a mapping of ModelConfig fields, got list",
        "ic train: --options: set 'steps' with its own flag",
        f"ic train: stage 'dense' needs the finished 'base' stage first ({tmp_path / 'new' / 'base' / 'done.json'} "
        f"is missing): run `ic train base --run {tmp_path / 'new'} …`",
    ]
    # An existing run keeps its preset and model; `vae` is not a stage of a space-to-depth run.
    lines = _problems(capsys, ["train", "vae", "--shards", str(training_shards), "--run", str(trained_like_run),
                               "--preset", "sd15", "--model", '{"codec": "vae"}'])
    assert lines == [
        "ic train: --preset sd15: the run was created with preset 'tiny' (leave --preset out to use the run's)",
        "ic train: --model: the run has codec='space_to_depth', not 'vae'",
        "ic train: stage 'vae' does not exist for preset 'tiny' (its stages: base, dense, sparse, camera, object)",
    ]
    lines = _problems(capsys, ["train", "base", "--shards", str(training_shards), "--run", str(tmp_path / "n2"),
                               "--model", '{"codec": "space_to_depth", "flow_gain": 0}'])
    assert lines == ["ic train: --model: ModelConfig: flow_gain must be > 0, got 0"]
    lines = _problems(capsys, ["train", "base", "--shards", str(training_shards), "--run", str(tmp_path / "n3"),
                               "--model", '{"codec": "space_to_depth", "flow_sigma": NaN}',
                               "--options", '{"ortho_weight": Infinity}'])
    assert lines == ["ic train: --options: 'ortho_weight' must be a finite number, got inf",
                     "ic train: --model: 'flow_sigma' must be a finite number, got nan"]


def test_evaluate_and_studio_check_the_run_and_their_flags(capsys, tmp_path, trained_like_run):
    lines = _problems(capsys, ["evaluate", "object", "--run", str(trained_like_run), "--reference",
                               str(tmp_path / "nope"), "--max-cases", "0", "--cfg", "nan", "--seed", "-1"])
    assert lines == [
        f"ic evaluate: the object set (without --mode, the object adapter's): the run has no finished object stage "
        f"({trained_like_run / 'object' / 'done.json'} "
        f"is missing); train it with `ic train object --run {trained_like_run} …`",
        f"ic evaluate: --reference {tmp_path / 'nope'}: shard {tmp_path / 'nope'} does not exist",
        "ic evaluate: --max-cases must be at least 1, got 0",
        "ic evaluate: --seed must be a whole number from 0 to 2**63 - 1, got -1",  # numpy takes no negative seed
        "ic evaluate: --cfg must be a finite number, got nan",
    ]
    lines = _problems(capsys, ["studio", "--run", str(tmp_path), "--port", "70000"])
    assert lines == [
        f"ic studio: --run {tmp_path}: not a run folder (no config.json); train one with `ic train`",
        "ic studio: --port must be in 1–65535, got 70000",
    ]


def test_evaluate_loads_the_fid_and_fvd_networks_before_any_video_is_made(capsys, tmp_path, trained_like_run,
                                                                           monkeypatch):
    """Weights files set by $IC_FID_INCEPTION and $IC_I3D_WEIGHTS that are no such network were
    only located up front, and failed to load after every video had been generated."""
    wrong = tmp_path / "notes.pt"
    wrong.write_text("not a network")
    monkeypatch.setenv("IC_FID_INCEPTION", str(wrong))
    monkeypatch.setenv("IC_I3D_WEIGHTS", str(wrong))
    lines = _problems(capsys, ["evaluate", "camera", "--run", str(trained_like_run), "--reference", str(tmp_path)])
    assert any(line.startswith(f"ic evaluate: --reference {tmp_path}: FID's Inception weights {wrong} do not load (")
               for line in lines), lines
    assert f"ic evaluate: --reference {tmp_path}: FVD's I3D weights {wrong} do not load (UnpicklingError: invalid " \
           "load key, 'n'.)" in lines, lines


def test_evaluate_reads_its_first_frames_before_the_model_loads(capsys, tmp_path, trained_like_run):
    """An --images folder with an undecodable picture, and a set file naming an image too small for
    its frames, were found after the model had loaded (exit 1); a BMP in --images was passed by."""
    import cv2
    import numpy as np

    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((256, 384, 3), 90, np.uint8))
    (folder / "b.png").write_text("not a picture")
    run = ["--run", str(trained_like_run), "--mode", "none"]
    lines = _problems(capsys, ["evaluate", "camera", *run, "--images", str(folder)])
    assert len(lines) == 1 and lines[0].startswith(f"ic evaluate: {folder / 'b.png'} is not an image"), lines
    (folder / "b.png").unlink()
    cv2.imwrite(str(folder / "c.bmp"), np.full((256, 384, 3), 160, np.uint8))
    from ic_model.evaluation.evalsets import read_eval_set
    from ic_model.evaluation.evaluate import _first_frames

    frames = _first_frames(read_eval_set("camera").cases[:2], str(folder), seed=0)  # one picture a case, in turn
    assert [int(f[0, 0, 0]) for f in frames] == [90, 160]
    cv2.imwrite(str(tmp_path / "small.png"), np.full((8, 8, 3), 90, np.uint8))
    set_file = tmp_path / "mine.json"
    set_file.write_text(json.dumps({"kind": "camera", "frame_size": [384, 256], "cases": [
        {"id": "a", "prompt": "", "trajectories": [[[10, 10], [50, 10]]], "image": "small.png"}]}))
    assert _problems(capsys, ["evaluate", str(set_file), *run]) == [
        f"ic evaluate: case a: the image {tmp_path / 'small.png'} is 8x8, which would need 48.0x upscaling to the "
        "set's 384x256 frames (limit 16x)"]


def test_devices_the_machine_lacks_are_refused_before_anything_starts(capsys, monkeypatch, tmp_path,
                                                                     trained_like_run):
    import torch

    run = ["--run", str(trained_like_run)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _problems(capsys, ["studio", *run, "--device", "cuda"]) == [
        "ic studio: --device cuda: this machine has no cuda device available to torch"]
    assert _problems(capsys, ["evaluate", "camera", *run, "--mode", "none", "--device", "tpu"]) == [
        "ic evaluate: --device tpu: not a device (cpu, cuda, cuda:1, mps, …)"]
    assert _problems(capsys, ["cache-latents", "--shards", str(tmp_path / "none"), *run, "--device", "meta"])[-1] == (
        "ic cache-latents: --device meta: the models cannot run on a 'meta' device")
    # A GPU machine with one card: cuda:0 passes the check, cuda:3 does not.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _problems(capsys, ["studio", *run, "--device", "cuda:3", "--port", "0"]) == [
        "ic studio: --device cuda:3: this machine has 1 CUDA device(s) (cuda:0 … cuda:0)",
        "ic studio: --port must be in 1–65535, got 0",
    ]
    assert _problems(capsys, ["studio", *run, "--device", "cuda:0", "--port", "0"]) == [
        "ic studio: --port must be in 1–65535, got 0"]


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    import flows.cli as cli

    def boom(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli.checks, "check_studio", lambda args: [])
    monkeypatch.setattr(cli, "_studio", boom)
    assert cli.main(["studio", "--run", "r"]) == 1
    assert capsys.readouterr().err.strip() == (
        "ic studio: RuntimeError: disk on fire (rerun with `ic --debug …` for the traceback)")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["--debug", "studio", "--run", "r"])


def test_ic_keeps_prefect_from_reporting_usage_offline_unless_asked():
    """Prefect's temporary server otherwise logs "ERROR … Failed to send telemetry" in every `ic`
    command on an offline machine; a user's own setting wins."""
    code = "import os, flows.cli; print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    for given, expected in ((None, "false"), ("true", "true")):
        run_env = env if given is None else {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": given}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        assert out.stdout.strip() == expected


def test_generate_checks_the_trajectories_against_the_image_as_shown(capsys, tmp_path, trained_like_run):
    """A phone photo: 96×64 stored, EXIF orientation 6 (turn clockwise to show), so 64×96 shown
    and read upright by generation (cv2). Trajectories are drawn on the shown image."""
    import cv2
    import numpy as np
    from PIL import Image

    image = tmp_path / "phone.jpg"
    photo = Image.fromarray(np.zeros((64, 96, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(image, exif=exif)
    assert cv2.imread(str(image)).shape[:2] == (96, 64)  # what generation reads
    tracks = tmp_path / "tracks.json"
    args = ["generate", "--image", str(image), "--trajectories", str(tracks), "--run", str(trained_like_run),
            "--mode", "camera", "--out", str(tmp_path / "v.mp4")]
    tracks.write_text(json.dumps([[[10, 30], [50, 66]]]))  # inside 64×96 (and its 3:2 crop), below 64 px
    lines = _problems(capsys, args)
    assert len(lines) == 1 and "--mode camera" in lines[0], lines
    tracks.write_text(json.dumps([[[10, 30], [50, 90]]]))  # inside 64×96, outside the crop the model sees
    lines = _problems(capsys, args)
    assert lines[0] == (f"ic generate: --trajectories {tracks}: track 0, point 1 (50, 90) is outside the centre "
                        "crop the model sees, x 0–63 and y 26.17–68.83 of 64×96"), lines
    tracks.write_text(json.dumps([[[10, 10], [90, 50]]]))  # inside the stored 96×64 only
    lines = _problems(capsys, args)
    assert len(lines) == 2 and lines[0].startswith(f"ic generate: --trajectories {tracks}:") and "90" in lines[0]


def test_generate_refuses_a_cut_or_tiny_image_and_reads_png(capsys, tmp_path, trained_like_run):
    """A PNG is checked like any image (its EXIF read after verify); a JPEG cut short and an
    image too small for the crop are refused before anything loads."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    png = tmp_path / "frame.png"
    cv2.imwrite(str(png), rng.integers(0, 255, (270, 480, 3), dtype=np.uint8))
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), rng.integers(0, 255, (270, 480, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:2000])
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((4, 6, 3), np.uint8))
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[[1, 1], [2, 2]]]))

    def lines_for(image):
        return _problems(capsys, ["generate", "--image", str(image), "--trajectories", str(tracks),
                                  "--run", str(trained_like_run), "--mode", "camera", "--out", str(tmp_path / "v.mp4")])

    assert [line for line in lines_for(png) if "--image" in line] == []
    assert lines_for(cut)[0].startswith(f"ic generate: --image {cut}: not a readable image (")
    assert lines_for(tiny)[0] == (f"ic generate: --image {tiny}: too small: 6x4 would need 64.00x upscaling "
                                  "for a 384x256 crop (limit 16.0x)")


def test_a_damaged_run_config_or_config_file_is_one_line_not_a_traceback(capsys, tmp_path, trained_like_run):
    import cv2
    import numpy as np

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((256, 384, 3), np.uint8))
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[[10, 10], [50, 60]]]))
    config = trained_like_run / "config.json"
    good = json.loads(config.read_text())
    gen = ["generate", "--image", str(image), "--trajectories", str(tracks), "--run", str(trained_like_run),
           "--mode", "none", "--out", str(tmp_path / "v.mp4")]
    for content, says in (([], "config.json: must be a mapping of ModelConfig fields, got list"),
                          (dict(good, num_frames="8"), "config.json: 'num_frames' must be int, got \"8\""),
                          (dict(good, width=-8), "ModelConfig: width must be a whole number ≥ 8, got -8"),
                          (dict(good, colour="red"), "config.json: 'colour' is not a ModelConfig field")):
        config.write_text(json.dumps(content))
        lines = _problems(capsys, gen)
        assert len(lines) == 1 and lines[0].startswith(f"ic generate: --run {trained_like_run}: config.json is not a "
                                                       "ModelConfig (") and says in lines[0], lines
    config.write_text(json.dumps(good))
    read_text = Path.read_text

    def unreadable(path, *args, **kwargs):  # no read permission (simulated: the tests may run as root)
        if path == config:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_text", unreadable)
        assert _problems(capsys, gen) == [f"ic generate: --run {trained_like_run}: cannot read config.json "
                                          "(Permission denied)"]
    noise = tmp_path / "noise.yaml"
    noise.write_bytes(bytes(range(256)) * 4)
    assert _problems(capsys, ["train", "dense", "--config", str(noise)]) == [
        f"ic train: --config {noise}: not UTF-8 text (invalid start byte at byte 128)"]
    file = tmp_path / "train.yaml"
    file.write_text("preset: tiny\nmodel:\n  num_frames: 8\ntrain:\n  batch_size: 2\n")
    lines = _problems(capsys, ["train", "dense", "--config", str(file), "--run", str(tmp_path / "new"),
                               "--shards", str(tmp_path / "none"), "--options", "{bad", "--model", "nope"])
    assert "ic train: --options: not valid JSON (Expecting property name enclosed in double quotes: line 1 " \
        "column 2 (char 1))" in lines
    assert "ic train: --model: not valid JSON (Expecting value: line 1 column 1 (char 0))" in lines
    lines = _problems(capsys, ["train", "dense", "--config", str(file), "--run", str(tmp_path / "new"),
                               "--shards", str(tmp_path / "none"), "--options", '{"steps": 5, "steps": 50}'])
    assert "ic train: --options: not valid JSON (the key 'steps' is given twice)" in lines


def test_a_check_that_breaks_on_an_input_says_so_in_one_line(capsys, monkeypatch):
    from flows import checks

    def broken(args):
        raise AttributeError("'list' object has no attribute 'items'")

    monkeypatch.setattr(checks, "check_curate", broken)
    from flows.cli import main  # its parser takes the check from the module when it is built

    assert main(["curate", "webvid", "--videos", "v", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ic curate: checking the arguments failed: AttributeError: 'list' object has no attribute "
                   "'items' (rerun with `ic --debug …` for the traceback)"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_runs(capsys, tmp_path, monkeypatch,
                                                                                   trained_like_run):
    """A read-only mount (or a folder without permission): named up front, not a traceback after
    the whole sampling or curation. A file is created there and removed to find out, as
    permission bits say nothing to root: /proc refuses it for real; for a folder of our own,
    the test stands in for the file system (root passes chmod)."""
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if Path(dir) in (locked, trained_like_run):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    lines = _problems(capsys, ["curate", "webvid", "--videos", str(tmp_path / "videos"),
                               "--out", str(locked / "new" / "curated")])
    assert lines == [f"ic curate: --out {locked / 'new' / 'curated'}: cannot create files in {locked} (Permission "
                     "denied)"]
    lines = _problems(capsys, ["evaluate", "camera", "--run", str(trained_like_run), "--mode", "none",
                               "--out", str(locked)])
    assert lines == [f"ic evaluate: --out {locked}: cannot create files in {locked} (Permission denied)"]
    lines = _problems(capsys, ["evaluate", "camera", "--run", str(trained_like_run), "--mode", "none"])
    assert lines == [f"ic evaluate: --run {trained_like_run}: cannot create files in {trained_like_run} "
                     "(Permission denied)"]
    assert not list(tmp_path.rglob(".ic-write-check-*"))
    if Path("/proc/self/stat").exists():  # Linux: a file system that takes no new files, even from root
        lines = _problems(capsys, ["evaluate", "camera", "--run", str(trained_like_run), "--mode", "none",
                                   "--out", "/proc/ic-eval"])
        assert len(lines) == 1 and lines[0].startswith("ic evaluate: --out /proc/ic-eval: cannot create files in "
                                                       "/proc ("), lines


def test_settings_a_run_would_trip_on_are_named_before_it_starts(capsys, tmp_path, monkeypatch, trained_like_run):
    """Backends without their local weights, camera-free guidance outside the object mode, an
    empty device, a seed wider than int64, a malformed Dask address: each one line, up front
    (each was a traceback from inside the flow, or, for BLIP-2, a failed row per video)."""
    for name in ("IC_RAFT_WEIGHTS", "IC_COTRACKER_REPO", "IC_COTRACKER_CHECKPOINT", "IC_BLIP2_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights there
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    lines = _problems(capsys, ["curate", "webvid", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "o"),
                               "--flow", "raft", "--tracker", "cotracker", "--captioner", "blip2",
                               "--dask-address", "bogus", "--seed", str(2**70)])
    assert len(lines) == 5, lines
    assert lines[0] == f"ic curate: --seed must be a whole number from 0 to 2**63 - 1, got {2**70}"
    assert lines[1].startswith("ic curate: --flow raft: no raft_small weights: set IC_RAFT_WEIGHTS=")
    assert lines[2].startswith("ic curate: --tracker cotracker: CoTracker needs a local clone")
    assert lines[3].startswith("ic curate: --captioner blip2: BLIP-2 captioning needs local weights, but no path "
                               "is configured. Set IC_BLIP2_PATH")
    assert lines[4] == ("ic curate: --dask-address bogus: not a scheduler address (host and port needed), "
                        "e.g. tcp://scheduler:8786")
    (trained_like_run / "camera").mkdir()
    (trained_like_run / "camera" / "done.json").write_text("{}")
    lines = _problems(capsys, ["evaluate", "camera", "--run", str(trained_like_run), "--trajs-scale", "1.3",
                               "--ablation", "--device", ""])
    assert lines == [
        "ic evaluate: --device : not a device (cpu, cuda, cuda:1, mps, …)",
        "ic evaluate: --trajs-scale 1.3: camera-free guidance needs the object mode (this evaluation samples in "
        "'camera')",
        "ic evaluate: --ablation sweeps camera-free guidance's λ_trajs: it needs the object mode (this evaluation "
        "samples in 'camera')",
    ]


def test_a_run_whose_first_stage_never_trained_takes_new_model_settings(capsys, tmp_path, training_shards):
    """A first `ic train` that failed at its start left RUN/config.json behind: the corrected
    command is not refused for differing from it (it was refused, naming the bad value). Once a
    stage has a checkpoint or is done, the run's settings are fixed."""
    from ic_model.config import load_json, tiny_config
    from ic_model.training.run import run_model_config

    run = tmp_path / "run"
    run.mkdir()
    bad = tiny_config(codec="space_to_depth", num_frames=64)
    (run / "config.json").write_text(json.dumps(bad.to_dict()))
    args = ["train", "base", "--shards", str(training_shards), "--run", str(run),
            "--model", '{"codec": "space_to_depth", "num_frames": 8}']
    from flows.checks import check_train
    from flows.cli import build_parser

    assert check_train(build_parser().parse_args(args)) == []
    cfg = run_model_config(run, "tiny", codec="space_to_depth", num_frames=8)
    assert cfg.num_frames == 8 and load_json(run / "config.json")["num_frames"] == 8
    (run / "base" / "checkpoints" / "step-0000001").mkdir(parents=True)
    lines = _problems(capsys, [*args[:-1], '{"codec": "space_to_depth", "num_frames": 4}'])
    assert lines == ["ic train: --model: the run has num_frames=8, not 4"]
    with pytest.raises(ValueError, match="has num_frames=8, not 4"):
        run_model_config(run, "tiny", codec="space_to_depth", num_frames=4)


def test_generate_refuses_weights_files_it_cannot_read_and_a_scale_that_is_no_number(capsys, tmp_path,
                                                                                     trained_like_run):
    """--base-lora and --base-model are checked before anything loads: a file the loaders do not
    read (a .txt) and a LoRA scale of nan or inf, which sampled to NaN latents and then blamed
    the guidance scales."""
    import cv2
    import numpy as np

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((256, 384, 3), np.uint8))
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[[10, 10], [50, 60]]]))
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not read by the check")
    gen = ["generate", "--image", str(image), "--trajectories", str(tracks), "--run", str(trained_like_run),
           "--mode", "none", "--out", str(tmp_path / "v.mp4")]
    assert _problems(capsys, gen + ["--base-lora", str(notes), "--base-model", str(notes)]) == [
        f"ic generate: --base-model {notes}: not a weights file (.ckpt/.safetensors/.pt/.pth/.bin) or a diffusers folder",
        f"ic generate: --base-lora {notes}: not a weights file (.ckpt/.safetensors/.pt/.pth/.bin) or a diffusers folder"]
    for scale in ("nan", "inf", "-inf"):
        assert _problems(capsys, gen + ["--base-lora", f"{lora}:{scale}"]) == [
            f"ic generate: --base-lora {lora}:{scale}: the scale after ':' must be a finite number"]


def test_a_dask_address_where_no_scheduler_answers_is_refused_up_front():
    """An address nothing listens at was a 30 s wait, then the flow's tracebacks."""
    import socket

    from flows.checks import _dask_address

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        problems: list[str] = []
        _dask_address(problems, f"tcp://127.0.0.1:{listening.getsockname()[1]}")
        assert problems == []
    with socket.socket() as closed:  # a port just free: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _dask_address(problems, f"127.0.0.1:{port}")
    assert len(problems) == 1 and problems[0].startswith(f"--dask-address 127.0.0.1:{port}: no scheduler answers there (")


@pytest.mark.parametrize("argv,flag", [
    (["curate", "webvid", "--videos", "VIDEOS", "--out", ""], "--out"),
    (["curate", "realestate10k", "--videos", " ", "--out", "OUT"], "--videos"),
    (["train", "base", "--shards", "VIDEOS", "--run", "", "--steps", "1"], "--run"),
    (["evaluate", "", "--run", "OUT"], "SET"),
    (["generate", "--run", "OUT", "--image", "", "--trajectories", "[[[1, 2]]]", "--out", "x.mp4"], "--image"),
    (["generate", "--run", "OUT", "--image", "a.png", "--trajectories", "t.json", "--out", "x.mp4",
      "--base-lora", "a.safetensors", "--base-lora", ""], "--base-lora"),
    (["convert-official", "", "--out", "OUT"], "OFFICIAL_DIR"),
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(capsys, tmp_path, monkeypatch, argv, flag):
    """``--out "$OUT"`` with OUT unset: Python would read "" as the current folder, and a curation
    would write its shards into wherever the shell stood. One line names the flag instead."""
    (tmp_path / "videos").mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [{"VIDEOS": str(tmp_path / "videos"), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    lines = _problems(capsys, argv)
    assert lines == [f"ic {argv[0]}: {flag} is an empty path (an unset variable?); it would mean the current folder: "
                     "write . for that"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos"]  # nothing written where it stood


def test_a_home_folder_path_after_an_equals_sign_reaches_the_flow_expanded(capsys, tmp_path, monkeypatch):
    """``--out=~/x``: the shell leaves that ``~`` alone. The checks expanded it and the flow did
    not, so a curation wrote its shards into a folder named ``~`` where the shell stood, then
    failed writing its manifest where the checks had looked."""
    import contextlib

    import flows.cli as cli

    (tmp_path / "home" / "videos").mkdir(parents=True)
    (tmp_path / "home" / "videos" / "a.mp4").write_bytes(b"")  # the checks want a video file; not opened here
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    given = {}
    monkeypatch.setattr(cli, "_curate", lambda args: given.update(videos=args.videos, out=args.out) or 0)
    monkeypatch.setattr(cli, "temporary_server", contextlib.nullcontext)
    assert cli.main(["curate", "webvid", "--videos=~/videos", "--out=~/curated"]) == 0, capsys.readouterr().err
    assert given == {"videos": str(tmp_path / "home" / "videos"), "out": str(tmp_path / "home" / "curated")}
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_flows_refuse_an_empty_video_folder_or_output_path(tmp_path):
    """What a deployment's Run form passes unchecked: the library refuses it in the same words."""
    from ic_data.errors import BadInputError
    from ic_data.pipeline import discover_videos
    from ic_data.settings import require_writable

    with pytest.raises(BadInputError, match=r"^the video folder is an empty path \(an unset variable\?\)"):
        discover_videos("")
    with pytest.raises(BadInputError, match=r"^out is an empty path"):
        require_writable("", "out")
    require_writable(tmp_path, "out")  # a real folder passes
