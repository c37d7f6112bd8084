"""Issue 8's benchmark suite: trioserve against its peers, every scenario, in one run.

    python benchmarks/suite.py                 # 2 rounds x 5 s, every scenario (about 15 min)
    python benchmarks/suite.py --quick         # 1 round x 3 s, fewer peers (about 4 min)
    python benchmarks/suite.py --only 'h2c|ws-echo'   # a regex on "scenario: server"
    python benchmarks/suite.py --dry-run       # list scenarios, servers and commands; run nothing
    python benchmarks/suite.py --from-json benchmarks/results/suite.json  # re-render only

Servers run one after another (in every round, each scenario's servers in turn), each pinned
to CPU 0, the load generator to CPU 1 (``wrk`` for HTTP/1.1, ``h2load`` for HTTP/2 and for
the fixed-rate latency, ``ws_echo_client.py`` for WebSockets), loopback only. The machinery
(pinning, starting and stopping a server, wrk, h2load, the WebSocket client, the idle-connection
memory measurement) is ``run.py``'s and ``idle_connections.py``'s; this file only chooses
servers and scenarios and writes ``docs/benchmarks.md`` and ``docs/benchmarks.png``. The raw
numbers go to ``benchmarks/results/suite.json`` (``--from-json`` renders them again).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from the tests, not run as a script
    sys.path.insert(0, str(HERE))

import run  # noqa: E402

ROOT = HERE.parent
PY = run.PY

# --------------------------------------------------------------------------------- the servers

TS_H11 = "trioserve (h11)"
TS_HTTPTOOLS = "trioserve (httptools)"
FLOOR_PREBUILT = "floor: trio+h11 (prebuilt bytes)"
FLOOR_SEND = "floor: trio+h11 (h11 send)"
FLOOR_H2 = "floor: trio+h2 (canned response)"
UPLOAD_SIZE = 1 << 20
# Hypercorn (h11) sends "HTTP/1.1 200 " with an empty reason phrase, valid HTTP; h2load 1.52
# reads no status from it and counts every response as failed (its -v output shows the 200).
HYPERCORN_REASON = ("h2load counts its responses as failed: it reads no status from a status "
                    "line with an empty reason phrase (`HTTP/1.1 200 `), which Hypercorn sends")

Command = Callable[[int], list[str]]


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def trioserve(app: str, http: str | None = "h11") -> Command:
    return lambda port: [PY, "-m", "trioserve", app, "--app-dir", str(HERE), "--port", str(port),
                         *(["--http", http] if http else []), "--no-access-log", "--log-level",
                         "warning"]


def uvicorn(app: str, fast: bool, ws: str | None = None) -> Command:
    http, loop = ("httptools", "uvloop") if fast else ("h11", "asyncio")
    return lambda port: [PY, "-m", "uvicorn", app, "--app-dir", str(HERE), "--host", "127.0.0.1",
                         "--port", str(port), "--http", http, "--loop", loop,
                         *(["--ws", ws] if ws else ["--ws", "none"]), "--lifespan", "auto",
                         "--no-access-log", "--log-level", "warning"]


def hypercorn(app: str, worker: str) -> Command:
    # apps:hello returns from the lifespan scope, which kills Hypercorn's trio worker: it gets
    # run:hypercorn_hello (see run.py); the suite's other apps answer the lifespan handshake.
    app = "run:hypercorn_hello" if app == "apps:hello" else app
    return lambda port: [PY, "-m", "hypercorn", "--worker-class", worker, "--bind",
                         f"127.0.0.1:{port}", app]


def granian(app: str, interface: str = "asgi", http: str = "1") -> Command:
    return lambda port: [PY, "-m", "granian", "--interface", interface, "--host", "127.0.0.1",
                         "--port", str(port), "--workers", "1", "--http", http, "--log-level",
                         "warning", app]


def gunicorn(app: str) -> Command:
    return lambda port: [PY, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "1",
                         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--chdir",
                         str(HERE), app]


def floor_h11(mode: str) -> Command:
    return lambda port: [PY, str(HERE / "floor_h11.py"), str(port), mode]


def floor_h2(port: int) -> list[str]:
    return [PY, str(HERE / "floor_h2.py"), str(port)]


REQUIRES = {"uvicorn": "uvicorn", "hypercorn": "hypercorn", "granian": "granian",
            "gunicorn": "gunicorn"}


def missing(name: str) -> str | None:
    """Why server ``name`` cannot run here (a peer or parser not installed), or None."""
    needs = [m for prefix, m in REQUIRES.items() if name.startswith(prefix)]
    if "httptools" in name:
        needs.append("httptools")
    if "uvloop" in name:
        needs.append("uvloop")
    absent = [m for m in needs if not have(m)]
    return f"not installed: {', '.join(absent)}" if absent else None


def asgi_peers(app: str, quick: bool) -> dict[str, Command]:
    """trioserve with each parser and the ASGI peers, all serving ``app`` over HTTP/1.1."""
    out = {TS_H11: trioserve(app, "h11"), TS_HTTPTOOLS: trioserve(app, "httptools"),
           "uvicorn (h11)": uvicorn(app, fast=False),
           "uvicorn (httptools+uvloop)": uvicorn(app, fast=True),
           "hypercorn (asyncio)": hypercorn(app, "asyncio"),
           "hypercorn (trio)": hypercorn(app, "trio"),
           "granian (ASGI)": granian(app)}
    if quick:  # the peers the targets name stay
        for name in ("uvicorn (h11)", "hypercorn (asyncio)"):
            del out[name]
    return out


# ------------------------------------------------------------------------------- the scenarios


@dataclass
class Scenario:
    """One table: ``kind`` says which load generator and what is measured."""

    key: str  # short, in --only and in the chart
    title: str
    kind: str  # "wrk" | "h2" | "ws" | "latency" | "rss"
    servers: dict[str, Command]
    base: str  # the trioserve row the ratios are taken to
    floor: str | None = None
    path: str = "/"
    upload: bool = False  # POST a 1 MiB body (wrk Lua script)
    skipped: dict[str, str] = field(default_factory=dict)  # server -> why there is no row
    description: str = ""


def scenarios(quick: bool = False) -> list[Scenario]:
    """Every scenario, in the order they run. ``quick`` leaves out some peers (not trioserve,
    the floors, Uvicorn httptools+uvloop, Hypercorn trio or Granian)."""
    hello = {FLOOR_PREBUILT: floor_h11("prebuilt"), FLOOR_SEND: floor_h11("h11"),
             **asgi_peers("apps:hello", quick=False)}
    if quick:
        del hello[FLOOR_SEND]
    wsgi = {TS_H11: trioserve("apps:wsgi_hello", "h11"),
            TS_HTTPTOOLS: trioserve("apps:wsgi_hello", "httptools"),
            "gunicorn gthread (1 worker, 8 threads)": gunicorn("apps:wsgi_hello"),
            "granian (WSGI)": granian("apps:wsgi_hello", "wsgi")}
    h2 = {FLOOR_H2: floor_h2, "trioserve (h2c)": trioserve("apps:hello", None),
          "hypercorn (asyncio, h2c)": hypercorn("apps:hello", "asyncio"),
          "hypercorn (trio, h2c)": hypercorn("apps:hello", "trio"),
          "granian (ASGI, h2c)": granian("apps:hello", http="2")}
    ws_impl = "websockets-sansio" if have("websockets") else "wsproto"
    ws: dict[str, Command] = {"trioserve (h11)": trioserve("apps:ws_echo", "h11"),
                              f"uvicorn (h11, {ws_impl})": uvicorn("apps:ws_echo", False, ws_impl),
                              f"uvicorn (httptools+uvloop, {ws_impl})":
                                  uvicorn("apps:ws_echo", True, ws_impl),
                              "hypercorn (asyncio)": hypercorn("apps:ws_echo", "asyncio"),
                              "hypercorn (trio)": hypercorn("apps:ws_echo", "trio"),
                              "granian (ASGI)": granian("apps:ws_echo")}
    if quick:
        for name in (f"uvicorn (h11, {ws_impl})", "hypercorn (asyncio)"):
            del ws[name]
    no_h2c = {"uvicorn": "Uvicorn does not serve HTTP/2",
              "gunicorn": "Gunicorn does not serve HTTP/2"}
    wsgi_only = {"gunicorn gthread": "WSGI only (the WSGI hello world scenario)"}
    asgi_only = {"uvicorn, hypercorn": "their WSGI support is an adapter around their ASGI "
                 "core; the issue compares WSGI against Gunicorn gthread"}
    floor_note = {"floors": "no floor for this scenario (floor_h11.py answers Hello, world! only)"}
    rss_servers: dict[str, Command] = {name: (lambda port: []) for name in
                   ("trioserve", "uvicorn", "hypercorn-trio", "hypercorn-asyncio")}
    return [
        Scenario("asgi-hello", "ASGI hello world (HTTP/1.1)", "wrk", hello, TS_H11, FLOOR_PREBUILT,
                 skipped=wsgi_only,
                 description="`GET /` answered `Hello, world!` with a Content-Length, keep-alive"),
        Scenario("wsgi-hello", "WSGI hello world (HTTP/1.1)", "wrk", wsgi, TS_H11,
                 skipped={**asgi_only, **floor_note},
                 description="`apps:wsgi_hello`; Gunicorn gthread as the issue sets it"),
        Scenario("64k", "64 KiB response (HTTP/1.1)", "wrk", asgi_peers("apps:big", quick),
                 TS_H11, skipped={**wsgi_only, **floor_note},
                 description="`apps:big`: one 65,536-byte body with a Content-Length"),
        Scenario("upload", "1 MiB upload (HTTP/1.1)", "wrk", asgi_peers("apps:upload", quick),
                 TS_H11, upload=True, skipped={**wsgi_only, **floor_note},
                 description="`POST /` with a 1 MiB body (wrk Lua script); `apps:upload` reads "
                             "it all and answers its length"),
        Scenario("stream", "Streaming response (HTTP/1.1)", "wrk",
                 asgi_peers("apps:stream", quick), TS_H11, skipped={**wsgi_only, **floor_note},
                 description="`apps:stream`: 16 body messages of 1 KiB, no Content-Length "
                             "(chunked)"),
        Scenario("h2c", "HTTP/2, 16 connections x 10 streams (h2c)", "h2", h2,
                 "trioserve (h2c)", FLOOR_H2, skipped=no_h2c,
                 description="`h2load -c16 -m10`, prior knowledge, `apps:hello`"),
        Scenario("ws-echo", "WebSocket echo", "ws", ws, "trioserve (h11)",
                 skipped={**wsgi_only, **floor_note},
                 description="`ws_echo_client.py`: 8 connections, one 32-byte text message in "
                             "flight each; messages/second"),
        Scenario("latency", "Latency at a fixed request rate (HTTP/1.1)", "latency",
                 {n: c for n, c in asgi_peers("apps:hello", quick).items()
                  if not n.startswith("hypercorn")}, TS_H11,
                 skipped={**wsgi_only, **floor_note, "hypercorn": HYPERCORN_REASON},
                 description="`h2load --h1 -c10 -m1 --rps R/10`: R requests/second in all, "
                             "p50/p99 of every request's time from h2load's log"),
        Scenario("rss-idle", "RSS with 1,000 idle keep-alive connections", "rss", rss_servers,
                 "trioserve", skipped={"granian, gunicorn": "not in idle_connections.py",
                                       **floor_note},
                 description="`idle_connections.py`'s measurement: RSS of the server's process "
                             "tree before and after 1,000 connections each made one `GET /` "
                             "and stayed open"),
    ]


# ------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    name: str
    rounds: list[float | None] = field(default_factory=list)  # req/s, msg/s, p99 ms or bytes
    extra: list[dict[str, Any] | None] = field(default_factory=list)
    skipped: str | None = None


def upload_script() -> Path:
    path = HERE / "results" / "upload.lua"
    path.write_text('wrk.method = "POST"\n'
                    f'wrk.body = string.rep("x", {UPLOAD_SIZE})\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_latency(cmd: list[str], port: int, args: argparse.Namespace) -> dict[str, Any]:
    """p50/p99 (ms) of every request of one fixed-rate h2load --h1 run, and the rate achieved.
    Raises RoundFailed (a failed request, a server that did not start)."""
    log = HERE / "results" / "latency.log"
    log.unlink(missing_ok=True)
    clients = 10
    try:
        with run.running(cmd, port):
            achieved = run.run_h2load(port, args, ("--h1", f"--rps={args.rate / clients:g}",
                                                   f"--log-file={log}"), clients, 1)
    except RuntimeError as exc:  # from wait_listening
        raise run.RoundFailed(str(exc)) from exc
    times = [int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line]
    if not times:
        raise run.RoundFailed("h2load logged no request")
    return {"p50": percentile(times, 0.50), "p99": percentile(times, 0.99),
            "achieved": achieved, "requests": len(times)}


def measure_one(sc: Scenario, name: str, args: argparse.Namespace
                ) -> tuple[float, dict[str, Any] | None, str | None]:
    """One round of one server: its value, the details and a remark. Raises RoundFailed."""
    port = run.free_port()
    cmd = sc.servers[name](port)
    if sc.kind == "wrk":
        stats: dict[str, float] = {}
        try:
            value = run.measure(name, cmd, port, args, sc.path,
                                upload_script() if sc.upload else None, strict=True,
                                warm_up=args.warm_up, stats=stats)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise run.RoundFailed(str(exc)) from exc
        return value, dict(stats) or None, None
    if sc.kind == "h2":
        value, remark = run.measure_h2(name, cmd, port, args)
        return value, None, remark
    if sc.kind == "ws":
        result, remarks = run.measure_ws(name, cmd, port, args)
        return result["messages_per_second"], result, "; ".join(remarks) or None
    if sc.kind == "latency":
        result = measure_latency(cmd, port, args)
        remark = None
        if result["achieved"] < 0.95 * args.rate:
            remark = (f"did not sustain the rate: {result['achieved']:,.0f} of "
                      f"{args.rate:,} req/s")
        return result["p99"], result, remark
    if sc.kind == "rss":
        import idle_connections

        try:
            r = idle_connections.measure(name, args.idle_connections, "http1")
        except RuntimeError as exc:
            raise run.RoundFailed(str(exc)) from exc
        detail = {"held": r.held, "before": r.before, "after": r.after,
                  "errors": len(r.errors)}
        remark = f"{len(r.errors)} connections failed, e.g. {r.errors[0]}" if r.errors else None
        return r.per_connection, detail, remark
    raise ValueError(f"unknown scenario kind {sc.kind!r}")


def selected(sc: Scenario, only: str | None) -> list[str]:
    return [n for n in sc.servers if not only or re.search(only, f"{sc.key}: {n}")]


def run_all(scs: list[Scenario], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every selected server of every scenario, ``args.rounds`` alternating rounds; the
    results as JSON-able dicts (see ``render``)."""
    out = []
    for sc in scs:
        names = selected(sc, args.only)
        if not names:
            continue
        rows = {n: Row(n) for n in names}
        remarks: list[str] = []
        runnable = []
        for n in names:
            why = missing(n if sc.kind != "rss" else n.split("-")[0])
            if why:
                rows[n].skipped = why
            else:
                runnable.append(n)
        rounds = 1 if sc.kind == "rss" else args.rounds  # memory does not drift like speed
        for r in range(rounds):
            for name in runnable:
                value: float | None
                try:
                    value, detail, remark = measure_one(sc, name, args)
                except run.RoundFailed as exc:
                    value, detail, remark = None, None, f"FAILED: {exc}"
                rows[name].rounds.append(value)
                rows[name].extra.append(detail)
                shown = "FAILED" if value is None else f"{value:,.2f}"
                print(f"{sc.key} round {r + 1}: {name}: {shown}", file=sys.stderr, flush=True)
                if remark:
                    remarks.append(f"round {r + 1}, {name}: {remark}")
                    print(f"  {remark}", file=sys.stderr, flush=True)
        out.append({"key": sc.key, "title": sc.title, "kind": sc.kind, "base": sc.base,
                    "floor": sc.floor if sc.floor in names else None,
                    "description": sc.description + (f" (R = {args.rate:,})"
                                                     if sc.kind == "latency" else ""),
                    "skipped": sc.skipped,
                    "remarks": remarks,
                    "rows": [{"name": row.name, "rounds": row.rounds, "extra": row.extra,
                              "skipped": row.skipped} for row in rows.values()]})
    return out


# -------------------------------------------------------------------------------- rendering

UNITS = {"wrk": "req/s", "h2": "req/s", "ws": "msg/s"}


def medians(sc: dict[str, Any]) -> tuple[dict[str, list[float | None]], dict[str, float | None]]:
    results = {row["name"]: row["rounds"] for row in sc["rows"] if not row["skipped"]}
    med = {n: statistics.median(ok) if (ok := [x for x in v if x is not None]) else None
           for n, v in results.items()}
    return results, med


def extra_median(row: dict[str, Any], key: str) -> float | None:
    values = [e[key] for e in row["extra"] if e and e.get(key) is not None]
    return statistics.median(values) if values else None


def scenario_table(sc: dict[str, Any]) -> list[str]:
    """The Markdown lines of one scenario's table, skipped servers and remarks under it."""
    results, med = medians(sc)
    base = sc["base"] if sc["base"] in med else None
    kind = sc["kind"]
    lines = [f"### {sc['title']}", "", sc["description"] + ".", ""]
    if kind in UNITS:
        unit = UNITS[kind]
        lines += [f"| server | {unit} (median) | rounds | vs floor | {sc['base']} / this | "
                  "p99 ms at full load (median) |", "|---|---:|---|---:|---:|---:|"]
        for row in sc["rows"]:
            name = row["name"]
            if row["skipped"]:
                lines.append(f"| {name} | skipped: {row['skipped']} | | | | |")
                continue
            # wrk --latency, or the WebSocket client's round trips; h2load gives none
            p99 = extra_median(row, "p99_ms")
            if p99 is None:
                ws = [e["latency_ms"]["p99"] for e in row["extra"] if e and e.get("latency_ms")]
                p99 = statistics.median(ws) if ws else None
            value = med[name]
            shown = "all rounds failed" if value is None else f"{value:,.0f}"
            floor = run.ratio_cells(results, med, name, sc["floor"])[1]
            versus = run.ratio_cells(results, med, base, name)[1] if base else "-"
            lines.append(f"| {name} | {shown} | {run.fmt_rounds(results[name])} | {floor} | "
                         f"{versus} | {'-' if p99 is None else f'{p99:,.2f}'} |")
    elif kind == "latency":
        lines += ["| server | p50 ms | p99 ms | req/s achieved | rounds (p99 ms) | "
                  f"p99 / {sc['base']}'s |", "|---|---:|---:|---:|---|---:|"]
        base_p99 = med.get(sc["base"])
        for row in sc["rows"]:
            name = row["name"]
            if row["skipped"]:
                lines.append(f"| {name} | skipped: {row['skipped']} | | | | |")
                continue
            p50, p99 = extra_median(row, "p50"), med[name]
            achieved = extra_median(row, "achieved")
            rounds = ", ".join("failed" if x is None else f"{x:.2f}" for x in row["rounds"])
            ratio = f"{p99 / base_p99:.2f}x" if p99 and base_p99 else "-"
            lines.append(f"| {name} | {'-' if p50 is None else f'{p50:.2f}'} | "
                         f"{'-' if p99 is None else f'{p99:.2f}'} | "
                         f"{'-' if achieved is None else f'{achieved:,.0f}'} | {rounds} | "
                         f"{ratio} |")
    elif kind == "rss":
        lines += ["| server | connections held | RSS before | RSS after | bytes per idle "
                  f"connection | this / {sc['base']} |", "|---|---:|---:|---:|---:|---:|"]
        base_value = med.get(sc["base"])
        for row in sc["rows"]:
            name = row["name"]
            if row["skipped"]:
                lines.append(f"| {name} | skipped: {row['skipped']} | | | | |")
                continue
            detail = next((e for e in row["extra"] if e), None)
            value = med[name]
            if detail is None or value is None:
                lines.append(f"| {name} | failed | | | | |")
                continue
            ratio = f"{value / base_value:.2f}x" if base_value else "-"
            lines.append(f"| {name} | {detail['held']:,} | {detail['before'] / 2**20:.1f} MiB | "
                         f"{detail['after'] / 2**20:.1f} MiB | {value:,.0f} | {ratio} |")
    if sc["skipped"]:
        lines += ["", "No row for " + "; ".join(f"{who}: {why}"
                                               for who, why in sc["skipped"].items()) + "."]
    if sc["remarks"]:
        lines += ["", *(f"- {remark}" for remark in sc["remarks"])]
    return [*lines, ""]


# issue 8's targets: (scenario, row, other row, minimum of row / other, what it says)
TARGETS = [
    ("asgi-hello", TS_H11, "hypercorn (trio)", 3.0, "ASGI hello, h11 parser: >= 3x Hypercorn trio"),
    ("asgi-hello", TS_H11, "uvicorn (h11)", 1.2, "ASGI hello, h11 parser: >= 1.2x Uvicorn (h11)"),
    ("asgi-hello", TS_HTTPTOOLS, "uvicorn (httptools+uvloop)", 0.8,
     "ASGI hello, httptools parser: >= 0.8x Uvicorn (httptools+uvloop)"),
    ("asgi-hello", TS_H11, FLOOR_PREBUILT, 0.85,
     "ASGI hello, h11 parser: >= 85% of the Trio+h11 floor (prebuilt bytes)"),
    ("wsgi-hello", TS_H11, "gunicorn gthread (1 worker, 8 threads)", 1.5,
     "WSGI hello, h11 parser: >= 1.5x Gunicorn gthread"),
    ("wsgi-hello", TS_HTTPTOOLS, "gunicorn gthread (1 worker, 8 threads)", 1.5,
     "WSGI hello, httptools parser: >= 1.5x Gunicorn gthread"),
    ("h2c", "trioserve (h2c)", "hypercorn (trio, h2c)", 4.0, "HTTP/2: >= 4x Hypercorn trio"),
    ("h2c", "trioserve (h2c)", FLOOR_H2, 0.7, "HTTP/2: >= 70% of the Trio+h2 floor"),
    # memory: the other way round, Hypercorn's bytes per connection over trioserve's
    ("rss-idle", "hypercorn-trio", "trioserve", 1.0,
     "idle connections: less memory per connection than Hypercorn trio (its bytes / "
     "trioserve's >= 1)"),
]


def targets_table(data: dict[str, Any]) -> list[str]:
    """Issue 8's targets as measured by this run (median of the per-round ratios); targets
    whose rows were not run are left out."""
    by_key = {sc["key"]: sc for sc in data["scenarios"]}
    lines = []
    for key, row, other, minimum, what in TARGETS:
        if key not in by_key:
            continue
        results, med = medians(by_key[key])
        if row not in med or other not in med:
            continue
        ratio = run.ratio_cells(results, med, row, other)[1]
        met = "-" if ratio == "-" else "yes" if float(ratio.rstrip("x")) >= minimum else "**no**"
        lines.append(f"| {what} | {ratio} | {met} |")
    if not lines:
        return []
    return ["## Issue 8's targets", "", "| target | measured | met |", "|---|---:|---|",
            *lines, ""]


def chart(data: dict[str, Any], path: Path) -> bool:
    """Grouped bars: per throughput scenario, each server's median over the scenario's
    trioserve row's (1.0 = as fast as trioserve). False (and no file) when there is nothing to
    draw or matplotlib is missing."""
    groups = []
    for sc in data["scenarios"]:
        if sc["kind"] not in UNITS:
            continue
        _, med = medians(sc)
        base = med.get(sc["base"])
        if not base:
            continue
        groups.append((sc["key"], {n: v / base for n, v in med.items() if v is not None}))
    if not groups or not have("matplotlib"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(n for _, g in groups for n in g))
    colors = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / max(len(g) for _, g in groups)
    for x, (_, g) in enumerate(groups):
        for i, (name, value) in enumerate(g.items()):
            ax.bar(x - 0.4 + width * (i + 0.5), value, width,
                   color=colors(names.index(name) % 20), label=name)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    ax.axhline(1.0, color="black", linewidth=0.8)
    # log scale: 0.25x and 4x are as far from trioserve, and a Rust server's 10x fits
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xticks(range(len(groups)), [k for k, _ in groups])
    ax.set_ylabel("throughput / the scenario's trioserve row (log scale)")
    ax.set_title(f"trioserve and its peers ({data['meta']['date']}, {data['meta']['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render(data: dict[str, Any], out: Path) -> str:
    """docs/benchmarks.md (returned and written to ``out``) and the chart next to it."""
    meta = data["meta"]
    png = out.with_suffix(".png")
    drawn = chart(data, png)
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        "# Benchmarks: trioserve and its peers", "",
        "Generated by `benchmarks/suite.py` (see `benchmarks/README.md`); do not edit by hand.",
        "",
        f"- Date: {meta['date']}",
        f"- Commit: {meta['commit']}",
        f"- Python {meta['python']}; {versions}",
        f"- Machine: {meta['cpus']} CPUs; every server pinned to CPU 0, the load generator to "
        "CPU 1; loopback only",
        f"- Command: `{meta['command']}`",
        f"- {meta['rounds']} round(s) of {meta['duration']:g} s per server (the servers of a "
        "scenario alternate within each round); ratios are the median of the per-round ratios, "
        "the steadier number on a noisy machine. HTTP/1.1 throughput: `wrk -t1 "
        f"-c{meta['connections']}`.",
        "",
    ]
    if drawn:
        lines += [f"![throughput relative to trioserve]({png.name})", "",
                  "Bars: each server's median throughput over the scenario's trioserve row "
                  "(`trioserve (h11)`, HTTP/2: `trioserve (h2c)`); above 1.0 is faster than "
                  "trioserve.", ""]
    lines += targets_table(data)
    lines += ["## Scenarios", ""]
    for sc in data["scenarios"]:
        lines += scenario_table(sc)
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


# ------------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    out = {}
    for dist in ("trio", "h11", "h2", "httptools", "wsproto", "uvicorn", "uvloop", "websockets",
                 "hypercorn", "gunicorn", "granian"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        if shutil.which(tool):
            done = subprocess.run([tool, flag], capture_output=True, text=True)
            m = re.search(r"(\d+\.\d+(?:\.\d+)?)", done.stdout + done.stderr)
            if m:
                out[tool] = m.group(1)
    return out


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" (with uncommitted changes)" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/suite.py", description=__doc__.splitlines()[0],
        epilog="Needs wrk, h2load and taskset, and at least 2 CPUs. Peers that are not "
               "installed get a 'skipped' row (pip install 'trioserve[bench]').")
    ap.add_argument("--quick", action="store_true",
                    help="1 round x 3 s, 1 s wrk warm-up and fewer peers (about 4 minutes)")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 2; --quick 1)")
    ap.add_argument("--duration", type=float, help="seconds measured per server and round "
                    "(default 5; --quick 3)")
    ap.add_argument("--only", metavar="REGEX",
                    help="run only what matches '<scenario>: <server>', e.g. 'asgi-hello' or "
                         "'trioserve|uvicorn'")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                    help="the Markdown file (default docs/benchmarks.md); the chart goes next "
                         "to it with the suffix .png")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--rate", type=int, default=1000,
                    help="requests/second of the latency scenario (default 1000)")
    ap.add_argument("--idle-connections", type=int, default=1000,
                    help="connections of the RSS scenario (default 1000)")
    ap.add_argument("--dry-run", action="store_true",
                    help="list the scenarios, servers and commands; run nothing")
    ap.add_argument("--from-json", type=Path, metavar="PATH",
                    help="render the results of an earlier run (its suite.json); run nothing")
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.duration is None:
        args.duration = 3.0 if args.quick else 5.0
    if args.rounds < 1 or args.duration < 1:
        ap.error("--rounds and --duration must be at least 1")
    if args.only:
        try:
            re.compile(args.only)
        except re.error as exc:
            ap.error(f"--only: not a regular expression: {exc}")
    args.warm_up = 1.0 if args.quick else 2.0
    # what run.py's helpers read from their args
    args.h2_clients, args.h2_streams = 16, 10
    args.ws_connections, args.ws_size, args.ws_processes = 8, 32, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        try:
            data = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as exc:
            print(f"--from-json: cannot read {args.from_json}: {exc}", file=sys.stderr)
            return 2
        print(render(data, args.out))
        return 0
    scs = scenarios(args.quick)
    if args.dry_run:
        for sc in scs:
            names = selected(sc, args.only)
            if not names:
                continue
            print(f"{sc.key}: {sc.title} [{sc.kind}]")
            for name in names:
                why = missing(name if sc.kind != "rss" else name.split("-")[0])
                cmd = " ".join(sc.servers[name](0)) or "(idle_connections.py)"
                print(f"  {name}: " + (f"skipped, {why}" if why else cmd))
            for who, why in sc.skipped.items():
                print(f"  (no row for {who}: {why})")
        return 0
    for tool in ("taskset", "wrk", "h2load"):
        if shutil.which(tool) is None:
            print(f"benchmarks/suite.py needs {tool!r} on PATH", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("benchmarks/suite.py needs 2 CPUs (server on CPU 0, load on CPU 1)",
              file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.idle_connections + 200:
        print(f"--idle-connections {args.idle_connections} needs "
              f"{args.idle_connections + 200} descriptors, the hard limit is {hard}",
              file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    (HERE / "results").mkdir(exist_ok=True)
    started = time.monotonic()
    data = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "commit": commit(), "python": sys.version.split()[0],
                     "versions": versions(), "cpus": os.cpu_count(),
                     "command": shlex.join(["python", "benchmarks/suite.py",
                                            *(sys.argv[1:] if argv is None else argv)]),
                     "rounds": args.rounds, "duration": args.duration,
                     "connections": args.connections}}
    data["scenarios"] = run_all(scs, args)
    data["meta"]["minutes"] = round((time.monotonic() - started) / 60, 1)
    (HERE / "results" / "suite.json").write_text(json.dumps(data, indent=1) + "\n")
    print(render(data, args.out))
    print(f"({data['meta']['minutes']} min; raw numbers in benchmarks/results/suite.json)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the server and load generator of the moment are stopped
        print("interrupted: no report written", file=sys.stderr)
        sys.exit(130)
