"""The command line's configuration layers: a TOML file with named profiles, ``TRIOSERVE_*``
environment variables (and ``PORT``) and the flags, merged into one :class:`argparse.Namespace`
that remembers where each value came from.

Precedence, highest first: flags > environment > the chosen profile > the file's top level >
the flags' built-in defaults. Every layer is checked by the flags' own rules: the argparse
``type`` and ``choices`` of the option (so a value means the same thing wherever it is
written), and a TOML value must have the TOML type of the option (a boolean for an on/off
flag, a number for a number). Errors are :class:`SettingsError` naming the source and the key,
e.g. ``trioserve.toml [profile.production] max-body-size: expected an integer >= 0, got -1``.

The keys are the long flag names without ``--`` (``_`` may be written for ``-``); the option
list is read from the argparse parser, so a new flag is a new key with no change here. Nothing
here imports trio or the application.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Bind

__all__ = [
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ENV_PROFILE",
    "FILE_NAME",
    "NumberType",
    "Option",
    "Settings",
    "SettingsError",
    "load_settings",
    "options_of",
    "render_toml",
]

ENV_PREFIX = "TRIOSERVE_"
ENV_CONFIG = "TRIOSERVE_CONFIG"
ENV_PROFILE = "TRIOSERVE_PROFILE"
FILE_NAME = "trioserve.toml"
PYPROJECT = "pyproject.toml"
# the flags that choose the file and the profile: not keys of the file themselves
META_DESTS = ("config", "profile")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(Exception):
    """A configuration source holds something unusable. The message names the source (file
    and table, environment variable or flag) and the key."""


class NumberType:
    """An argparse ``type`` for a number: ``convert`` the text (``int`` or ``float``), then
    ``accept`` the value. Raises :class:`argparse.ArgumentTypeError` ``expected {wanted}, got
    'text'`` otherwise. :meth:`check` applies the same rule to a number that is already one
    (a TOML value)."""

    def __init__(self, convert: type[int] | type[float], accept: Callable[[Any], bool],
                 wanted: str) -> None:
        self.convert = convert
        self.accept = accept
        self.wanted = wanted
        self.__name__ = wanted  # argparse names the type in some messages

    def __call__(self, text: str) -> Any:
        try:
            value: Any = self.convert(text)
        except (ValueError, OverflowError):  # (ValueError: over 4300 digits too)
            value = None
        if value is None or not self.accept(value):
            raise argparse.ArgumentTypeError(f"expected {self.wanted}, got {_shown(text)}")
        return value

    def check(self, value: object) -> Any:
        """``value`` (an ``int``, or for a float option an ``int`` or ``float``; never a
        ``bool``) converted and accepted. Raises :class:`argparse.ArgumentTypeError`, also
        for an integer too large for a float option."""
        kinds: tuple[type, ...] = (int,) if self.convert is int else (int, float)
        if not isinstance(value, bool) and isinstance(value, kinds):
            assert isinstance(value, int | float)
            try:
                converted = self.convert(value)
            except OverflowError:  # float(10**400)
                converted = None
            if converted is not None and self.accept(converted):
                return converted
        raise argparse.ArgumentTypeError(f"expected {self.wanted}, got {_shown(value)}")


def _shown(value: object) -> str:
    """``repr(value)`` for an error message, shortened past 40 characters (a 400-digit
    number is not worth repeating whole)."""
    text = repr(value)
    if len(text) <= 40:
        return text
    return f"{text[:20]}...{text[-8:]} ({len(str(value))} characters)"


@dataclass(frozen=True, slots=True)
class Option:
    """One configurable option: a flag (or the APP argument) and the key that sets it."""

    key: str
    """The key in a file: the long flag without ``--`` (``max-body-size``), ``app`` for APP."""
    action: argparse.Action
    negation: argparse.Action | None = None
    """The ``--no-…`` flag writing the same destination, if any (its key is not accepted)."""

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def env(self) -> str:
        """The environment variable: ``TRIOSERVE_MAX_BODY_SIZE``."""
        return ENV_PREFIX + self.key.upper().replace("-", "_")

    @property
    def is_bool(self) -> bool:
        return self.action.nargs == 0 and isinstance(self.action.const, bool)

    @property
    def is_list(self) -> bool:
        return isinstance(self.action, argparse._AppendAction)

    @property
    def nullable(self) -> bool:
        """A text option a ``--no-…`` flag sets to ``None`` (``--no-server-header``): ``false``
        or an empty text mean ``None``."""
        return self.negation is not None and self.negation.const is None

    @property
    def secret(self) -> bool:
        return "password" in self.key

    def flag_source(self, value: object) -> str:
        """Where ``value`` came from when the command line gave it: ``flag --name`` (the
        ``--no-…`` flag for a false or ``None`` value that has one), ``command line`` for APP."""
        if not self.action.option_strings:
            return "command line"
        if self.negation is not None and (value is None or value is False):
            return f"flag {self.negation.option_strings[0]}"
        return f"flag {self.action.option_strings[0]}"


def options_of(parser: argparse.ArgumentParser) -> dict[str, Option]:
    """Every option of ``parser`` that a file or the environment may set, by key, in the
    parser's order (``--help``, ``--version``, ``--config`` and ``--profile`` excluded)."""
    actions = [a for a in parser._actions
               if not isinstance(a, argparse._HelpAction | argparse._VersionAction)
               and a.dest not in META_DESTS]
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in actions:
        by_dest.setdefault(action.dest, []).append(action)
    options: dict[str, Option] = {}
    for dest, group in by_dest.items():
        negations = [a for a in group if len(group) > 1 and a.option_strings
                     and a.option_strings[0].startswith("--no-")]
        primary = next(a for a in group if a not in negations)
        long_names = [o for o in primary.option_strings if o.startswith("--")]
        key = long_names[0][2:] if long_names else dest
        options[key] = Option(key, primary, negations[0] if negations else None)
    return options


def _toml_type_hint(value: object) -> str:
    if isinstance(value, str):
        return " (a string: write it without quotes)"
    return ""


def _from_toml(opt: Option, value: object) -> Any:
    """The option's value from a TOML value. Raises :class:`argparse.ArgumentTypeError` with
    the reason (without the source, which the caller adds)."""
    action = opt.action
    if opt.is_bool:
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(
                f"expected true or false, got {value!r}{_toml_type_hint(value)}")
        return action.const if value else not action.const
    if opt.nullable and (value is False or value == ""):
        return None
    if opt.is_list:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise argparse.ArgumentTypeError(f"expected an array of strings, got {value!r}")
        convert = action.type if callable(action.type) else None
        return [convert(v) if convert else v for v in value]
    if isinstance(action.type, NumberType):
        try:
            return action.type.check(value)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}{_toml_type_hint(value)}") from None
    if isinstance(value, list) and isinstance(action.default, tuple) and all(
            isinstance(v, str) for v in value):
        value = ",".join(value)  # a list option given as an array (forwarded-allow-ips)
    if not isinstance(value, str):
        wanted = "a string or false" if opt.nullable else "a string"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}")
    return _from_text(opt, value)


def _from_text(opt: Option, text: str) -> Any:
    """The option's value from text (an environment variable, or a TOML string of a text
    option), by the option's argparse ``type`` and ``choices``."""
    action = opt.action
    if opt.is_bool:
        word = text.strip().lower()
        if word not in _TRUE + _FALSE:
            raise argparse.ArgumentTypeError(
                f"expected 1/0, true/false, yes/no or on/off, got {text!r}")
        return action.const if word in _TRUE else not action.const
    if opt.nullable and text == "":
        return None
    if opt.is_list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        convert = action.type if callable(action.type) else None
        return [convert(t) if convert else t for t in items]
    value: Any = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(map(str, action.choices))}, got {text!r}")
    return value


def _suggest(word: str, candidates: Sequence[str], render: Callable[[str], str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {render(close[0])}?)" if close else ""


@dataclass(frozen=True, slots=True)
class _Table:
    """One table of a file: the file's top level or a profile."""

    where: str  # "trioserve.toml", "pyproject.toml [tool.trioserve.profile.dev]"
    source: str  # what `trioserve config` shows: the file, or "profile NAME"
    data: dict[str, Any]


def _convert_table(table: _Table, options: Mapping[str, Option],
                   skip: Sequence[str] = ()) -> dict[str, tuple[Any, str]]:
    """dest → (value, source) for every key of ``table``. Raises :class:`SettingsError` for
    an unknown key, a key given twice (``a-b`` and ``a_b``) or a bad value."""
    out: dict[str, tuple[Any, str]] = {}
    seen: dict[str, str] = {}
    negations = {o.negation.option_strings[0][2:]: o for o in options.values()
                 if o.negation is not None}
    for raw_key, value in table.data.items():
        if raw_key in skip:
            continue
        key = raw_key.replace("_", "-")
        opt = options.get(key)
        if opt is None:
            if key in negations:
                hint = (f" (write '{negations[key].key} = false')")
            elif key in META_DESTS:
                hint = f" (--{key} chooses the file and profile; it cannot be set in one)"
            else:
                hint = _suggest(key, list(options), lambda k: f"'{k}'")
            raise SettingsError(f"{table.where}: unknown key {raw_key!r}{hint}")
        if key in seen:
            raise SettingsError(f"{table.where}: {raw_key!r} and {seen[key]!r} are the same "
                                "key; give it once")
        seen[key] = raw_key
        try:
            out[opt.dest] = (_from_toml(opt, value), table.source)
        except argparse.ArgumentTypeError as exc:
            raise SettingsError(f"{table.where} {key}: {exc}") from None
    return out


@dataclass(frozen=True, slots=True)
class _File:
    label: str  # the path as given or found
    top: _Table
    profiles: dict[str, _Table]


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except UnicodeDecodeError:
        raise SettingsError(f"{label}: invalid TOML: the file is not UTF-8") from None
    except ValueError as exc:  # TOMLDecodeError, and an integer of over 4300 digits
        raise SettingsError(f"{label}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{label}: cannot read it: {exc.strerror or exc}") from None


def _load_file(path: Path, label: str, *, named_by: str | None) -> _File | None:
    """The configuration in ``path``: the whole file, or for a ``pyproject.toml`` its
    ``[tool.trioserve]`` table (``None`` without one, unless ``named_by`` a flag or
    variable, where it is an error)."""
    data: Any = _read_toml(path, label)
    section = ""
    if path.name == PYPROJECT:
        tool = data.get("tool", {})
        data = tool.get("trioserve") if isinstance(tool, dict) else None
        if data is None:
            if named_by is None:
                return None
            raise SettingsError(f"{named_by}: {label} has no [tool.trioserve] table")
        section = "tool.trioserve"
        if not isinstance(data, dict):
            raise SettingsError(f"{label} [tool.trioserve]: expected a table, got {data!r}")
    top_where = f"{label} [{section}]" if section else label
    profile_prefix = f"{section}.profile" if section else "profile"
    raw_profiles = data.get("profile", {})
    if not isinstance(raw_profiles, dict):
        raise SettingsError(f"{top_where} profile: expected [{profile_prefix}.NAME] tables, "
                            f"got {raw_profiles!r}")
    profiles: dict[str, _Table] = {}
    for name, table in raw_profiles.items():
        where = f"{label} [{profile_prefix}.{name}]"
        if not isinstance(table, dict):
            raise SettingsError(f"{where}: expected a table of options, got {table!r}")
        profiles[name] = _Table(where, f"profile {name}", table)
    return _File(label, _Table(top_where, top_where, data), profiles)


def _find_file(flag_value: str | None, environ: Mapping[str, str],
               cwd: Path) -> _File | None:
    """``--config``, else ``TRIOSERVE_CONFIG``, else ``./trioserve.toml``, else
    ``[tool.trioserve]`` in ``./pyproject.toml``; ``None`` when there is none."""
    for named_by, value in (("--config", flag_value), (ENV_CONFIG, environ.get(ENV_CONFIG))):
        if value is not None:
            path = cwd / value
            if not path.is_file():
                what = "not a file" if path.exists() else "no such file"
                raise SettingsError(f"{named_by}: {what}: {value!r}")
            return _load_file(path, value, named_by=named_by)
    for name in (FILE_NAME, PYPROJECT):
        path = cwd / name
        if path.is_file():
            found = _load_file(path, name, named_by=None)
            if found is not None:
                return found
    return None


def _env_layer(options: Mapping[str, Option],
               environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """dest → (value, source) from ``TRIOSERVE_<KEY>`` and ``PORT``. Raises
    :class:`SettingsError` for a bad value or an unknown ``TRIOSERVE_`` variable."""
    by_env = {o.env: o for o in options.values()}
    known = {*by_env, ENV_CONFIG, ENV_PROFILE}
    unknown = sorted(v for v in environ if v.startswith(ENV_PREFIX) and v not in known)
    if unknown:
        negated = {ENV_PREFIX + o.negation.option_strings[0][2:].upper().replace("-", "_"): o
                   for o in options.values() if o.negation is not None}
        described = []
        for var in unknown:
            if var in negated:
                hint = f" (set {negated[var].env}=0)"
            else:
                hint = _suggest(var.removeprefix(ENV_PREFIX),
                                [k.removeprefix(ENV_PREFIX) for k in sorted(known)],
                                lambda k: ENV_PREFIX + k)
            described.append(var + hint)
        plural = "s" if len(unknown) > 1 else ""
        raise SettingsError(f"unknown environment variable{plural} {', '.join(described)}; "
                            "TRIOSERVE_<OPTION> variables set the options of 'trioserve "
                            "--help'")
    out: dict[str, tuple[Any, str]] = {}
    port = options.get("port")
    if port is not None and "PORT" in environ and port.env not in environ:
        out[port.dest] = (_env_value(port, environ["PORT"], "PORT"), "env PORT")
    for var, opt in by_env.items():
        if var in environ:
            out[opt.dest] = (_env_value(opt, environ[var], var), f"env {var}")
    return out


def _env_value(opt: Option, text: str, var: str) -> Any:
    try:
        return _from_text(opt, text)
    except argparse.ArgumentTypeError as exc:
        raise SettingsError(f"{var}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """The merged configuration.

    - ``args``: every flag's destination, as ``build_parser().parse_args()`` would give it,
      plus ``config`` (the file read, or ``None``) and ``profile`` (the profile applied).
    - ``sources``: destination → where its value came from: ``default``, the file
      (``trioserve.toml``), ``profile NAME``, ``env VAR`` or ``flag --name``.
    - ``options``: the options by key, in the parser's order.
    """

    args: argparse.Namespace
    sources: Mapping[str, str]
    options: Mapping[str, Option]
    file: str | None
    profile: str | None


def load_settings(make_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str],
                  environ: Mapping[str, str] | None = None,
                  cwd: str | os.PathLike[str] = ".") -> Settings:
    """Parse ``argv`` with the parser ``make_parser()`` builds, then merge the layers (see the
    module docs). ``environ`` defaults to :data:`os.environ`; relative paths of the file are
    taken from ``cwd``.

    Raises :class:`SettingsError` for an unusable file, profile or variable; a bad flag exits
    through argparse (status 2) as usual. Values that only :class:`~trioserve.config.Config`
    can check (e.g. ``root-path``) are checked when the caller builds it."""
    environ = os.environ if environ is None else environ
    defaults_parser = make_parser()
    options = options_of(defaults_parser)
    flags_parser = make_parser()
    for action in flags_parser._actions:
        action.default = argparse.SUPPRESS
    flags = vars(flags_parser.parse_args(list(argv)))
    # the defaults as parse_args gives them (strings through their types); APP is optional
    args = defaults_parser.parse_args([])
    sources = {opt.dest: "default" for opt in options.values()}

    file = _find_file(flags.get("config"), environ, Path(cwd))
    profile_name: str | None = flags.get("profile", environ.get(ENV_PROFILE))
    layers: list[dict[str, tuple[Any, str]]] = []
    if file is not None:
        layers.append(_convert_table(file.top, options, skip=("profile",)))
        for table in file.profiles.values():  # every profile is checked, chosen or not
            converted = _convert_table(table, options)
            if table.source == f"profile {profile_name}":
                layers.append(converted)
    if profile_name is not None:
        named_by = "--profile" if "profile" in flags else ENV_PROFILE
        if file is None:
            raise SettingsError(f"{named_by}: no configuration file to find profile "
                                f"{profile_name!r} in (looked for ./{FILE_NAME} and "
                                f"[tool.trioserve] in ./{PYPROJECT}; or use --config FILE)")
        if profile_name not in file.profiles:
            have = ", ".join(sorted(file.profiles)) or "none"
            raise SettingsError(f"{named_by}: no profile {profile_name!r} in {file.label} "
                                f"(its profiles: {have})")
    layers.append(_env_layer(options, environ))
    by_dest = {opt.dest: opt for opt in options.values()}
    layers.append({dest: (value, by_dest[dest].flag_source(value))
                   for dest, value in flags.items() if dest in by_dest})
    for layer in layers:
        for dest, (value, source) in layer.items():
            setattr(args, dest, value)
            sources[dest] = source
    args.config = file.label if file is not None else None
    args.profile = profile_name
    return Settings(args=args, sources=sources, options=options,
                    file=args.config, profile=profile_name)


def _toml_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str | None:
    """``value`` written as TOML; ``None`` for ``None`` (TOML has no null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Bind):
        return _toml_str(value.describe())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) or '""' for v in value) + "]"
    return _toml_str(str(value))


def _lines(settings: Settings, parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(text, source) per option, grouped under the parser's group titles."""
    by_dest = {o.dest: o for o in settings.options.values()}
    for group in parser._action_groups:
        # matched by name: ``parser`` may be another instance than the one read by load
        opts = [by_dest[a.dest] for a in group._group_actions if a.dest in by_dest
                and a.option_strings == by_dest[a.dest].action.option_strings]
        if not opts:
            continue
        if any(a.option_strings for a in group._group_actions):
            yield "", ""
            yield f"# {group.title}", ""
        for opt in opts:
            value = getattr(settings.args, opt.dest)
            source = settings.sources[opt.dest]
            if opt.secret and value is not None:
                yield f"# {opt.key}: set, not shown", source
                continue
            if opt.nullable and value is None:
                value = False
            elif isinstance(opt.action.type, NumberType) and value is not None:
                value = opt.action.type.convert(value)  # an int default of a float option
            text = _toml_value(value)
            yield (f"{opt.key} = {text}" if text is not None else f"# {opt.key}: not set"), \
                source


def render_toml(settings: Settings, parser: argparse.ArgumentParser,
                header: Sequence[str] = ()) -> str:
    """The effective configuration as TOML, each value followed by a comment naming its
    source, so the output can be saved as a configuration file. Unset options and secrets
    (the key file's password) are comments. ``header`` lines become leading comments."""
    lines = list(_lines(settings, parser))
    width = min(max(len(text) for text, src in lines if src), 52)
    out = [f"# {h}" for h in header]
    for text, source in lines:
        out.append(f"{text:<{width}}  # {source}" if source else text)
    return "\n".join(out).strip("\n") + "\n"
