"""``trioserve fuzz``: fuzz campaigns from the command line (see docs/fuzzing.md).

- ``trioserve fuzz parser``: in-process campaigns on trioserve's HTTP/1.1 and HTTP/2 protocols;
- ``trioserve fuzz target URL``: a live server (any server) over sockets;
- ``trioserve fuzz diff URL URL...``: the same inputs to several servers running the echo app
  (``trioserve.fuzz.echo:app``), reporting where they disagree;
- ``trioserve fuzz replay REPORT [INDEX]``: rerun a report's findings.

Exit codes: 0 no findings (or, for ``replay``, every finding passes now), 1 findings (or a
replayed finding still fails), 2 usage or configuration errors (one clear line on stderr:
an unknown campaign, a target that is not on loopback without ``--allow-remote``, a server that
cannot be reached, hypothesis not installed ...), 130 when interrupted with no findings.

This module imports hypothesis only after checking it is installed, so a missing ``fuzz`` extra
gives a message instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

# the argparse number types of the server's own CLI (one message style for both)
from trioserve.cli import _number, _positive_int, _seconds

if TYPE_CHECKING:
    from .target import Target

__all__ = ["main"]

MISSING_HYPOTHESIS = ("trioserve fuzz: error: hypothesis is not installed; install the fuzz "
                      "extra: pip install 'trioserve[fuzz]'")
DEFAULT_REPORT = "trioserve-fuzz-report.json"
DEFAULT_DATABASE = ".trioserve-fuzz/db"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_seed = _number(int, lambda v: 0 <= v < 2**63, "an integer >= 0")
_index = _number(int, lambda v: v >= 0, "a finding index >= 0")
_linger = _number(float, lambda v: 0 <= v < math.inf, "a number of seconds >= 0")

_CAMPAIGN_HELP = {
    "parser": "http1-valid, http1-mutated, http1-framing, http1-bytes, http2 (default: all)",
    "target": "http1-valid, http1-mutated, http1-framing, http2 (default: the three http1 "
              "campaigns; http2 needs a server speaking h2c with prior knowledge)",
    "diff": "http1-valid, http1-mutated, http1-framing (default: all)",
}


def _common(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument("--campaign", action="append", metavar="NAME",
                   help=f"campaign to run, repeatable or comma-separated: {_CAMPAIGN_HELP[mode]}")
    p.add_argument("--duration", type=_seconds, default=60.0, metavar="S",
                   help="seconds for all campaigns together, split evenly (default 60); a "
                        "finding made late is still shrunk for up to --shrink-time")
    p.add_argument("--max-examples", type=_positive_int, metavar="N",
                   help="stop a campaign after N generated inputs (shrinking not counted; "
                        "default: no limit, only --duration)")
    p.add_argument("--seed", type=_seed, metavar="N",
                   help="hypothesis seed, for a reproducible run (default: random, written "
                        "to the report); the database's replays come first unless "
                        "--database none")
    p.add_argument("--report", default=DEFAULT_REPORT, metavar="FILE",
                   help=f"JSON report to write (default {DEFAULT_REPORT})")
    p.add_argument("--database", default=DEFAULT_DATABASE, metavar="DIR",
                   help=f"hypothesis example database: failures are saved there and replayed "
                        f"first by the next run (default {DEFAULT_DATABASE}; 'none' disables)")
    p.add_argument("--shrink-time", type=_seconds, default=30.0, metavar="S",
                   help="seconds hypothesis may spend minimising one new finding (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _live(p: argparse.ArgumentParser, replay: bool = False) -> None:
    default = "the report's, else " if replay else ""
    p.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                   help="seconds a target gets, after the fuzzer's half-close, to answer and "
                        f"close (default {default}35: above trioserve's 30 s request-header "
                        "timeout; keep it above the target's)")
    p.add_argument("--linger", type=_linger, default=None, metavar="S",
                   help="once every response an input calls for has arrived, seconds to read "
                        f"more before ending the exchange (default {default}0.25; 0 always "
                        "waits for the server to close)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow targets that are not on loopback (127.0.0.0/8, ::1); only fuzz "
                        "servers you are allowed to attack")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trioserve fuzz",
                description="Fuzz campaigns for HTTP servers: trioserve's parsers in-process, "
                            "or live servers over loopback sockets.",
                epilog="Examples: trioserve fuzz parser --duration 300; "
                       "trioserve fuzz target http://127.0.0.1:8000; "
                       "trioserve fuzz diff a=http://127.0.0.1:8001 b=http://127.0.0.1:8002; "
                       "trioserve fuzz replay trioserve-fuzz-report.json 0")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)
    sp = sub.add_parser("parser", help="in-process campaigns on trioserve's protocols",
                        description="Run campaigns on trioserve's HTTP/1.1 protocol (h11 and "
                                    "httptools parsers, whole, byte by byte and split) and its "
                                    "HTTP/2 protocol, in this process.")
    _common(sp, "parser")
    tp = sub.add_parser("target", help="fuzz a live server over sockets",
                        description="Send each input on a fresh connection to a running server "
                                    "(any HTTP/1.1 server; run trioserve.fuzz.echo:app on it "
                                    "to also check that valid requests reach the app exactly).")
    tp.add_argument("url", metavar="URL", help="[NAME=]http://HOST:PORT of the server")
    _common(tp, "target")
    _live(tp)
    dp = sub.add_parser("diff", help="compare several servers running the echo app",
                        description="Send the same inputs to several servers, each running "
                                    "trioserve.fuzz.echo:app (or wsgi_app), and report where "
                                    "they disagree: the request-smuggling signal.")
    dp.add_argument("urls", nargs="+", metavar="URL",
                    help="[NAME=]http://HOST:PORT of each server (two or more)")
    _common(dp, "diff")
    _live(dp)
    rp = sub.add_parser("replay", help="rerun the findings of a report",
                        description="Rerun the check of a report's findings on their raw bytes "
                                    "and print the outcome; exit 1 if any still fails.")
    rp.add_argument("report", metavar="REPORT", help="a report written by trioserve fuzz")
    rp.add_argument("index", nargs="?", type=_index, metavar="INDEX",
                    help="the finding to replay (default: all)")
    rp.add_argument("--target", action="append", metavar="URL",
                    help="[NAME=]http://HOST:PORT to replay against instead of the report's "
                         "targets (repeat for diff)")
    _live(rp, replay=True)
    return p


def _err(message: str) -> int:
    print(f"trioserve fuzz: error: {message}", file=sys.stderr)
    return 2


def _campaign_names(values: Sequence[str] | None, mode: str) -> list[str]:
    """The campaigns asked for. Raises :class:`ValueError` for an unknown one."""
    from .campaign import CAMPAIGNS, DEFAULT_CAMPAIGNS

    if not values:
        return list(DEFAULT_CAMPAIGNS[mode])
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            if name.strip() and name.strip() not in names:
                names.append(name.strip())
    for name in names:
        if name not in CAMPAIGNS[mode]:
            raise ValueError(f"unknown campaign {name!r} for 'fuzz {mode}'; choose from "
                             f"{', '.join(CAMPAIGNS[mode])}")
    if not names:
        raise ValueError("--campaign names no campaign")
    return names


def _targets(specs: Sequence[str], allow_remote: bool) -> list[Target]:
    """Raises TargetError."""
    from .target import parse_target

    return [parse_target(s, allow_remote=allow_remote) for s in specs]


def _preflight(targets: Sequence[Target], mode: str,
               timeout: float) -> tuple[str | None, list[Target]]:
    """Check each target answers a plain GET: (an error message or ``None``, the targets with
    ``echo`` set from the answer). A target that gives no usable answer is still fuzzed by
    ``target`` (the campaign will say how it fails); ``diff`` needs the echo app on every
    target."""
    from dataclasses import replace

    from .target import TargetError, Unreachable, probe_echo

    probed: list[Target] = []
    for t in targets:
        probed.append(t)
        try:
            api = probe_echo(t, timeout=min(timeout, 10.0))
        except Unreachable as exc:
            return f"{exc} (is the server running?)", probed
        except TargetError as exc:
            if mode == "diff":
                return str(exc), probed
            print(f"trioserve fuzz: note: {exc}; fuzzing it anyway", file=sys.stderr)
            continue
        if api is None:
            if mode == "diff":
                return (f"{t.url} does not run the echo app (no x-trioserve-echo header); "
                        "'fuzz diff' compares what the app saw: serve trioserve.fuzz.echo:app"
                        ), probed
            print(f"trioserve fuzz: note: {t.url} does not run trioserve.fuzz.echo:app; the "
                  "request-exactness property is not checked, requests reaching the app are "
                  "counted from non-refusal statuses, and only protocol refusals (400, 411, "
                  "413, 414, 431, 505) of valid requests are findings", file=sys.stderr)
        probed[-1] = replace(t, echo=api)
    return None, probed


@contextmanager
def _hypothesis_home(database: str | None) -> Iterator[None]:
    """Point hypothesis' own storage (its cache of constants from local modules, written
    whatever the database setting) at ``DATABASE/.hypothesis``, or at a temporary directory
    without a database, instead of ``.hypothesis`` in the current directory."""
    from hypothesis.configuration import set_hypothesis_home_dir

    with tempfile.TemporaryDirectory(prefix="trioserve-fuzz-") as tmp:
        set_hypothesis_home_dir(tmp if database is None else os.path.join(database, ".hypothesis"))
        try:
            yield
        finally:
            set_hypothesis_home_dir(None)


def _print_findings(doc: dict[str, Any]) -> None:
    for f in doc["findings"]:
        raw = f["raw"]
        if len(raw) > 160:
            raw = raw[:157] + "..."
        print(f"[{f['index']}] {f['campaign']} {f['kind']}: {f['message']}\n"
              f"    {f['length']} bytes: {raw}\n    replay: {f['replay']}")


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .campaign import (
        Progress,
        Runner,
        RunOptions,
        UnsupportedHypothesis,
        build_campaign,
        new_seed,
        report_document,
        write_report,
    )
    from .target import DEFAULT_LINGER, DEFAULT_TIMEOUT, TargetError

    mode = args.command
    specs = [] if mode == "parser" else ([args.url] if mode == "target" else args.urls)
    if mode == "diff" and len(specs) < 2:
        return _err("'fuzz diff' needs at least two URLs")
    try:
        names = _campaign_names(args.campaign, mode)
    except ValueError as exc:
        return _err(str(exc))
    try:
        targets = _targets(specs, getattr(args, "allow_remote", False))
    except TargetError as exc:
        return _err(str(exc))
    timeout = getattr(args, "timeout", None) or DEFAULT_TIMEOUT
    linger = DEFAULT_LINGER if getattr(args, "linger", None) is None else args.linger
    if mode != "parser":
        problem, targets = _preflight(targets, mode, timeout)
        if problem:
            return _err(problem)
    database = None if args.database.lower() == "none" else args.database
    options = RunOptions(duration=args.duration, max_examples=args.max_examples,
                         seed=args.seed if args.seed is not None else new_seed(),
                         database=database, shrink_time=args.shrink_time)
    with _hypothesis_home(database), \
            ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        try:
            campaigns = [build_campaign(mode, n, targets, timeout=timeout, linger=linger,
                                        pool=pool) for n in names]
        except ValueError as exc:
            return _err(str(exc))
        if all(c.skipped for c in campaigns):
            for c in campaigns:
                print(f"trioserve fuzz: campaign {c.name} skipped: {c.skipped}",
                      file=sys.stderr)
            return _err("no campaign can run")
        progress = Progress(enabled=not args.quiet)
        if not args.quiet:
            where = ", ".join(t.url for t in targets) or "in-process"
            progress.line(f"trioserve fuzz {mode} ({where}): seed {options.seed}, "
                          f"{args.duration:g}s, campaigns {', '.join(names)}")
        try:
            result = Runner(mode, campaigns, options, progress).run()
        except UnsupportedHypothesis as exc:
            return _err(str(exc))
    doc = report_document(mode=mode, argv=argv, targets=targets, options=options,
                          result=result, report_path=args.report, campaigns=campaigns,
                          timeout=timeout if targets else None,
                          linger=linger if targets else None)
    try:
        write_report(args.report, doc)
    except OSError as exc:
        _print_findings(doc)
        return _err(f"cannot write the report {args.report!r}: {exc}")
    _print_findings(doc)
    status = "interrupted, " if result.interrupted else ""
    if result.aborted:
        status += f"aborted ({result.aborted}), "
    print(f"{status}{result.examples} examples in {result.elapsed:.1f}s, "
          f"{len(result.findings)} finding(s); report: {args.report}")
    if result.findings:
        return 1
    if result.aborted:
        return 1
    return 130 if result.interrupted else 0


def _report_problem(doc: Any) -> str | None:
    """What makes ``doc`` unusable as a report for replay, or ``None``."""
    from .campaign import CAMPAIGNS

    if not isinstance(doc, dict):
        return "not a JSON object"
    mode = doc.get("command")
    if mode not in CAMPAIGNS:
        return f"'command' is {mode!r}, not one of {', '.join(CAMPAIGNS)}"
    if not isinstance(doc.get("findings"), list):
        return "'findings' is not a list"
    targets = doc.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        return "'targets' is not a list of URLs"
    for name, low in (("timeout", 0.0), ("linger", -1.0)):
        value = doc.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not low < value < math.inf):
            return f"{name!r} is {value!r}, not a number of seconds"
    for i, f in enumerate(doc["findings"]):
        if not isinstance(f, dict):
            return f"finding {i} is not a JSON object"
        for key in ("campaign", "kind", "message"):
            if not isinstance(f.get(key), str):
                return f"finding {i} has no {key!r} string"
        if f["campaign"] not in CAMPAIGNS[mode]:
            return f"finding {i}: unknown campaign {f['campaign']!r} for 'fuzz {mode}'"
    return None


def _probed(targets: Sequence[Target], timeout: float) -> list[Target]:
    """``targets`` with ``echo`` set when a plain GET finds the echo app (else unchanged)."""
    from dataclasses import replace

    from .target import TargetError, Unreachable, probe_echo

    out = []
    for t in targets:
        try:
            out.append(replace(t, echo=probe_echo(t, timeout=min(timeout, 10.0))))
        except (TargetError, Unreachable):
            out.append(t)  # the replay itself says how it fails
    return out


def _replay(args: argparse.Namespace) -> int:
    from .campaign import FuzzInput, build_campaign
    from .target import DEFAULT_LINGER, DEFAULT_TIMEOUT, TargetError

    try:
        with open(args.report, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        return _err(f"cannot read {args.report!r}: {exc}")
    except ValueError as exc:
        return _err(f"{args.report!r} is not a trioserve fuzz report: {exc}")
    problem = _report_problem(doc)
    if problem:
        return _err(f"{args.report!r} is not a trioserve fuzz report: {problem}")
    mode = doc["command"]
    findings = doc["findings"]
    if args.index is not None and args.index >= len(findings):
        return _err(f"{args.report} has {len(findings)} finding(s); no index {args.index}")
    specs = args.target or ([] if mode == "parser" else list(doc.get("targets", ())))
    try:
        targets = _targets(specs, args.allow_remote)
    except TargetError as exc:
        return _err(str(exc))
    timeout = args.timeout or doc.get("timeout") or DEFAULT_TIMEOUT
    linger = args.linger if args.linger is not None else doc.get("linger")
    linger = DEFAULT_LINGER if linger is None else float(linger)
    chosen = [findings[args.index]] if args.index is not None else findings
    if not chosen:
        print(f"{args.report}: no findings to replay")
        return 0
    targets = _probed(targets, timeout)
    still = 0
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        for i, f in enumerate(chosen):
            index = args.index if args.index is not None else i
            try:
                campaign = build_campaign(mode, f["campaign"], targets, timeout=timeout,
                                          linger=linger, pool=pool)
                inp = FuzzInput.from_json(f)
            except (ValueError, KeyError, TypeError) as exc:
                return _err(f"finding {index}: {exc}")
            if campaign.skipped:
                return _err(f"finding {index}: campaign {campaign.name} cannot run: "
                            f"{campaign.skipped}")
            head = f"[{index}] {f['campaign']} {f['kind']}: {f['message']}"
            try:
                outcome = campaign.check(inp)
            except Exception as exc:
                still += 1
                kind = getattr(exc, "kind", type(exc).__name__)
                print(f"{head}\n    still fails ({kind}): {exc}")
            else:
                print(f"{head}\n    passes now ({outcome})")
    print(f"{still} of {len(chosen)} finding(s) still fail")
    return 1 if still else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trioserve fuzz ARGS``; returns the exit code (see the module docstring)."""
    args_list = list(sys.argv[2:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        missing = importlib.util.find_spec("hypothesis") is None
    except ValueError:  # a None entry in sys.modules (the module was blocked)
        missing = True
    if missing:
        print(MISSING_HYPOTHESIS, file=sys.stderr)
        return 2
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print(MISSING_HYPOTHESIS, file=sys.stderr)
        return 2
    try:
        if args.command == "replay":
            return _replay(args)
        return _run(args, args_list)
    except KeyboardInterrupt:
        return 130
