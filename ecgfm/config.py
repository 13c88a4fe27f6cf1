"""Experiment configs: Python files defining `get_config()`, plus `key.sub=value` overrides."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ConfigDict:
    """`get_config()` of the Python file at `path`, with each `key.sub=value` override applied.

    Overrides may carry the `--config.` prefix of the CLI. A value is parsed to the type of the
    field it replaces (bool accepts true/false, tuples and lists are Python literals); a key the
    config does not have is an error naming it.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"ecgfm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    config = module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ConfigDict, override: str) -> None:
    """Set one `key.sub=value` in place, parsing `value` to the existing field's type."""
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value")
    key, text = override.split("=", 1)
    key = key.strip().removeprefix("--").removeprefix("config.")
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ConfigDict) or part not in node:
            raise KeyError(f"unknown config key {'.'.join(parents[: i + 1])!r} (in {key!r})")
        node = node[part]
    if not isinstance(node, ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
        raise KeyError(f"unknown config key {key!r}; known here: {known}")
    node[leaf] = _parse(text, node.get_type(leaf), key)


def _parse(text: str, kind: type, key: str) -> Any:
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{key} expects true/false, got {text!r}")
    if kind is str:
        return text
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{key} expects {kind.__name__}, got {text!r}") from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind in (tuple, list, dict):
            raise ValueError(f"{key} expects a {kind.__name__} literal, got {text!r}") from None
        return text  # a None-valued field set to a plain word, e.g. a path
    if kind in (tuple, list) and isinstance(value, (tuple, list)):
        return kind(value)
    return value
