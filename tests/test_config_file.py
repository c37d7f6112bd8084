"""Configuration files, profiles, the environment and ``trioserve config``.

The layering (precedence, key spelling, TOML types, every error message) is tested in process
through :func:`trioserve.settings.load_settings` with an explicit environment and directory;
what users see (``trioserve config`` output and exit codes, a server started from a profile,
``PORT``, systemd socket activation) through the real command line in subprocesses."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import REPO, free_port, module_command, run_to_exit, server_process

from trioserve import Bind, ConfigError
from trioserve.cli import build_config, build_parser, build_process_config, main
from trioserve.settings import Settings, SettingsError, load_settings, options_of

EXAMPLE = REPO / "docs" / "examples" / "trioserve.toml"
HTTP_TIMEOUT = httpx.Timeout(10.0)


def load(tmp_path: Path, argv: list[str] | None = None, env: dict[str, str] | None = None,
         toml: str | None = None, name: str = "trioserve.toml") -> Settings:
    """Settings for ``argv`` run in ``tmp_path`` (holding ``toml`` as ``name``) with ``env``
    as the whole environment."""
    if toml is not None:
        (tmp_path / name).write_text(textwrap.dedent(toml))
    return load_settings(build_parser, argv if argv is not None else ["x:app"], env or {},
                         cwd=tmp_path)


def error_of(tmp_path: Path, argv: list[str] | None = None, env: dict[str, str] | None = None,
             toml: str | None = None, name: str = "trioserve.toml") -> str:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, argv, env, toml, name)
    return str(info.value)


def assert_one_error(stderr: str, expected: str) -> None:
    """Exactly one ``trioserve: error:`` line, equal to ``expected``, and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("trioserve: error:")]
    assert errors == [f"trioserve: error: {expected}"], stderr


# ----------------------------------------------------------------------------- precedence

LAYERED = """
    port = 1001
    workers = 1
    max-body-size = 5
    [profile.prod]
    port = 1002
    workers = 2
    [profile.dev]
    port = 1009
"""


def test_precedence_flags_env_profile_file_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, ["x:app", "--profile", "prod", "--port", "1004"],
             {"TRIOSERVE_PORT": "1003", "TRIOSERVE_WORKERS": "3"}, LAYERED)
    a = s.args
    assert (a.port, a.workers, a.max_body_size, a.backlog) == (1004, 3, 5, 1024)
    assert s.sources["port"] == "flag --port"
    assert s.sources["workers"] == "env TRIOSERVE_WORKERS"
    assert s.sources["max_body_size"] == "trioserve.toml"
    assert s.sources["backlog"] == "default"
    assert (s.file, s.profile, a.config, a.profile) == ("trioserve.toml", "prod",
                                                        "trioserve.toml", "prod")

    s = load(tmp_path, ["x:app", "--profile", "prod"])
    assert (s.args.port, s.sources["port"]) == (1002, "profile prod")
    assert (s.args.workers, s.sources["workers"]) == (2, "profile prod")
    s = load(tmp_path)  # no profile chosen: the top level only
    assert (s.args.port, s.args.workers, s.profile) == (1001, 1, None)


def test_profile_from_the_environment_and_the_flag_wins(tmp_path: Path) -> None:
    s = load(tmp_path, env={"TRIOSERVE_PROFILE": "dev"}, toml=LAYERED)
    assert (s.args.port, s.profile) == (1009, "dev")
    s = load(tmp_path, ["x:app", "--profile", "prod"], {"TRIOSERVE_PROFILE": "dev"})
    assert (s.args.port, s.profile) == (1002, "prod")


def test_flag_values_are_typed_as_from_the_parser(tmp_path: Path) -> None:
    """The merged namespace equals what the parser alone gives when no other layer is set,
    so existing ``build_config(args)`` callers and the new path agree."""
    argv = ["x:app", "--port", "0", "--no-http2", "--reload-dir", "a", "--reload-dir", "b",
            "--forwarded-allow-ips", "10.0.0.0/8,::1", "--no-server-header",
            "--admin-bind", "127.0.0.1:9999", "--min-body-rate", "0"]
    merged = vars(load(tmp_path, argv).args)
    plain = vars(build_parser().parse_args(argv))
    assert merged == plain
    assert load(tmp_path, ["x:app", "--no-http2"]).sources["http2"] == "flag --no-http2"
    assert load(tmp_path, ["x:app"]).sources["app"] == "command line"


def test_every_option_has_a_key_and_a_variable() -> None:
    options = options_of(build_parser())
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    for opt in options.values():
        if opt.action.option_strings:
            assert f"--{opt.key}" in flags
        assert opt.env == "TRIOSERVE_" + opt.key.upper().replace("-", "_")
    assert {"app", "port", "http2", "reload-dir", "forwarded-allow-ips", "admin-bind",
            "server-header", "keyfile-password", "workers", "proxy-protocol"} <= set(options)
    # the --no-... flags are not keys of their own; --help, --version, --config neither
    assert not {"no-http2", "no-server-header", "help", "version", "config",
                "profile"} & set(options)


# ----------------------------------------------------------------------- keys and values


def test_keys_accept_underscores_and_app_makes_the_positional_optional(tmp_path: Path) -> None:
    s = load(tmp_path, [], toml="""
        app = "pkg.main:api"
        max_body_size = 0
        keep_alive_timeout = 12.5
        log-level = "warning"
    """)
    a = s.args
    assert (a.app, a.max_body_size, a.keep_alive_timeout, a.log_level) == (
        "pkg.main:api", 0, 12.5, "warning")
    assert s.sources["app"] == "trioserve.toml"
    assert load(tmp_path, ["other:app"]).args.app == "other:app"


def test_the_same_key_twice_is_an_error(tmp_path: Path) -> None:
    msg = error_of(tmp_path, toml="max-body-size = 1\nmax_body_size = 2\n")
    assert msg == ("trioserve.toml: 'max_body_size' and 'max-body-size' are the same key; "
                   "give it once")


def test_booleans(tmp_path: Path) -> None:
    s = load(tmp_path, toml="http2 = false\nproxy-headers = true\naccess-log = false\n")
    assert (s.args.http2, s.args.proxy_headers, s.args.access_log) == (False, True, False)
    assert error_of(tmp_path, toml='http2 = "false"\n') == (
        "trioserve.toml http2: expected true or false, got 'false' (a string: write it "
        "without quotes)")
    assert error_of(tmp_path, toml="reload = 1\n") == (
        "trioserve.toml reload: expected true or false, got 1")
    for word, value in [("1", True), ("0", False), ("true", True), ("FALSE", False),
                        ("yes", True), ("no", False), ("on", True), ("off", False)]:
        s = load(tmp_path, env={"TRIOSERVE_PROXY_HEADERS": word, "TRIOSERVE_HTTP2": word},
                 toml="")
        assert (s.args.proxy_headers, s.args.http2) == (value, value), word
    assert error_of(tmp_path, env={"TRIOSERVE_HTTP2": "maybe"}) == (
        "TRIOSERVE_HTTP2: expected 1/0, true/false, yes/no or on/off, got 'maybe'")


def test_negative_flags_point_to_the_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, toml="no-http2 = true\n") == (
        "trioserve.toml: unknown key 'no-http2' (write 'http2 = false')")
    msg = error_of(tmp_path, env={"TRIOSERVE_NO_ACCESS_LOG": "1"}, toml="")
    assert msg.startswith("unknown environment variable TRIOSERVE_NO_ACCESS_LOG (set "
                          "TRIOSERVE_ACCESS_LOG=0)")


@pytest.mark.parametrize("key", ["proxy-headers", "proxy-protocol", "reload", "factory"])
def test_on_off_flags_have_a_negation_that_overrides_the_file(tmp_path: Path, key: str) -> None:
    """A file's (or the environment's) ``true`` is turned off by the ``--no-…`` flag."""
    dest = key.replace("-", "_")
    s = load(tmp_path, toml=f"{key} = true\n")
    assert getattr(s.args, dest) is True
    s = load(tmp_path, ["x:app", f"--no-{key}"])
    assert getattr(s.args, dest) is False
    assert s.sources[dest] == f"flag --no-{key}"
    env = {"TRIOSERVE_" + dest.upper(): "1"}
    s = load(tmp_path, ["x:app", f"--no-{key}"], env)
    assert (getattr(s.args, dest), s.sources[dest]) == (False, f"flag --no-{key}")
    s = load(tmp_path, ["x:app", f"--no-{key}", f"--{key}"])  # the last one wins
    assert (getattr(s.args, dest), s.sources[dest]) == (True, f"flag --{key}")
    assert error_of(tmp_path, toml=f"no-{key} = true\n") == (
        f"trioserve.toml: unknown key 'no-{key}' (write '{key} = false')")
    if key == "proxy-headers":  # and what the server is then built with
        (tmp_path / "trioserve.toml").write_text(
            'proxy-headers = true\nproxy-headers-format = "forwarded"\n')
        args = load(tmp_path, ["x:app", "--no-proxy-headers"]).args
        assert build_config(args).proxy.headers == "off"


def test_huge_numbers_are_one_line_errors(tmp_path: Path) -> None:
    """A TOML integer too large for a float option, or too long for Python to read at all,
    is the option's error (or the file's), not a traceback."""
    big = "9" * 400
    msg = error_of(tmp_path, toml=f"worker-timeout = {big}\n")
    assert msg == ("trioserve.toml worker-timeout: expected a positive number of seconds, got "
                   "99999999999999999999...99999999 (400 characters)")
    msg = error_of(tmp_path, toml=f"min-response-rate = -{big}\n")
    assert msg.startswith("trioserve.toml min-response-rate: expected bytes per second >= 0")
    msg = error_of(tmp_path, toml="workers = " + "9" * 5000 + "\n")
    assert msg.startswith("trioserve.toml: invalid TOML: ") and "digits" in msg
    msg = error_of(tmp_path, env={"TRIOSERVE_WORKERS": "9" * 5000}, toml="")
    assert msg == ("TRIOSERVE_WORKERS: expected an integer >= 0, got "
                   "'9999999999999999999...9999999' (5000 characters)")
    assert load(tmp_path, toml=f"workers = {big}\n").args.workers == int(big)  # an int: fine


def test_huge_numbers_exit_2_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trioserve.toml").write_text("worker-timeout = " + "9" * 400 + "\n")
    assert main(["config"]) == 2
    assert main(["x:app"]) == 2
    err = capsys.readouterr().err
    assert_one_error(err.split("\n", 1)[0] + "\n", "trioserve.toml worker-timeout: expected a "
                     "positive number of seconds, got 99999999999999999999...99999999 "
                     "(400 characters)")
    assert err.count("trioserve: error: trioserve.toml worker-timeout") == 2


def test_server_header_false_or_empty_sends_none(tmp_path: Path) -> None:
    assert load(tmp_path, toml="server-header = false\n").args.server_header is None
    assert load(tmp_path, toml='server-header = "edge/2"\n').args.server_header == "edge/2"
    (tmp_path / "trioserve.toml").unlink()
    assert load(tmp_path, env={"TRIOSERVE_SERVER_HEADER": ""}).args.server_header is None
    assert load(tmp_path, env={"TRIOSERVE_SERVER_HEADER": "x"}).args.server_header == "x"
    assert error_of(tmp_path, toml="server-header = true\n") == (
        "trioserve.toml server-header: expected a string or false, got True")


def test_lists(tmp_path: Path) -> None:
    s = load(tmp_path, toml="""
        reload-dir = ["src", "lib"]
        forwarded-allow-ips = ["10.0.0.0/8", "::1"]
    """)
    assert s.args.reload_dirs == ["src", "lib"]
    assert s.args.forwarded_allow_ips == ("10.0.0.0/8", "::1")
    s = load(tmp_path, toml='forwarded-allow-ips = "10.0.0.0/8, 192.168.1.1"\n')
    assert s.args.forwarded_allow_ips == ("10.0.0.0/8", "192.168.1.1")
    s = load(tmp_path, env={"TRIOSERVE_RELOAD_DIR": "a,b",
                            "TRIOSERVE_FORWARDED_ALLOW_IPS": "*"})
    assert (s.args.reload_dirs, s.args.forwarded_allow_ips) == (["a", "b"], ("*",))
    # a flag replaces the file's list, it does not extend it
    s = load(tmp_path, ["x:app", "--reload-dir", "c"], toml='reload-dir = ["src"]\n')
    assert s.args.reload_dirs == ["c"]
    assert error_of(tmp_path, toml='reload-dir = "src"\n') == (
        "trioserve.toml reload-dir: expected an array of strings, got 'src'")
    msg = error_of(tmp_path, toml='forwarded-allow-ips = ["10.0.0.0/8", "proxy.local"]\n')
    assert msg.startswith("trioserve.toml forwarded-allow-ips: ") and "'proxy.local'" in msg


def test_numbers_need_toml_numbers_in_range(tmp_path: Path) -> None:
    cases = {
        'port = "8000"': "port: expected a port number 0-65535, got '8000' (a string: write "
                         "it without quotes)",
        "port = 70000": "port: expected a port number 0-65535, got 70000",
        "workers = 1.5": "workers: expected an integer >= 0, got 1.5",
        "workers = true": "workers: expected an integer >= 0, got True",
        "graceful-timeout = 0": "graceful-timeout: expected a positive number of seconds, "
                                "got 0",
        "keep-alive-timeout = nan": "keep-alive-timeout: expected a positive number of "
                                    "seconds, got nan",
        "host = 8000": "host: expected a string, got 8000",
        'log-level = "loud"': "log-level: expected one of critical, error, warning, info, "
                              "debug, got 'loud'",
        'admin-bind = "nowhere"': "admin-bind: expected HOST:PORT, [IPV6]:PORT or "
                                  "unix:PATH, got 'nowhere'",
        "tls = {}": None,  # a table where no table belongs: an unknown key
    }
    for line, expected in cases.items():
        msg = error_of(tmp_path, toml=line + "\n")
        if expected is None:
            assert msg == "trioserve.toml: unknown key 'tls'", line
        else:
            assert msg == f"trioserve.toml {expected}", line
    # floats are fine where seconds are wanted, integers too
    s = load(tmp_path, toml="graceful-timeout = 2\nws-ping-interval = 0.5\n")
    assert (s.args.graceful_timeout, s.args.ws_ping_interval) == (2.0, 0.5)


def test_the_specified_profile_error_message(tmp_path: Path) -> None:
    msg = error_of(tmp_path, ["x:app", "--profile", "production"], toml="""
        [profile.production]
        max-body-size = -1
    """)
    assert msg == ("trioserve.toml [profile.production] max-body-size: expected an integer "
                   ">= 0, got -1")


def test_unknown_keys_suggest_the_close_match(tmp_path: Path) -> None:
    assert error_of(tmp_path, toml="max-body = 10\n") == (
        "trioserve.toml: unknown key 'max-body' (did you mean 'max-body-size'?)")
    assert error_of(tmp_path, toml="frobnicate = 1\n") == (
        "trioserve.toml: unknown key 'frobnicate'")
    assert error_of(tmp_path, toml="config = 'x.toml'\n").startswith(
        "trioserve.toml: unknown key 'config' (--config chooses the file and profile")


def test_every_profile_is_checked_even_when_not_chosen(tmp_path: Path) -> None:
    msg = error_of(tmp_path, toml="""
        [profile.dev]
        workers = 1
        [profile.prod]
        wrokers = 4
    """)
    assert msg == ("trioserve.toml [profile.prod]: unknown key 'wrokers' (did you mean "
                   "'workers'?)")
    assert error_of(tmp_path, toml="[profile]\nport = 1\n") == (
        "trioserve.toml [profile.port]: expected a table of options, got 1")
    assert error_of(tmp_path, toml='profile = "prod"\n') == (
        "trioserve.toml profile: expected [profile.NAME] tables, got 'prod'")


def test_missing_profiles(tmp_path: Path) -> None:
    toml = "[profile.production]\nworkers = 2\n[profile.development]\nreload = true\n"
    assert error_of(tmp_path, ["x:app", "--profile", "staging"], toml=toml) == (
        "--profile: no profile 'staging' in trioserve.toml (its profiles: development, "
        "production)")
    assert error_of(tmp_path, env={"TRIOSERVE_PROFILE": "Production"}) == (
        "TRIOSERVE_PROFILE: no profile 'Production' in trioserve.toml (its profiles: "
        "development, production)")
    assert error_of(tmp_path, ["x:app", "--profile", "x"], toml="port = 1\n") == (
        "--profile: no profile 'x' in trioserve.toml (its profiles: none)")
    (tmp_path / "trioserve.toml").unlink()
    assert error_of(tmp_path, ["x:app", "--profile", "dev"]).startswith(
        "--profile: no configuration file to find profile 'dev' in")


# -------------------------------------------------------------------------------- files


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, toml="port = 8000\nworkers = \n")
    assert msg.startswith("trioserve.toml: invalid TOML: ") and "line 2" in msg
    (tmp_path / "trioserve.toml").write_bytes(b'server-header = "\xff"\n')
    assert error_of(tmp_path) == "trioserve.toml: invalid TOML: the file is not UTF-8"


def test_pyproject_tool_table(tmp_path: Path) -> None:
    pyproject = """
        [project]
        name = "myproject"
        [tool.trioserve]
        app = "myproject:app"
        port = 7001
        [tool.trioserve.profile.production]
        workers = 3
        [tool.other]
        x = 1
    """
    s = load(tmp_path, [], toml=pyproject, name="pyproject.toml")
    assert (s.args.app, s.args.port, s.args.workers) == ("myproject:app", 7001, 0)
    assert s.sources["port"] == "pyproject.toml [tool.trioserve]"
    s = load(tmp_path, ["--profile", "production"])
    assert (s.args.workers, s.sources["workers"]) == (3, "profile production")
    assert error_of(tmp_path, toml='[tool.trioserve]\nbogus = 1\n', name="pyproject.toml") \
        == "pyproject.toml [tool.trioserve]: unknown key 'bogus'"
    assert error_of(tmp_path, ["x:app", "--profile", "p"], toml=(
        "[tool.trioserve.profile.p]\nport = -1\n"), name="pyproject.toml") == (
        "pyproject.toml [tool.trioserve.profile.p] port: expected a port number 0-65535, "
        "got -1")
    # trioserve.toml comes first
    (tmp_path / "trioserve.toml").write_text("port = 7002\n")
    assert load(tmp_path).args.port == 7002


def test_pyproject_without_the_table_is_no_file(tmp_path: Path) -> None:
    s = load(tmp_path, toml='[project]\nname = "x"\n', name="pyproject.toml")
    assert (s.file, s.args.port, s.sources["port"]) == (None, None, "default")
    assert error_of(tmp_path, ["x:app", "--config", "pyproject.toml"]) == (
        "--config: pyproject.toml has no [tool.trioserve] table")


def test_config_flag_and_variable(tmp_path: Path) -> None:
    (tmp_path / "trioserve.toml").write_text("port = 1\n")
    (tmp_path / "other.toml").write_text("port = 2\n")
    (tmp_path / "third.toml").write_text("port = 3\n")
    assert load(tmp_path, ["x:app", "--config", "other.toml"]).args.port == 2
    s = load(tmp_path, env={"TRIOSERVE_CONFIG": str(tmp_path / "third.toml")})
    assert (s.args.port, s.file) == (3, str(tmp_path / "third.toml"))
    s = load(tmp_path, ["x:app", "--config", "other.toml"],
             {"TRIOSERVE_CONFIG": "third.toml"})
    assert s.args.port == 2
    assert error_of(tmp_path, ["x:app", "--config", "missing.toml"]) == (
        "--config: no such file: 'missing.toml'")
    assert error_of(tmp_path, env={"TRIOSERVE_CONFIG": "missing.toml"}) == (
        "TRIOSERVE_CONFIG: no such file: 'missing.toml'")
    assert error_of(tmp_path, ["x:app", "--config", "."]) == "--config: not a file: '.'"


# --------------------------------------------------------------------------- environment


def test_environment_values_are_checked_by_the_flags_rules(tmp_path: Path) -> None:
    s = load(tmp_path, env={"TRIOSERVE_MAX_BODY_SIZE": "0", "TRIOSERVE_HOST": "::1",
                            "TRIOSERVE_HTTP": "h11", "TRIOSERVE_KEEP_ALIVE_TIMEOUT": "7.5",
                            "TRIOSERVE_ADMIN_BIND": "127.0.0.1:9100"})
    a = s.args
    assert (a.max_body_size, a.host, a.http, a.keep_alive_timeout) == (0, "::1", "h11", 7.5)
    assert a.admin_bind == Bind.tcp("127.0.0.1", 9100)
    assert s.sources["host"] == "env TRIOSERVE_HOST"
    assert error_of(tmp_path, env={"TRIOSERVE_WORKERS": "-1"}) == (
        "TRIOSERVE_WORKERS: expected an integer >= 0, got '-1'")
    assert error_of(tmp_path, env={"TRIOSERVE_LIFESPAN": "maybe"}) == (
        "TRIOSERVE_LIFESPAN: expected one of auto, on, off, got 'maybe'")


def test_unknown_environment_variables_are_errors(tmp_path: Path) -> None:
    msg = error_of(tmp_path, env={"TRIOSERVE_WORKER": "2", "TRIOSERVE_ZZZ": "1",
                                  "OTHER_WORKER": "x"})
    assert msg.startswith("unknown environment variables TRIOSERVE_WORKER (did you mean "
                          "TRIOSERVE_WORKERS?), TRIOSERVE_ZZZ; "), msg
    # the non-option variables are known: the file, the profile, the key's password
    s = load(tmp_path, env={"TRIOSERVE_KEYFILE_PASSWORD": "pw"})
    assert s.args.keyfile_password == "pw"


def test_port_variable(tmp_path: Path) -> None:
    s = load(tmp_path, env={"PORT": "8123"}, toml="port = 1\n")
    assert (s.args.port, s.sources["port"]) == (8123, "env PORT")
    s = load(tmp_path, env={"PORT": "8123", "TRIOSERVE_PORT": "8124"})
    assert (s.args.port, s.sources["port"]) == (8124, "env TRIOSERVE_PORT")
    s = load(tmp_path, ["x:app", "--port", "8125"], {"PORT": "8123"})
    assert s.args.port == 8125
    assert error_of(tmp_path, env={"PORT": "http"}) == (
        "PORT: expected a port number 0-65535, got 'http'")


def test_keyfile_password_variable_without_tls_is_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRIOSERVE_KEYFILE_PASSWORD", "pw")
    assert main(["config", "x:app"]) == 0
    assert "# keyfile-password: not set" in capsys.readouterr().out
    # given in the file without a certificate it is an error, as the flag is
    monkeypatch.delenv("TRIOSERVE_KEYFILE_PASSWORD")
    (tmp_path / "trioserve.toml").write_text('keyfile-password = "pw"\n')
    assert main(["config", "x:app"]) == 2
    assert "--keyfile-password needs --certfile" in capsys.readouterr().err


# ---------------------------------------------------------------------- systemd activation


@pytest.fixture
def clean_listen_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
             if k in os.environ}
    yield
    for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(k, None)
    os.environ.update(saved)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["x:app", *argv])


def test_systemd_sockets_are_used_when_nothing_says_where_to_listen(
        clean_listen_env: None) -> None:
    os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()))
    assert build_config(_args()).binds == (Bind.from_fd(3), Bind.from_fd(4))
    assert "LISTEN_FDS" not in os.environ  # children do not take them for their own
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    assert build_config(_args("--port", "9001")).binds == (Bind.tcp("127.0.0.1", 9001),)
    assert build_config(_args("--uds", "/tmp/x.sock")).binds == (Bind.unix("/tmp/x.sock"),)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid() + 1))  # another process's
    assert build_config(_args()).binds == (Bind.tcp("127.0.0.1", 8000),)
    os.environ.update(LISTEN_FDS="1")  # no LISTEN_PID: not for us (sd_listen_fds(3))
    assert build_config(_args()).binds == (Bind.tcp("127.0.0.1", 8000),)
    os.environ.update(LISTEN_FDS="x", LISTEN_PID=str(os.getpid()))
    with pytest.raises(ConfigError, match="LISTEN_FDS='x'"):
        build_config(_args())


def test_admin_endpoint_must_not_share_a_public_address() -> None:
    for public, admin in (("127.0.0.1:8000", "127.0.0.1:8000"), ("0.0.0.0:8000", "127.0.0.1:8000"),
                          ("127.0.0.1:8000", "0.0.0.0:8000"), ("[::]:8000", "127.0.0.1:8000")):
        host, _, port = public.rpartition(":")
        with pytest.raises(ConfigError, match=r"admin_bind .* is also a public listener"):
            build_config(_args("--host", host.strip("[]"), "--port", port,
                               "--admin-bind", admin))
    for public, admin in (("127.0.0.1:0", "127.0.0.1:0"), ("0.0.0.0:8000", "127.0.0.1:9000"),
                          ("127.0.0.1:8000", "127.0.0.2:8000")):
        host, _, port = public.rpartition(":")
        build_config(_args("--host", host, "--port", port, "--admin-bind", admin))


@pytest.mark.slow
def test_process_options_without_workers_are_reported(tmp_path: Path) -> None:
    (tmp_path / "trioserve.toml").write_text("max-requests = 100\n")
    done = run_to_exit(module_command("no_such_module:app", "--max-requests-jitter", "5"),
                       cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # no such app: the warnings come before that
    assert "max-requests (trioserve.toml) has no effect without --workers" in done.stderr
    assert ("max-requests-jitter (flag --max-requests-jitter) has no effect without --workers"
            in done.stderr)


@pytest.mark.slow
def test_systemd_socket_activate_serves_on_the_passed_socket() -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed")
    port = free_port()
    cmd = [activate, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "trioserve",
           "trioserve.demo:app", "--no-access-log"]
    with server_process(cmd) as sp:
        sp.wait_for_line(f"Listening on 127.0.0.1:{port} as 3", timeout=15)
        # the first connection starts trioserve, which serves it on fd 3
        r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json()["path"] == "/api/info"
        sp.wait_for_line(f"listening on http://127.0.0.1:{port}", timeout=5)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


# ------------------------------------------------------------------------ trioserve config


def test_config_output_round_trips_as_a_configuration_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "a"
    first.mkdir()
    (first / "trioserve.toml").write_text(textwrap.dedent("""
        app = "pkg:app"
        [profile.prod]
        forwarded-allow-ips = ["10.0.0.0/8"]
        server-header = false
        admin-bind = "[::1]:9100"
    """))
    monkeypatch.chdir(first)
    monkeypatch.setenv("TRIOSERVE_MAX_BODY_SIZE", "0")
    argv = ["--profile", "prod", "--no-http2", "--reload", "--reload-dir", "src", "--port", "0"]
    # the configuration is checked as for serving: a missing certificate is exit 2
    assert main(["config", *argv, "--certfile", "missing.pem"]) == 2
    assert "Tls.certfile" in capsys.readouterr().err
    assert main(["config", *argv]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^app = "pkg:app" +# trioserve\.toml$', out, re.M), out
    assert re.search(r"^server-header = false +# profile prod$", out, re.M), out
    assert re.search(r"^max-body-size = 0 +# env TRIOSERVE_MAX_BODY_SIZE$", out, re.M), out
    assert re.search(r"^http2 = false +# flag --no-http2$", out, re.M), out
    assert re.search(r"^# uds: not set +# default$", out, re.M), out
    assert "# listens on: 127.0.0.1:0 (http); one worker restarted on file changes" in out
    assert "# admin endpoint: [::1]:9100" in out
    parsed = tomllib.loads(out)
    assert parsed["reload-dir"] == ["src"] and parsed["admin-bind"] == "[::1]:9100"

    monkeypatch.delenv("TRIOSERVE_MAX_BODY_SIZE")
    second = tmp_path / "b"
    second.mkdir()
    (second / "trioserve.toml").write_text(out)
    monkeypatch.chdir(second)
    assert main(["config"]) == 0
    again = capsys.readouterr().out
    values = [line.split("#")[0].rstrip() for line in out.splitlines()[4:]]
    assert [line.split("#")[0].rstrip() for line in again.splitlines()[4:]] == values
    sources = re.findall(r"^[a-z0-9-]+ = .*# (.*)$", again, re.M)
    assert sources and set(sources) == {"trioserve.toml"}


def test_config_without_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "# file: none" in out and "# app: not set" in out
    assert "# listens on: 127.0.0.1:8000 (http); one process" in out
    parsed = tomllib.loads(out)
    assert "port" not in parsed and "app" not in parsed  # unset: comments
    assert (parsed["backlog"], parsed["workers"], parsed["http2"]) == (1024, 0, True)


@pytest.mark.slow
def test_config_command_prints_the_example_profiles() -> None:
    res = run_to_exit(module_command("config", "--config", str(EXAMPLE),
                                     "--profile", "production"))
    assert res.returncode == 0, res.stderr
    parsed = tomllib.loads(res.stdout)
    assert parsed["app"] == "myproject.main:app"
    assert (parsed["host"], parsed["workers"], parsed["proxy-headers"]) == ("0.0.0.0", 4, True)
    assert parsed["forwarded-allow-ips"] == ["10.0.0.0/8", "127.0.0.1"]
    assert parsed["admin-bind"] == "0.0.0.0:9000" and parsed["server-header"] is False
    assert parsed["max-body-size"] == 10_000_000
    assert re.search(r"^workers = 4 +# profile production$", res.stdout, re.M)
    assert f"# file: {EXAMPLE}; profile: production" in res.stdout
    assert "4 worker processes" in res.stdout and "# admin endpoint: 0.0.0.0:9000" in \
        res.stdout

    res = run_to_exit(module_command("config", "--config", str(EXAMPLE)),
                      env={"TRIOSERVE_PROFILE": "development", "TRIOSERVE_WORKERS": "0"})
    assert res.returncode == 0, res.stderr
    parsed = tomllib.loads(res.stdout)
    assert parsed["reload"] is True and parsed["reload-dir"] == ["src"]
    assert parsed["log-level"] == "debug" and "host" not in parsed
    assert re.search(r"^workers = 0 +# env TRIOSERVE_WORKERS$", res.stdout, re.M)


@pytest.mark.slow
def test_config_command_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "trioserve.toml").write_text("[profile.production]\nmax-body-size = -1\n")
    res = run_to_exit(module_command("config", "--profile", "production"), cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert_one_error(res.stderr, "trioserve.toml [profile.production] max-body-size: "
                                 "expected an integer >= 0, got -1")
    # a value only Config can judge
    (tmp_path / "trioserve.toml").write_text('root-path = "app/"\n')
    res = run_to_exit(module_command("config"), cwd=tmp_path)
    assert res.returncode == 2 and "root_path" in res.stderr and "Traceback" not in res.stderr
    # a bad flag
    res = run_to_exit(module_command("config", "--workers", "many"), cwd=tmp_path)
    assert res.returncode == 2 and "--workers" in res.stderr


@pytest.mark.slow
def test_config_command_does_not_import_the_app(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise SystemExit('imported!')\n")
    (tmp_path / "trioserve.toml").write_text('app = "boom:app"\n')
    res = run_to_exit(module_command("config"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert 'app = "boom:app"' in res.stdout and "imported" not in res.stderr


# ---------------------------------------------------------------------- serving for real


SCOPE_APP = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["root_path"].encode()})
"""


@pytest.mark.slow
def test_server_runs_from_a_profile(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "scopeapp.py").write_text(textwrap.dedent(SCOPE_APP))
    (tmp_path / "trioserve.toml").write_text(textwrap.dedent(f"""
        app = "scopeapp:app"
        port = 1
        [profile.production]
        port = {port}
        server-header = "from-profile"
        root-path = "/mounted"
        access_log = false
    """))
    with server_process(module_command("--profile", "production"), cwd=tmp_path) as sp:
        assert int(sp.wait_for_line(r"listening on http://127\.0\.0\.1:(\d+)").group(1)) \
            == port
        r = httpx.get(f"http://127.0.0.1:{port}/x", timeout=HTTP_TIMEOUT)
        assert (r.status_code, r.text, r.headers["server"]) == (200, "/mounted",
                                                               "from-profile")
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert "configuration from trioserve.toml, profile production" in sp.stderr
    assert '"GET /x' not in sp.stderr  # access_log = false


@pytest.mark.slow
def test_server_honours_port_and_refuses_unknown_variables(tmp_path: Path) -> None:
    port = free_port()
    with server_process(module_command("trioserve.demo:app", "--no-access-log"),
                        cwd=tmp_path, env={"PORT": str(port)}) as sp:
        assert sp.wait_port() == port
        r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    res = run_to_exit(module_command("trioserve.demo:app"), cwd=tmp_path,
                      env={"TRIOSERVE_WROKERS": "2"})
    assert res.returncode == 2
    assert "listening on" not in res.stderr
    assert_one_error(res.stderr, "unknown environment variable TRIOSERVE_WROKERS (did you "
                                 "mean TRIOSERVE_WORKERS?); TRIOSERVE_<OPTION> variables "
                                 "set the options of 'trioserve --help'")


@pytest.mark.slow
def test_forwarded_format_without_proxy_headers_warns(tmp_path: Path) -> None:
    """``proxy-headers-format = "forwarded"`` without ``proxy-headers``: a WARNING at start-up
    naming where it was set (the headers are not applied)."""
    (tmp_path / "trioserve.toml").write_text('proxy-headers-format = "forwarded"\n')
    with server_process(module_command("trioserve.demo:app", "--port", "0"),
                        cwd=tmp_path) as sp:
        sp.wait_port()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert ("WARNING trioserve: proxy-headers-format forwarded (trioserve.toml) has no effect: "
            "forwarding headers are off (--proxy-headers)") in sp.stderr
    with server_process(module_command("trioserve.demo:app", "--port", "0",
                                       "--proxy-headers"), cwd=tmp_path) as sp:
        sp.wait_port()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert "has no effect" not in sp.stderr


@pytest.mark.slow
def test_missing_app_anywhere_exits_2(tmp_path: Path) -> None:
    (tmp_path / "trioserve.toml").write_text("port = 0\n")
    res = run_to_exit(module_command(), cwd=tmp_path)
    assert res.returncode == 2
    assert "APP" in res.stderr and "'app' in the configuration file" in res.stderr


def test_process_settings_from_a_file(tmp_path: Path) -> None:
    s = load(tmp_path, toml="workers = 3\nmax-requests = 100\nmax-requests-jitter = 10\n")
    process = build_process_config(s.args)
    assert (process.workers, process.max_requests, process.max_requests_jitter) == (3, 100, 10)
    s = load(tmp_path, toml="reload-dir = ['src']\n")
    with pytest.raises(ConfigError, match="--reload-dir needs --reload"):
        build_process_config(s.args)


# ----------------------------------------------------------------------------------- docs


def toml_blocks(path: Path) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", path.read_text(), re.M | re.S)


def test_reference_shows_the_example_verbatim() -> None:
    assert EXAMPLE.read_text() in toml_blocks(REPO / "docs" / "reference.md")


@pytest.mark.parametrize("doc", ["README.md", "docs/reference.md"])
def test_documented_files_load_with_each_profile(doc: str, tmp_path: Path) -> None:
    blocks = toml_blocks(REPO / doc)
    assert blocks
    for block in blocks:
        (tmp_path / "trioserve.toml").write_text(block)
        profiles = tomllib.loads(block).get("profile", {})
        for profile in [None, *profiles]:
            argv = ["--profile", profile] if profile else []
            s = load(tmp_path, argv)
            assert s.args.app == "myproject.main:app"
            build_config(s.args)
            build_process_config(s.args)
    assert profiles  # the last block of each document shows profiles


def test_the_documented_precedence_examples(tmp_path: Path) -> None:
    (tmp_path / "trioserve.toml").write_text(EXAMPLE.read_text())

    def effective(argv: list[str], env: dict[str, str]) -> tuple[Any, ...]:
        a = load(tmp_path, argv, env).args
        return a.host, a.port, a.workers, a.reload, a.proxy_headers

    assert effective([], {}) == (None, 8000, 0, False, False)
    assert effective(["--profile", "production"], {}) == ("0.0.0.0", 8000, 4, False, True)
    assert effective([], {"TRIOSERVE_PROFILE": "production", "PORT": "8080"}) == (
        "0.0.0.0", 8080, 4, False, True)
    assert effective(["--workers", "2"], {"TRIOSERVE_PROFILE": "production",
                                          "TRIOSERVE_WORKERS": "8"})[2] == 2
    assert effective(["--profile", "development"], {})[3] is True
