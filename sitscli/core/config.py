"""`--config FILE.yaml` handling: the file gives defaults, flags given on the command line win.

The resolved configuration is saved beside every output (run directory, dataset) so a result can
always be traced back to what produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from sitscli.core.errors import ConfigError
from sitscli.core.io import write_text_atomic

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value")
    return data


def resolve(defaults: Mapping[str, Any], file_values: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """Merge defaults < config file < flags given explicitly (None means 'not given').

    Unknown keys in the file are refused so that a typo does not silently do nothing.
    """
    unknown = sorted(set(file_values) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option(s) in config file: {', '.join(unknown)} (known: {', '.join(sorted(defaults))})")
    out = dict(defaults)
    out.update(file_values)
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def validated(schema: Callable[..., T], values: Mapping[str, Any], what: str = "option",
              error: Callable[[str], Exception] = ConfigError) -> T:
    """`schema(**values)` for a pydantic model or dataclass; a value it refuses raises `error` with one
    line naming the key, the value and what is allowed (pydantic's own words)."""
    try:
        return schema(**values)
    except ValidationError as exc:
        raise error(invalid_line(exc, what)) from None


def invalid_line(exc: ValidationError, what: str) -> str:
    """'option epochs=\'many\': input should be a valid integer...' for the first problem pydantic found."""
    problem = exc.errors()[0]
    key = ".".join(str(part) for part in problem["loc"])
    if problem["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown {what} {key!r}"
    if problem["type"] == "missing":
        return f"{what} {key} is missing"
    message = problem["msg"]
    if problem["type"] == "value_error":     # a check across fields: the input is a whole mapping
        return f"{what} {key}: {message.removeprefix('Value error, ')}"
    return f"{what} {key}={problem['input']!r}: {message[:1].lower()}{message[1:]}"


def check_unique(names: Sequence[str], option: str) -> None:
    """Refuse a name given twice (a band stored twice under one name is never what was meant)."""
    repeated = [name for i, name in enumerate(names) if name in names[:i]]
    if repeated:
        raise ConfigError(f"{option}: {repeated[0]} is given twice; name each one once")


def dump_yaml(data: Mapping[str, Any], path: str | Path) -> None:
    """Write `data` as YAML in one step: a kill or a full disk never leaves a truncated file."""
    write_text_atomic(path, yaml.safe_dump(_plain(data), sort_keys=False))


def _plain(value: Any) -> Any:
    """Make numpy scalars, Paths and tuples YAML-safe."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
