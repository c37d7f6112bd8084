"""The deployment examples of ``docs/examples`` are the ones ``docs/deploy.md`` shows, and each
works as far as this machine allows (nginx and HAProxy have tests of their own):

- every file in ``docs/examples`` appears verbatim in ``docs/deploy.md``, so the two cannot
  drift;
- systemd: ``systemd-analyze verify`` accepts the socket and service units (no running systemd
  needed), and the service's ``ExecStart`` command line, run under ``systemd-socket-activate``
  on the socket unit's kind of socket, serves the first connection (which waits in the
  backlog until trioserve is up, as with systemd), notifies ``READY=1``, ``WATCHDOG=1`` and,
  on SIGTERM, ``STOPPING=1`` from its main process (``NotifyAccess=main``), and exits 0 within
  ``TimeoutStopSec``, which covers the graceful timeout;
- the Dockerfile's ``ENTRYPOINT`` + ``CMD`` (with its ``ENV``) serves here, and its
  ``HEALTHCHECK`` command succeeds against it (no Docker on this machine: the image itself is
  not built);
- kubernetes.yaml: its probes point at the admin port trioserve binds, its Service leaves that
  port out, ``terminationGracePeriodSeconds`` covers preStop plus the drain and the app's
  shutdown; trioserve started with the image's entrypoint and the manifest's ``args`` answers
  the probes, and on SIGTERM turns not-ready while a request in flight completes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from deploy_helpers import (
    ADMIN_RE,
    DEPLOY_MD,
    EXAMPLES,
    SERVING_RE,
    dockerfile_instructions,
    example,
    option,
    parse_unit,
    runnable_command,
    substitute,
)
from procs import ServerProcess, free_port, notify_socket, server_process, trioserve_script


def test_every_example_is_shown_verbatim_in_deploy_md() -> None:
    doc = DEPLOY_MD.read_text()
    files = sorted(p for p in EXAMPLES.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"nginx.conf", "haproxy.cfg", "trioserve.service",
                                       "trioserve.socket", "Dockerfile", "kubernetes.yaml"}
    missing = [p.name for p in files if p.read_text() not in doc]
    assert not missing, f"docs/deploy.md does not show these files as they are: {missing}"


# -------------------------------------------------------------------------------- systemd

def _seconds(value: str) -> float:
    """A systemd time span as used in the example (``65``, ``65s``, ``1min 5s``)."""
    total = 0.0
    for part in value.split():
        for unit, factor in (("min", 60.0), ("ms", 0.001), ("s", 1.0)):
            if part.endswith(unit):
                total += float(part[:-len(unit)]) * factor
                break
        else:
            total += float(part)
    return total


def _exec_start() -> list[str]:
    [line] = parse_unit(example("trioserve.service"))["Service"]["ExecStart"]
    return shlex.split(line)


def test_systemd_units_settings() -> None:
    service = parse_unit(example("trioserve.service"))
    sock = parse_unit(example("trioserve.socket"))
    s = service["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert _seconds(s["WatchdogSec"][0]) > 0
    assert s["KillSignal"] == ["SIGTERM"]
    # SIGTERM to the supervisor alone (it drains its workers); SIGKILL to all after the timeout
    assert s["KillMode"] == ["mixed"]
    argv = _exec_start()
    graceful = float(option(argv, "--graceful-timeout"))
    # the drain, then the app's shutdown, each up to --graceful-timeout
    assert _seconds(s["TimeoutStopSec"][0]) > 2 * graceful + 5  # the supervisor's own deadline
    # no address of its own: the socket comes from the socket unit
    assert not {"--host", "--port", "--uds", "--fd"} & set(argv)
    assert sock["Socket"]["ListenStream"] == ["127.0.0.1:8000"]
    assert service["Unit"]["Requires"] == ["trioserve.socket"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    (tmp_path / "trioserve.socket").write_text(example("trioserve.socket"))
    (tmp_path / "trioserve.service").write_text(substitute(example("trioserve.service"), {
        "/srv/myapp/.venv/bin/trioserve": str(trioserve_script())}))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "trioserve.socket"), str(tmp_path / "trioserve.service")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="no systemd-socket-activate")
def test_service_runs_under_socket_activation(tmp_path: Path) -> None:
    s = parse_unit(example("trioserve.service"))["Service"]
    argv = _exec_start()
    command = runnable_command(argv, {"--admin-bind": "127.0.0.1:0"})
    port = free_port()  # systemd-socket-activate only takes an address
    env_args = [f"--setenv={kv}" for kv in s.get("Environment", [])]
    with notify_socket(tmp_path) as notify:
        activate = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
                    f"--setenv=NOTIFY_SOCKET={notify.path}", "--setenv=WATCHDOG_USEC=1000000",
                    *env_args, *command]
        with server_process(activate, cwd=tmp_path) as sp:
            sp.wait_for_line(r"Listening on 127\.0\.0\.1", 20)
            # the first connection starts trioserve, and waits in the backlog meanwhile
            r = httpx.get(f"http://127.0.0.1:{port}/info", timeout=30)
            assert r.status_code == 200, r.text
            main_pid = sp.proc.pid  # systemd-socket-activate execs the ExecStart command
            # (each wait_for: the next such message; the watchdog pings every 0.5 s)
            assert notify.wait_for("READY=1", 20)[0] == main_pid, notify.messages
            assert notify.wait_for("WATCHDOG=1", 5)[0] == main_pid, notify.messages
            admin = int(sp.wait_for_line(ADMIN_RE, 10).group(1))
            assert httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=10).status_code == 200
            sp.signal(signal.SIGTERM)
            assert notify.wait_for("STOPPING=1", 20)[0] == main_pid, notify.messages
            assert sp.wait(_seconds(s["TimeoutStopSec"][0])) == 0, sp.stderr
            assert all(pid == main_pid for pid, _ in notify.messages), notify.messages


# ------------------------------------------------------------------------------ container

def _dockerfile() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for word, rest in dockerfile_instructions(example("Dockerfile")):
        out.setdefault(word, []).append(rest)
    return out


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _dockerfile().get("ENV", []):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def _entrypoint() -> list[str]:
    [entrypoint] = _dockerfile()["ENTRYPOINT"]
    return list(json.loads(entrypoint))


def test_dockerfile_settings() -> None:
    d = _dockerfile()
    argv = _entrypoint() + json.loads(d["CMD"][0])
    assert argv[0] == "trioserve"  # exec form: trioserve itself gets the stop signal
    assert d["STOPSIGNAL"] == ["SIGTERM"]
    assert d["USER"] != ["root"] and d["USER"] != ["0"]
    # docker stop's default timeout is 10 s
    assert float(option(argv, "--graceful-timeout")) < 10
    exposed = {int(p) for p in d["EXPOSE"][0].split()}
    assert exposed == {int(option(argv, "--port")),
                       int(option(argv, "--admin-bind").rpartition(":")[2])}
    assert option(argv, "--host") == "0.0.0.0"  # reachable through the container's network


def _serving_ports(sp: ServerProcess) -> tuple[int, int]:
    return (int(sp.wait_for_line(SERVING_RE, 20).group(2)),
            int(sp.wait_for_line(ADMIN_RE, 20).group(1)))


@pytest.mark.slow
def test_container_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    d = _dockerfile()
    argv = _entrypoint() + json.loads(d["CMD"][0])
    command = runnable_command(argv, {"--host": "127.0.0.1", "--port": "0",
                                      "--admin-bind": "127.0.0.1:0"})
    healthcheck = d["HEALTHCHECK"][0]
    check = json.loads(healthcheck[healthcheck.index("CMD ") + 4:])
    assert check[0] == "python"
    with server_process(command, cwd=tmp_path, env=_image_env()) as sp:
        port, admin = _serving_ports(sp)
        assert httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).status_code == 200
        # the image's python is this one; the admin port is the one bound here
        check = [sys.executable, *(substitute(arg, {"127.0.0.1:9000": f"127.0.0.1:{admin}"})
                                   if "127.0.0.1:9000" in arg else arg for arg in check[1:])]
        r = subprocess.run(check, capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0, sp.stderr


# ----------------------------------------------------------------------------- Kubernetes

def _manifests() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    docs = [doc for doc in yaml.safe_load_all(example("kubernetes.yaml")) if doc]
    return {doc["kind"]: doc for doc in docs}


def _container(manifests: dict[str, Any]) -> dict[str, Any]:
    [container] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_kubernetes_manifest_settings() -> None:
    manifests = _manifests()
    deployment, service = manifests["Deployment"], manifests["Service"]
    pod = deployment["spec"]["template"]
    container = _container(manifests)
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin_bind = option(args, "--admin-bind")
    # kubelet probes the pod's address: the admin endpoint listens on it, on its own port
    assert admin_bind.startswith("0.0.0.0:") and option(args, "--host") == "0.0.0.0"
    assert ports == {"http": int(option(args, "--port")),
                     "admin": int(admin_bind.rpartition(":")[2])}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("admin", ports["admin"]), probe
        paths[probe] = get["path"]
    assert paths["readinessProbe"] == "/readyz" and paths["livenessProbe"] == "/livez"
    # the Service sends traffic to the app's port only, never to the admin endpoint
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # SIGTERM comes after preStop; then the drain and the app's shutdown (each up to
    # --graceful-timeout) must end before SIGKILL at terminationGracePeriodSeconds
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    graceful = float(option(args, "--graceful-timeout"))
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(sleep[1]) + 2 * graceful


@pytest.mark.slow
async def test_kubernetes_args_serve_probes_and_drain(tmp_path: Path) -> None:
    container = _container(_manifests())
    argv = _entrypoint() + container["args"]
    command = runnable_command(argv, {"--host": "127.0.0.1", "--port": "0",
                                      "--admin-bind": "127.0.0.1:0"})
    with server_process(command, cwd=tmp_path, env=_image_env()) as sp:
        port, admin = await trio.to_thread.run_sync(_serving_ports, sp)
        app, probes = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
        async with httpx.AsyncClient(timeout=20) as client:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                r = await client.get(probes + container[probe]["httpGet"]["path"])
                assert r.status_code == 200, (probe, r.text)
            assert (await client.get(f"{app}/info")).status_code == 200

            slow: list[httpx.Response] = []

            async def in_flight() -> None:
                async with httpx.AsyncClient(timeout=30) as own:
                    slow.append(await own.get(f"{app}/slow?seconds=3&id=k8s"))

            with trio.fail_after(40):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(in_flight)
                    # polling another process: no event to wait on
                    while not (await client.get(f"{app}/progress?id=k8s")).json()[  # noqa: ASYNC110
                            "received"]:
                        await trio.sleep(0.05)
                    os.kill(sp.proc.pid, signal.SIGTERM)  # what the kubelet sends after preStop
                    while (await client.get(f"{probes}/readyz")).status_code != 503:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    assert (await client.get(f"{probes}/livez")).status_code == 200
                assert slow[0].status_code == 200
        assert await trio.to_thread.run_sync(sp.wait, 30) == 0, sp.stderr
