"""The wheel: ``bridges/`` and ``fuzz/`` install as ``trioserve.bridges`` and ``trioserve.fuzz``
(no generic top-level names in site-packages), and the package imports from a fresh venv."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from procs import REPO, child_env

pytestmark = pytest.mark.slow

# Build from a copy of the source tree, so a build never writes build/ or *.egg-info into the
# shared checkout (and a stale egg-info there cannot influence what is packaged).
_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                 ".*cache", ".hypothesis", ".venv", "tests", "benchmarks")


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False,
                         stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    out = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out)], cwd=src, env=child_env())
    (built,) = out.glob("trioserve-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"trioserve"}, tops
    assert len(tops) == 2, tops
    assert not any(n.startswith(("bridges/", "fuzz/", "tests/")) for n in names)
    for required in ("trioserve/__init__.py", "trioserve/py.typed", "trioserve/demo.py",
                     "trioserve/protocols/http1.py", "trioserve/bridges/__init__.py",
                     "trioserve/bridges/asgi.py", "trioserve/fuzz/__init__.py"):
        assert required in names, names
    assert "trioserve = trioserve.cli:run" in scripts


def test_wheel_installs_and_imports_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    # Runtime dependencies come from this interpreter's site-packages (no network). A plain
    # path entry: the .pth files there (such as an editable install of this repository) are
    # not processed, so trioserve can only come from the wheel.
    venv_site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                     .stdout.strip())
    assert venv in venv_site.parents
    (venv_site / "_outer_deps.pth").write_text(
        "\n".join(p for p in site.getsitepackages() if Path(p).is_dir()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         str(wheel)], env=child_env())

    check = textwrap.dedent(f"""
        import importlib.util, pathlib, sys
        import trioserve, trioserve.bridges.asgi, trioserve.fuzz, trioserve.demo, trioserve.cli
        site = pathlib.Path({str(venv_site)!r}).resolve()
        for mod in (trioserve, trioserve.bridges.asgi, trioserve.fuzz, trioserve.demo):
            path = pathlib.Path(mod.__file__).resolve()
            assert site in path.parents, (mod.__name__, path)
        assert importlib.util.find_spec("bridges") is None
        assert importlib.util.find_spec("fuzz") is None
        assert callable(trioserve.bridges.asgi.ASGIBridge)
        assert callable(trioserve.demo.app)
        print("ok", trioserve.__version__)
    """)
    res = run([str(py), "-c", check], cwd=tmp_path, env=child_env())
    assert res.stdout.strip() == "ok 0.1.0"
    # the console script and python -m work from the installed package
    res = run([str(venv / "bin" / "trioserve"), "--version"], cwd=tmp_path, env=child_env())
    assert res.stdout.strip() == "trioserve 0.1.0"
    res = run([str(py), "-m", "trioserve", "--help"], cwd=tmp_path, env=child_env())
    assert "--graceful-timeout" in res.stdout
