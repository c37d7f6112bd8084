"""Per-request overhead: trioserve against the Trio + h11 floor, side by side in one run.

Each server runs pinned to CPU 0 (``taskset -c 0``) and ``wrk`` to CPU 1, one server after
another, for several alternating rounds; the table reports the median requests per second of
each and its ratio to the floors. Only loopback (127.0.0.1) is used.

    python benchmarks/run.py                 # 3 rounds x 10 s, 50 connections
    python benchmarks/run.py --rounds 5 --duration 15 --connections 100
    python benchmarks/run.py --h2 --only h2c  # HTTP/2 only: floor, trioserve, Hypercorn trio
    python benchmarks/run.py --ws --only ws-echo  # WebSocket echo: trioserve, Uvicorn, Hypercorn

Needs ``wrk`` and ``taskset`` (Debian: ``apt-get install wrk util-linux``); ``--h2`` needs
``h2load`` (``apt-get install nghttp2-client``) and, for its Hypercorn row, ``pip install
hypercorn``; ``--ws`` drives the servers with ``ws_echo_client.py`` (no tool to install) and
has a row for each of Uvicorn and Hypercorn that is installed (``pip install uvicorn websockets
wsproto hypercorn``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apps

HERE = Path(__file__).resolve().parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None


def servers(port: int) -> dict[str, list[str]]:
    trioserve = [PY, "-m", "trioserve", "apps:hello", "--app-dir", str(HERE),
                 "--port", str(port)]
    out = {
        # not a server: Trio's own cost per request, with no HTTP (see ceiling_trio.py)
        "ceiling: trio, no HTTP (canned bytes)": [PY, str(HERE / "ceiling_trio.py"), str(port)],
        "floor: trio+h11 (h11 send)": [PY, str(HERE / "floor_h11.py"), str(port), "h11"],
        "floor: trio+h11 (prebuilt bytes)": [PY, str(HERE / "floor_h11.py"), str(port),
                                             "prebuilt"],
        "trioserve ASGI hello (h11, no access log)": [*trioserve, "--http", "h11",
                                                      "--no-access-log", "--log-level",
                                                      "warning"],
        # the access log written to a file (results/server.log), as in production
        "trioserve ASGI hello (h11, access log on)": [*trioserve, "--http", "h11",
                                                      "--log-level", "info"],
    }
    if HAVE_HTTPTOOLS:
        out["trioserve ASGI hello (httptools, no access log)"] = [
            *trioserve, "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        # the same with the admin endpoint on, so every request is counted (metrics)
        out["trioserve ASGI hello (httptools, no access log, metrics)"] = [
            *trioserve, "--http", "httptools", "--no-access-log", "--log-level", "warning",
            "--admin-bind", "127.0.0.1:0"]
    return out


def wsgi_servers(port: int) -> dict[str, list[str]]:
    """WSGI hello world: trioserve (1 process) against Gunicorn gthread (1 worker, 8 threads),
    the comparison the WSGI issue sets; Gunicorn only when installed."""
    trioserve = [PY, "-m", "trioserve", "apps:wsgi_hello", "--app-dir", str(HERE), "--port",
                 str(port), "--no-access-log", "--log-level", "warning"]
    out = {"trioserve WSGI hello (h11)": [*trioserve, "--http", "h11"]}
    if HAVE_HTTPTOOLS:
        out["trioserve WSGI hello (httptools)"] = [*trioserve, "--http", "httptools"]
    if importlib.util.find_spec("gunicorn") is not None:
        out["gunicorn gthread WSGI hello (1 worker, 8 threads)"] = [
            PY, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "1", "-b",
            f"127.0.0.1:{port}", "--log-level", "warning", "--chdir", str(HERE),
            "apps:wsgi_hello"]
    return out


HAVE_HYPERCORN = importlib.util.find_spec("hypercorn") is not None
H2_FLOOR = "floor: trio+h2 (canned response, h2c)"
H2_HYPERCORN = "hypercorn trio ASGI hello (h2c)"


def h2_servers(port: int) -> dict[str, list[str]]:
    """HTTP/2 over plain TCP with prior knowledge (h2c): the Trio + h2 floor, trioserve and
    Hypercorn's trio worker (only when installed), all serving ``Hello, world!``."""
    out = {
        H2_FLOOR: [PY, str(HERE / "floor_h2.py"), str(port)],
        "trioserve ASGI hello (h2c)": [PY, "-m", "trioserve", "apps:hello", "--app-dir",
                                       str(HERE), "--port", str(port), "--no-access-log",
                                       "--log-level", "warning"],
    }
    if HAVE_HYPERCORN:
        # run:hypercorn_hello, not apps:hello: see hypercorn_hello below.
        out[H2_HYPERCORN] = [
            PY, "-m", "hypercorn", "--worker-class", "trio", "--bind", f"127.0.0.1:{port}",
            "run:hypercorn_hello"]
    return out


H2_NAMES = frozenset(h2_servers(0))

HAVE_UVICORN = importlib.util.find_spec("uvicorn") is not None
WS_TRIOSERVE = "trioserve ASGI ws-echo"
WS_WARM_UP = 2  # seconds


def ws_servers(port: int) -> dict[str, list[str]]:
    """WebSocket echo (``apps:ws_echo``, the same app everywhere) over HTTP/1.1: trioserve,
    Uvicorn with each WebSocket implementation that is installed (h11 for the handshake,
    plain asyncio loop) and Hypercorn's trio and asyncio workers (one worker, no access log
    by default). Peers that are not installed are left out."""
    out = {WS_TRIOSERVE: [PY, "-m", "trioserve", "apps:ws_echo", "--app-dir", str(HERE),
                          "--port", str(port), "--http", "h11", "--no-access-log",
                          "--log-level", "warning"]}
    if HAVE_UVICORN:
        impls = []
        if importlib.util.find_spec("websockets") is not None:
            impls += ["websockets", "websockets-sansio"]
        if importlib.util.find_spec("wsproto") is not None:
            impls.append("wsproto")
        for impl in impls:
            out[f"uvicorn ws-echo (h11, {impl})"] = [
                PY, "-m", "uvicorn", "apps:ws_echo", "--app-dir", str(HERE), "--host",
                "127.0.0.1", "--port", str(port), "--http", "h11", "--ws", impl, "--loop",
                "asyncio", "--lifespan", "on", "--no-access-log", "--log-level", "warning"]
    if HAVE_HYPERCORN:
        for worker in ("trio", "asyncio"):
            out[f"hypercorn {worker} ws-echo"] = [
                PY, "-m", "hypercorn", "--worker-class", worker, "--bind", f"127.0.0.1:{port}",
                "apps:ws_echo"]
    return out


WS_NAMES = frozenset(ws_servers(0))


async def hypercorn_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``apps:hello`` plus the lifespan handshake, for Hypercorn only (it imports this module
    from ``benchmarks/``). Hypercorn 0.18's trio worker cannot serve an app that returns from
    the lifespan scope, as ``apps:hello`` does: it then sends ``lifespan.startup`` into a closed
    channel and the worker dies with ``trio.ClosedResourceError`` before serving anything.
    Requests go straight to ``apps.hello``: one more Python call per request, nothing else."""
    if scope["type"] == "lifespan":
        await apps.lifespan(receive, send)
        return
    await apps.hello(scope, receive, send)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, duration: float, connections: int, path: str = "/",
            script: Path | None = None, strict: bool = False,
            stats: dict[str, float] | None = None) -> float:
    """req/s of one ``wrk -t1`` run on CPU 1 against ``path`` (``script``: a wrk Lua script,
    e.g. for a POST body). With ``strict``, a non-2xx response or a socket error raises
    RoundFailed; otherwise it is only printed. ``stats``, when given, receives ``p50_ms`` and
    ``p99_ms``, the latency percentiles of ``wrk --latency``."""
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
         *(["-s", str(script)] if script else []), *(["--latency"] if stats is not None else []),
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        if strict:
            problems = re.findall(r"^\s*(Non-2xx.*|Socket errors.*)$", out, re.M)
            raise RoundFailed("wrk: " + "; ".join(p.strip() for p in problems))
        print(out, file=sys.stderr)
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    if stats is not None:
        for q in ("50", "99"):
            if p := re.search(rf"^\s+{q}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M):
                stats[f"p{q}_ms"] = float(p.group(1)) * WRK_UNITS[p.group(2)]
    return float(m.group(1))


class RoundFailed(Exception):
    """A round that measured nothing trustworthy: requests failed, none succeeded, or the
    server did not start. Reported in the table, never counted in the median."""


H2_WARM_UP = 2  # seconds


def run_h2load(port: int, args: argparse.Namespace, extra: tuple[str, ...] = (),
               clients: int | None = None, streams: int | None = None) -> float:
    """One ``h2load`` run (h2c with prior knowledge, as h2load does for http:// URLs): a
    ``--warm-up-time`` phase, then the measured ``-D`` phase on the same connections; ``extra``
    options (e.g. ``--h1 --rps N``) and ``clients``/``streams`` replace ``--h2-clients`` and
    ``--h2-streams``. Raises RoundFailed unless every request succeeded with a 2xx and every
    client completed some."""
    duration = max(1, round(args.duration))
    clients = args.h2_clients if clients is None else clients
    streams = args.h2_streams if streams is None else streams
    cmd = ["taskset", "-c", "1", "h2load", "-c", str(clients), "-m", str(streams), "-D",
           str(duration), f"--warm-up-time={H2_WARM_UP}", *extra, f"http://127.0.0.1:{port}/"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=duration + H2_WARM_UP + 30)
    except subprocess.TimeoutExpired as exc:
        raise RoundFailed(f"h2load did not finish within {exc.timeout:g} s") from exc
    out = done.stdout
    finished = re.search(r"^finished in [0-9.]+m?s, ([0-9.]+) req/s", out, re.M)
    requests = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored, (\d+) timeout", out, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    per_client = re.search(r"^req/s\s*:\s*([0-9.]+)", out, re.M)  # min over the clients
    if not (finished and requests and codes):
        tail = " / ".join((out + done.stderr).strip().splitlines()[-3:])
        raise RoundFailed(f"h2load exited with {done.returncode}, no statistics: {tail}")
    _, started, _, succeeded, failed, errored, timeouts = map(int, requests.groups())
    _, c3xx, c4xx, c5xx = map(int, codes.groups())
    problems = []
    if failed or errored or timeouts:
        problems.append(f"{failed} failed, {errored} errored, {timeouts} timed out")
    if not succeeded:
        problems.append(f"no request succeeded ({started} started)")
    if c3xx or c4xx or c5xx:
        problems.append(f"status codes {c3xx} 3xx, {c4xx} 4xx, {c5xx} 5xx")
    if succeeded and per_client and float(per_client.group(1)) == 0:
        problems.append("some connection completed no request")
    if done.returncode:
        problems.append(f"h2load exited with {done.returncode}")
    if problems:
        raise RoundFailed(f"h2load: {succeeded} succeeded; " + "; ".join(problems))
    return float(finished.group(1))


@contextmanager
def running(cmd: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The server ``cmd`` on CPU 0, listening on ``port``; stopped on exit. Its output goes
    to results/server.log."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    log = open(HERE / "results" / "server.log", "ab")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
    log.flush()
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=log, stderr=log, env=env,
                            cwd=HERE)
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def measure(name: str, cmd: list[str], port: int, args: argparse.Namespace, path: str = "/",
            script: Path | None = None, strict: bool = False, warm_up: float = 2,
            stats: dict[str, float] | None = None) -> float:
    """req/s of ``cmd`` under wrk after a ``warm_up``-second run (see ``run_wrk`` for the
    options; ``stats`` gets the measured run's latency percentiles)."""
    with running(cmd, port):
        run_wrk(port, warm_up, args.connections, path, script, strict)  # warm-up
        return run_wrk(port, args.duration, args.connections, path, script, strict, stats)


def measure_h2(name: str, cmd: list[str], port: int,
               args: argparse.Namespace) -> tuple[float, str | None]:
    """req/s of one HTTP/2 round and a remark (the server exiting on its own after the run
    while the round itself succeeded). Raises RoundFailed."""
    try:
        with running(cmd, port) as proc:
            rps = run_h2load(port, args)
            time.sleep(0.5)  # a server that crashes when h2load disconnects is gone by now
            code = proc.poll()
    except RuntimeError as exc:  # from wait_listening
        raise RoundFailed(str(exc)) from exc
    if code is None:
        return rps, None
    return rps, (f"the server exited by itself (code {code}) after h2load closed its "
                 "connections (see results/server.log); the round itself succeeded")


WS_SERVER_BOUND = 0.85  # a round whose server used less of its CPU than this gets a remark


def not_server_bound(result: dict[str, Any]) -> bool:
    server = result.get("server_cpu")
    return server is not None and server < WS_SERVER_BOUND


def run_ws_client(port: int, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """One ``ws_echo_client.py`` run on CPU 1: ``--ws-connections`` connections, a
    ``WS_WARM_UP`` phase, then the measured ``--duration``; its JSON result. Raises
    RoundFailed for a failed handshake, a broken connection, a wrong echo or an idle
    connection (the client's ``error``)."""
    cmd = ["taskset", "-c", "1", PY, str(HERE / "ws_echo_client.py"), f"ws://127.0.0.1:{port}/",
           "--connections", str(args.ws_connections), "--size", str(args.ws_size),
           "--processes", str(args.ws_processes), "--duration", f"{args.duration:g}",
           "--warmup", str(WS_WARM_UP), "--server-pid", str(server_pid)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=args.duration + WS_WARM_UP + 30)
    except subprocess.TimeoutExpired as exc:
        raise RoundFailed(f"ws_echo_client.py did not finish within {exc.timeout:g} s") from exc
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = " / ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise RoundFailed(f"ws_echo_client.py exited with {done.returncode}, no result: "
                          f"{tail}") from None
    if "error" in result or done.returncode:
        raise RoundFailed(f"ws_echo_client.py: {result.get('error', done.returncode)}")
    return result


def measure_ws(name: str, cmd: list[str], port: int,
               args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The client's result for one WebSocket echo round and remarks: the server exiting on
    its own, or a round that was not server-bound. Raises RoundFailed."""
    try:
        with running(cmd, port) as proc:
            result = run_ws_client(port, proc.pid, args)  # taskset execs: the server's pid
            time.sleep(0.5)  # a server that crashes when the client disconnects is gone by now
            code = proc.poll()
    except RuntimeError as exc:  # from wait_listening
        raise RoundFailed(str(exc)) from exc
    remarks = []
    if code is not None:
        remarks.append(f"the server exited by itself (code {code}) after the client closed "
                       "its connections (see results/server.log); the round itself succeeded")
    server, client = result.get("server_cpu"), result.get("client_cpu")
    if not_server_bound(result):
        remarks.append(f"the server used only {server:.0%} of its CPU (client {client:.0%}, "
                       f"CPU busy {fmt_busy(result)}): this round was not server-bound")
    return result, remarks


def fmt_busy(result: dict[str, Any]) -> str:
    busy = result.get("cpu_busy") or {}
    return " / ".join(f"{busy[c]:.0%}" for c in ("cpu0", "cpu1") if c in busy) or "-"


def ratio_cells(results: dict[str, list[float | None]], med: dict[str, float | None], name: str,
                base: str | None) -> tuple[str, str]:
    """``name`` against ``base``: the ratio of the medians and the median of the per-round
    ratios, "-" where either is unknown (no base, or no successful round)."""
    if base is None or base not in med:
        return "-", "-"
    value, base_value = med[name], med[base]
    if value is None or base_value is None:
        return "-", "-"
    # Servers of one round run minutes apart at most, so the machine's drift cancels out
    # better in each round's own ratio (rounds where either failed are left out).
    per_round = [a / b for a, b in zip(results[name], results[base], strict=True)
                 if a is not None and b is not None]
    paired = f"{statistics.median(per_round):.2f}x" if per_round else "-"
    return f"{value / base_value:.2f}x", paired


def fmt_rounds(values: list[float | None]) -> str:
    return ", ".join("failed" if x is None else f"{x:,.0f}" for x in values)


def ws_table(results: dict[str, list[float | None]], med: dict[str, float | None],
             ws_results: dict[str, list[dict[str, Any] | None]], args: argparse.Namespace,
             when: str) -> list[str]:
    """The WebSocket echo table: messages/second, latency, CPU shares, trioserve / peer."""

    def median_of(name: str, pick: Any) -> float | None:
        values = [v for r in ws_results[name] if r is not None
                  and (v := pick(r)) is not None]
        return statistics.median(values) if values else None

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    base = WS_TRIOSERVE if WS_TRIOSERVE in ws_results else None
    lines = [
        f"WebSocket echo: ws_echo_client.py, {args.ws_connections} connections x one "
        f"{args.ws_size}-byte text message in flight, {args.ws_processes} client process(es), "
        f"{WS_WARM_UP} s warm-up + {args.duration:g} s measured, server on CPU 0, client on CPU "
        "1, " + when + " (failed rounds left out)",
        "",
        "| WebSocket echo server | msg/s (median) | rounds | latency p50 / p99 ms (median) | "
        "server CPU | server CPU µs/msg | client CPU | trioserve / this (ratio of medians) | "
        "trioserve / this (median of per-round ratios) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ws_results:
        value = med[name]
        # trioserve over this row's server: the peer is the base of the ratio
        cells = ratio_cells(results, med, base, name) if base else ("-", "-")
        p50 = median_of(name, lambda r: (r.get("latency_ms") or {}).get("p50"))
        p99 = median_of(name, lambda r: (r.get("latency_ms") or {}).get("p99"))
        latency = "-" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}"
        us = median_of(name, lambda r: r.get("server_cpu_us_per_message"))
        us_per_message = "-" if us is None else f"{us:.0f}"
        shown = "all rounds failed (see below)" if value is None else f"{value:,.0f}"
        rounds = ", ".join("failed" if r is None else f"{r['messages_per_second']:,.0f}"
                           + ("*" if not_server_bound(r) else "") for r in ws_results[name])
        lines.append(
            f"| {name} | {shown} | {rounds} | {latency} | "
            f"{pct(median_of(name, lambda r: r.get('server_cpu')))} | {us_per_message} | "
            f"{pct(median_of(name, lambda r: r.get('client_cpu')))} | {cells[0]} | {cells[1]} |")
    if any(r is not None and not_server_bound(r) for v in ws_results.values() for r in v):
        lines += ["", f"\\* the server used under {WS_SERVER_BOUND:.0%} of its CPU in that "
                  "round (see below): not server-bound, usually other work on the machine; "
                  "such rounds still count in the medians"]
    missing = [what for what, have in (("uvicorn", HAVE_UVICORN), ("hypercorn", HAVE_HYPERCORN))
               if not have]
    if missing:
        lines += ["", f"Not installed, no rows: {', '.join(missing)} (`pip install uvicorn "
                  "websockets wsproto hypercorn`)."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", help="regex: run only the servers whose name matches")
    ap.add_argument("--wsgi", action="store_true",
                    help="also run the WSGI hello world against Gunicorn gthread")
    ap.add_argument("--h2", action="store_true",
                    help="also run HTTP/2 (h2c, prior knowledge) under h2load: the Trio + h2 "
                         "floor, trioserve and Hypercorn's trio worker ('--only h2c' for "
                         "these alone)")
    ap.add_argument("--h2-clients", type=int, default=16, help="h2load -c (default 16)")
    ap.add_argument("--h2-streams", type=int, default=10,
                    help="h2load -m, concurrent streams per connection (default 10)")
    ap.add_argument("--ws", action="store_true",
                    help="also run the WebSocket echo (ws_echo_client.py): trioserve, Uvicorn "
                         "and Hypercorn ('--only ws-echo' for these alone)")
    ap.add_argument("--ws-connections", type=int, default=8,
                    help="WebSocket connections, one message in flight each (default 8)")
    ap.add_argument("--ws-size", type=int, default=32, help="WebSocket message bytes (default 32)")
    ap.add_argument("--ws-processes", type=int, default=1,
                    help="client processes sharing CPU 1 (default 1; see ws_echo_client.py)")
    args = ap.parse_args()

    def all_servers(port: int) -> dict[str, list[str]]:
        return {**servers(port), **(wsgi_servers(port) if args.wsgi else {}),
                **(h2_servers(port) if args.h2 else {}),
                **(ws_servers(port) if args.ws else {})}

    names = [n for n in all_servers(0) if not args.only or re.search(args.only, n)]
    tools = {"taskset"}
    tools |= {"h2load" if n in H2_NAMES else "wrk" for n in names if n not in WS_NAMES}
    for tool in sorted(tools):
        if shutil.which(tool) is None:
            print(f"benchmarks/run.py needs {tool!r} on PATH", file=sys.stderr)
            return 2
    if (args.h2 or args.ws) and not HAVE_HYPERCORN:
        print("hypercorn is not installed (pip install hypercorn): no Hypercorn row",
              file=sys.stderr)
    if args.ws and not HAVE_UVICORN:
        print("uvicorn is not installed (pip install uvicorn websockets wsproto): no Uvicorn "
              "rows", file=sys.stderr)
    (HERE / "results").mkdir(exist_ok=True)
    results: dict[str, list[float | None]] = {}
    remarks: list[str] = []  # failed rounds and other events, listed under the tables
    ws_results: dict[str, list[dict[str, Any] | None]] = {}  # the client's JSON per round

    for r in range(args.rounds):
        for name in names:
            port = free_port()
            cmd = all_servers(port)[name]
            rps: float | None
            remark = None
            if name in H2_NAMES:
                try:
                    rps, remark = measure_h2(name, cmd, port, args)
                except RoundFailed as exc:
                    rps, remark = None, f"FAILED: {exc}"
            elif name in WS_NAMES:
                ws: dict[str, Any] | None
                try:
                    ws, ws_remarks = measure_ws(name, cmd, port, args)
                    rps, remark = ws["messages_per_second"], "; ".join(ws_remarks) or None
                except RoundFailed as exc:
                    ws, rps, remark = None, None, f"FAILED: {exc}"
                ws_results.setdefault(name, []).append(ws)
                with open(HERE / "results" / "ws-echo.jsonl", "a") as f:  # every round in full
                    f.write(json.dumps({"round": r + 1, "name": name, "result": ws,
                                        "remark": remark}) + "\n")
            else:
                rps = measure(name, cmd, port, args)
            results.setdefault(name, []).append(rps)
            unit = "msg/s" if name in WS_NAMES else "req/s"
            shown = "FAILED" if rps is None else f"{rps:,.0f} {unit}"
            print(f"round {r + 1}: {name}: {shown}", file=sys.stderr, flush=True)
            if remark:
                remarks.append(f"round {r + 1}, {name}: {remark}")
                print(f"  {remark}", file=sys.stderr, flush=True)
    med = {name: statistics.median(ok) if (ok := [x for x in v if x is not None]) else None
           for name, v in results.items()}
    when = (f"median of {args.rounds} rounds; {time.strftime('%Y-%m-%d %H:%M')}, "
            f"Python {sys.version.split()[0]}")
    h1 = {n: v for n, v in med.items()
          if "WSGI" not in n and n not in H2_NAMES and n not in WS_NAMES}
    floors = {n: v for n, v in h1.items() if n.startswith("floor") and v is not None}
    wsgi = {n: v for n, v in med.items() if "WSGI" in n}
    lines: list[str] = []
    if h1 or wsgi:
        lines += [f"wrk -t1 -c{args.connections} -d{args.duration:g}s, server on CPU 0, wrk on "
                  "CPU 1, " + when]
    if h1:
        lines += [
            "",
            "| server | req/s (median) | rounds | " + " | ".join(f"vs {n}" for n in floors)
            + " |",
            "|---|---:|---|" + "---:|" * len(floors),
        ]
        for name, value in h1.items():
            assert value is not None  # wrk rounds raise instead of failing
            ratios = " | ".join(f"{value / f:.2f}x" for f in floors.values())
            lines.append(f"| {name} | {value:,.0f} | {fmt_rounds(results[name])} | {ratios} |")
    if wsgi:
        base_name = next((n for n in wsgi if n.startswith("gunicorn")), None)
        lines += ["", "| WSGI server | req/s (median) | rounds | vs gunicorn gthread (ratio of "
                  "medians) | vs gunicorn gthread (median of per-round ratios) |",
                  "|---|---:|---|---:|---:|"]
        for name, value in wsgi.items():
            ratio, paired = ratio_cells(results, med, name, base_name)
            lines.append(f"| {name} | {value:,.0f} | {fmt_rounds(results[name])} | {ratio} | "
                         f"{paired} |")
    h2 = {n: v for n, v in med.items() if n in H2_NAMES}
    if h2:
        if lines:
            lines.append("")
        lines += [
            f"h2load -c{args.h2_clients} -m{args.h2_streams} -D{max(1, round(args.duration))}s "
            f"--warm-up-time={H2_WARM_UP}s (h2c, prior knowledge), server on CPU 0, h2load on "
            "CPU 1, " + when + " (failed rounds left out)",
            "",
            "| HTTP/2 server | req/s (median) | rounds | vs floor (ratio of medians) | vs floor "
            "(median of per-round ratios) | vs hypercorn trio (ratio of medians) | vs hypercorn "
            "trio (median of per-round ratios) |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        floor = H2_FLOOR if H2_FLOOR in h2 else None
        hyper = H2_HYPERCORN if H2_HYPERCORN in h2 else None
        for name, value in h2.items():
            cells = [*ratio_cells(results, med, name, floor),
                     *ratio_cells(results, med, name, hyper)]
            shown = "all rounds failed (see below)" if value is None else f"{value:,.0f}"
            lines.append(f"| {name} | {shown} | {fmt_rounds(results[name])} | "
                         + " | ".join(cells) + " |")
        if args.h2 and not HAVE_HYPERCORN:
            lines += ["", "Hypercorn is not installed (`pip install hypercorn`): no Hypercorn "
                      "row, no ratios to it."]
    if ws_results:
        if lines:
            lines.append("")
        lines += ws_table(results, med, ws_results, args, when)
    if remarks:
        lines += ["", *(f"- {remark}" for remark in remarks)]
    table = "\n".join(lines)
    print(table)
    (HERE / "results" / "latest.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
