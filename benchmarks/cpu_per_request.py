"""Server CPU time per request, side by side: the steadiest number for comparing two commits.

Each server runs pinned to CPU 0 and the load generator to CPU 1 (``wrk -t1 -c50``, or
``h2load -c16 -m10`` with ``--h2``), one after another, for several alternating rounds. For each
round it reads the server process tree's CPU time (``utime + stime`` from ``/proc``) before and
after the measured run and divides by the requests completed; the table gives the median
microseconds per request and requests per second. On a machine whose speed drifts (a VM, a
laptop on battery) requests per second move by 10-20 % between runs; CPU per request measured
in the same run moves by a few percent, so a 3 % change is visible. ``instructions.sh`` counts
instructions instead, where ``perf`` may (often not in a VM).

    python benchmarks/cpu_per_request.py                       # this checkout, h11 and httptools
    python benchmarks/cpu_per_request.py --against HEAD~3      # and the same at another commit
    python benchmarks/cpu_per_request.py --app apps:wsgi_hello --against main --rounds 5
    python benchmarks/cpu_per_request.py --h2 --against 1a2b3c4

``--against REV`` checks REV out in a temporary ``git worktree`` and runs its trioserve (its
``trioserve`` package first on ``PYTHONPATH``) beside this checkout's, with the same
interpreter and packages. Loopback only. Needs wrk (or h2load), taskset and Linux's /proc.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every process descended from it (Gunicorn's worker)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        child = int(entry)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(children.get(p, ()))
    return total


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary git worktree, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="trioserve-rev-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def commands(args: argparse.Namespace, other: Path | None) -> dict[str, list[str]]:
    """Row name -> server command (``PORT`` stands for the port)."""
    parsers = ["h11"] if args.h2 else args.parsers
    out: dict[str, list[str]] = {}
    for label, root in (("this checkout", ROOT), (f"{args.against}", other)):
        if root is None:
            continue
        prefix = [] if root == ROOT else ["env", f"PYTHONPATH={root}"]
        for parser in parsers:
            name = f"{label}: {args.app}" + ("" if args.h2 else f" ({parser})")
            cmd = [*prefix, run.PY, "-m", "trioserve", args.app, "--app-dir",
                   str(root / "benchmarks"), "--port", "PORT", "--http", parser,
                   "--no-access-log", "--log-level", "warning", *args.server_args]
            out[name] = cmd
            if args.also_with:
                out[f"{name} {args.also_with}"] = [*cmd, *args.also_with.split()]
    return out


def load(port: int, args: argparse.Namespace, duration: int) -> tuple[int, float]:
    """Requests completed (all 2xx; else RoundFailed) and seconds taken by one run of the load
    generator on CPU 1."""
    url = f"http://127.0.0.1:{port}/"
    if args.h2:
        cmd = ["h2load", "-c16", "-m10", f"-D{duration}", url]
    else:
        cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{duration}s", url]
    out = subprocess.run(["taskset", "-c", "1", *cmd], capture_output=True, text=True,
                         timeout=duration + 30).stdout
    if args.h2:
        m = re.search(r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed", out, re.M)
        codes = re.search(r"^status codes: (\d+) 2xx", out, re.M)
        if not m or not codes or m.group(3) != "0" or codes.group(1) != m.group(2):
            raise run.RoundFailed(f"h2load: {out.strip().splitlines()[-8:]}")
        return int(m.group(2)), float(duration)
    m = re.search(r"(\d+) requests in ([0-9.]+)(ms|s|m)", out)
    if not m or "Non-2xx" in out or "Socket errors" in out:
        raise run.RoundFailed(f"wrk: {out.strip().splitlines()[-6:]}")
    seconds = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    return int(m.group(1)), seconds


def measure(cmd: list[str], args: argparse.Namespace) -> tuple[float, float]:
    """(requests per second, CPU microseconds per request) of one round."""
    port = run.free_port()
    cmd = [str(port) if part == "PORT" else part for part in cmd]
    with run.running(cmd, port) as proc:
        load(port, args, 1)  # warm-up
        before = tree_cpu_seconds(proc.pid)
        requests, seconds = load(port, args, args.duration)
        spent = tree_cpu_seconds(proc.pid) - before
    return requests / seconds, spent / max(requests, 1) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="REV", help="also run trioserve at this git "
                        "revision (a temporary worktree)")
    parser.add_argument("--app", default="apps:hello", help="app from benchmarks/apps.py "
                        "(default apps:hello; apps:wsgi_hello for WSGI)")
    parser.add_argument("--parsers", default="h11,httptools", type=lambda s: s.split(","),
                        help="HTTP/1.1 parsers, comma-separated (default h11,httptools)")
    parser.add_argument("--h2", action="store_true", help="HTTP/2 (h2c) under h2load instead")
    parser.add_argument("--also-with", metavar="ARGS", default="",
                        help="also run every server with these options added, e.g. "
                             "--also-with='--loop asyncio-compat'")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per round "
                        "(default 4)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("server_args", nargs="*", help="more trioserve options, after --")
    args = parser.parse_args()
    if shutil.which("taskset") is None or shutil.which("h2load" if args.h2 else "wrk") is None:
        print("needs taskset and " + ("h2load" if args.h2 else "wrk"), file=sys.stderr)
        return 2
    (HERE / "results").mkdir(exist_ok=True)
    with _maybe_worktree(args.against) as other:
        rows = commands(args, other)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, cmd in rows.items():
                try:
                    results[name].append(measure(cmd, args))
                except (run.RoundFailed, RuntimeError) as exc:
                    print(f"{name}: round failed: {exc}", file=sys.stderr)
    print("| server | req/s (median) | CPU us per request (median) | rounds (us) |")
    print("|---|---:|---:|---|")
    for name, values in results.items():
        if not values:
            print(f"| {name} | - | - | every round failed |")
            continue
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"| {name} | {rps:,.0f} | {cpu:.1f} | "
              f"{', '.join(f'{v[1]:.1f}' for v in values)} |")
    return 0


@contextmanager
def _maybe_worktree(rev: str | None) -> Iterator[Path | None]:
    """:func:`worktree` of ``rev``, or ``None`` without one."""
    if rev is None:
        yield None
    else:
        with worktree(rev) as path:
            yield path


if __name__ == "__main__":
    sys.exit(main())
