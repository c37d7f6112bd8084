"""Per-request overhead: trioserve against the Trio + h11 floor, side by side in one run.

Each server runs pinned to CPU 0 (``taskset -c 0``) and ``wrk`` to CPU 1, one server after
another, for several alternating rounds; the table reports the median requests per second of
each and its ratio to the floors. Only loopback (127.0.0.1) is used.

    python benchmarks/run.py                 # 3 rounds x 10 s, 50 connections
    python benchmarks/run.py --rounds 5 --duration 15 --connections 100

Needs ``wrk`` and ``taskset`` (Debian: ``apt-get install wrk util-linux``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def run_wrk(port: int, duration: float, connections: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return float(m.group(1))


def measure(name: str, cmd: list[str], port: int, args: argparse.Namespace) -> float:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    log = open(HERE / "results" / "server.log", "ab")
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=log, stderr=log, env=env,
                            cwd=HERE)
    try:
        wait_listening(port, proc)
        run_wrk(port, 2, args.connections)  # warm-up
        return run_wrk(port, args.duration, args.connections)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", help="regex: run only the servers whose name matches")
    ap.add_argument("--wsgi", action="store_true",
                    help="also run the WSGI hello world against Gunicorn gthread")
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"benchmarks/run.py needs {tool!r} on PATH", file=sys.stderr)
            return 2
    (HERE / "results").mkdir(exist_ok=True)
    results: dict[str, list[float]] = {}

    def all_servers(port: int) -> dict[str, list[str]]:
        return {**servers(port), **(wsgi_servers(port) if args.wsgi else {})}

    for r in range(args.rounds):
        for name in all_servers(0):
            if args.only and not re.search(args.only, name):
                continue
            port = free_port()
            rps = measure(name, all_servers(port)[name], port, args)
            results.setdefault(name, []).append(rps)
            print(f"round {r + 1}: {name}: {rps:,.0f} req/s", file=sys.stderr, flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    floors = {n: v for n, v in med.items() if n.startswith("floor")}
    lines = [
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, server on CPU 0, wrk on CPU 1, "
        f"median of {args.rounds} rounds; {time.strftime('%Y-%m-%d %H:%M')}, "
        f"Python {sys.version.split()[0]}",
        "",
        "| server | req/s (median) | rounds | " + " | ".join(f"vs {n}" for n in floors) + " |",
        "|---|---:|---|" + "---:|" * len(floors),
    ]
    for name, value in med.items():
        if "WSGI" in name:
            continue
        ratios = " | ".join(f"{value / f:.2f}x" for f in floors.values())
        rounds = ", ".join(f"{x:,.0f}" for x in results[name])
        lines.append(f"| {name} | {value:,.0f} | {rounds} | {ratios} |")
    wsgi = {n: v for n, v in med.items() if "WSGI" in n}
    if wsgi:
        base_name = next((n for n in wsgi if n.startswith("gunicorn")), None)
        lines += ["", "| WSGI server | req/s (median) | rounds | vs gunicorn gthread (ratio of "
                  "medians) | vs gunicorn gthread (median of per-round ratios) |",
                  "|---|---:|---|---:|---:|"]
        for name, value in wsgi.items():
            rounds = ", ".join(f"{x:,.0f}" for x in results[name])
            if base_name is None:
                ratio = paired = "-"
            else:
                ratio = f"{value / med[base_name]:.2f}x"
                # Servers of one round run minutes apart at most, so the machine's drift
                # cancels out better in each round's own ratio.
                per_round = [a / b for a, b in zip(results[name], results[base_name],
                                                   strict=True)]
                paired = f"{statistics.median(per_round):.2f}x"
            lines.append(f"| {name} | {value:,.0f} | {rounds} | {ratio} | {paired} |")
    table = "\n".join(lines)
    print(table)
    (HERE / "results" / "latest.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
