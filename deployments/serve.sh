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

"$PY" -m prefect server start --host "$HOST" --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
server=$!
trap 'kill $server ${serve_pid:-} 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
for _ in $(seq 120); do
  if curl -fsS "$PREFECT_API_URL/health" > /dev/null 2>&1; then break; fi
  kill -0 $server 2>/dev/null || { cat "$PREFECT_HOME/server.log"; exit 1; }
  sleep 0.5
done
curl -fsS "$PREFECT_API_URL/health" > /dev/null || { echo "Prefect server did not start"; exit 1; }
echo "Prefect UI: http://$HOST:$PORT   (PREFECT_HOME=$PREFECT_HOME)"
echo "Run a deployment:  PREFECT_API_URL=$PREFECT_API_URL .venv/bin/prefect deployment run curate/webvid -p videos=DIR -p out=DIR --watch"
"$PY" deployments/serve.py &
serve_pid=$!
wait $serve_pid
