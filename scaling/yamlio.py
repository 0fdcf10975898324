"""Reading YAML as gat-sweep does: sweep and config files, and ``--set key=value`` overrides.

A YAML 1.1 loader reads ``1e-4`` as a string; this one reads it as a float, as YAML 1.2 and
every researcher would, so that learning rates can be written as they are in papers. ``--set``
values are read by the same loader, so a command line and a file mean the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core.config import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``1E18`` (no dot) as floats, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file with :class:`_Loader` (:func:`read_yaml` without the text)."""
    return read_yaml(path)[1]


def read_yaml(path: Path) -> tuple[str, Any]:
    """Read a YAML file once: its text, and the text parsed with :class:`_Loader`.

    Raises FileNotFoundError naming the path, or ConfigError with the line of a syntax error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {path}")
    text = path.read_text()
    try:
        return text, yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def parse_yaml(text: str) -> Any:
    """YAML text read as gat-sweep reads its files (``1e-4`` a float)."""
    return yaml.load(text, Loader=_Loader)


def parse_scalar(text: str) -> Any:
    """A command-line value read like a YAML scalar: ``64`` -> int, ``1e-4`` -> float, ``x`` -> str
    (and a flow list, ``[0, 1]``, as a list)."""
    return parse_yaml(text)


def apply_set(data: dict[str, Any], item: str, example: str, known_only: bool) -> None:
    """Apply one ``--set key=value`` to the nested mapping ``data`` in place.

    Dots walk into nested mappings (``g.width=128``, ``train.batch=64``); the value is read by
    :func:`parse_scalar`, and typed validation of the result is left to the caller (the same
    validation as a file's). With ``known_only`` (a complete TrainConfig dict) the key must exist;
    otherwise missing levels are created, so that a sweep file's validation names an unknown key
    with its suggestion. Raises ConfigError naming the override (``example`` shows the form), also
    for a value that is not YAML (``[1e-3`` unclosed, a ``!!tag`` the safe loader refuses).
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: write key=value, e.g. --set {example}")
    *parents, leaf = key.split(".")
    target = data
    for part in parents:
        if known_only or part in target:
            if not isinstance(target.get(part), dict):
                raise ConfigError(f"--set {key}: {part!r} is not a nested field")
            target = target[part]
        else:
            target = target.setdefault(part, {})
    if known_only and leaf not in target:
        raise ConfigError(f"--set {key}: unknown field; choose one of: {', '.join(target)}")
    try:
        target[leaf] = parse_scalar(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {key}: the value {text!r} is not a YAML value ({problem}); write a number, "
                          f"a word or a list such as [1, 2], e.g. --set {example}") from None
