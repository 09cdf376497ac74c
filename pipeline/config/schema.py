"""Building typed sections from params.yaml: unknown keys, wrong types and bad values raise
ConfigError naming the file, the dotted field and what to write instead."""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import PipelineError

#: Sections a params file must set: a file that leaves one out would silently run the
#: code's defaults (the paper's 448 px recipe), a different experiment. Fields inside a
#: section may be left out and take the defaults of the dataclasses.
REQUIRED = ("seed", "data", "model", "lio", "train", "export", "engine", "report")
REQUIRED_DATA = ("format", "transforms")


class ConfigError(PipelineError, ValueError):
    pass


def need(ok: bool, where: str, name: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {name}: {fix}")


def need_number(value: float, where: str, name: str, example: str, low: float = 0.0, above: bool = False) -> None:
    """A finite number >= `low` (> `low` when `above`), or ConfigError naming the field and an example."""
    ok = math.isfinite(value) and (value > low if above else value >= low)
    need(ok, where, name, f"must be a finite number {'>' if above else '>='} {low:g}, got {value}; e.g. {example}")


@dataclasses.dataclass
class Params:
    """Base of a stage's view of params.yaml: its fields are the sections it reads; each
    section checks itself, then `cross_check` checks what spans them."""

    def validate(self, where: str = "params.yaml"):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "seed":
                need(value >= 0, where, "seed", f"must be >= 0, got {value}; e.g. 0")
            elif hasattr(value, "check"):
                value.check(where)
        self.cross_check(where)
        return self

    def cross_check(self, where: str) -> None:
        pass

    def view(self, cls: type[P]) -> P:
        """The sections `cls` declares, taken from this wider view (the whole Config, in tests and the study)."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


P = typing.TypeVar("P", bound=Params)


def read(path: str | Path) -> dict:
    """params.yaml as a mapping with every required section, or ConfigError saying what is missing."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; pass --params FILE or run from the repository root")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(REQUIRED)})")
    unknown = sorted(set(data) - set(REQUIRED))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in data]
    missing += [f"data.{k}" for k in REQUIRED_DATA if isinstance(data.get("data"), dict) and k not in data["data"]]
    if missing:
        raise ConfigError(
            f"{path}: missing {', '.join(missing)}; every section must be set (its fields may be left out and "
            "then take the code's defaults, which are the paper's 448 px recipe): copy them from the repository's "
            "params.yaml"
        )
    return data


def load(path: str | Path, cls: type[P]) -> P:
    """The sections `cls` declares, built from `path` and validated."""
    data = read(path)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return build(cls, {k: data[k] for k in names}, str(path), "").validate(str(path))


def build(cls, data, where: str, path: str):
    """Dataclass `cls` from a mapping, checking keys and value types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    renamed = getattr(cls, "RENAMED", {})  # old key -> what replaced it, for a one-line fix
    for key in unknown:
        if key in renamed:
            dotted = f"{path}.{key}" if path else key
            raise ConfigError(f"{where}: {dotted} is no longer a field; use {renamed[key]}")
    if unknown:
        dotted = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise ConfigError(f"{where}: unknown field(s) {dotted}; known: {', '.join(sorted(names))}")
    values = {}
    for key, value in data.items():
        name = f"{path}.{key}" if path else key
        values[key] = _coerce(hints[key], value, where, name)
    return cls(**values)


def _coerce(hint, value, where: str, name: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, name)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and all(isinstance(c, str) for c in choices):
            value = str(value).lower()
        if value not in choices:
            raise ConfigError(f"{where}: {name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name}: expected a mapping, got {value!r}")
        key_type, item = typing.get_args(hint)
        return {_coerce(key_type, k, where, name): _coerce(item, v, where, f"{name}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: {name}: expected a number, got {value!r}") from None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }[hint]
    if not ok:
        raise ConfigError(f"{where}: {name}: expected {hint.__name__}, got {value!r}")
    return hint(value)


def apply_overrides(data: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of the params mapping `data` with each dotted `key: value` set, as `dvc exp run -S`
    does: the one way the study and the tests derive a configuration from another."""
    out = copy.deepcopy(data)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return out


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
