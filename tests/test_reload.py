"""``trioserve --reload``: one worker, reloaded gracefully when a watched Python file changes; a
change that breaks the app keeps the old worker serving; watching that fails stops watching,
not serving. Real files in a temporary directory, real watchfiles, a real server process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import textwrap
import time
from pathlib import Path

import pytest
from procs import ServerProcess, module_command, run_to_exit
from test_workers import http_get

pytestmark = pytest.mark.slow

APP = """
    import os

    VERSION = {version!r}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = f"{{VERSION}} {{os.getpid()}}".encode()
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]}})
        await send({{"type": "http.response.body", "body": body}})
"""


def write_app(directory: Path, version: str) -> None:
    path = directory / "rapp.py"
    path.write_text(textwrap.dedent(APP.format(version=version)))


def get(port: int) -> tuple[str, int]:
    status, body = http_get(port, "/")
    assert status == 200
    version, pid = body.split()
    return version, int(pid)


def test_reload_on_change_and_keep_serving_through_a_broken_edit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_app(src, "v1")
    sp = ServerProcess(module_command("rapp:app", "--reload", "--reload-dir", str(src),
                                      "--app-dir", str(src), "--port", "0", "--no-access-log"),
                       cwd=tmp_path)
    try:
        port = sp.wait_port()
        sp.wait_for_line(r"1 worker ready", timeout=60)
        sp.wait_for_line(r"watching .*src for changes to Python files", timeout=10)
        version, first = get(port)
        assert version == "v1"

        mark = len(sp.lines)
        write_app(src, "v2")
        sp.wait_for_line(r"changed: .*rapp\.py: reloading", timeout=30, start=mark)
        sp.wait_for_line("reload complete", timeout=60, start=mark)
        sp.wait_for_line(f"worker {first} exited with code 0", timeout=30, start=mark)
        version, second = get(port)
        assert (version, second != first) == ("v2", True)

        # A syntax error: the new worker cannot import the app, the old one goes on.
        mark = len(sp.lines)
        (src / "rapp.py").write_text("def broken(:\n")
        line = sp.wait_for_line(r"reload failed: new worker \d+ exited with code 1 before it "
                                r"was ready: error while importing 'rapp': SyntaxError",
                                timeout=60, start=mark)
        assert " ERROR " in line.string and "the old workers keep serving" in line.string
        assert get(port) == ("v2", second)

        # Files that are not Python are not watched.
        (src / "notes.txt").write_text("hello")
        time.sleep(1)
        assert not any("changed:" in x for x in sp.lines[mark:] if "notes.txt" in x)

        write_app(src, "v3")
        after = sp.lines.index(line.string) + 1
        sp.wait_for_line("reload complete", timeout=60, start=after)
        # until it has closed its listener, the draining worker may still accept
        sp.wait_for_line(f"worker {second} exited with code 0", timeout=30, start=after)
        version, third = get(port)
        assert version == "v3" and third not in (first, second)
        sp.signal()
        assert sp.wait(30) == 0
        assert "Traceback" not in sp.stderr
    finally:
        sp.close()


def test_reload_without_watchfiles_exits_2(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "watchfiles"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    write_app(tmp_path, "v1")
    proc = run_to_exit(module_command("rapp:app", "--reload", "--app-dir", str(tmp_path)),
                       env={"PYTHONPATH": str(tmp_path / "fake")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "trioserve: error: --reload needs 'pip install trioserve[reload]'"


def test_reload_dir_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    proc = run_to_exit(module_command("rapp:app", "--reload", "--reload-dir", missing))
    assert proc.returncode == 2
    assert re.search(r"trioserve: error: --reload-dir '.*missing': not a directory",
                     proc.stderr)
    assert not os.path.exists(missing)


def test_failure_to_watch_keeps_serving_and_sigttin_is_ignored(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    # A slow import: the watched directory is gone before watching begins (after the worker
    # is ready), which watchfiles reports with FileNotFoundError.
    (src / "rapp.py").write_text("import time\ntime.sleep(1.5)\n" +
                                 textwrap.dedent(APP.format(version="v1")))
    sp = ServerProcess(module_command("rapp:app", "--reload", "--reload-dir", str(watched),
                                      "--app-dir", str(src), "--port", "0", "--no-access-log"),
                       cwd=tmp_path)
    try:
        port = sp.wait_port()
        shutil.rmtree(watched)
        line = sp.wait_for_line(r"--reload: watching for changes failed \(FileNotFoundError: "
                                r".*\); no longer watching, the server keeps serving",
                                timeout=60)
        assert " ERROR " in line.string
        assert get(port)[0] == "v1"
        # One worker with --reload: SIGTTIN and SIGTTOU change nothing.
        sp.signal(signal.SIGTTIN)
        sp.wait_for_line("received SIGTTIN: ignored, --reload runs one worker")
        sp.signal(signal.SIGTTOU)
        sp.wait_for_line("received SIGTTOU: ignored, --reload runs one worker")
        time.sleep(0.5)
        assert len(re.findall(r"worker \d+ started", sp.stderr)) == 1
        assert get(port)[0] == "v1"
        sp.signal()
        assert sp.wait(30) == 0
        assert "Traceback" not in sp.stderr
    finally:
        sp.close()
