"""Prefect's temporary local server, owned by the command that runs the flows.

Without PREFECT_API_URL, Prefect starts a temporary server (uvicorn, SQLite under PREFECT_HOME)
as a child of the first process that needs one. Left as Prefect starts it, the server shares
`ic`'s process group, so the terminal's Ctrl-C stops it at the same moment as the flow: the
flow run could no longer be marked Crashed (it stayed Running in the database), and every
state and event still to send was retried against the dead server, about a minute of errors
before `ic` gave up. And `kill -9` of `ic` left the server running, orphaned.

`temporary_server()` starts the same server itself, in a session of its own (the terminal's
signals reach `ic` alone, and `ic` stops the server last, after the flow run has been marked),
and, on Linux, set to receive SIGTERM when `ic` dies, however it dies.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

PARENT_ENV = "IC_PREFECT_SERVER_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Run the body against a temporary Prefect server of this process's own, unless one is
    configured (PREFECT_API_URL, from the environment or a Prefect profile): yields the API URL,
    or None when the configured one is used. Call it from the main thread: on Linux the server
    is tied to the thread that started it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        yield None  # with neither, Prefect's own message names the missing URL
        return
    server = _server_class()()
    server.start()
    # Every thread (the studio runs flows in its web server's) and child process (a local Dask
    # cluster) reports to it. It serves no UI, so no "View at" links are printed.
    saved = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    os.environ.update(PREFECT_API_URL=server.api_url, PREFECT_UI_URL="")
    _reload_settings()
    try:
        yield server.api_url
    finally:
        _send_what_is_queued()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_settings()
        server.stop()


def _reload_settings() -> None:
    """Prefect reads its settings from the environment once, at import: read them again."""
    import prefect.context

    refresh = getattr(prefect.context, "refresh_global_settings_context", None)  # 3.9 has it, 3.4 not
    if refresh is not None:
        refresh()
    else:
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.root_settings_context()


def _send_what_is_queued(timeout_s: float = 10) -> None:
    """The run's last log lines and events (its final state among them) are still queued in
    Prefect's background workers: send them while the server is up."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # an unsent line is not worth a traceback at exit
            worker.drain_all(timeout=timeout_s)


def _server_class():
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnSessionServer(SubprocessASGIServer):
        """Prefect's `SubprocessASGIServer` (free port, health wait, stop at exit), with the
        uvicorn process started through `serve_child` in a session of its own."""

        _instances: dict = {}  # apart from Prefect's own: its temporary server stays its own

        def _run_uvicorn_command(self) -> subprocess.Popen:
            # The same server and environment as Prefect's temporary server (3.4–3.9).
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
                PARENT_ENV: str(os.getpid()),
            }
            uvicorn = ["--app-dir", str(prefect.__module_path__.parent), "--factory",
                       "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                       "--log-level", "error", "--lifespan", "on"]
            return subprocess.Popen([sys.executable, "-m", "flows.server", *uvicorn], env=env,
                                    start_new_session=True)

    return OwnSessionServer


def serve_child(uvicorn_args: list[str]) -> None:
    """In the server's process: become uvicorn, tied to the parent named in the environment."""
    exec_tied_to_parent([sys.executable, "-m", "uvicorn", *uvicorn_args], int(os.environ.pop(PARENT_ENV, "0")))


def exec_tied_to_parent(argv: list[str], parent: int | None, own_session: bool = False) -> None:
    """Become ``argv`` (an exec: the pid stays). ``parent``: ask Linux for SIGTERM when the parent
    dies (a no-op elsewhere; the request survives the exec), and give up if ``parent`` is already
    gone; None: not tied. ``own_session``: in a session of its own first, out of reach of the
    terminal's signals."""
    if own_session:
        with contextlib.suppress(OSError):  # already a session leader
            os.setsid()
    if parent is not None:
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if parent and os.getppid() != parent:
            sys.exit(0)
    os.execvp(argv[0], argv)


USAGE = """usage: python -m flows.server --exec PARENT_PID|- COMMAND [ARG ...]

Runs COMMAND in a session of its own (the terminal's Ctrl-C does not reach it), stopped by
SIGTERM when PARENT_PID, its parent, dies (Linux; "-": not tied to its parent).
deployments/serve.sh starts the Prefect server and the deployments so, and stops them in order."""


if __name__ == "__main__":
    if sys.argv[1:2] == ["--exec"]:
        if len(sys.argv) < 4 or not (sys.argv[2].isdigit() or sys.argv[2] == "-"):
            sys.exit(USAGE)
        exec_tied_to_parent(sys.argv[3:], None if sys.argv[2] == "-" else int(sys.argv[2]), own_session=True)
    else:
        serve_child(sys.argv[1:])
