"""load/save for the typed artifacts: a frozen dataclass written as JSON, read back with its
types checked, and a file from an older or broken run refused in one line naming the stage."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pipeline.core.errors import ArtifactError
from pipeline.core.io import write_json
from pipeline.core.paths import require

A = TypeVar("A", bound="Artifact")


class Artifact:
    """load/save for a dataclass written as JSON by the stage named in `STAGE`."""

    STAGE: ClassVar[str] = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls: type[A], data: Any, where: str = "") -> A:
        try:
            return typed(cls, data)
        except (TypeError, ValueError, KeyError) as e:
            raise ArtifactError(
                f"{where or cls.__name__}: not the {cls.__name__} this version writes ({e}); "
                f"rerun `dvc repro {cls.STAGE}`"
            ) from e

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        path = require(Path(path), cls.STAGE)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: not valid JSON ({e}); rerun `dvc repro {cls.STAGE}` to rewrite it") from e
        return cls.from_json(data, str(path))


def typed(hint, value):
    """`value` (parsed JSON) as type `hint`, recursively; TypeError when it does not fit. A dataclass
    with a classmethod `upgrade` reads the shape an older version wrote, through it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        value = hint.upgrade(value) if hasattr(hint, "upgrade") else value  # an older file's keys, still read
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {hint.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(hint)
        names = {f.name for f in dataclasses.fields(hint) if f.init}
        missing = [f.name for f in dataclasses.fields(hint) if f.init and f.name not in value and _required(f)]
        if missing:
            raise TypeError(f"{hint.__name__} lacks {', '.join(missing)}")
        return hint(**{k: typed(hints[k], v) for k, v in value.items() if k in names})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for kind in inner[:-1]:  # the first member the value fits
            try:
                return typed(kind, value)
            except (TypeError, ValueError, KeyError):
                continue
        return typed(inner[-1], value)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{value!r} is not one of {args}")
        return value
    if origin is list:
        return [typed(args[0], v) for v in _as(list, value)]
    if origin is tuple:
        return tuple(typed(args[0], v) for v in _as(list, value))
    if origin is dict:
        return {k: typed(args[1], v) for k, v in _as(dict, value).items()}
    if hint is Any:
        return value
    if hint is float:
        return float(_as((int, float), value))
    return _as(hint, value)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _as(kind, value):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value
