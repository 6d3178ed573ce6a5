"""The curation chain end to end (library level): completeness, contract, filter, resume, determinism."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ic_data.clips import resized_size
from ic_data.errors import VideoDecodeError
from ic_data.manifest import read_manifest, write_manifest
from ic_data.pipeline import (
    CurationConfig,
    curate,
    discover_videos,
    plan_chunks,
    stage1_result_path,
)
from ic_data.shards import read_shard
from ic_data.tracking import grid_points
from ic_data.video_io import decode_video
from ic_data.workers import keep_freed_memory, run_in_workers

CFG = CurationConfig(seed=3)


@pytest.fixture(scope="module")
def curated(curated_inputs):
    return curated_inputs  # input_dir curated with CFG, 5 videos per chunk


def test_every_input_has_exactly_one_row(input_dir, curated):
    out, summary = curated
    rows = read_manifest(out / "manifest.parquet")
    inputs = [p for p in input_dir.rglob("*.mp4")]
    assert len(rows) == len(inputs) == summary.num_videos == 14
    assert len({r.video_id for r in rows}) == len(rows)
    assert sorted(Path(r.path).name for r in rows) == sorted(p.name for p in inputs)
    by_name = {Path(r.path).name: r for r in rows}
    expected_failures = {
        "empty.mp4": "empty_file", "random.mp4": "decode_error", "notes.mp4": "decode_error",
        "short12.mp4": "too_short", "tiny.mp4": "too_small",
    }
    for name, reason in expected_failures.items():
        assert by_name[name].status == "failed" and by_name[name].reason == reason, name
    truncated = by_name["truncated.mp4"]  # cut off before its index: no frame can be located
    assert (truncated.status, truncated.reason) == ("failed", "decode_error") and "cut off" in truncated.error
    tiny = by_name["tiny.mp4"]  # refused by its size, still described
    assert (tiny.width, tiny.height) == (96, 64) and tiny.fps == pytest.approx(24.0, rel=1e-3)
    assert summary.counts == {"ok": 6, "filtered": 2, "failed": 6}


def test_bottom_quarter_of_motion_is_filtered(curated):
    out, summary = curated
    rows = {Path(r.path).name: r for r in read_manifest(out / "manifest.parquet")}
    # 8 scored videos: floor(0.25 × 8) = 2 dropped, and they are the two static ones.
    filtered = sorted(n for n, r in rows.items() if r.status == "filtered")
    assert filtered == ["good_0_speed0.mp4", "good_1_speed0.mp4"]
    assert all(rows[n].reason == "low_motion" for n in filtered)
    ok_scores = [r.motion_score for r in rows.values() if r.status == "ok"]
    assert min(ok_scores) > summary.threshold >= max(rows[n].motion_score for n in filtered)


def test_shards_follow_the_data_contract(input_dir, curated):
    out, _ = curated
    rows = [r for r in read_manifest(out / "manifest.parquet") if r.status == "ok"]
    grid = grid_points(384, 256, 16)
    for r in rows:
        samples = {s.key: s for s in read_shard(out / r.shard)}
        s = samples[r.key]
        frames = s.decode_frames()
        assert frames.shape == (32, 256, 384, 3)
        assert s.tracks.shape == (32, 256, 2) and s.tracks.dtype == np.float32
        assert s.visibility.shape == (32, 256) and s.visibility.dtype == bool
        assert 1 <= len(s.sparse) <= 8 and s.sparse.dtype == np.int64
        assert np.allclose(s.tracks[0], grid) and s.visibility[0].all()
        meta = s.meta
        idx = np.array(meta["frame_indices"])
        # The window lies inside the longest scene (the first, 70-frame shot) with one stride.
        assert len(idx) == 32 and len(set(np.diff(idx))) == 1 and 1 <= np.diff(idx)[0] <= 16
        assert r.scene_start <= idx[0] and idx[-1] < r.scene_end == 70 and r.cuts == [70]
        assert meta["crop"] == [35, 0, 384, 256]
        assert meta["backends"]["flow"] == "dis" and meta["backends"]["tracker"] == "lk"
        assert meta["camera_only"] is False
        # Clip pixels map back to the source: redo resize + crop from the source file.
        src = decode_video(meta["source_path"], lambda w, h: resized_size(w, h))
        assert np.allclose(meta["scale"], src.scale)
        x0, y0, w, h = meta["crop"]
        expected = src.frames[idx][:, y0 : y0 + h, x0 : x0 + w]
        assert np.abs(expected.astype(float) - frames).mean() < 6.0


def test_rerun_is_a_noop_and_output_is_deterministic(input_dir, curated, tmp_path):
    out, _ = curated
    manifest_bytes = (out / "manifest.parquet").read_bytes()
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    # Same output folder: every chunk is already done, no chunk result is rewritten.
    results = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*.json")}
    curate(input_dir, out, CFG, chunk_size=5)
    assert {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*.json")} == results
    assert (out / "manifest.parquet").read_bytes() == manifest_bytes
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == shards
    # Fresh folder, other chunking: byte-identical tracks and manifest rows.
    other = tmp_path / "other"
    curate(input_dir, other, CFG, chunk_size=3)
    a = {r.video_id: r for r in read_manifest(out / "manifest.parquet")}
    b = {r.video_id: r for r in read_manifest(other / "manifest.parquet")}
    strip = lambda r: {k: v for k, v in r.__dict__.items() if k not in ("shard", "chunk")}  # noqa: E731
    assert {k: strip(v) for k, v in a.items()} == {k: strip(v) for k, v in b.items()}
    tracks_a = {s.key: s.tracks.tobytes() for p in (out / "shards").glob("*.tar") for s in read_shard(p)}
    tracks_b = {s.key: s.tracks.tobytes() for p in (other / "shards").glob("*.tar") for s in read_shard(p)}
    assert tracks_a == tracks_b and len(tracks_a) == 6
    # Same chunking in a fresh folder gives byte-identical files: the next test's worker processes
    # (other interpreters, other hash seeds) reproduce these very bytes.


def test_worker_processes_give_byte_identical_output(input_dir, curated, tmp_path):
    out, _ = curated
    procs = tmp_path / "procs"
    summary = curate(input_dir, procs, dataclasses.replace(CFG, processes=2), chunk_size=5)
    assert summary.counts == curated[1].counts
    assert (procs / "manifest.parquet").read_bytes() == (out / "manifest.parquet").read_bytes()
    shards = lambda d: {p.name: p.read_bytes() for p in (d / "shards").glob("*.tar")}  # noqa: E731
    assert shards(procs) == shards(out)


def _square_or_die(x: int) -> int:
    if x < 0:
        os._exit(3)  # what a native crash in a decoder does to its worker
    return x * x


def _page_faults_reallocating_frames() -> int:
    """Minor page faults taken to allocate and fill ~52 MB of frame-sized blocks a second time."""
    import resource

    def touch():
        frames = [np.ones(345_600, np.uint8) for _ in range(150)]  # 640×360 I420 frames
        del frames

    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _why_no_mallopt() -> str | None:
    """Why this platform cannot show what glibc's mallopt saves in page faults, or None."""
    libc = platform.libc_ver()[0]
    if libc != "glibc":
        return f"keep_freed_memory needs glibc's mallopt; the C library here is {libc or 'another'} ({sys.platform})"
    try:
        import ctypes
        import resource  # noqa: F401  (getrusage's page-fault counts)

        ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError) as exc:
        return f"mallopt or getrusage's page-fault counts unavailable here: {exc}"
    return None


@pytest.mark.skipif(bool(_why_no_mallopt()), reason=_why_no_mallopt() or "")
def test_workers_reuse_freed_frame_memory_instead_of_faulting_it_in_again():
    # In a worker, the next video's frames reuse the pages of the last one's (glibc here).
    keep, = run_in_workers([(keep_freed_memory, ())], processes=1)
    assert keep is True
    faults, = run_in_workers([(_page_faults_reallocating_frames, ())], processes=1)
    assert faults < 1000
    # The default allocator returns them to the kernel: every page (4 KiB) faults in again.
    plain = subprocess.run(
        [sys.executable, "-c", "import tests.test_pipeline as t; print(t._page_faults_reallocating_frames())"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert int(plain.stdout) > 150 * 345_600 // 4096 // 2


def test_keep_freed_memory_is_a_no_op_without_glibc_mallopt(monkeypatch):
    """Elsewhere (musl, macOS, Windows) workers start all the same, their allocator untouched."""
    import ctypes

    def unknown(name):
        raise ValueError(f"unrecognized configuration name {name!r}")  # os.confstr off glibc

    monkeypatch.setattr(os, "confstr", unknown, raising=False)
    assert keep_freed_memory() is False
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.36", raising=False)
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: object())  # a libc without mallopt
    assert keep_freed_memory() is False


def test_a_crashing_worker_costs_only_its_own_job():
    out = run_in_workers([(_square_or_die, (x,)) for x in (1, 2, -1, 3, 4)], processes=2)
    assert [out[i] for i in (0, 1, 3, 4)] == [1, 4, 9, 16]
    assert out[2].reason == "worker_crashed"
    assert run_in_workers([(_square_or_die, (5,))], processes=2) == [25]  # a fresh pool


def _signal_parents_group_then_pid(signum: int) -> int:
    os.killpg(os.getpgid(os.getppid()), signum)  # what Ctrl-C or `kill -TERM -PGID` sends the parent's group
    time.sleep(0.3)
    return os.getpid()


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_group_signals_leave_the_workers_to_the_parent(signum):
    """A signal sent to the parent's whole process group (Ctrl-C, `kill -TERM -PGID`) does not reach
    the workers: the pool is not broken and its job is not rerun in a new worker as if a decoder
    had crashed; the parent decides what to stop (here, to go on)."""
    code = ("import os, signal; from ic_data.workers import run_in_workers;"
            "from tests.test_pipeline import _signal_parents_group_then_pid as job;"
            f"signal.signal({int(signum)}, lambda *a: print('parent signalled', flush=True));"
            f"first, = run_in_workers([(job, ({int(signum)},))], processes=1);"
            "second, = run_in_workers([(os.getpid, ())], processes=1);"
            "print(first, second, os.getpgid(first) != os.getpgid(0), flush=True)")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                       text=True, timeout=120, start_new_session=True)  # a group of its own, as a shell's job
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    signalled, result = r.stdout.strip().splitlines()[-2:]
    assert signalled == "parent signalled"
    first, second, own_group = result.split()
    assert first == second, "the same worker serves the next job"
    assert own_group == "True"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_a_worker_sent_sigterm_ends_and_the_next_batch_gets_a_new_pool():
    """Python ≥ 3.12 ends the workers of a broken pool (a decoder crashed in one) with SIGTERM and
    waits for them: a worker that ignored SIGTERM hung the pool, and curation, for good."""
    pid, = run_in_workers([(os.getpid, ())], processes=1)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 10
    while _running(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _running(pid), "the worker ignored SIGTERM"
    assert run_in_workers([(_square_or_die, (6,))], processes=1) == [36]


def _note_then_sleep(path: str, i: int) -> int:
    with open(path, "a") as fh:
        fh.write(f"{i}\n")
    time.sleep(0.3)
    return i


def test_an_interrupted_batch_drops_the_jobs_not_yet_started(tmp_path, python_sigint):
    """Ctrl-C reaches the parent only: the jobs it had queued are cancelled, so the pool is free
    for the next call at once instead of working through the whole batch first."""
    import _thread
    import threading

    log = tmp_path / "ran"
    run_in_workers([(os.getpid, ())], processes=1)  # the pool is up: the interrupt lands on the batch
    timer = threading.Timer(0.8, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_workers([(_note_then_sleep, (str(log), i)) for i in range(20)], processes=1)
    finally:
        timer.cancel()
    assert run_in_workers([(os.getpid, ())], processes=1)[0] > 0
    ran = log.read_text().split() if log.exists() else []
    assert len(ran) < 10, f"{len(ran)} of 20 jobs ran after the interrupt"


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    """Killed outright (SIGKILL, the out-of-memory killer), a parent runs nothing at exit: its
    workers notice and exit instead of running on, orphaned."""
    pids = tmp_path / "pids"
    code = ("import os, sys, time; from ic_data.workers import run_in_workers;"
            "pid, = run_in_workers([(os.getpid, ())], processes=1);"
            f"open({str(pids)!r}, 'w').write(str(pid)); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    try:
        deadline = time.time() + 120
        while not pids.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pids.exists(), "the worker never ran"
        worker = int(pids.read_text())
        assert _running(worker)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 20
    while _running(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(worker), "the worker outlived its killed parent"


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited and not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return True


def test_another_seed_samples_other_clips(input_dir, curated, tmp_path):
    out, _ = curated
    summary = curate(input_dir, tmp_path / "seed4", CurationConfig(seed=4), chunk_size=5)
    a = {r.video_id: r for r in read_manifest(out / "manifest.parquet")}
    b = {r.video_id: r for r in read_manifest(tmp_path / "seed4" / "manifest.parquet")}
    assert summary.counts["failed"] == 6
    assert any(a[k].motion_score != b[k].motion_score for k in a if a[k].motion_score is not None)


def test_killed_run_resumes_to_the_same_result(input_dir, curated, tmp_path):
    out, _ = curated
    target = tmp_path / "killed"
    chunks = plan_chunks(discover_videos(input_dir), CFG, chunk_size=5)
    code = (
        "import sys; from ic_data.pipeline import curate, CurationConfig;"
        f"curate({str(input_dir)!r}, {str(target)!r}, CurationConfig(seed=3), chunk_size=5)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    first = stage1_result_path(target, chunks[0])
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert first.exists(), "the run should have finished its first chunk before the kill"
    assert not (target / "manifest.parquet").exists()
    from ic_data.pipeline import OUT_MARKER

    assert (target / OUT_MARKER).is_file()  # marked a curation's output before its manifest
    done_before = json.loads(first.read_text())
    curate(input_dir, target, CFG, chunk_size=5)
    # The finished chunk was reused, not recomputed.
    assert json.loads(first.read_text()) == done_before
    assert (target / "manifest.parquet").read_bytes() == (out / "manifest.parquet").read_bytes()
    assert sorted(p.name for p in (target / "shards").glob("*.tar")) == sorted(
        p.name for p in (out / "shards").glob("*.tar")
    )
    assert not list(target.rglob("*.tmp*")), "no temporary files are left behind"


def test_camera_only_source_flags_every_clip(input_dir, tmp_path):
    cfg = CurationConfig(source="realestate10k", camera_only=True, seed=3)
    curate(input_dir, tmp_path / "re10k", cfg, chunk_size=20)
    rows = read_manifest(tmp_path / "re10k" / "manifest.parquet")
    assert all(r.camera_only for r in rows)
    for r in rows:
        if r.status == "ok":
            s = next(x for x in read_shard(tmp_path / "re10k" / r.shard) if x.key == r.key)
            assert s.meta["camera_only"] is True


def test_adding_videos_later_updates_the_curation_consistently(input_dir, tmp_path):
    """A finished output + one more input: the threshold moves, old chunks are finished again
    (their staged clips were cleaned up, so stage 1 is redone) and the result equals a fresh run."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import COARSE, write_video

    videos = tmp_path / "videos"
    shutil.copytree(input_dir, videos)
    out = tmp_path / "out"
    curate(videos, out, CFG, chunk_size=5)
    for i in range(4):  # 12 scored clips: the bottom quarter is now 3, the threshold moves
        write_video(videos / f"zzz_new{i}.mp4", render_shot(40, 480, 270, CameraMotion((0.5 + 0.1 * i, 0.0)),
                                                            texture_seed=77 + i, texture_octaves=COARSE).frames)
    old_threshold = json.loads((out / "summary.json").read_text())["threshold"]
    summary = curate(videos, out, CFG, chunk_size=5)
    assert summary.threshold != old_threshold
    fresh = tmp_path / "fresh"
    curate(videos, fresh, CFG, chunk_size=5)
    assert summary.num_videos == 18 and summary.counts["failed"] == 6
    assert (out / "manifest.parquet").read_bytes() == (fresh / "manifest.parquet").read_bytes()
    assert {p.name for p in (out / "shards").glob("*.tar")} == {p.name for p in (fresh / "shards").glob("*.tar")}


def test_tiny_dataset_keeps_everything_and_writes_strict_json(input_dir, tmp_path):
    """Three scored clips: floor(0.25 × 3) = 0 are dropped, and the "no threshold" is JSON null."""
    videos = tmp_path / "three"
    videos.mkdir()
    for p in sorted(input_dir.glob("good_[567]_*.mp4")):
        shutil.copy(p, videos / p.name)
    summary = curate(videos, tmp_path / "out", CFG, chunk_size=2)
    assert summary.counts == {"ok": 3, "filtered": 0, "failed": 0} and summary.threshold is None
    for p in (tmp_path / "out").rglob("*.json"):
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p} holds {c}"))


def test_workers_that_cannot_start_stop_the_run_with_one_clear_error(tmp_path):
    # Spawned workers re-import __main__: a script without a main guard kills every one of them.
    script = tmp_path / "unguarded.py"
    script.write_text("from ic_data.workers import run_in_workers\nprint(run_in_workers([(abs, (-1,))], processes=1))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "WorkerStartError" in done.stderr and 'if __name__ == "__main__"' in done.stderr
    guarded = tmp_path / "guarded.py"
    guarded.write_text("from ic_data.workers import run_in_workers\n"
                       "if __name__ == '__main__':\n    print(run_in_workers([(abs, (-1,))], processes=1))\n")
    assert subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, env=env,
                          timeout=300, check=True).stdout.strip() == "[1]"


def test_default_processes_fit_the_cores_and_the_memory(monkeypatch):
    import ic_data.workers as workers

    cores = len(os.sched_getaffinity(0))
    assert 1 <= workers.default_processes() <= cores
    gib = 1 << 30
    pages = {"SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(workers.os, "sysconf", lambda name: pages.get(name, 0))
    for memory, expected in ((512 * gib, 64), (16 * gib, 10), (1 * gib, 1)):
        pages["SC_PHYS_PAGES"] = memory // 4096
        assert workers.default_processes() == expected  # ≈1.56 GB per worker at 3000 frames
    short = CurationConfig(max_decode_frames=300)
    pages["SC_PHYS_PAGES"] = 16 * gib // 4096
    assert workers.default_processes(short.max_decode_frames) == 26


@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "seed must be a whole number in [0, 9223372036854775807], got -1"),
    ("seed", 1.5, "seed must be a whole number, got 1.5"),
    ("drop_fraction", 1.0, "drop_fraction must be in [0, 1), got 1.0"),
    ("drop_fraction", float("nan"), "drop_fraction must be a finite number, got nan"),
    ("grid_size", 0, "grid_size must be a whole number ≥ 1, got 0"),
    ("processes", -2, "processes must be a whole number ≥ 0, got -2"),
    ("processes", 1.5, "processes must be a whole number, got 1.5"),
    # Each of these used to be accepted, then failed every video or stopped the run midway.
    ("clip_frames", 0, "clip_frames must be a whole number ≥ 2, got 0"),
    ("clip_width", -384, "clip_width must be a whole number ≥ 8, got -384"),
    ("max_upscale", -1, "max_upscale must be ≥ 1, got -1"),
    ("decode_timeout_s", -1, "decode_timeout_s must be > 0, got -1"),
    ("cut_detector", "magic", "cut_detector must be 'adaptive' or 'content', got 'magic'"),
    ("captioner", "blip-2", "captioner must be 'none' or 'blip2', got 'blip-2'"),
    ("camera_only", "no", "camera_only must be true or false, got 'no'"),
    ("max_tracks", 100, "max_tracks must be a whole number in [1, 8], got 100"),
])
def test_a_curation_config_out_of_range_is_refused_when_made(field, value, message):
    """Before, seed=-1 gave every video a failed row (numpy's generators take no negative seed)."""
    with pytest.raises(ValueError) as err:
        CurationConfig(**{field: value})
    assert str(err.value) == f"CurationConfig: {message}"
    assert CurationConfig(seed=np.int64(3)).seed == 3  # numpy integers are whole numbers too


def test_a_curation_config_names_every_bad_field_at_once():
    with pytest.raises(ValueError) as err:
        CurationConfig(flow="farneback", grid_size=0)
    assert str(err.value) == ("CurationConfig: flow must be 'dis' or 'raft' or 'raft_small' or 'raft_large', got 'farneback'; "
                              "grid_size must be a whole number ≥ 1, got 0")


def _write_sideways(path: Path, upright: np.ndarray, fps: float = 24.0) -> None:
    """Store ``upright`` frames as a phone does a portrait video: turned a quarter counter-
    clockwise, with the display matrix (ffmpeg's rotation -90) that turns them back."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = upright.shape[2], upright.shape[1]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "16"}
        stream.set_display_rotation(-90)
        for f in upright:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(f, 1)), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_a_phone_portrait_video_is_curated_upright_with_its_true_motion(tmp_path):
    """A portrait shot (288×512 as shown) stored sideways with a display matrix: the clip is
    cut from the upright frames, and its tracks move as the shown background does
    ((+1.5, +1.0) px per source frame at the clip's scale), not turned a quarter."""
    from ic_data.synthetic import CameraMotion, render_shot

    velocity = np.array([1.5, 1.0])
    shot = render_shot(60, 288, 512, CameraMotion(tuple(velocity)), texture_seed=21)
    (tmp_path / "videos").mkdir()
    _write_sideways(tmp_path / "videos" / "phone.mp4", shot.frames)
    summary = curate(tmp_path / "videos", tmp_path / "out", CFG)
    assert summary.counts == {"ok": 1, "filtered": 0, "failed": 0}
    row = read_manifest(tmp_path / "out" / "manifest.parquet")[0]
    assert (row.width, row.height) == (288, 512)
    sample = next(read_shard(tmp_path / "out" / row.shard))
    meta = sample.meta
    assert meta["source_size"] == [288, 512] and meta["source_rotation"] == 90
    assert meta["scale"] == pytest.approx([384 / 288, 683 / 512])
    idx = np.array(meta["frame_indices"])
    stride = int(idx[1] - idx[0])
    # Every grid point visible to the end moves by the pan over the clip's 31 steps.
    seen = sample.visibility.all(axis=0)
    moved = np.median(sample.tracks[-1, seen] - sample.tracks[0, seen], axis=0)
    expected = velocity * np.array(meta["scale"]) * stride * 31
    assert seen.sum() >= 64
    assert np.abs(moved - expected).max() < 0.02 * np.abs(expected).max() + 0.5, (moved, expected)
    # And the clip's pixels are the upright source's, resized and cropped as recorded.
    x0, y0, w, h = meta["crop"]
    src = np.stack([cv2.resize(f, (384, 683), interpolation=cv2.INTER_LINEAR) for f in shot.frames[idx]])
    assert np.abs(src[:, y0 : y0 + h, x0 : x0 + w].astype(float) - sample.decode_frames()).mean() < 6.0


def test_a_curation_config_takes_every_backend_its_factories_take():
    """The choices are the factories' own names: raft_small and raft_large stay accepted."""
    from ic_data.cuts import DETECTORS
    from ic_data.motion import FLOW_BACKENDS
    from ic_data.tracking import TRACKERS

    assert {"dis", "raft", "raft_small", "raft_large"} <= set(FLOW_BACKENDS)
    for flow in FLOW_BACKENDS:
        assert CurationConfig(flow=flow).flow == flow
    for tracker in TRACKERS:
        assert CurationConfig(tracker=tracker).tracker == tracker
    for detector in DETECTORS:
        assert CurationConfig(cut_detector=detector).cut_detector == detector


def _ok_shards_exist(out: Path) -> bool:
    rows = [r for r in read_manifest(out / "manifest.parquet") if r.status == "ok"]
    return bool(rows) and all((out / r.shard).is_file() for r in rows)


def test_resuming_after_another_chunking_rebuilds_the_shards_it_removed(input_dir, tmp_path):
    """Chunk size 2, then 1, then 2 into one folder: the second run removes the first's shard
    as stale, and the third, whose chunk is the first's again, writes it anew rather than
    taking the saved result of a shard that is gone. Its manifest is the first run's."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("good_2_speed1.mp4", "good_5_speed4.mp4"):
        shutil.copy(input_dir / name, videos / name)
    config = dataclasses.replace(CFG, drop_fraction=0.0)
    manifests = []
    for size in (2, 1, 2):
        summary = curate(videos, tmp_path / "out", config, chunk_size=size)
        assert summary.counts == {"ok": 2, "filtered": 0, "failed": 0}
        assert _ok_shards_exist(tmp_path / "out"), size
        manifests.append((tmp_path / "out" / "manifest.parquet").read_bytes())
    assert manifests[2] == manifests[0] != manifests[1]


def test_a_file_name_that_is_not_utf8_is_curated_and_shown_escaped(input_dir, tmp_path):
    """A name in another encoding (Latin-1 "café", as an old crawl may hold) reaches Python as
    surrogate escapes, which Parquet and JSON cannot store: it gets its id and row, and the
    manifest and the shard show its undecodable byte as \\xe9."""
    videos = tmp_path / "videos"
    videos.mkdir()
    name = os.fsdecode(b"caf\xe9.mp4")
    try:
        shutil.copy(input_dir / "good_5_speed4.mp4", videos / name)
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system takes UTF-8 names only")
    summary = curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    assert summary.counts == {"ok": 1, "filtered": 0, "failed": 0}
    (row,) = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert row.path == str(videos) + "/caf\\xe9.mp4"
    assert row.video_id == "caf-" + hashlib.sha1(b"caf\xe9.mp4").hexdigest()[:8]  # the name's own bytes
    (sample,) = read_shard(tmp_path / "out" / row.shard)
    assert sample.meta["source_path"] == row.path


def test_discovery_lists_what_is_no_file_and_skips_the_curations_own_folders(tmp_path):
    """A FIFO named like a video is an input (its row says not_a_file, without blocking on it);
    a folder named x.mp4 is walked into, not listed; with OUT inside the input folder, OUT's
    staged clips are not inputs, while other videos there are."""
    root = tmp_path / "videos"
    (root / "x.mp4").mkdir(parents=True)
    (root / "x.mp4" / "inside.mp4").write_bytes(b"v")
    os.mkfifo(root / "pipe.mp4")
    out = root / "out"
    (out / "work" / "clips").mkdir(parents=True)
    (out / "work" / "clips" / "staged.mp4").write_bytes(b"v")
    (out / "mine.mp4").write_bytes(b"v")
    found = sorted(Path(p).relative_to(root).as_posix() for _, p in discover_videos(root, out_dir=out))
    assert found == ["out/mine.mp4", "pipe.mp4", "x.mp4/inside.mp4"]
    assert len(discover_videos(root)) == 4  # without out_dir, the staged clip is listed too
    # An earlier curation's OUT elsewhere in the folder: its previews (GIFs, videos too) are no inputs.
    earlier = root / "earlier"
    (earlier / "previews").mkdir(parents=True)
    (earlier / "previews" / "x-0123abcd.gif").write_bytes(b"v")
    (earlier / "mine.mp4").write_bytes(b"v")
    found = sorted(Path(p).relative_to(root).as_posix() for _, p in discover_videos(root, out_dir=out))
    assert found == ["earlier/mine.mp4", "earlier/previews/x-0123abcd.gif", "out/mine.mp4", "pipe.mp4",
                     "x.mp4/inside.mp4"]  # a folder named previews alone is no curation's
    write_manifest(earlier / "manifest.parquet", [])
    (earlier / "summary.json").write_text("{}")
    others = Counter()
    found = sorted(Path(p).relative_to(root).as_posix() for _, p in discover_videos(root, out_dir=out, others=others))
    assert found == ["earlier/mine.mp4", "out/mine.mp4", "pipe.mp4", "x.mp4/inside.mp4"]
    assert others == Counter()  # its manifest and summary are no files passed by
    # One interrupted before its manifest: its staged clips were curated again as videos.
    from ic_data.pipeline import mark_output

    stopped = root / "stopped"
    (stopped / "work" / "clips").mkdir(parents=True)
    (stopped / "work" / "clips" / "a-0123abcd.mp4").write_bytes(b"v")
    assert "stopped/work/clips/a-0123abcd.mp4" in [Path(p).relative_to(root).as_posix()
                                                   for _, p in discover_videos(root, out_dir=out)]
    mark_output(stopped)
    mark_output(stopped)  # once is enough; again changes nothing
    found = sorted(Path(p).relative_to(root).as_posix() for _, p in discover_videos(root, out_dir=out))
    assert found == ["earlier/mine.mp4", "out/mine.mp4", "pipe.mp4", "x.mp4/inside.mp4"]
    with pytest.raises(Exception) as err:
        decode_video(root / "pipe.mp4", timeout_s=10)
    assert err.value.reason == "not_a_file"


def test_previews_of_an_earlier_runs_clips_are_removed(curated, tmp_path):
    """The previews folder holds the clips the summary shows, none of an earlier run's (whose
    video may be gone from the input)."""
    from tasks.curation import _preview_markdown

    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    (out / "previews").mkdir(exist_ok=True)
    for name in ("gone-0123abcd.png", "gone-0123abcd.gif", "gone-0123abcd.small.gif"):
        (out / "previews" / name).write_bytes(b"old")
    (out / "previews" / "notes.txt").write_text("not ours")
    _preview_markdown(out, 3)
    shown = sorted(r.key for r in read_manifest(out / "manifest.parquet") if r.status == "ok")[:3]
    assert sorted(p.name for p in (out / "previews").iterdir()) == sorted(
        [f"{k}{ext}" for k in shown for ext in (".gif", ".png", ".small.gif")] + ["notes.txt"])


def test_discovery_counts_the_files_it_leaves_out_and_the_summary_keeps_them(tmp_path, input_dir):
    """Files that are no video by their extension have no row, but are counted by extension (not
    hidden files, nor OUT's own); an animated GIF is a video (PyAV reads it)."""
    from collections import Counter

    from ic_data.pipeline import other_files_line
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import write_gif

    root = tmp_path / "videos"
    (root / "stills").mkdir(parents=True)
    shutil.copy(input_dir / "good_5_speed4.mp4", root / "a.mp4")
    for name in ("stills/1.png", "stills/2.PNG", "notes.txt", "README", ".DS_Store"):
        (root / name).write_bytes(b"x")
    frames = render_shot(40, 384, 256, camera=CameraMotion((3.0, 0.0)), texture_seed=2).frames
    write_gif(root / "b.GIF", frames)
    out = root / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    others = Counter()
    found = sorted(Path(p).name for _, p in discover_videos(root, out_dir=out, others=others))
    assert found == ["a.mp4", "b.GIF"]
    assert others == {".png": 2, ".txt": 1, "": 1}
    assert other_files_line(others) == "2 .png, 1 .txt, 1 without an extension"
    assert other_files_line(others, most=1) == "2 .png, 2 more"
    summary = curate(root, out, dataclasses.replace(CFG, drop_fraction=0.0))
    assert summary.other_files == {"": 1, ".png": 2, ".txt": 1}
    assert json.loads((out / "summary.json").read_text())["other_files"] == summary.other_files
    rows = {Path(r.path).name: r for r in read_manifest(out / "manifest.parquet")}
    assert rows["b.GIF"].status == "ok" and rows["b.GIF"].num_frames == 40, rows["b.GIF"]


def test_what_cannot_be_read_is_a_row_that_says_so(tmp_path, monkeypatch):
    """A video without read permission fails as ``unreadable``, not as the decoders' guesses; a
    folder that cannot be listed is a row of its own (its videos are not curated), where a walk
    would pass it by in silence; the input folder itself unlistable is one error. Permissions are
    simulated (the tests may run as root, whom chmod does not stop)."""
    import builtins

    from ic_data.errors import BadInputError

    root = tmp_path / "videos"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "inside.mp4").write_bytes(b"v")
    (root / "secret.mp4").write_bytes(b"v")
    (root / "plain.mp4").write_bytes(b"v")
    denied = {str(root / "locked"), str(root / "secret.mp4")}

    def refuse(name):
        if os.fspath(name) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(name))

    scandir, open_ = os.scandir, builtins.open
    monkeypatch.setattr(os, "scandir", lambda path=".": refuse(path) or scandir(path))
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: refuse(file) or open_(file, *a, **k))
    found = sorted(Path(p).relative_to(root).as_posix() for _, p in discover_videos(root))
    assert found == ["locked", "plain.mp4", "secret.mp4"]
    for name, words in (("locked", "cannot list the folder"), ("secret.mp4", "cannot read")):
        with pytest.raises(VideoDecodeError) as err:
            decode_video(root / name, timeout_s=10)
        assert err.value.reason == "unreadable" and f"{words} {root / name}" in str(err.value)
        assert "Permission denied" in str(err.value)
    with pytest.raises(VideoDecodeError) as err:
        decode_video(root / "plain.mp4", timeout_s=10)
    assert err.value.reason == "decode_error"
    denied.add(str(root))
    with pytest.raises(BadInputError, match="cannot list the video folder .*Permission denied"):
        discover_videos(root)


def test_a_decode_error_names_its_reason_once_and_the_chosen_decoder_first(bad_inputs):
    """Both decoders fail on random bytes: the row's error leads with the reason once, then what
    each decoder said, the chosen one first."""
    with pytest.raises(VideoDecodeError) as err:
        decode_video(bad_inputs / "random.mp4", timeout_s=30)
    text = str(err.value)
    assert text.count("decode_error") == 1 and text.startswith("decode_error: decord ")
    assert " | PyAV " in text


def _grey(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]).astype(float)


def test_a_damaged_video_is_curated_from_what_decodes_unbroken(tmp_path):
    """A frame the decoder refuses is passed over, as a player passes it: the clip comes from
    the frames after it (never across the gap, where the video jumps), and the row says what
    was lost. A file whose unbroken part is too short fails as damaged, not as short."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import damage_jpeg_frames, write_mjpeg

    videos = tmp_path / "videos"
    videos.mkdir()
    shot = render_shot(70, 384, 256, CameraMotion((6.0, 1.5)), texture_seed=23, texture_octaves=(6, 12, 24, 48))
    for name, frames, lost in (("long", shot.frames, [30]), ("short", shot.frames[:48], [24])):
        clean = write_mjpeg(tmp_path / f"{name}.avi", frames)
        (videos / f"{name}.avi").write_bytes(damage_jpeg_frames(clean.read_bytes(), lost))
    summary = curate(videos, tmp_path / "out", CFG)
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    assert summary.damaged == 2 and json.loads((tmp_path / "out" / "summary.json").read_text())["damaged"] == 2

    long = rows["long"]
    assert long.status == "ok" and long.num_frames == 69 and long.cuts == []
    assert long.damage.startswith("damaged: 1 packet failed to decode, the first after frame 30:")
    assert (long.scene_start, long.scene_end) == (30, 69)  # the 39 frames after the gap, not the 30 before
    sample = next(read_shard(tmp_path / "out" / long.shard))
    idx = np.array(sample.meta["frame_indices"])
    assert idx.min() >= 30 and sample.meta["damage"] == long.damage
    # The clip shows the source frames one on from the decoded positions (frame 30 was lost).
    x0, y0, w, h = sample.meta["crop"]
    clip = _grey(sample.decode_frames())
    after, at = (np.abs(_grey(shot.frames[i][:, y0 : y0 + h, x0 : x0 + w]) - clip).mean() for i in (idx + 1, idx))
    print(f"grey error against the source frames one on {after:.2f}, at the decoded positions {at:.2f}")
    assert after < 4.0 and at > 2 * after

    short = rows["short"]
    assert (short.status, short.reason) == ("failed", "decode_error")
    assert "damaged: 1 packet failed to decode" in short.error
    assert "what decodes unbroken is too short: longest scene has 24 frames, a clip needs 32" in short.error
    assert short.damage is not None and short.num_frames == 47


def test_a_manifest_from_before_the_damage_bars_dissolves_wipes_and_flashes_columns_still_reads(curated, tmp_path):
    import pyarrow.parquet as pq

    out, _ = curated
    table = pq.read_table(out / "manifest.parquet")
    old = tmp_path / "old.parquet"
    pq.write_table(table.drop(["damage", "bars", "dissolves", "wipes", "flashes"]), old)
    rows = read_manifest(old)
    assert len(rows) == table.num_rows
    assert all(r.damage is None and r.bars is None and r.dissolves is None and r.wipes is None and r.flashes is None
               for r in rows)
    assert [r.video_id for r in rows] == [r.video_id for r in read_manifest(out / "manifest.parquet")]


def test_a_video_fetched_again_is_curated_again_on_a_rerun(input_dir, tmp_path):
    """A crawl's cut-off download is a failed row; fetched whole again under the same name, the
    next run curates it (its chunk's key follows the file's size), as a fresh run would."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import COARSE, write_video

    videos = tmp_path / "videos"
    shutil.copytree(input_dir, videos)
    out = tmp_path / "out"
    curate(videos, out, CFG, chunk_size=5)
    rows = {Path(r.path).name: r for r in read_manifest(out / "manifest.parquet")}
    assert rows["truncated.mp4"].status == "failed"
    cut = next(videos.rglob("truncated.mp4"))
    write_video(cut, render_shot(48, 480, 270, CameraMotion((4.0, 1.0)), texture_seed=91, texture_octaves=COARSE).frames)
    summary = curate(videos, out, CFG, chunk_size=5)
    rows = {Path(r.path).name: r for r in read_manifest(out / "manifest.parquet")}
    assert rows["truncated.mp4"].status == "ok" and summary.num_videos == 14 and summary.counts["failed"] == 5
    fresh = tmp_path / "fresh"
    curate(videos, fresh, CFG, chunk_size=5)
    assert (out / "manifest.parquet").read_bytes() == (fresh / "manifest.parquet").read_bytes()
    assert {p.name for p in (out / "shards").glob("*.tar")} == {p.name for p in (fresh / "shards").glob("*.tar")}


def test_a_caption_edited_in_the_csv_reaches_the_shards_on_a_rerun(input_dir, tmp_path):
    csv = tmp_path / "captions.csv"
    csv.write_text("videoid,name\ngood_5_speed4,a red ball rolls\n", encoding="utf-8")
    config = dataclasses.replace(CFG, captions_csv=str(csv))
    out = tmp_path / "out"

    def caption() -> str:
        row = next(r for r in read_manifest(out / "manifest.parquet") if Path(r.path).name == "good_5_speed4.mp4")
        sample = next(s for s in read_shard(out / row.shard) if s.key == row.key)
        assert row.caption == sample.caption
        return sample.caption

    curate(input_dir, out, config, chunk_size=5)
    assert caption() == "a red ball rolls"
    csv.write_text("videoid,name\ngood_5_speed4,a blue ball rolls\n", encoding="utf-8")
    curate(input_dir, out, config, chunk_size=5)
    assert caption() == "a blue ball rolls"


def test_a_chunk_key_follows_the_offline_trackers_version(tmp_path, monkeypatch):
    """A rerun after an upgrade that changed the LK tracker, or how a clip is chosen, analyses
    again: its chunks' keys hash those versions beside the settings (they reused the earlier
    tracks and scenes)."""
    import ic_data.pipeline as pipeline
    from ic_data.tracking.lk import LKTracker

    video = tmp_path / "a.mp4"
    video.write_bytes(b"\0" * 64)
    videos = [("a", str(video))]
    key = plan_chunks(videos, CFG)[0].key
    assert plan_chunks(videos, dataclasses.replace(CFG))[0].key == key
    monkeypatch.setattr(LKTracker, "version", LKTracker.version + "-next")
    assert plan_chunks(videos, CFG)[0].key != key
    monkeypatch.undo()
    assert plan_chunks(videos, CFG)[0].key == key
    monkeypatch.setattr(pipeline, "CLIP_CHOICE_VERSION", pipeline.CLIP_CHOICE_VERSION + "-next")
    assert plan_chunks(videos, CFG)[0].key != key
    monkeypatch.undo()
    # CoTracker's own weights are named by its settings: the LK version does not enter its key.
    cotracker = dataclasses.replace(CFG, tracker="cotracker")
    again = plan_chunks(videos, cotracker)[0].key
    monkeypatch.setattr(LKTracker, "version", LKTracker.version + "-later")
    assert plan_chunks(videos, cotracker)[0].key == again


def _tracks_error(sample, pan: np.ndarray) -> np.ndarray:
    """How far (px) each of a clip's tracks is from where a source panning by ``pan`` px a frame
    puts it, through the clip's recorded geometry (scale, crop)."""
    from ic_data.clips import ClipGeometry

    meta = sample.meta
    geometry = ClipGeometry(scale=tuple(meta["scale"]), crop=tuple(meta["crop"]))
    steps = np.asarray(meta["frame_indices"]) - meta["frame_indices"][0]
    start = geometry.clip_to_source(grid_points())
    truth = np.stack([geometry.source_to_clip(start + pan * k) for k in steps])
    return np.linalg.norm(sample.tracks - truth, axis=-1)


def test_black_bars_are_cut_off_and_the_tracks_follow_the_picture(tmp_path):
    """Letterboxed and pillarboxed real footage under a known pan: the bars are recorded, the
    clip is cropped inside the picture (enlarged where the picture is narrower than the clip),
    the motion is scored on the picture alone, and the tracks follow the picture as its
    geometry (scale, crop) says. Before, the clip kept the bars (31 px top and bottom, 57 px
    at the sides), a quarter of the grid tracked black, and the score counted them as still."""
    from ic_data.clips import BAR_LEVEL
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import in_black_frame, real_frame, write_video

    cv2 = pytest.importorskip("cv2")
    picture = real_frame("bigbuckbunny.mp4", 40)
    videos = tmp_path / "videos"
    videos.mkdir()
    # (width, height) of the picture, the side and top bars; "video-black": bars of RGB 16
    cases = {"letterbox": (640, 272, 0, 44), "pillarbox": (480, 360, 80, 0), "full": (640, 360, 0, 0),
             "video-black": (640, 272, 0, 44)}
    pan = np.array([2.0, 0.5])
    for name, (width, height, side, top) in cases.items():
        shot = render_shot(48, width, height, camera=CameraMotion(tuple(pan)), background=picture)
        dark = 16 if name == "video-black" else 0
        write_video(videos / f"{name}.mp4", in_black_frame(shot.frames, height + 2 * top, width + 2 * side, dark))
    out = tmp_path / "out"
    summary = curate(videos, out, dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(out / "manifest.parquet")}
    assert all(r.status == "ok" for r in rows.values()), [(r.reason, r.error) for r in rows.values()]
    assert summary.letterboxed == 3 and rows["full"].bars == []
    scores = {name: row.motion_score for name, row in rows.items()}
    for name, (width, height, side, top) in cases.items():
        sample = next(s for s in read_shard(out / rows[name].shard) if s.key == rows[name].key)
        meta, clip = sample.meta, sample.decode_frames()
        scale = 360 / 256  # the decoded frames are 455x256 for these 640x360 videos
        if side or top:
            assert np.abs(np.subtract(meta["bars"], [side / scale, top / scale] * 2)).max() <= 2, meta["bars"]
            assert rows[name].bars == meta["bars"]
        else:
            assert meta["bars"] == [] and meta["crop"] == [35, 0, 384, 256]
        edges = [float(edge.mean()) for edge in (clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1])]
        assert min(edges) > 3 * BAR_LEVEL, (name, meta["bars"], edges)  # picture, not bar
        err = _tracks_error(sample, pan)
        assert np.median(err) <= 0.5 and np.percentile(err, 90) <= 1.5, (name, np.median(err), np.percentile(err, 90))
        assert abs(scores[name] - scores["full"]) <= 0.05 * scores["full"], scores
    # Where the picture inside the bars would need more enlargement than max_upscale allows,
    # the video is too_small, as one too small without bars is.
    # A 400x226 video (1.13x to 256 rows) whose picture is 400x170 (1.51x).
    small = np.zeros((48, 226, 400, 3), np.uint8)
    small[:, 28:198] = cv2.resize(picture, (400, 170))
    (tmp_path / "small").mkdir()
    write_video(tmp_path / "small" / "letterbox.mp4", small)
    curate(tmp_path / "small", tmp_path / "strict", dataclasses.replace(CFG, drop_fraction=0.0, max_upscale=1.2))
    (row,) = read_manifest(tmp_path / "strict" / "manifest.parquet")
    assert row.status == "failed" and row.reason == "too_small" and "inside its bars" in row.error, row.error
    assert row.bars[1] == row.bars[3] > 20  # the bars that left too little picture


def test_a_larger_letterboxed_source_is_enlarged_from_its_own_pixels(tmp_path):
    """A 1280x720 video holding a 2.39:1 film (1280x536 between bars) under a known pan: at the
    analysis size (455x256) its picture is 191 rows, so the clip's frames are enlarged 1.35x for
    a 256-row crop. They are decoded again, kept whole, and made at that size from the source's
    own pixels. The clip is closer to the source resampled through the recorded geometry than
    the analysis frames enlarged (bicubic, then encoded as clips are) by 5.5 dB PSNR here
    (bigbuckbunny frame 40: 1.3 dB; a noise texture whose finest detail the clip's encoder then
    spends its bits on: -0.4 dB); the tracks follow the pan through that geometry."""
    from ic_data.clips import crop_frames, crop_plan, picture_box
    from ic_data.mp4 import write_mp4
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import in_black_frame, real_frame, write_video

    pan = np.array([3.0, 0.6])
    background = cv2.resize(real_frame("bikes.mp4", 10), (1580, 736), interpolation=cv2.INTER_CUBIC)
    source = in_black_frame(render_shot(40, 1280, 536, CameraMotion(tuple(pan)), background=background).frames, 720, 1280)
    videos = tmp_path / "videos"
    videos.mkdir()
    path = write_video(videos / "film.mp4", source)
    curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    (row,) = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert row.status == "ok", row.error
    sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
    meta, clip = sample.meta, sample.decode_frames()
    assert np.allclose(meta["scale"], [613 / 1280, 345 / 720], atol=1e-6), meta["scale"]
    x0, y0 = meta["crop"][:2]
    picks = [0, 8, 16]
    truth = np.stack([cv2.resize(source[meta["frame_indices"][k]], (613, 345), interpolation=cv2.INTER_AREA)
                      [y0 : y0 + 256, x0 : x0 + 384] for k in picks]).astype(np.float64)
    # As before: the analysis frames enlarged, and encoded as a clip is.
    video = decode_video(path, lambda w, h: resized_size(w, h))
    frames = video.select(meta["frame_indices"])
    size, _, box = crop_plan(455, 256, picture_box(frames))
    assert list(box) == meta["crop"]
    enlarged = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames])
    write_mp4(tmp_path / "before.mp4", crop_frames(enlarged, box), fps=24.0)
    before = decode_video(tmp_path / "before.mp4").select(picks)

    def psnr(frames):
        return 10 * np.log10(255.0**2 / np.mean((frames - truth) ** 2))

    assert psnr(clip[picks]) >= psnr(before) + 2.5, (psnr(clip[picks]), psnr(before))
    err = _tracks_error(sample, pan)
    assert np.median(err) <= 0.5 and np.percentile(err, 90) <= 1.5, (np.median(err), np.percentile(err, 90))


def test_blurred_bars_are_cut_off_and_the_tracks_follow_the_picture(tmp_path):
    """A portrait video (405x720) shown in a 1280x720 frame between blurred, dimmed, enlarged
    copies of itself, as social video is, under a known pan: the bars are recorded, the clip is
    cut from the picture alone (enlarged 2.7x from the analysis size, 0.96x from the source),
    and the tracks follow the picture. Before, the clip was the frame's centre crop: its outer
    columns (about 80 px a side) were the blurred copy, whose tracks move 3.2x as fast. A
    doorway (a real picture between two plain walls: straight edges, little detail beside
    them) keeps its whole frame."""
    from ic_data.clips import ClipGeometry
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    pan = np.array([1.5, 0.5])
    background = cv2.resize(real_frame("bikes.mp4", 200), (605, 820), interpolation=cv2.INTER_AREA)
    shot = render_shot(40, 405, 720, CameraMotion(tuple(pan)), background=background).frames
    frames = np.empty((40, 720, 1280, 3), np.uint8)
    for t, picture in enumerate(shot):
        filled = cv2.resize(picture, (1280, 2276), interpolation=cv2.INTER_LINEAR)[778 : 778 + 720]
        frames[t] = np.clip(cv2.GaussianBlur(filled, (0, 0), 20.0) * 0.7, 0, 255).astype(np.uint8)
        frames[t, :, 437 : 437 + 405] = picture
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "social.mp4", frames)
    door = render_shot(40, 640, 360, CameraMotion(), background=real_frame("bikes.mp4", 120)).frames.copy()
    door[:, :, :140], door[:, :, -140:] = 120, 200
    write_video(videos / "door.mp4", door)
    curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    assert rows["door"].status == "ok" and rows["door"].bars == [], rows["door"].bars
    row = rows["social"]
    assert row.status == "ok", row.error
    side = 437 * 455 / 1280  # the bars' width in the 455x256 frames as decoded
    assert row.bars[1] == row.bars[3] == 0 and np.abs(np.subtract(row.bars[::2], side)).max() <= 2, row.bars
    sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
    meta = sample.meta
    geometry = ClipGeometry(scale=tuple(meta["scale"]), crop=tuple(meta["crop"]))
    corners = geometry.clip_to_source(np.array([[-0.5, -0.5], [383.5, 255.5]]))
    assert corners[0, 0] >= 437 - 1 and corners[1, 0] <= 437 + 405 + 1, corners  # inside the picture
    err = _tracks_error(sample, pan)
    assert np.median(err) <= 0.5 and np.percentile(err, 90) <= 1.5, (np.median(err), np.percentile(err, 90))


def test_frames_decoded_again_are_used_only_when_they_are_the_chosen_ones(tmp_path):
    """The second decode of a larger letterboxed source is checked against the first: where it
    fails, or gives frames other than those chosen (a decoder numbering frames otherwise on a
    second pass), the clip is made as a smaller source's is, the analysis frames enlarged."""
    from ic_data.pipeline import Stage1
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import write_video

    path = write_video(tmp_path / "hd.mp4", render_shot(24, 1280, 720, CameraMotion((4.0, 1.0)), texture_seed=3).frames)
    frames = decode_video(path, lambda w, h: resized_size(w, h)).select(range(24))
    stage, size, idx = Stage1(CFG, tmp_path), (613, 345), [2, 9, 20]
    enlarged = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames[idx]])
    again = stage._whole_frames(str(path), idx, size, "pyav", frames[idx])
    assert again.shape == enlarged.shape and not np.array_equal(again, enlarged)
    # The same frames: within 1 of 255 of the first decode's at a quarter of the analysis width.
    quarter = [cv2.resize(f, (113, 64), interpolation=cv2.INTER_AREA).astype(np.int16) for f in (*again, *frames[idx])]
    assert max(np.abs(quarter[k] - quarter[k + 3]).mean() for k in range(3)) < 1.0
    # Other frames than those chosen (each the next one), or a file gone since: enlarged.
    assert np.array_equal(stage._whole_frames(str(path), [3, 10, 21], size, "pyav", frames[idx]), enlarged)
    path.unlink()
    assert np.array_equal(stage._whole_frames(str(path), idx, size, "pyav", frames[idx]), enlarged)


def test_the_motion_filter_drops_a_still_shot_whose_light_flickers_and_tracks_through_flicker(tmp_path):
    """Five videos of real footage at 640×360, 48 frames (stride 1): a still camera whose light
    changes by ±10 % a frame, pans of 1, 2 and 3 px a frame under steady light, and a pan of
    2 px a frame under the same flicker. The filter drops the lowest fifth: the flickering still
    shot (0.57 px a frame against 0.93 for the 1 px pan), and the tracks of the flickering pan
    follow it (0.1 % of its visible point-frames more than 4 px off). Before the flow and the
    tracker matched the levels of a frame whose light changed, the still shot scored 1.46, the
    1 px pan was dropped instead, the flickering pan scored 6.6 (it moves 1.4 px a frame at the
    analysis size), and 6.6 % of its visible point-frames were more than 4 px off."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    flicker = (1 + 0.1 * np.sin(np.arange(48) * 2.1))[:, None, None, None]
    videos = tmp_path / "videos"
    videos.mkdir()
    shots = {
        "still_flicker": (("carphone_pristine.mp4", 5), (0.0, 0.0), flicker),
        "pan1": (("bikes.mp4", 10), (1.0, 0.0), 1.0),
        "pan2": (("bigbuckbunny.mp4", 40), (2.0, 0.0), 1.0),
        "pan3": (("carphone_pristine.mp4", 60), (3.0, 0.0), 1.0),
        "pan2_flicker": (("bikes.mp4", 60), (2.0, 0.0), flicker),
    }
    for name, (picture, pan, light) in shots.items():
        frames = render_shot(48, 640, 360, camera=CameraMotion(pan), background=real_frame(*picture)).frames
        write_video(videos / f"{name}.mp4", np.clip(np.rint(frames * light), 0, 255).astype(np.uint8))
    curate(videos, tmp_path / "out", CFG)
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    scores = {name: round(r.motion_score, 3) for name, r in rows.items()}
    assert rows["still_flicker"].status == "filtered", scores
    assert all(rows[name].status == "ok" for name in shots if name != "still_flicker"), scores
    row = rows["pan2_flicker"]
    sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
    err = _tracks_error(sample, np.array([2.0, 0.0]))[sample.visibility]
    assert np.median(err) <= 0.5 and (err > 4).mean() <= 0.01, (np.median(err), (err > 4).mean())


def test_motion_scores_of_pans_over_edges_of_one_direction_are_their_speed(tmp_path):
    """Four videos of real footage at 640×360, 48 frames (stride 1), panning at known speeds,
    two of them down across the blinds behind carphone's passenger, one across the long
    upright edges of bikes' board. The score (px a frame at 455×256, ×256/360 the video's) is
    each pan's speed within 10 %: 1.8-4.5 % above it. Counting every pixel of the flow, the
    pans over such edges scored 37-61 % above it (the 0.75 px pan 0.766 against 0.533)."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    shots = {
        "blinds_down_0.75": (("carphone_pristine.mp4", 5), (0.0, 0.75)),
        "blinds_down_1.5": (("carphone_pristine.mp4", 60), (0.0, 1.5)),
        "board_right_1.25": (("bikes.mp4", 10), (1.25, 0.0)),
        "bunny_right_1.25": (("bigbuckbunny.mp4", 40), (1.25, 0.0)),
    }
    for name, (picture, pan) in shots.items():
        frames = render_shot(48, 640, 360, camera=CameraMotion(pan), background=real_frame(*picture)).frames
        write_video(videos / f"{name}.mp4", frames)
    curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    for name, (_, pan) in shots.items():
        speed = float(np.hypot(*pan)) * 256 / 360
        assert rows[name].status == "ok" and rows[name].motion_score == pytest.approx(speed, rel=0.1), (
            name, rows[name].motion_score, speed)


def test_a_dissolve_is_left_out_of_the_scene(tmp_path):
    """Two real pictures under pans, the first cross-fading into the second over 24 frames
    (50-73): the manifest records the dissolve, the scene curated is the second shot after it,
    and the clip holds no frame of it. Before, no cut was found and the scene was the whole
    video: a clip of 32 frames at stride 2 or more had to span the dissolve. With 26 frames
    of each shot only, the video fails ``too_short``, saying that a dissolve took the rest."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    first = render_shot(74, 640, 360, camera=CameraMotion((1.0, 0.3)), background=real_frame("carphone_pristine.mp4", 5))
    second = render_shot(84, 640, 360, camera=CameraMotion((-1.0, 0.0)), background=real_frame("bikes.mp4", 200))
    weight = np.clip((np.arange(134) - 49) / 25, 0.0, 1.0)[:, None, None, None]
    a = np.concatenate([first.frames, np.repeat(first.frames[-1:], 60, axis=0)]).astype(np.float64)
    b = np.concatenate([np.repeat(second.frames[:1], 50, axis=0), second.frames]).astype(np.float64)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "dissolve.mp4", np.rint((1 - weight) * a + weight * b).astype(np.uint8))
    # 26 frames either side of a 20-frame dissolve: no 32 frames of one shot.
    weight = np.clip((np.arange(72) - 25) / 21, 0.0, 1.0)[:, None, None, None]
    short = (1 - weight) * a[24:96] + weight * b[24:96]
    write_video(videos / "short.mp4", np.rint(short).astype(np.uint8))
    curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    row, too_short = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert (too_short.status, too_short.reason) == ("failed", "too_short"), too_short.status
    assert "frames blend two shots in 1 dissolve(s)" in too_short.error, too_short.error
    assert row.status == "ok", row.error
    assert len(row.dissolves) == 1, row.dissolves
    (start, end), = row.dissolves
    assert 46 <= start <= 52 and 72 <= end <= 78, row.dissolves  # mixed 10-90 %: frames 52-71
    assert row.scene_start >= end and row.scene_end == 134, (row.scene_start, row.scene_end)
    sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
    assert min(sample.meta["frame_indices"]) >= end


def test_a_flash_is_no_cut_and_is_left_out_of_the_clip(tmp_path):
    """Real footage panning 1 px a frame, 106 frames: a camera's flash lights frame 60 (70 %
    white). It is recorded (``flashes``), no cut is (before: a cut at 60, the flash's frame
    opening the second scene), and the clip is taken from frames 0-59, the longer side of it.
    A 60-frame video whose frames 12-48 flash every 6th frame (a strobe) leaves no 32 frames
    unlit: it fails ``too_short``, saying that its frames are lit by flashes."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    frames = render_shot(106, 640, 360, camera=CameraMotion((1.0, 0.2)), background=real_frame("bikes.mp4", 10)).frames
    lit = frames.astype(np.float64)
    lit[60] = 0.3 * lit[60] + 0.7 * 255
    strobe = frames[:60].astype(np.float64)
    strobe[12:49:6] = 0.4 * strobe[12:49:6] + 0.6 * 255
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "flash.mp4", np.rint(lit).astype(np.uint8))
    write_video(videos / "strobe.mp4", np.rint(strobe).astype(np.uint8))
    curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    strobed = rows["strobe"]
    assert strobed.status == "failed" and strobed.reason == "too_short", (strobed.status, strobed.error)
    assert "7 frames are lit by 7 flash(es)" in strobed.error and strobed.cuts == [], strobed.error
    row = rows["flash"]
    assert row.status == "ok", row.error
    assert row.flashes == [[60, 61]] and row.cuts == [], (row.flashes, row.cuts)
    assert (row.scene_start, row.scene_end) == (0, 60), (row.scene_start, row.scene_end)
    sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
    assert max(sample.meta["frame_indices"]) < 60


def test_a_wipe_is_left_out_of_the_scene(tmp_path):
    """Two shots of real footage under known pans, a line sweeping from the first to the second
    over frames 50-65: the wipe is recorded (``wipes``), and the longest scene, the first shot,
    ends before it, as does the clip (frame 50 has 6 % of the second shot). Before, there was no
    cut, and the one scene, 0-106, held both shots and the wipe between them. A 60-frame video
    wiped over its frames 16-45 leaves no 32 frames of one shot: it fails ``too_short``, saying
    that its frames show two shots in a wipe (before, it was curated, the wipe in its clip)."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, wiped, write_video

    first = render_shot(106, 640, 360, camera=CameraMotion((1.0, 0.2)), background=real_frame("bikes.mp4", 10)).frames
    second = render_shot(106, 640, 360, camera=CameraMotion((-1.0, 0.5)), background=real_frame("bigbuckbunny.mp4", 40))
    frames, shares = wiped(first, second.frames, 50, 16, 0)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "wiped.mp4", frames)
    write_video(videos / "short.mp4", wiped(first[:60], second.frames[:60], 16, 30, 90)[0])
    curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    short = rows["short"]
    assert short.status == "failed" and short.reason == "too_short", (short.status, short.error)
    assert "frames show two shots in 1 wipe(s)" in short.error and len(short.wipes) == 1, short.error
    row = rows["wiped"]
    assert row.status == "ok", row.error
    (start, end), = row.wipes
    assert 46 <= start <= 51 and 65 <= end <= 70, row.wipes  # frames 50-65 show both shots
    assert row.dissolves == [] and row.scene_start == 0 and row.scene_end <= 51, (row.scene_start, row.scene_end)
    sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
    assert max(sample.meta["frame_indices"]) < 51 and shares[max(sample.meta["frame_indices"])] < 0.1


def _dipped(colour) -> np.ndarray:
    """Two shots of real footage under known pans (116 frames of 640x360) joined by a dip to
    ``colour``: frames 50-59 fade out to it (10 % to 100 %), 60-65 are the colour, 66-75 fade in
    from it (90 % to 0 %)."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame

    first = render_shot(60, 640, 360, camera=CameraMotion((-1.5, 0.0)), background=real_frame("bikes.mp4", 10)).frames
    second = render_shot(50, 640, 360, camera=CameraMotion((1.0, 1.0)), background=real_frame("bikes.mp4", 200)).frames
    dip = np.concatenate([first, np.zeros((6, 360, 640, 3), np.uint8), second]).astype(np.float64)
    wash = np.zeros(len(dip))
    wash[50:60], wash[60:66], wash[66:76] = np.linspace(0.1, 1.0, 10), 1.0, np.linspace(0.9, 0.0, 10)
    return np.rint(dip + wash[:, None, None, None] * (np.asarray(colour, np.float64) - dip)).astype(np.uint8)


def _moving_marks(fill, seed: int, draw) -> np.ndarray:
    """60 frames of 640x360 filled with ``fill`` (a value or an RGB colour), and 12 marks moving
    across them, each drawn by ``draw(frame, (x, y), k)``: sparks over a black sky, birds over a
    white one."""
    frames = np.full((60, 360, 640, 3), fill, np.uint8)
    marks = np.random.default_rng(seed).uniform([40, 40], [600, 320], (12, 2))
    for t, frame in enumerate(frames):
        for k, (x, y) in enumerate(marks):
            draw(frame, (int(x + 3 * t * np.cos(k)), int(y + 2 * t * np.sin(k))), k)
    return frames


def test_black_frames_and_fades_are_left_out_of_the_scene(tmp_path):
    """Real footage under a known pan that opens on 8 black frames and fades in over 12, and
    fades out over 12 to 8 black frames at its end: the scene curated starts past the fade's
    dim half and ends before the fade out's, so the clip opens on the shot. Before, the scene
    was frames 9-111 (the detector cuts where black ends), fades and all, and a clip could open
    on a frame at 1/12 of the shot's brightness. A video black throughout fails ``too_short``,
    saying why (before, it was curated, motion score 0); fireworks in a black sky are curated."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    shot = render_shot(120, 640, 360, camera=CameraMotion((2.0, 0.5)), background=real_frame("bigbuckbunny.mp4", 40))
    gain = np.ones(120)
    gain[:8], gain[8:20], gain[-20:-8], gain[-8:] = 0.0, np.linspace(0.0, 1.0, 12), np.linspace(1.0, 0.0, 12), 0.0
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "faded.mp4", np.rint(shot.frames * gain[:, None, None, None]).astype(np.uint8))
    write_video(videos / "black.mp4", np.zeros((60, 360, 640, 3), np.uint8))
    # Fireworks: a black sky with bright sparks moving across 3 % of it (mean 7 of 255).
    write_video(videos / "fireworks.mp4", _moving_marks(0, 0, lambda frame, at, k: cv2.circle(
        frame, at, 14, (255, 220, 160), -1)))
    summary = curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    faded = rows["faded"]
    assert faded.status == "ok", faded.error
    # Frames 8 + 6 and 100 + 6 are where the fades pass half the shot's brightness.
    assert 13 <= faded.scene_start <= 15 and 105 <= faded.scene_end <= 107, (faded.scene_start, faded.scene_end)
    assert all(c <= 20 or c >= 100 for c in faded.cuts), faded.cuts  # the detector may cut where black ends
    sample = next(s for s in read_shard(tmp_path / "out" / faded.shard) if s.key == faded.key)
    clip = sample.decode_frames().astype(np.float64)
    assert clip[0].mean() >= 0.5 * np.median(clip.mean(axis=(1, 2, 3)))
    black = rows["black"]
    assert black.status == "failed" and black.reason == "too_short" and "60 of 60 frames are black" in black.error, black.error
    assert rows["fireworks"].status == "ok" and rows["fireworks"].scene_end - rows["fireworks"].scene_start == 60
    assert summary.counts.get("failed") == 1 and summary.reasons.get("too_short") == 1, (summary.counts, summary.reasons)


def test_white_frames_and_fades_to_white_are_left_out_of_the_scene(tmp_path):
    """Fades to white, the mirror of fades to black: real footage under a known pan that opens
    on 8 white frames and fades in from white over 12, and fades out over 12 to 8 white frames
    at its end; and a dip to white between two shots (the first fades out over 10 frames, 6
    white frames, the second fades in over 10). Each scene curated ends where its fade passes
    half the shot's distance from white, so no clip opens washed out. Before, the faded video's
    scene was frames 9-111 (the detector cuts where white ends), fades and all; the dip had no
    cut at all, and its one scene, 0-116, held both shots and the white between them. A white
    screen throughout fails ``too_short``, saying why; a blown-out white sky with dark birds
    across 3 % of it is a scene."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    def washed(frames, wash):  # each frame moved towards white by its share in ``wash``
        frames = frames.astype(np.float64)
        return np.rint(frames + wash[:, None, None, None] * (255.0 - frames)).astype(np.uint8)

    shot = render_shot(120, 640, 360, camera=CameraMotion((2.0, 0.5)), background=real_frame("bigbuckbunny.mp4", 40))
    wash = np.zeros(120)
    wash[:8], wash[8:20], wash[-20:-8], wash[-8:] = 1.0, np.linspace(1.0, 0.0, 12), np.linspace(0.0, 1.0, 12), 1.0
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "faded.mp4", washed(shot.frames, wash))
    write_video(videos / "dip.mp4", _dipped(255))
    write_video(videos / "white.mp4", np.full((60, 360, 640, 3), 255, np.uint8))
    write_video(videos / "birds.mp4", _moving_marks(255, 1, lambda frame, at, k: cv2.ellipse(
        frame, at, (18, 7), 10.0 * k, 0, 360, (40, 35, 30), -1)))
    summary = curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    faded = rows["faded"]
    assert faded.status == "ok", faded.error
    # Frames 8 + 6 and 100 + 6 are where the fades pass half the shot's distance from white.
    assert 13 <= faded.scene_start <= 15 and 105 <= faded.scene_end <= 107, (faded.scene_start, faded.scene_end)
    sample = next(s for s in read_shard(tmp_path / "out" / faded.shard) if s.key == faded.key)
    clip = 255.0 - sample.decode_frames().astype(np.float64)  # distance from white
    assert clip[0].mean() >= 0.5 * np.median(clip.mean(axis=(1, 2, 3)))
    # The dip: the first shot (60 frames less its fade's washed half) is the longest scene.
    dipped = rows["dip"]
    assert dipped.status == "ok", dipped.error
    assert dipped.scene_start == 0 and 54 <= dipped.scene_end <= 56, (dipped.scene_start, dipped.scene_end)
    white = rows["white"]
    assert white.status == "failed" and white.reason == "too_short" and "60 of 60 frames are white" in white.error, white.error
    assert rows["birds"].status == "ok" and rows["birds"].scene_end - rows["birds"].scene_start == 60
    assert summary.counts.get("failed") == 1 and summary.reasons.get("too_short") == 1, (summary.counts, summary.reasons)


def test_frames_of_one_flat_colour_and_the_fades_to_them_are_left_out_of_the_scene(tmp_path):
    """Dips to a colour, as to black or white: two shots of real footage under known pans joined
    by a dip to mid-grey (a fade out over 10 frames, 6 grey frames, a fade in over 10), and the
    same dip to red. The longest scene is the first shot less its fade's low-contrast half.
    Before, neither dip had a cut, and its one scene, 0-116, held both shots and the colour
    between them (a dip to grey keeps the mean brightness: only the contrast falls). A plain sky
    throughout fails ``too_short``, saying why; real footage in haze (its contrast divided by 6)
    and dark birds over 2 % of the plain sky are curated whole."""
    from ic_data.synthetic import CameraMotion, render_shot
    from tests.conftest import real_frame, write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "grey.mp4", _dipped((128, 128, 128)))
    write_video(videos / "red.mp4", _dipped((200, 30, 40)))
    sky = (90, 140, 200)
    write_video(videos / "sky.mp4", np.full((60, 360, 640, 3), sky, np.uint8))
    write_video(videos / "birds.mp4", _moving_marks(sky, 1, lambda frame, at, k: cv2.ellipse(
        frame, at, (18, 7), 10.0 * k, 0, 360, (40, 35, 30), -1)))
    shot = render_shot(60, 640, 360, camera=CameraMotion((2.0, 0.5)), background=real_frame("bigbuckbunny.mp4", 40))
    mean = shot.frames.mean(axis=(1, 2, 3), keepdims=True)
    write_video(videos / "haze.mp4", np.rint(mean + (shot.frames - mean) / 6.0).astype(np.uint8))
    summary = curate(videos, tmp_path / "out", dataclasses.replace(CFG, drop_fraction=0.0))
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    for name in ("grey", "red"):
        row = rows[name]
        assert row.status == "ok", row.error
        # Contrast passes half the shot's at frame 55 (60 % to the colour); a cut where the dip
        # begins (frame 50) is allowed, a scene reaching into the colour is not.
        assert row.scene_start == 0 and 50 <= row.scene_end <= 56, (name, row.scene_start, row.scene_end)
        sample = next(s for s in read_shard(tmp_path / "out" / row.shard) if s.key == row.key)
        assert max(sample.meta["frame_indices"]) < 56
    plain = rows["sky"]
    assert plain.status == "failed" and plain.reason == "too_short", plain.error
    assert "60 of 60 frames are one flat colour" in plain.error, plain.error
    for name in ("birds", "haze"):
        assert rows[name].status == "ok" and rows[name].scene_end - rows[name].scene_start == 60, rows[name]
    assert summary.counts.get("failed") == 1 and summary.reasons.get("too_short") == 1, (summary.counts, summary.reasons)
