"""Fuzz campaigns and the hypothesis-driven runner behind ``trioserve fuzz``.

A :class:`Campaign` is a name, a hypothesis strategy of :class:`FuzzInput` and a check that
raises on a violated property. The :class:`Runner` gives campaigns a time budget (hypothesis has
no duration setting): it runs *rounds* of hypothesis examples, sizing each round from the rate so
far, until the budget or the example limit is reached.

Findings are keyed by (campaign, kind, first line of the message). A finding seen for the first
time is raised to hypothesis, which shrinks it; every failing input seen on the way is recorded
and the smallest raw bytes per key are kept. Keys already shrunk in an earlier round are only
counted afterwards, so hypothesis goes on exploring instead of stopping at the same fault again.
Hypothesis saves each failure in its example database (``--database``), and the next run replays
those first.
"""

from __future__ import annotations

import base64
import importlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    InMemoryExampleDatabase,
)

from .http1 import (
    Http1Case,
    InvariantViolation,
    check_case,
    elide_bytes,
    framing_cases,
    mutated_cases,
    split_points,
    valid_cases,
)
from .target import (
    DEFAULT_LINGER,
    DEFAULT_TIMEOUT,
    Target,
    Unreachable,
    check_diff,
    check_h2_target,
    check_http1_target,
)

__all__ = [
    "CAMPAIGNS",
    "DEFAULT_CAMPAIGNS",
    "Campaign",
    "CampaignStats",
    "FindingRecord",
    "FuzzInput",
    "Progress",
    "RunOptions",
    "RunResult",
    "Runner",
    "UnsupportedHypothesis",
    "build_campaign",
    "check_hypothesis_support",
    "http2_support",
]

Check = Callable[["FuzzInput"], "str | None"]

CAMPAIGNS: dict[str, tuple[str, ...]] = {
    "parser": ("http1-valid", "http1-mutated", "http1-framing", "http1-bytes", "http2"),
    "target": ("http1-valid", "http1-mutated", "http1-framing", "http2"),
    "diff": ("http1-valid", "http1-mutated", "http1-framing"),
}
"""Campaign names per command."""
DEFAULT_CAMPAIGNS: dict[str, tuple[str, ...]] = {
    "parser": CAMPAIGNS["parser"],
    "target": ("http1-valid", "http1-mutated", "http1-framing"),
    "diff": CAMPAIGNS["diff"],
}
"""What runs without ``--campaign`` (a live target's ``http2`` needs an h2c server: opt in)."""

DESCRIPTIONS = {
    "http1-valid": "valid HTTP/1.1 requests (RFC 9110/9112 grammar), pipelined, parse exactly",
    "http1-mutated": "valid requests damaged: bytes, header case and whitespace, CL/TE, "
                     "chunk sizes, line endings",
    "http1-framing": "request-smuggling attacks with the outcome RFC 9112 allows",
    "http1-bytes": "arbitrary bytes",
    "http2": "HTTP/2 frame sequences (fuzz/http2.py)",
}


@dataclass(frozen=True)
class FuzzInput:
    """One input: the raw bytes of a connection, where to cut them when fed in pieces
    (in-process campaigns), and what the generator knows of them."""

    raw: bytes
    cuts: tuple[int, ...] = ()
    case: Http1Case | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "raw": repr(self.raw),
            "raw_base64": base64.b64encode(self.raw).decode("ascii"),
            "length": len(self.raw),
            "cuts": list(self.cuts),
            "case": None if self.case is None else self.case.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> FuzzInput:
        """The input a report's finding describes. Raises :class:`ValueError`."""
        try:
            raw = base64.b64decode(str(doc["raw_base64"]).encode("ascii"), validate=True)
            cuts = tuple(int(c) for c in doc.get("cuts", ()))
            case_doc = doc.get("case")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a fuzz input: {exc!r}") from None
        case = None if case_doc is None else Http1Case.from_json(case_doc)
        if case is not None and case.raw != raw:
            raise ValueError("the input's raw bytes and its case's bytes differ")
        return cls(raw, cuts, case)


@dataclass(frozen=True)
class Campaign:
    """A named strategy and check; ``skipped`` says why the campaign cannot run here."""

    name: str
    description: str
    strategy: st.SearchStrategy[FuzzInput]
    check: Check
    skipped: str | None = None


# ------------------------------------------------------------------------------ campaigns


@st.composite
def _with_cuts(draw: st.DrawFn, cases: st.SearchStrategy[Http1Case]) -> FuzzInput:
    case = draw(cases)
    return FuzzInput(case.raw, tuple(draw(split_points(case.raw))), case)


@st.composite
def _bytes_with_cuts(draw: st.DrawFn, data: st.SearchStrategy[bytes],
                     family: str | None) -> FuzzInput:
    raw = draw(data)
    case = Http1Case(raw, None, label=family) if family else None
    return FuzzInput(raw, tuple(draw(split_points(raw))), case)


def _whole(cases: st.SearchStrategy[Http1Case]) -> st.SearchStrategy[FuzzInput]:
    return cases.map(lambda c: FuzzInput(c.raw, (), c))


def http2_support(live: bool = False) -> tuple[Any, str | None]:
    """``(module, None)`` when ``trioserve.fuzz.http2`` provides what the in-process
    (``frame_sequences``, ``check_h2_parse``) or ``live`` campaign (``frame_sequences``,
    ``check_h2_server_output``) needs, else ``(None, reason)``."""
    try:
        module = importlib.import_module(f"{__package__}.http2")
    except ImportError as exc:
        return None, f"trioserve.fuzz.http2 is not available yet ({exc})"
    needed = ("frame_sequences", "check_h2_server_output" if live else "check_h2_parse")
    missing = [f for f in needed if not hasattr(module, f)]
    if missing:
        return None, f"trioserve.fuzz.http2 does not provide {', '.join(missing)} yet"
    return module, None


def _case_check(inp: FuzzInput) -> str:
    if inp.case is None:
        raise ValueError("an HTTP/1.1 campaign needs a case")
    return check_case(inp.case, inp.cuts)


def _skipped(name: str, reason: str) -> Campaign:
    return Campaign(name, DESCRIPTIONS[name], st.just(FuzzInput(b"")), lambda _: None, reason)


def build_campaign(mode: str, name: str, targets: Sequence[Target] = (), *,
                   timeout: float = DEFAULT_TIMEOUT, linger: float = DEFAULT_LINGER,
                   pool: ThreadPoolExecutor | None = None) -> Campaign:
    """The campaign ``name`` of command ``mode`` (``parser``, ``target``, ``diff``).

    ``target`` needs one target, ``diff`` two or more. Raises :class:`ValueError` for an unknown
    mode or campaign, or the wrong number of targets."""
    if name not in CAMPAIGNS.get(mode, ()):
        raise ValueError(f"unknown campaign {name!r} for 'fuzz {mode}'; choose from "
                         f"{', '.join(CAMPAIGNS.get(mode, ()))}")
    if mode == "target" and len(targets) != 1:
        raise ValueError("'fuzz target' takes exactly one target")
    if mode == "diff" and len(targets) < 2:
        raise ValueError("'fuzz diff' needs at least two targets")
    desc = DESCRIPTIONS[name]
    if name == "http2":
        module, reason = http2_support(live=mode != "parser")
        if reason is not None:
            return _skipped(name, reason)
        frames: st.SearchStrategy[bytes] = module.frame_sequences()
        if mode == "parser":
            def h2_parse(inp: FuzzInput) -> None:
                module.check_h2_parse(inp.raw, inp.cuts)
            return Campaign(name, desc, _bytes_with_cuts(frames, None), h2_parse)
        target = targets[0]

        def h2_live(inp: FuzzInput) -> str:
            return check_h2_target(target, inp.raw, timeout=timeout,
                                   check_output=module.check_h2_server_output)
        return Campaign(name, desc, frames.map(FuzzInput), h2_live)
    live = mode != "parser"
    cases: st.SearchStrategy[Http1Case]
    if name == "http1-valid":
        # a live server SHOULD ignore one empty line before a request line; more is optional
        cases = valid_cases(3, connect=not live, max_leading_crlf=1 if live else 2)
    elif name == "http1-mutated":
        cases = mutated_cases(2, connect=not live)
    elif name == "http1-framing":
        cases = framing_cases()
    else:
        return Campaign(name, desc, _bytes_with_cuts(st.binary(max_size=300), "bytes"),
                        _case_check)
    if mode == "parser":
        return Campaign(name, desc, _with_cuts(cases), _case_check)
    if mode == "target":
        one = targets[0]

        def live_check(inp: FuzzInput) -> str:
            assert inp.case is not None
            return check_http1_target(one, inp.case, timeout=timeout, linger=linger)
        return Campaign(name, desc, _whole(cases), live_check)

    def diff_check(inp: FuzzInput) -> str:
        assert inp.case is not None
        return check_diff(targets, inp.case, timeout=timeout, linger=linger, pool=pool)
    return Campaign(name, desc, _whole(cases), diff_check)


# --------------------------------------------------------------------------------- runner


class UnsupportedHypothesis(Exception):
    """The installed hypothesis does not honour the private attributes the runner sets on a
    test (``_hypothesis_internal_use_seed``, ``_hypothesis_internal_database_key``): ``--seed``
    or the example database would be silently ignored."""


_SEED_ATTR = "_hypothesis_internal_use_seed"
_KEY_ATTR = "_hypothesis_internal_database_key"
_support: str | None = None
_support_checked = False


def _set_seed_and_key(test: Callable[[], None], seed: int, key: bytes) -> None:
    """Give a ``@given`` test its seed and database key through the attributes hypothesis
    itself reads: ``hypothesis.seed`` sets the first (and also ``database=None`` in the test's
    settings, which the runner does not want), and ``run_engine`` uses the second instead of
    a digest of the test function (which would change with this module's source)."""
    if not hasattr(test, _SEED_ATTR):
        raise UnsupportedHypothesis(f"@given no longer sets {_SEED_ATTR}")
    setattr(test, _KEY_ATTR, key)
    setattr(test, _SEED_ATTR, seed)


class _Probe(Exception):
    pass


def check_hypothesis_support() -> None:
    """Check, once per process, that the installed hypothesis honours the seed and database
    key the runner sets: the same seed draws the same values twice, and a failure is saved
    under the given key. Raises :class:`UnsupportedHypothesis`."""
    global _support, _support_checked
    if not _support_checked:
        _support_checked = True
        try:
            _check_support()
        except UnsupportedHypothesis as exc:
            _support = str(exc)
    if _support is not None:
        import hypothesis

        raise UnsupportedHypothesis(f"this hypothesis version ({hypothesis.__version__}) is "
                                    f"not supported: {_support}")


def _prober(drawn: list[int]) -> Callable[[int], None]:
    def probe(x: int) -> None:
        drawn.append(x)
        if len(drawn) >= 4:
            raise _Probe
    return probe


def _check_support() -> None:
    db = InMemoryExampleDatabase()
    key = b"trioserve-fuzz/self-check"
    runs: list[list[int]] = []
    for _ in range(2):
        drawn: list[int] = []
        test = settings(max_examples=10, database=db, phases=[Phase.generate], deadline=None,
                        suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                        print_blob=False)(given(st.integers(0, 2**64))(_prober(drawn)))
        _set_seed_and_key(test, 20260, key)
        try:
            test()
        except _Probe:
            pass
        runs.append(drawn[:4])
    if len(runs[0]) < 4 or runs[0] != runs[1]:
        raise UnsupportedHypothesis(f"{_SEED_ATTR} is ignored (--seed would be)")
    if not list(db.fetch(key)):
        raise UnsupportedHypothesis(f"{_KEY_ATTR} is ignored (the example database would be)")


@dataclass
class FindingRecord:
    """The smallest failing input seen for one (campaign, kind, first message line)."""

    campaign: str
    kind: str
    message: str
    details: str
    input: FuzzInput
    occurrences: int = 1
    first_seen: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.campaign, self.kind, self.message)


@dataclass
class CampaignStats:
    """Per-campaign counts: check runs (including shrinking), runs while shrinking, hypothesis
    rounds, seconds, outcome labels, and why the campaign was skipped, if it was."""

    examples: int = 0
    shrink_examples: int = 0
    rounds: int = 0
    elapsed: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    skipped: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """``duration``: seconds for all campaigns together (split evenly, time a campaign leaves
    unused goes to the next); ``max_examples``: per campaign, explored inputs (not counting
    shrinking); ``seed``: hypothesis' seed for round *n* is ``seed + n``; ``database``: a
    directory for hypothesis' example database, ``None`` for none; ``shrink_time``: how long a new
    finding may be shrunk, at most half the campaign's share of ``duration`` (and at least 2 s);
    shrinking may run past ``duration``."""

    duration: float = 60.0
    max_examples: int | None = None
    seed: int = 0
    database: str | None = ".trioserve-fuzz/db"
    shrink_time: float = 30.0


@dataclass
class RunResult:
    findings: list[FindingRecord]
    stats: dict[str, CampaignStats]
    elapsed: float
    interrupted: bool = False
    aborted: str | None = None

    @property
    def examples(self) -> int:
        return sum(s.examples for s in self.stats.values())


class Progress:
    """A progress line on a stream: rewritten in place at most 5 times a second on a TTY,
    else a full line every ``interval`` seconds. ``enabled=False`` prints nothing."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 10.0,
                 enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self._last = time.monotonic()
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """A message on its own line (ends the in-place line first)."""
        if not self.enabled:
            return
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class _StopRound(BaseException):
    """Raised inside a hypothesis run to end it now (hypothesis lets BaseException through)."""


@dataclass
class _Round:
    """The state of one hypothesis run: its example budget and deadline, the keys already
    shrunk (only counted now), the keys raised this round, and when shrinking began."""

    size: int
    deadline: float
    started: float
    budget: float
    known: set[tuple[str, str, str]]
    shrink_time: float
    raised: set[tuple[str, str, str]] = field(default_factory=set)
    shrink_since: float | None = None
    explored: int = 0


class _FuzzFailure(AssertionError):
    """Base of the per-finding-key exception types raised to hypothesis (one type per key, so
    hypothesis shrinks each key on its own)."""


def _kind(exc: BaseException) -> str:
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str):
        return kind
    if isinstance(exc, InvariantViolation):
        return "invariant"
    return f"error:{type(exc).__name__}"


def stable_line(line: str) -> str:
    """A message line with the variable parts of one fault elided: bytes reprs become ``…``
    (:func:`~trioserve.fuzz.http1.elide_bytes`, on the first 200 characters), the contents of
    ``[...]`` and ``{...}`` become ``…``; at most 200 characters."""
    line = elide_bytes(line)
    out: list[str] = []
    depth = 0
    for ch in line:
        if ch in "[{":
            if depth == 0:
                out.append(ch + "…")
            depth += 1
        elif ch in "]}" and depth:
            depth -= 1
            if depth == 0:
                out.append(ch)
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip()[:200]


def _split_message(exc: BaseException) -> tuple[str, str]:
    """(the key line, the whole message) of a failure."""
    text = str(exc) or type(exc).__name__
    return stable_line(text.partition("\n")[0]), text


class Runner:
    """Runs campaigns one after the other within the options' budget; see the module
    docstring. ``mode`` (``parser``/``target``/``diff``) separates the example databases."""

    def __init__(self, mode: str, campaigns: Sequence[Campaign], options: RunOptions,
                 progress: Progress | None = None) -> None:
        self.mode = mode
        self.campaigns = list(campaigns)
        self.options = options
        self.progress = progress or Progress(enabled=False)
        self.findings: dict[tuple[str, str, str], FindingRecord] = {}
        self.stats: dict[str, CampaignStats] = {c.name: CampaignStats() for c in campaigns}
        self._failure_types: dict[tuple[str, str, str], type[_FuzzFailure]] = {}
        self._database: ExampleDatabase | None = (
            DirectoryBasedExampleDatabase(options.database) if options.database else None)
        self._start = time.monotonic()
        self.aborted: str | None = None

    # findings

    def _record(self, campaign: str, inp: FuzzInput,
                exc: BaseException) -> tuple[str, str, str]:
        """Record a failing input (keeping the smallest per key); returns its key."""
        message, details = _split_message(exc)
        key = (campaign, _kind(exc), message)
        rec = self.findings.get(key)
        if rec is None:
            self.findings[key] = FindingRecord(campaign, key[1], message, details, inp,
                                               first_seen=time.monotonic() - self._start)
            return key
        rec.occurrences += 1
        if (len(inp.raw), inp.raw) < (len(rec.input.raw), rec.input.raw):
            rec.input, rec.details = inp, details
        return key

    def _failure_type(self, key: tuple[str, str, str]) -> type[_FuzzFailure]:
        cls = self._failure_types.get(key)
        if cls is None:
            cls = type(f"FuzzFinding{len(self._failure_types)}", (_FuzzFailure,), {})
            self._failure_types[key] = cls
        return cls

    # running

    def run(self) -> RunResult:
        """Run every campaign; Ctrl-C stops the run and keeps what was found. Raises
        :class:`UnsupportedHypothesis` (before running anything)."""
        check_hypothesis_support()
        interrupted = False
        runnable = [c for c in self.campaigns if c.skipped is None]
        for c in self.campaigns:
            if c.skipped is not None:
                self.stats[c.name].skipped = c.skipped
                self.progress.line(f"campaign {c.name} skipped: {c.skipped}")
        try:
            for i, campaign in enumerate(runnable):
                used = time.monotonic() - self._start
                budget = max(0.0, (self.options.duration - used) / (len(runnable) - i))
                self._run_campaign(campaign, budget)
                if self.aborted:
                    break
        except KeyboardInterrupt:
            interrupted = True
        self.progress.done()
        findings = sorted(self.findings.values(), key=lambda r: r.first_seen)
        return RunResult(findings, self.stats, time.monotonic() - self._start, interrupted,
                         self.aborted)

    def _status(self, campaign: Campaign, stats: CampaignStats, started: float,
                budget: float) -> str:
        spent = time.monotonic() - started
        rate = stats.examples / spent if spent > 0 else 0.0
        found = sum(1 for k in self.findings if k[0] == campaign.name)
        return (f"[{self.mode} {campaign.name}] {stats.examples} examples ({rate:.0f}/s), "
                f"{found} finding(s), {spent:.0f}s of {budget:.0f}s "
                f"(total {time.monotonic() - self._start:.0f}s)")

    def _make_test(self, campaign: Campaign, stats: CampaignStats,
                   rnd: _Round) -> Callable[[FuzzInput], None]:
        """The function hypothesis runs for one round."""

        def test(inp: FuzzInput) -> None:
            t = time.monotonic()
            if rnd.shrink_since is not None:
                if t > rnd.shrink_since + rnd.shrink_time:
                    raise _StopRound
            elif t > rnd.deadline or rnd.explored >= rnd.size:
                raise _StopRound
            failure: tuple[str, str, str] | None = None
            label: str | None = None
            try:
                label = campaign.check(inp)
            except (_StopRound, KeyboardInterrupt):
                raise
            except Unreachable as exc:
                self._record(campaign.name, inp, exc)
                self.aborted = f"{campaign.name}: {str(exc).splitlines()[0]}"
                raise _StopRound from None
            except Exception as exc:
                key = self._record(campaign.name, inp, exc)
                if key not in rnd.known:
                    failure = key
            finally:
                stats.examples += 1
                if rnd.shrink_since is not None:
                    stats.shrink_examples += 1
                else:
                    rnd.explored += 1
            if label is not None:
                stats.outcomes[label] += 1
            self.progress.update(self._status(campaign, stats, rnd.started, rnd.budget))
            if failure is not None:
                rnd.raised.add(failure)
                if rnd.shrink_since is None:
                    rnd.shrink_since = t
                # raised outside the except block: hypothesis tells failures apart by type
                # and origin, including the context exception's
                raise self._failure_type(failure)(failure[2])

        return test

    def _run_campaign(self, campaign: Campaign, budget: float) -> None:
        opts = self.options
        stats = self.stats[campaign.name]
        started = time.monotonic()
        deadline = started + budget
        known: set[tuple[str, str, str]] = set()
        explored = 0
        size = 20 if self.mode != "parser" else 50
        while True:
            now = time.monotonic()
            left_examples = None if opts.max_examples is None else opts.max_examples - explored
            if now >= deadline or (left_examples is not None and left_examples <= 0):
                break
            if left_examples is not None:
                size = min(size, left_examples)
            rnd = _Round(size=size, deadline=deadline, started=started, budget=budget,
                         known=known, shrink_time=min(opts.shrink_time, max(2.0, budget / 2)))
            phases = [Phase.generate, Phase.target, Phase.shrink]
            if stats.rounds == 0 and self._database is not None:
                phases.insert(0, Phase.reuse)
            wrapped = settings(
                max_examples=max(1, size), deadline=None, database=self._database,
                phases=phases, suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet, report_multiple_bugs=True, print_blob=False,
            )(given(campaign.strategy)(self._make_test(campaign, stats, rnd)))
            _set_seed_and_key(wrapped, opts.seed + stats.rounds,
                              f"trioserve-fuzz/{self.mode}/{campaign.name}".encode())
            round_start = time.monotonic()
            before = stats.examples
            try:
                wrapped()
            except _StopRound:
                pass
            except Exception:
                if not rnd.raised:
                    raise  # not a finding: a fault in a strategy or in hypothesis
            stats.rounds += 1
            explored += rnd.explored
            known |= rnd.raised
            if self.aborted:
                break
            spent = time.monotonic() - round_start
            done = stats.examples - before
            rate = done / spent if spent > 0 else 100.0
            left = deadline - time.monotonic()
            size = int(min(5000, max(10, rate * min(max(left, 0.0), 10.0))))
        stats.elapsed += time.monotonic() - started
        self.progress.update(self._status(campaign, stats, started, budget), force=True)


# --------------------------------------------------------------------------------- report


def report_document(*, mode: str, argv: Sequence[str], targets: Sequence[Target],
                    options: RunOptions, result: RunResult, report_path: str,
                    campaigns: Sequence[Campaign], timeout: float | None,
                    linger: float | None = None) -> dict[str, Any]:
    """The JSON report of a run (see docs/fuzzing.md for the fields)."""
    from shlex import join, quote

    findings = []
    for i, rec in enumerate(result.findings):
        findings.append({
            "index": i, "campaign": rec.campaign, "kind": rec.kind, "message": rec.message,
            "details": rec.details, "occurrences": rec.occurrences,
            "first_seen": round(rec.first_seen, 3), **rec.input.to_json(),
            "replay": f"trioserve fuzz replay {quote(report_path)} {i}",
        })
    return {
        "tool": "trioserve fuzz",
        "command": mode,
        "command_line": join(["trioserve", "fuzz", *argv]),
        "argv": list(argv),
        "targets": [f"{t.name}={t.url}" for t in targets],
        "timeout": timeout,
        "linger": linger,
        "seed": options.seed,
        "duration": {"budget": options.duration, "elapsed": round(result.elapsed, 3)},
        "max_examples": options.max_examples,
        "database": options.database,
        "interrupted": result.interrupted,
        "aborted": result.aborted,
        "examples": result.examples,
        "campaigns": {
            c.name: {
                "description": c.description,
                "examples": result.stats[c.name].examples,
                "shrink_examples": result.stats[c.name].shrink_examples,
                "rounds": result.stats[c.name].rounds,
                "elapsed": round(result.stats[c.name].elapsed, 3),
                "findings": sum(1 for f in result.findings if f.campaign == c.name),
                "outcomes": dict(result.stats[c.name].outcomes.most_common()),
                "skipped": result.stats[c.name].skipped,
            } for c in campaigns
        },
        "findings": findings,
    }


def write_report(path: str, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path`` (through a temporary file, then renamed). Raises
    :class:`OSError`."""
    import json

    target = Path(path)
    if target.parent != Path():
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=True) + "\n", encoding="ascii")
    tmp.replace(target)


def new_seed() -> int:
    """A random seed for a run without ``--seed`` (recorded in the report)."""
    import secrets

    return secrets.randbelow(2**31)

