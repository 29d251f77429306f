"""Where each `join` option comes from: the command line, a `PARIS_*` environment variable, `HOME/config.toml`,
or its default, in that order. A volunteer's box keeps its settings in one file; a container sets them in its
environment; a flag always wins. Resolution is a pure function of the parsed command, the environment and the
file's contents; reading the file is the only I/O, and a bad file or value is a one-line error."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from protocol.errors import ParisError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "config.toml"
ENV_PREFIX = "PARIS_"
NOT_CONFIGURABLE = frozenset({"print_config"})


def env_name(param: str) -> str:
    return ENV_PREFIX + param.upper()


def config_home(argv_home: Path | None, env: Mapping[str, str]) -> Path:
    """The home whose config.toml applies: `--home` given, else PARIS_HOME, else ~/.paris."""
    if argv_home is not None:
        return Path(argv_home).expanduser()
    return Path(env.get(env_name("home"), "~/.paris")).expanduser()


def read_config(path: Path) -> dict[str, Any]:
    """The `[join]` table of a config file (or its top level, if it has no tables); {} if there is none."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ParisError(f"{path}: not valid TOML ({e})") from None
    table = data.get("join", data)
    if not isinstance(table, dict):
        raise ParisError(f"{path}: [join] must be a table of options")
    return {k.replace("-", "_"): v for k, v in table.items()}


def _from_flag(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def resolve(ctx: typer.Context, env: Mapping[str, str], file_cfg: Mapping[str, Any],
            file_name: str = CONFIG_FILE) -> tuple[dict[str, Any], dict[str, str]]:
    """Every option's value and origin ("flag", "env", "file" or "default"). Values from the environment and
    the file are converted and checked by the option's own type (ranges included)."""
    params = {p.name: p for p in ctx.command.params if p.param_type_name == "option" and p.name}
    unknown = sorted(set(file_cfg) - set(params) - NOT_CONFIGURABLE) or sorted(set(file_cfg) & NOT_CONFIGURABLE)
    if unknown:
        raise ParisError(f"{file_name}: unknown option {unknown[0]!r} (see `paris-node join --help`)")
    values, origin = {}, {}
    for name, param in params.items():
        flag = _from_flag(ctx, name)
        raw, where = None, None
        if flag or name in NOT_CONFIGURABLE:
            values[name], origin[name] = ctx.params[name], "flag" if flag else "default"
            continue
        if env_name(name) in env:
            raw, where = _from_env(param, env[env_name(name)]), "env"
        elif name in file_cfg:
            raw, where = file_cfg[name], "file"
            if param.multiple and isinstance(raw, str):
                raw = [raw]  # `initial-peers = "/ip4/…"`: one value where a list is expected
        if where is None:
            values[name], origin[name] = ctx.params[name], "default"
            continue
        try:
            values[name] = param.process_value(ctx, raw)
        except typer.BadParameter as e:
            label = env_name(name) if where == "env" else f"{file_name}: {name}"
            raise ParisError(f"{label}: {e.format_message()}") from None
        origin[name] = where
    return values, origin


def _from_env(param, text: str) -> Any:
    """An environment variable's text as the option takes it: lists split on commas or whitespace."""
    if param.multiple:
        return [part for part in text.replace(",", " ").split() if part]
    if param.is_flag:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ParisError(f"{ENV_PREFIX}{param.name.upper()}={text!r}: expected true or false")
    return text


def load(ctx: typer.Context, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str], Path]:
    """Resolve `join`'s options for this process: the parsed flags, os.environ, and the home's config.toml."""
    env = os.environ if env is None else env
    home_flag = ctx.params.get("home") if _from_flag(ctx, "home") else None
    path = config_home(home_flag, env) / CONFIG_FILE
    values, origin = resolve(ctx, env, read_config(path), file_name=str(path))
    return values, origin, path
