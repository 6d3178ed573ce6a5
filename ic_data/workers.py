"""The worker processes of a curation run: one spawned process pool per process, shared by every
chunk running in it, and what each worker sets up (one OpenCV thread, an allocator that keeps
freed frame memory, a process group of its own that group signals do not reach).

:func:`run_in_workers` runs ``(fn, args)`` jobs in the pool, surviving workers that crash;
``fn`` must be importable at module level (the stage functions it runs, such as
``ic_data.pipeline._analyse_in_worker``, live with the stages). :func:`default_processes` sizes
the pool to the machine. Nothing here imports :mod:`ic_data.pipeline` at import time, so the
pipeline can import this module.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

from ic_data.errors import WorkerCrashed, WorkerStartError


__all__ = ["video_pool", "keep_freed_memory", "default_processes", "run_in_workers"]

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_WORKER_START_TIMEOUT_S = 300.0


def video_pool(processes: int) -> ProcessPoolExecutor:
    """The process pool of this size (spawned once, kept for the life of the process)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(processes)
        if pool is None:
            # spawn, not fork: the parent runs threads (Prefect's, the decode watchdogs).
            pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
            _check_workers_start(pool)
            _POOLS[processes] = pool
        return pool


def _check_workers_start(pool: ProcessPoolExecutor) -> None:
    """Run a no-op in a new pool: workers that die before running anything (a script that
    starts curation at import time, which every spawned worker re-imports) get one clear error."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        pool.submit(int).result(timeout=_WORKER_START_TIMEOUT_S)
    except (BrokenProcessPool, TimeoutError) as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise WorkerStartError(
            "curation worker processes died on start-up. Each one imports the __main__ module "
            "again: a script that runs curation must do so under `if __name__ == \"__main__\":`. "
            "Or run without worker processes (processes=0, `ic curate --processes 0`)."
        ) from exc


# glibc hands a freed block back to the kernel when it was mmap-ed (large) or sits at the top
# of the heap beyond the trim threshold, and the next allocation faults every page in again.
# A worker frees one video's frames (~120 MB at 640×360) and allocates the next one's at once;
# keeping freed memory in the heap cut decoding, select included, from ≈0.50 to ≈0.32 CPU-s per
# 12 s video on the 2-core VM. The cost: each worker keeps up to 512 MB of freed heap (a
# 50 s video's frames at 640×360, 30 fps; a longer one's beyond that go back to the kernel).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_HEAP_BYTES = 512 << 20


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``; None where the C library is another one (musl, macOS, Windows: the
    parameters above are glibc's) or ctypes cannot reach it."""
    try:
        import ctypes
        import ctypes.util

        # glibc only: elsewhere ValueError (a name the platform lacks) or AttributeError (Windows).
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (ImportError, OSError, AttributeError, ValueError):
        return None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (this process); whether it did.

    Without glibc's ``mallopt`` it changes nothing and returns False: it never raises, as it runs
    in every worker's initializer, where an exception would break the pool.
    """
    mallopt = _glibc_mallopt()
    if mallopt is None:  # leave the allocator alone
        return False
    # Frames (up to a few MB) come from the heap, not from mmap, whose threshold glibc otherwise
    # raises only as blocks are freed; its free top is trimmed only beyond _KEEP_HEAP_BYTES.
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_HEAP_BYTES))


# CurationConfig's default: the most frames one worker holds decoded at a time.
DEFAULT_MAX_DECODE_FRAMES = 3000


def default_processes(max_decode_frames: int = DEFAULT_MAX_DECODE_FRAMES) -> int:
    """Worker processes for this machine: one per usable core, as many as its memory holds.

    A worker's peak is one video's stored frames: at most ``max_decode_frames`` of ≈0.35 MB
    (4:2:0 planes of up to twice the 455×256 analysis size, or resized 4:4:4 planes), plus
    thumbnails, the clip and the freed heap it keeps: budgeted at that + 512 MB.
    ``max_decode_frames``: ``CurationConfig.max_decode_frames``.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (containers)
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return max(1, cores)
    per_worker = max_decode_frames * 350_000 + _KEEP_HEAP_BYTES
    return max(1, min(cores, memory // per_worker))


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one video per process: the pool is the parallelism
    keep_freed_memory()
    leave_stopping_to_the_parent()


_PARENT_POLL_S = 1.0


def leave_stopping_to_the_parent() -> None:
    """Ctrl-C and SIGTERM sent to the whole process group are the parent's to act on: a worker
    killed by them would break the pool, and its jobs would be rerun in new workers as if a
    decoder had crashed. So a worker leaves its parent's process group for one of its own, which
    the terminal's Ctrl-C and ``kill -TERM -PGID`` do not reach. A SIGTERM sent to the worker
    itself still ends it: that is how Python ≥ 3.12 ends the workers of a broken pool, waiting
    for them to exit (a worker that ignored SIGTERM hung the pool, and curation, for good). The
    parent stops the pool as it exits; a worker whose parent is gone (killed outright, or by the
    out-of-memory killer) exits within a second instead of running on, orphaned."""
    import signal

    with contextlib.suppress(AttributeError, OSError):  # no process groups here (not POSIX)
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C that still arrives is the parent's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _drop_pool(processes: int, pool: ProcessPoolExecutor) -> None:
    with _POOLS_LOCK:
        if _POOLS.get(processes) is pool:
            del _POOLS[processes]
    pool.shutdown(wait=False, cancel_futures=True)


def run_in_workers(jobs: Sequence[tuple[Callable, tuple]], processes: int) -> list:
    """Run ``fn(*args)`` for each job in the shared pool and return the results in order.

    Exceptions a job raises propagate (an I/O error writing our own output is the
    orchestrator's to retry). A worker that dies (a native crash in a decoder on a malformed
    file) takes the pool with it: the jobs that were in flight are rerun one at a time in fresh
    pools, and a job that kills its worker alone gets a ``WorkerCrashed`` in place of its result,
    for the caller to record against its video.
    """
    from concurrent.futures.process import BrokenProcessPool

    results: list = [None] * len(jobs)
    retry = []
    pool = video_pool(processes)
    futures = []
    try:
        try:
            for fn, args in jobs:
                futures.append(pool.submit(fn, *args))
        except BrokenProcessPool:  # broken by another chunk's crash before we submitted
            _drop_pool(processes, pool)
            futures = []
            retry = list(range(len(jobs)))
        for i, fut in enumerate(futures):
            try:
                results[i] = fut.result()
            except BrokenProcessPool:
                retry.append(i)
    except BaseException:  # Ctrl-C, a stop: the jobs not yet started are dropped, not run on
        for fut in futures:
            fut.cancel()
        raise
    if retry and futures:
        _drop_pool(processes, pool)
    for i in retry:
        fn, args = jobs[i]
        pool = video_pool(processes)
        try:
            results[i] = pool.submit(fn, *args).result()
        except BrokenProcessPool:
            _drop_pool(processes, pool)
            results[i] = WorkerCrashed(f"the worker process died while running {fn.__name__}")
    return results

