#!/usr/bin/env bash
# `make serve`: the Prefect server (UI on http://$HOST:$PORT) plus one process serving every
# deployment. State lives under a project-local PREFECT_HOME unless one is set. For
# PostgreSQL instead of SQLite, export
#   PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pass@host:5432/prefect
# before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${IC_PREFECT_HOST:-127.0.0.1}
PORT=${IC_PREFECT_PORT:-4200}
PY=${PY:-.venv/bin/python}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_API_URL=http://$HOST:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$PREFECT_HOME"

# The server and the deployments each run in a session of their own, out of reach of the
# terminal's Ctrl-C. On Ctrl-C, SIGTERM or SIGHUP this script stops them in order: first the
# deployments, which stop the flow runs in progress (training saves the step it is at) and have
# them recorded, while the server still answers; then the server. Stopped together, as before, a
# run stayed Running in the database and the deployment process kept retrying the dead server.
# Killed outright (kill -9), it runs no trap: the deployments get SIGTERM from Linux (parent-death
# signal, `flows.server --exec`), and a watchdog stops the server once they have ended.
own_session=("$PY" -m flows.server --exec -)
tied=("$PY" -m flows.server --exec $$)  # commands, not functions: $! must be their process
server= serve_pid= watchdog=
ended_within() {  # SIGTERM to process $1, then wait for it: SIGKILL after $2 s
  kill -TERM "$1" 2>/dev/null || true
  ( sleep "$2"; kill -KILL "$1" 2>/dev/null ) & local timer=$!
  wait "$1" 2>/dev/null || true
  kill "$timer" 2>/dev/null || true
}
stop() {
  trap - INT TERM HUP EXIT
  [ -z "$watchdog" ] || kill -KILL "$watchdog" 2>/dev/null || true
  # Prefect's runner gives a flow run 30 s to end before it kills it; past 60 s, kill the runner.
  [ -z "$serve_pid" ] || ended_within "$serve_pid" 60
  # The server's graceful shutdown waits for its open connections: bounded, so that Ctrl-C
  # always ends within 80 s (the runs are recorded by then; SQLite's journal keeps a kill safe).
  [ -z "$server" ] || ended_within "$server" 20
}
trap 'echo "stopping: the deployments (their runs are recorded as stopped), then the server"; stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP
trap 'stop' EXIT

"${own_session[@]}" "$PY" -m prefect server start --host "$HOST" --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
server=$!
for _ in $(seq 120); do
  if curl -fsS "$PREFECT_API_URL/health" > /dev/null 2>&1; then break; fi
  kill -0 $server 2>/dev/null || { cat "$PREFECT_HOME/server.log"; exit 1; }
  sleep 0.5
done
curl -fsS "$PREFECT_API_URL/health" > /dev/null || { echo "Prefect server did not start"; exit 1; }
echo "Prefect UI: http://$HOST:$PORT   (PREFECT_HOME=$PREFECT_HOME)"
echo "Run a deployment:  PREFECT_API_URL=$PREFECT_API_URL .venv/bin/prefect deployment run curate/webvid -p videos=DIR -p out=DIR --watch"
"${tied[@]}" "$PY" deployments/serve.py &
serve_pid=$!
(
  trap '' INT TERM HUP
  while kill -0 $$ 2>/dev/null; do sleep 1; done
  for _ in $(seq 60); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 1; done
  kill -TERM "$server" 2>/dev/null
) &
watchdog=$!
wait $serve_pid
