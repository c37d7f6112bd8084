"""benchmarks/suite.py without load: the report writer on recorded numbers, the CLI's --help,
--dry-run listing and its errors. Nothing here starts a server or a load generator."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite  # noqa: E402

RECORDED: dict[str, Any] = {
    "meta": {"date": "2026-12-07 01:00 UTC", "commit": "abc1234", "python": "3.11.7",
             "versions": {"uvicorn": "0.55.0", "wrk": "4.1.0"}, "cpus": 2,
             "command": "python benchmarks/suite.py --quick", "rounds": 2, "duration": 3.0,
             "connections": 50},
    "scenarios": [
        {"key": "asgi-hello", "title": "ASGI hello world (HTTP/1.1)", "kind": "wrk",
         "base": "trioserve (h11)", "floor": "floor: trio+h11 (prebuilt bytes)",
         "description": "hello", "skipped": {"gunicorn gthread": "WSGI only"},
         "remarks": ["round 2, hypercorn (trio): FAILED: server did not start listening"],
         "rows": [
             {"name": "floor: trio+h11 (prebuilt bytes)", "rounds": [5000.0, 3750.0],
              "extra": [None, None], "skipped": None},
             {"name": "trioserve (h11)", "rounds": [4000.0, 3000.0], "extra": [None, None],
              "skipped": None},
             {"name": "uvicorn (h11)", "rounds": [2000.0, 1500.0],
              "extra": [{"p50_ms": 1.0, "p99_ms": 10.0}, {"p50_ms": 2.0, "p99_ms": 20.0}],
              "skipped": None},
             {"name": "hypercorn (trio)", "rounds": [1000.0, None], "extra": [None, None],
              "skipped": None},
             {"name": "granian (ASGI)", "rounds": [], "extra": [],
              "skipped": "not installed: granian"},
         ]},
        {"key": "h2c", "title": "HTTP/2", "kind": "h2", "base": "trioserve (h2c)",
         "floor": None, "description": "h2load", "skipped": {}, "remarks": [],
         "rows": [{"name": "trioserve (h2c)", "rounds": [None, None], "extra": [None, None],
                   "skipped": None}]},
        {"key": "latency", "title": "Latency", "kind": "latency", "base": "trioserve (h11)",
         "floor": None, "description": "fixed rate", "skipped": {}, "remarks": [],
         "rows": [
             {"name": "trioserve (h11)", "rounds": [2.0, 4.0],
              "extra": [{"p50": 1.0, "p99": 2.0, "achieved": 1000.0},
                        {"p50": 3.0, "p99": 4.0, "achieved": 998.0}], "skipped": None},
             {"name": "uvicorn (h11)", "rounds": [6.0, 6.0],
              "extra": [{"p50": 0.5, "p99": 6.0, "achieved": 1000.0},
                        {"p50": 0.5, "p99": 6.0, "achieved": 1000.0}], "skipped": None},
         ]},
        {"key": "rss-idle", "title": "RSS", "kind": "rss", "base": "trioserve", "floor": None,
         "description": "idle", "skipped": {}, "remarks": [],
         "rows": [
             {"name": "trioserve", "rounds": [8000.0],
              "extra": [{"held": 1000, "before": 2**25, "after": 2**25 + 8_000_000,
                         "errors": 0}], "skipped": None},
             {"name": "hypercorn-trio", "rounds": [16000.0],
              "extra": [{"held": 1000, "before": 2**26, "after": 2**26 + 16_000_000,
                         "errors": 0}], "skipped": None},
         ]},
    ],
}


def row_of(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_render_tables_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    text = suite.render(copy.deepcopy(RECORDED), out)
    assert out.read_text() == text
    assert "- Commit: abc1234" in text and "`python benchmarks/suite.py --quick`" in text
    assert "uvicorn 0.55.0" in text

    # the median of the per-round ratios: uvicorn (2000, 1500) against trioserve (4000, 3000)
    # and the floor (5000, 3750)
    _name, med, rounds, floor, versus, p99 = row_of(text, "uvicorn (h11)")
    assert (med, rounds, floor, versus) == ("1,750", "2,000, 1,500", "0.40x", "2.00x")
    assert p99 == "15.00"  # wrk --latency's p99, median of the rounds
    assert row_of(text, "trioserve (h11)")[3:] == ["0.80x", "1.00x", "-"]
    # a failed round is shown and left out of the median and the ratios
    assert row_of(text, "hypercorn (trio)")[1:5] == ["1,000", "1,000, failed", "0.20x", "4.00x"]
    assert "server did not start listening" in text
    assert row_of(text, "granian (ASGI)")[1] == "skipped: not installed: granian"
    assert "No row for gunicorn gthread: WSGI only." in text
    assert row_of(text, "trioserve (h2c)")[1:3] == ["all rounds failed", "failed, failed"]

    latency = text[text.index("### Latency"):text.index("### RSS")]
    assert row_of(latency, "trioserve (h11)")[1:6] == ["2.00", "3.00", "999", "2.00, 4.00",
                                                       "1.00x"]
    assert row_of(latency, "uvicorn (h11)")[5] == "2.00x"
    rss = text[text.index("### RSS"):]
    assert row_of(rss, "hypercorn-trio")[1:] == ["1,000", "64.0 MiB", "79.3 MiB", "16,000",
                                                 "2.00x"]

    targets = text[text.index("## Issue 8's targets"):text.index("## Scenarios")]
    assert row_of(targets, "ASGI hello, h11 parser: >= 3x Hypercorn trio")[1:] == ["4.00x", "yes"]
    assert row_of(targets, "ASGI hello, h11 parser: >= 1.2x Uvicorn (h11)")[1:] == ["2.00x",
                                                                                  "yes"]
    assert row_of(targets, "ASGI hello, h11 parser: >= 85% of the Trio+h11 floor (prebuilt "
                           "bytes)")[1:] == ["0.80x", "**no**"]
    assert "2.00x | yes" in targets.splitlines()[-2]  # memory: Hypercorn's bytes / trioserve's
    assert "HTTP/2" not in targets and "httptools" not in targets  # rows not in the run

    png = tmp_path / "benchmarks.png"
    assert "![throughput relative to trioserve](benchmarks.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_throughput_draws_no_chart(tmp_path: Path) -> None:
    data = copy.deepcopy(RECORDED)
    data["scenarios"] = [s for s in data["scenarios"] if s["kind"] == "rss"]
    text = suite.render(data, tmp_path / "b.md")
    assert "![" not in text
    assert not (tmp_path / "b.png").exists()


def test_from_json_renders_a_recorded_run(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    recorded = tmp_path / "suite.json"
    recorded.write_text(json.dumps(RECORDED))
    out = tmp_path / "out.md"
    assert suite.main(["--from-json", str(recorded), "--out", str(out)]) == 0
    assert "| uvicorn (h11) | 1,750 |" in out.read_text()
    assert suite.main(["--from-json", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        suite.main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--quick", "--rounds", "--duration", "--only", "--out", "--dry-run"):
        assert option in help_text


def test_dry_run_lists_every_scenario_and_peer() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for key in ("asgi-hello", "wsgi-hello", "64k", "upload", "stream", "h2c", "ws-echo",
                "latency", "rss-idle"):
        assert f"\n{key}: " in f"\n{out}"
    for server in ("floor: trio+h11 (prebuilt bytes)", "floor: trio+h2", "trioserve (httptools)",
                   "uvicorn (httptools+uvloop)", "hypercorn (trio)", "hypercorn (asyncio)",
                   "gunicorn gthread (1 worker, 8 threads)", "granian (WSGI)"):
        assert server in out
    assert "taskset" not in out  # the listing shows the servers' own commands
    assert "no row for uvicorn: Uvicorn does not serve HTTP/2" in out


def test_dry_run_only_and_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite.main(["--dry-run", "--only", "h2c: trioserve"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("h2c: ") and out.count("\n  ") == 3  # the row and two 'no row'
    assert "trioserve (h2c): " in out and "--http" not in out  # plain port: h11 + h2c

    assert suite.main(["--dry-run", "--quick"]) == 0
    quick = capsys.readouterr().out
    assert "uvicorn (h11)" in quick  # the targets need it in the hello world
    assert "hypercorn (asyncio)" not in quick.split("64k:")[1].split("upload:")[0]


@pytest.mark.parametrize("argv, message", [
    (["--only", "("], "--only: not a regular expression"),
    (["--rounds", "0"], "--rounds and --duration must be at least 1"),
])
def test_bad_arguments(argv: list[str], message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        suite.main(["--dry-run", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
