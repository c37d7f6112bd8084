"""The Autobahn TestSuite's fuzzing client, run by kosoku, against a WebSocket echo server.

kosoku (PyPI ``kosoku``) is a Rust runner of the Autobahn TestSuite's own case files. Its
``fuzzingclient`` mode opens one connection per case to the server under test, which must echo
every message back (text as text, binary as binary), and gives each case two verdicts in
Autobahn's words: ``behavior`` for the message exchange (OK, NON-STRICT, INFORMATIONAL, FAILED,
UNIMPLEMENTED, ERROR) and ``behaviorClose`` for the closing handshake (OK, INFORMATIONAL, FAILED,
FAILED BY CLIENT, WRONG CODE, UNCLEAN).

kosoku runs here as its console script in a child process, one process per include pattern,
never in this interpreter:

- the time bound is hard: a process still running at the deadline is killed, and its pattern is
  reported as ``TIMEOUT`` instead of its cases (the other patterns' results are kept);
- its reports (index.json, one JSON and one HTML file per case) go to a temporary directory, or
  to ``report_dir`` to keep them (``index.html`` there is Autobahn's usual report);
- kosoku's in-process API imports the Autobahn case files with a shim package named
  ``autobahn`` put first on ``sys.path``, which this module (``tests/autobahn.py``, importable
  as ``autobahn`` in the tests) would shadow.

Usage by hand, against a server already running on port 8000::

    python tests/autobahn.py 8000                      # the default selection
    python tests/autobahn.py 8000 -i '6.*' -x '6.4.*'  # one section, less a subsection

Sections 1-7, 9 and 10 are the protocol (framing, pings, reserved bits, opcodes, fragmentation,
UTF-8, close handling, limits and performance, auto-fragmentation); 12 and 13 are
permessage-deflate (echo of 1000 compressed messages of up to 128 KiB per case, with various
negotiated parameters in 13). The suite has no sections 8 or 11.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACCEPTABLE_BEHAVIORS",
    "ACCEPTABLE_CLOSE_BEHAVIORS",
    "DEFAULT_CASES",
    "AutobahnResults",
    "CaseOutcome",
    "KosokuUnavailable",
    "failures",
    "format_failures",
    "kosoku_command",
    "run_autobahn",
    "section_seconds",
    "summary",
]

#: Every case of sections 1-10 and 12-13 (there are no sections 8 and 11), one kosoku process
#: per pattern.
DEFAULT_CASES: tuple[str, ...] = tuple(f"{s}.*" for s in (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13))

#: Verdicts that pass, as kosoku's ``CaseResult.passed`` reads them: a conformant peer, one that
#: only diverges from a SHOULD, or behaviour the specification leaves open.
ACCEPTABLE_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
ACCEPTABLE_CLOSE_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

#: Pseudo-verdicts of a pattern whose kosoku process gave no report.
TIMEOUT = "TIMEOUT"
NO_REPORT = "NO REPORT"

BEHAVIOR_ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR",
                  TIMEOUT, NO_REPORT)

# per-case report fields copied into CaseOutcome.details for a case that did not pass
_DETAIL_KEYS = (
    "description", "expectation", "result", "resultClose", "expected", "received",
    "expectedClose", "localCloseCode", "localCloseReason", "remoteCloseCode", "remoteCloseReason",
    "closedByMe", "failedByMe", "droppedByMe", "wasClean", "wasNotCleanReason",
    "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout", "wasCloseHandshakeTimeout",
    "httpResponse", "wirelog",
)


class KosokuUnavailable(RuntimeError):
    """kosoku is not installed next to this interpreter (nor on PATH)."""


@dataclass(frozen=True)
class CaseOutcome:
    """One case's verdicts; ``details`` holds kosoku's per-case report (less statistics) when
    the case did not pass, and the process's output for a pattern that gave no report."""

    case_id: str
    behavior: str
    behavior_close: str
    duration_ms: int | None = None
    remote_close_code: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (self.behavior in ACCEPTABLE_BEHAVIORS
                and self.behavior_close in ACCEPTABLE_CLOSE_BEHAVIORS)


class AutobahnResults(dict[str, CaseOutcome]):
    """Case id → :class:`CaseOutcome`, in the suite's order. ``wall_seconds`` is each pattern's
    kosoku process time; ``agent`` the server's ``Server`` header as kosoku saw it;
    ``report_dir`` where the reports were kept (``None`` when they were in a removed temporary
    directory)."""

    wall_seconds: dict[str, float]
    agent: str | None
    report_dir: Path | None

    def __init__(self) -> None:
        super().__init__()
        self.wall_seconds = {}
        self.agent = None
        self.report_dir = None


def kosoku_command() -> list[str]:
    """The kosoku console script installed with this interpreter, else the first on PATH."""
    here = Path(sys.executable).parent / ("kosoku.exe" if os.name == "nt" else "kosoku")
    if here.is_file():
        return [str(here)]
    found = shutil.which("kosoku")
    if found:
        return [found]
    raise KosokuUnavailable(
        f"the kosoku console script is not installed (looked next to {sys.executable} and on "
        "PATH): pip install kosoku")


def _case_sort_key(case_id: str) -> tuple[Any, ...]:
    try:
        return (0, *(int(p) for p in case_id.split(".")))
    except ValueError:  # a pattern standing for cases without a report
        return (1, case_id)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_autobahn(
    port: int,
    cases: Sequence[str] = DEFAULT_CASES,
    exclude: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    timeout: float = 900.0,
    concurrency: int = 1,
    report_dir: str | os.PathLike[str] | None = None,
) -> AutobahnResults:
    """Run kosoku's fuzzing client against ``ws://host:port`` and return each case's verdicts.

    ``cases`` are case ids or ``*`` globs (``"6.*"``, ``"9.7.1"``); each runs in its own
    kosoku process, in order. ``exclude`` (ids or globs) is taken out of every pattern.
    ``timeout`` bounds the whole run in seconds: the process running at the deadline is killed
    and the patterns not finished come back as one :data:`TIMEOUT` entry each, keyed by the
    pattern. A process that ends without a report (a pattern that matches no case, a crash)
    gives a :data:`NO_REPORT` entry with its output in ``details``; a pattern whose cases are
    all excluded gives nothing. A server that cannot be reached gives each case kosoku's own
    ``ERROR`` verdict. ``concurrency`` is kosoku's ``--parallelism`` (cases run at once).
    """
    command = kosoku_command()
    results = AutobahnResults()
    deadline = time.monotonic() + timeout
    keep = report_dir is not None
    root = Path(report_dir) if report_dir is not None else Path(
        tempfile.mkdtemp(prefix="autobahn-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for n, pattern in enumerate(cases, 1):
            left = deadline - time.monotonic()
            if left <= 0:
                results[pattern] = CaseOutcome(pattern, TIMEOUT, TIMEOUT, details={
                    "output": f"not started: the {timeout:g} s bound of the whole run was spent"})
                continue
            outdir = root / f"{n:02d}-{_clean(pattern)}"
            argv = [*command, f"{host}:{port}", "--mode", "fuzzingclient", "--include", pattern,
                    "--parallelism", str(concurrency), "--outdir", str(outdir)]
            for x in exclude:
                argv += ["--exclude", x]
            started = time.monotonic()
            # cwd: whatever kosoku would write by default stays in the report directory
            proc = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace")
            try:
                output, _ = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                results.wall_seconds[pattern] = time.monotonic() - started
                results[pattern] = CaseOutcome(pattern, TIMEOUT, TIMEOUT, details={
                    "output": f"killed at the {timeout:g} s bound of the whole run after "
                              f"{results.wall_seconds[pattern]:.1f} s on this pattern; kosoku "
                              f"said:\n{_tail(output)}"})
                continue
            results.wall_seconds[pattern] = time.monotonic() - started
            index_file = outdir / "index.json"
            if not index_file.is_file():
                if proc.returncode == 0:
                    continue  # ``exclude`` took every case of the pattern ("0 cases passed")
                # kosoku exits 1 with a traceback ("ValueError: no cases match pattern: 8.*")
                # for a pattern that matches nothing: a typo must not pass for a clean run
                results[pattern] = CaseOutcome(pattern, NO_REPORT, NO_REPORT, details={
                    "output": f"kosoku exited {proc.returncode} without a report:\n"
                              f"{_tail(output, 3)}"})
                continue
            _read_index(index_file, results)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    results.report_dir = root if keep else None
    ordered = sorted(results.items(), key=lambda kv: _case_sort_key(kv[0]))
    results.clear()
    results.update(ordered)
    return results


def _clean(pattern: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in pattern).strip("_") or "all"


def _read_index(index_file: Path, results: AutobahnResults) -> None:
    index = json.loads(index_file.read_text())
    for agent, cases in index.items():
        results.agent = agent
        for case_id, entry in cases.items():
            behavior = entry.get("behavior", "?")
            behavior_close = entry.get("behaviorClose", "?")
            outcome = CaseOutcome(case_id, behavior, behavior_close, entry.get("duration"),
                                  entry.get("remoteCloseCode"))
            if not outcome.passed:
                report = index_file.parent / entry.get("reportfile", "")
                try:
                    case = json.loads(report.read_text())
                except (OSError, ValueError) as exc:
                    case = {"result": f"(no per-case report {report.name}: {exc})"}
                outcome = CaseOutcome(case_id, behavior, behavior_close, entry.get("duration"),
                                      entry.get("remoteCloseCode"),
                                      {k: case.get(k) for k in _DETAIL_KEYS if k in case})
            results[case_id] = outcome


def summary(results: Mapping[str, CaseOutcome], *, close: bool = False) -> dict[str, int]:
    """How many cases got each ``behavior`` (``behaviorClose`` with ``close``), in the order
    OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, ... (only the verdicts present)."""
    counts = Counter(o.behavior_close if close else o.behavior for o in results.values())
    order = {b: i for i, b in enumerate(BEHAVIOR_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def section_seconds(results: Mapping[str, CaseOutcome], depth: int = 1) -> dict[str, float]:
    """Seconds spent per section (``depth=1``: "12") or subsection (``depth=2``: "12.3"), from
    kosoku's per-case durations (their sum: more than the wall time when cases ran in
    parallel; ``AutobahnResults.wall_seconds`` has each pattern's wall time)."""
    totals: dict[str, float] = {}
    for case_id, outcome in results.items():
        if outcome.duration_ms is None:
            continue
        key = ".".join(case_id.split(".")[:depth])
        totals[key] = totals.get(key, 0.0) + outcome.duration_ms / 1000
    return dict(sorted(totals.items(), key=lambda kv: _case_sort_key(kv[0])))


def failures(results: Mapping[str, CaseOutcome]) -> list[CaseOutcome]:
    """The cases (and patterns without a report) that did not pass, in the suite's order."""
    return [o for o in results.values() if not o.passed]


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _wirelog_tail(wirelog: Iterable[Any], entries: int = 12) -> list[str]:
    items = list(wirelog or [])
    shown = [_short(e, 160) for e in items[-entries:]]
    return ([f"... {len(items) - entries} earlier entries"] if len(items) > entries else []) + shown


def format_failure(outcome: CaseOutcome, *, wirelog: bool = True) -> str:
    """One failing case as readable text: verdicts, what the case expects and what happened."""
    d = outcome.details
    lines = [f"{outcome.case_id}: behavior={outcome.behavior} close={outcome.behavior_close}"]
    if "output" in d:
        lines += ["    " + line for line in str(d["output"]).splitlines()]
        return "\n".join(lines)
    for label, key in (("case", "description"), ("expectation", "expectation"),
                       ("result", "result"), ("close result", "resultClose")):
        if d.get(key):
            lines.append(f"    {label}: {_short(d[key])}")
    if "expected" in d or "received" in d:
        lines.append(f"    expected events: {_short(d.get('expected'))}")
        lines.append(f"    received events: {_short(d.get('received'))}")
    ec = d.get("expectedClose") or {}
    if ec or d.get("remoteCloseCode") is not None:
        lines.append(
            f"    expected close: codes {ec.get('closeCode')}, closed by "
            f"{'kosoku' if ec.get('closedByMe') else 'server'}, clean required "
            f"{ec.get('requireClean')}")
        lines.append(
            f"    observed close: server sent {d.get('remoteCloseCode')} "
            f"{d.get('remoteCloseReason')!r}, kosoku sent {d.get('localCloseCode')}; "
            f"closed by {'kosoku' if d.get('closedByMe') else 'server'}, "
            f"failed by kosoku {d.get('failedByMe')}, dropped by kosoku "
            f"{d.get('droppedByMe')}, clean {d.get('wasClean')}"
            + (f" ({d['wasNotCleanReason']})" if d.get("wasNotCleanReason") else ""))
    timeouts = [k for k in ("wasOpenHandshakeTimeout", "wasCloseHandshakeTimeout",
                            "wasServerConnectionDropTimeout") if d.get(k)]
    if timeouts:
        lines.append(f"    timeouts: {', '.join(timeouts)}")
    if wirelog and d.get("wirelog"):
        lines.append("    wire log (T=kosoku sent, R=received; F=frame, O=octets):")
        lines += ["      " + e for e in _wirelog_tail(d["wirelog"])]
    return "\n".join(lines)


def format_failures(results: Mapping[str, CaseOutcome], *, wirelog: bool = True,
                    limit: int | None = None) -> str:
    """Every failing case as text (the first ``limit`` of them in full), for an assertion."""
    failed = failures(results)
    shown = failed if limit is None else failed[:limit]
    parts = [format_failure(o, wirelog=wirelog) for o in shown]
    if len(shown) < len(failed):
        parts.append(f"... and {len(failed) - len(shown)} more: "
                     + ", ".join(o.case_id for o in failed[len(shown):]))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the Autobahn fuzzing client (kosoku) against "
                                            "a WebSocket echo server on 127.0.0.1.")
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("-i", "--include", action="append", metavar="CASE",
                   help="case id or glob, one kosoku process each (repeatable; default: "
                        + " ".join(DEFAULT_CASES) + ")")
    p.add_argument("-x", "--exclude", action="append", default=[], metavar="CASE")
    p.add_argument("-t", "--timeout", type=float, default=900.0,
                   help="bound of the whole run in seconds")
    p.add_argument("-p", "--parallelism", type=int, default=1)
    p.add_argument("-o", "--outdir", help="keep kosoku's reports (index.html) here")
    p.add_argument("--no-wirelog", action="store_true", help="leave wire logs out of failures")
    a = p.parse_args(argv)
    started = time.monotonic()
    results = run_autobahn(a.port, a.include or DEFAULT_CASES, a.exclude, host=a.host,
                           timeout=a.timeout, concurrency=a.parallelism, report_dir=a.outdir)
    elapsed = time.monotonic() - started
    print(f"agent {results.agent!r}: {len(results)} cases in {elapsed:.1f} s")
    print("wall seconds per pattern: "
          + ", ".join(f"{k} {v:.1f}" for k, v in results.wall_seconds.items()))
    print("case seconds per section: "
          + ", ".join(f"{k} {v:.1f}" for k, v in section_seconds(results).items()))
    print(f"behavior: {summary(results)}")
    print(f"close:    {summary(results, close=True)}")
    if results.report_dir:
        print(f"reports:  {results.report_dir}/*/index.html")
    bad = failures(results)
    if bad:
        print(f"\n{len(bad)} not passing:")
        print(format_failures(results, wirelog=not a.no_wirelog))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
