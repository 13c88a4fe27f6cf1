"""Experiment configs: Python files defining `get_config()`, plus `key.sub=value` overrides."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
_NONE = {"none", "null"}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what and how to fix it."""


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ConfigDict:
    """`get_config()` of the Python file at `path`, with each `key.sub=value` override applied.

    Overrides may carry the `--config.` prefix of the CLI. A value is parsed to the type of the
    field it replaces (bool accepts true/false, tuples and lists are Python literals, `None` or
    `null` clears a field); a dict value is merged into the sub-config key by key. A missing
    file, an unknown key or an unparsable value raises `ConfigError`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"ecgfm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    config = module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ConfigDict, override: str) -> None:
    """Set one `key.sub=value` in place, parsing `value` to the existing field's type."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key, text = override.split("=", 1)
    key = key.strip().removeprefix("--").removeprefix("config.")
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ConfigDict) or part not in node:
            raise ConfigError(_unknown(".".join(parents[: i + 1]), node))
        node = node[part]
    if not isinstance(node, ConfigDict) or leaf not in node:
        raise ConfigError(_unknown(key, node))
    if isinstance(node[leaf], ConfigDict):
        value = _literal(text, key)
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{key} is a group of settings ({', '.join(sorted(node[leaf].keys()))}); set "
                f"one with --config.{key}.NAME=VALUE, or several with a dict literal"
            )
        _merge(node[leaf], value, key)
        return
    _set(node, leaf, _parse(text, node.get_type(leaf), key), key)


def _unknown(key: str, node: Any) -> str:
    known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
    return f"unknown config key {key!r}; known here: {', '.join(known) or '(none)'}"


def _merge(node: ConfigDict, values: Mapping[str, Any], key: str) -> None:
    """Set each entry of `values` in `node`, recursing into sub-configs; unknown keys refused."""
    for name, value in values.items():
        where = f"{key}.{name}"
        if name not in node:
            raise ConfigError(_unknown(where, node))
        if isinstance(node[name], ConfigDict) and isinstance(value, Mapping):
            _merge(node[name], value, where)
        else:
            _set(node, name, value, where)


def _set(node: ConfigDict, name: str, value: Any, key: str) -> None:
    kind = node.get_type(name)
    if kind in (tuple, list) and isinstance(value, (tuple, list)):
        value = kind(value)
    try:
        node[name] = value
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: cannot set {value!r} ({err})") from None


def _literal(text: str, key: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"{key}: {text!r} is not a Python literal") from None


def _parse(text: str, kind: type, key: str) -> Any:
    if text.strip().lower() in _NONE:
        return None
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{key} expects true/false, got {text!r}")
    if kind is str:
        return text
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{key} expects {kind.__name__}, got {text!r}") from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind in (tuple, list, dict):
            raise ConfigError(f"{key} expects a {kind.__name__} literal, got {text!r}") from None
        return text  # a None-valued field set to a plain word, e.g. a path
    if kind in (tuple, list) and isinstance(value, (tuple, list)):
        return kind(value)
    return value


def settings_from(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """The frozen dataclass `cls` built from `values` (e.g. a config section), once.

    A key that is not a field of `cls` raises `ConfigError` naming it (as `where.key`) and the
    valid keys, so a misspelt setting never silently takes its default. Lists become tuples
    (ConfigDict and JSON give lists where the dataclasses hold tuples).
    """
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        keys = ", ".join(f"{where}.{k}" + _did_you_mean(k, known) for k in unknown)
        raise ConfigError(
            f"unknown config key(s) {keys}; valid keys of {where}: {', '.join(known)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        message = str(err)  # a settings class may name its section itself ("train: ...")
        if not message.startswith(f"{where}"):
            message = f"{where}: {message}"
        raise ConfigError(message) from None


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def section(settings: Any, **extra: Any) -> ConfigDict:
    """A frozen dataclass's fields (plus `extra`) as a config section; every field overridable."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    return ConfigDict(extra | values)
