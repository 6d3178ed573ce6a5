"""`ic curate …` as a user runs it: the console script, the embedded Prefect server, kill and resume."""
from __future__ import annotations

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


def test_ic_rejects_a_missing_folder_with_one_clear_error(tmp_path):
    r = subprocess.run([*_ic(), "curate", "webvid", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "video folder not found" in r.stdout + r.stderr
