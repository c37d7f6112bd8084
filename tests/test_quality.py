"""The code base stays ruff- and mypy-clean (run as part of the suite so CI enforces it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    if shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name):
        return [sys.executable, "-m", name]
    pytest.skip(f"{name} is not installed")


def test_ruff_clean() -> None:
    result = subprocess.run([*_tool("ruff"), "check", "trioserve", "bridges", "fuzz",
                             "benchmarks", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = subprocess.run([*_tool("mypy"), "trioserve", "bridges", "fuzz"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
