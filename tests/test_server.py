"""A real Prefect server + served deployments + `prefect deployment run … --watch` + the UI.

Starts everything on a free loopback port under a temporary PREFECT_HOME, and stops what it
started by pid (process groups) whatever happens.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ic_data.manifest import read_manifest
from tests.conftest import live_processes, write_video

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test_artifacts"
PREFECT = [sys.executable, "-m", "prefect"]

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s} s\n{log.read_text()[-3000:] if log else ''}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def _start(cmd, env, log: Path, terminal: bool = False) -> subprocess.Popen:
    """``cmd`` in a session of its own. ``terminal``: with Ctrl-C's SIGINT at its default, as a
    terminal's foreground job has it, however the tests were started (a shell script's
    background job, `cmd &`, ignores SIGINT, and its children inherit that: a shell cannot trap
    a signal ignored when it started)."""
    reset = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if terminal else None
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=reset)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    procs = []
    try:
        server_log = home / "server.log"
        procs.append(_start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, server_log))
        _wait(lambda: _http_ok(f"{api}/health"), 180, "prefect server", procs[0], server_log)
        serve_log = home / "serve.log"
        procs.append(_start([sys.executable, "deployments/serve.py"], env, serve_log))
        _wait(lambda: "train-stage/object" in serve_log.read_text() or _deployments_exist(env), 120,
              "deployment server", procs[1], serve_log)
        yield {"env": env, "port": port, "home": home}
    finally:
        for p in reversed(procs):
            _stop(p)


def _deployments_exist(env) -> bool:
    r = subprocess.run([*PREFECT, "deployment", "ls"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return all(name in r.stdout for name in ("curate/webvid", "curate/realestate10k", "train-stage/object"))


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory, bad_inputs):
    from ic_data.synthetic import CameraMotion, MovingObject, linear_path, render_shot

    d = tmp_path_factory.mktemp("server_inputs")
    for i, v in enumerate([0.5, 2.0, 4.0]):
        obj = MovingObject(linear_path((150, 120), (v, 1), 48), 20, texture_seed=i)
        write_video(d / f"clip{i}.mp4", render_shot(48, 400, 256, CameraMotion((v, 0)), [obj], texture_seed=i).frames)
    shutil.copy(bad_inputs / "random.mp4", d / "corrupt.mp4")
    return d


def test_deployment_run_watch_completes_and_ui_shows_it(server, small_inputs, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [*PREFECT, "deployment", "run", "curate/webvid", "-p", f"videos={small_inputs}", "-p", f"out={out}",
         "-p", "chunk_size=2", "--watch"],
        env=server["env"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Completed" in r.stdout
    rows = read_manifest(out / "manifest.parquet")
    assert sorted(Path(x.path).name for x in rows) == ["clip0.mp4", "clip1.mp4", "clip2.mp4", "corrupt.mp4"]
    by_name = {Path(x.path).name: x for x in rows}
    assert by_name["corrupt.mp4"].status == "failed"
    assert by_name["clip0.mp4"].status == "ok"  # floor(0.25 × 3) = 0: nothing is filtered
    assert len(list((out / "shards").glob("*.tar"))) == 2

    _check_ui(server["port"])


def test_train_stage_deployments_run_and_respect_prerequisites(server, training_shards, tmp_path):
    run = tmp_path / "run"
    ok = subprocess.run(
        [*PREFECT, "deployment", "run", "train-stage/vae", "-p", f"shards={training_shards}", "-p", f"run={run}",
         "-p", "steps=2", "-p", "batch_size=1", "--watch"],
        env=server["env"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert (run / "vae" / "vae.safetensors").exists()
    refused = subprocess.run(
        [*PREFECT, "deployment", "run", "train-stage/object", "-p", f"shards={training_shards}", "-p", f"run={run}",
         "--watch"],
        env=server["env"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert refused.returncode == 1 and not (run / "object").exists()
    limit = subprocess.run([*PREFECT, "concurrency-limit", "inspect", "gpu"], env=server["env"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert limit.returncode == 0 and "1" in limit.stdout, limit.stdout + limit.stderr


def _check_ui(port: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian packages chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get(f"http://127.0.0.1:{port}/runs")
        deadline = time.time() + 60
        text = ""
        while time.time() < deadline:
            text = browser.find_element("tag name", "body").text
            if "curate" in text and "Completed" in text:
                break
            time.sleep(1)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "prefect_ui_runs.png"))
        assert "curate" in text and "Completed" in text, text[:2000]
    finally:
        browser.quit()


def _descendants(root: int) -> set[int]:
    procs, found, grew = live_processes(), {root}, True
    while grew:
        more = {pid for pid, (parent, _) in procs.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found - {root}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
def test_ctrl_c_of_make_serve_records_the_run_in_progress_and_leaves_nothing_running(training_shards, tmp_path):
    """Ctrl-C in the terminal of `make serve` (SIGINT to its whole process group) while a
    deployment trains: the deployments stop first, the training saves the step it is at and the
    run is recorded as stopped while the server still answers, then the server stops, and nothing
    is left running. Before, the server died with everything else: the run stayed Running in the
    database, and the deployment process outlived the script, retrying the dead server."""
    import sqlite3

    home, run, port = tmp_path / "prefect", tmp_path / "run", _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), IC_PREFECT_PORT=str(port), PY=sys.executable)
    api = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = tmp_path / "serve.log"
    proc = _start(["bash", "deployments/serve.sh"], env, log, terminal=True)
    started = set()
    try:
        _wait(lambda: _deployments_exist(api), 240, "make serve", proc, log)
        r = subprocess.run([*PREFECT, "deployment", "run", "train-stage/vae", "-p", f"shards={training_shards}",
                            "-p", f"run={run}", "-p", "steps=5000"], env=api, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        _wait(lambda: (run / "vae" / "metrics.jsonl").exists(), 300, "training", proc, log)
        started = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends
        assert proc.wait(90) == 130, log.read_text()[-3000:]
        output = log.read_text()
        saved = re.search(r"vae: stopped by SIGTERM after step (\d+), which is saved", output)
        assert saved, output[-3000:]
        assert f"step-{int(saved[1]):07d}" in [p.name for p in (run / "vae" / "checkpoints").iterdir()]
        with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
            flows = db.execute("select state_type from flow_run").fetchall()
            tasks = db.execute("select state_type from task_run where name = 'train vae'").fetchall()
        assert flows == [("CANCELLED",)] and tasks == [("CRASHED",)], (flows, tasks)
        assert "Connection refused" not in output and "ConnectError" not in output, output[-3000:]
        deadline = time.time() + 10
        while started & set(live_processes()) and time.time() < deadline:
            time.sleep(0.5)
        assert not started & set(live_processes()), "processes of `make serve` outlived it"
    finally:
        for pid in started & set(live_processes()):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
