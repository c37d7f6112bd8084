#!/usr/bin/env bash
# Instructions per request (perf stat -p on the server process) while wrk drives it: a
# noise-robust companion to run.py's req/s ratios. Usage: benchmarks/instructions.sh [seconds]
# WSGI=1 adds the WSGI servers (trioserve with each parser, Gunicorn gthread).
# H2=1 adds HTTP/2 (h2c prior knowledge, h2load -c16 -m10): the Trio+h2 floor and trioserve.
# Needs perf (Debian: linux-perf), wrk and taskset. Loopback only.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
DUR=${1:-5}
LOAD=wrk
load() {  # load DURATION URL: prints the number of requests completed
  if [ "$LOAD" = h2load ]; then
    taskset -c 1 h2load -c16 -m10 -D"$1" "$2" | awk '/^requests:/ {print $8}'
  else
    taskset -c 1 wrk -t1 -c50 -d"$1s" "$2" | awk '/requests in/ {print $1}'
  fi
}
run() {
  local name=$1; shift
  local port; port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local cmd=("${@//PORT/$port}")
  taskset -c 0 "${cmd[@]}" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  load 2 "http://127.0.0.1:$port/" >/dev/null
  # Gunicorn serves from a worker child process; trioserve and the floors have no children.
  local target; target=$(pgrep -P "$pid" | head -1 || true); target=${target:-$pid}
  perf stat -x, -e instructions -p "$target" -o /tmp/perf.$$ -- sleep $((DUR + 1)) &
  local perfpid=$!
  local reqs
  reqs=$(load "$DUR" "http://127.0.0.1:$port/")
  wait $perfpid
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local ins; ins=$(awk -F, '/instructions/ {print $1}' /tmp/perf.$$)
  printf '%-40s %10s requests %14s instructions %10.0f instructions/request\n' "$name" "$reqs" "$ins" "$(echo "$ins / $reqs" | bc -l)"
}
run "floor trio+h11 (h11 send)" $PY floor_h11.py PORT h11
run "floor trio+h11 (prebuilt bytes)" $PY floor_h11.py PORT prebuilt
run "trioserve ASGI hello (h11, no access log)" $PY -m trioserve apps:hello --app-dir . --port PORT --http h11 --no-access-log --log-level warning
run "trioserve ASGI hello (h11, access log on)" $PY -m trioserve apps:hello --app-dir . --port PORT --http h11 --log-level info
if $PY -c 'import httptools' 2>/dev/null; then
  run "trioserve ASGI hello (httptools, no access log)" $PY -m trioserve apps:hello --app-dir . --port PORT --http httptools --no-access-log --log-level warning
fi
if [ "${WSGI:-}" = 1 ]; then
  run "trioserve WSGI hello (h11)" $PY -m trioserve apps:wsgi_hello --app-dir . --port PORT --http h11 --no-access-log --log-level warning
  if $PY -c 'import httptools' 2>/dev/null; then
    run "trioserve WSGI hello (httptools)" $PY -m trioserve apps:wsgi_hello --app-dir . --port PORT --http httptools --no-access-log --log-level warning
  fi
  run "gunicorn gthread WSGI hello (1 worker, 8 threads)" $PY -m gunicorn -k gthread --threads 8 -w 1 -b 127.0.0.1:PORT --log-level warning apps:wsgi_hello
fi
if [ "${H2:-}" = 1 ]; then
  LOAD=h2load
  run "floor trio+h2 (h2c)" $PY floor_h2.py PORT
  run "trioserve ASGI hello (h2c)" $PY -m trioserve apps:hello --app-dir . --port PORT --no-access-log --log-level warning
fi
