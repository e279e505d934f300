"""Study and run files: YAML in, dotted ``key=value`` overrides, typed dataclasses out, errors naming the field."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, Self

import yaml

from megasynth.config.training import CheckpointConfig, OptimizerConfig, ParallelConfig
from megasynth.utils import MegasynthError


class ConfigFile:
    """Construction of a top-level config read from a file (a study file, a run file): YAML with overrides
    in, checked by the class's ``validate()``; ``KIND`` names the file in errors."""

    KIND = "config file"

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Self:
        """Load ``path`` and apply dotted ``key=value`` overrides (values parsed as YAML).

        Raises:
            MegasynthError: missing file, YAML syntax error (``file:line``), unknown key, bad value.
        """
        return cls.from_dict(read_yaml(path, cls.KIND, overrides))

    @classmethod
    def from_dict(cls, data: dict) -> Self:
        cfg = build(cls, data, "")
        cfg.validate()
        return cfg

    def validate(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_yaml(path: str | Path, what: str, overrides: list[str] | None = None) -> dict:
    """A YAML mapping from ``path`` with dotted ``key=value`` overrides applied.

    Raises:
        MegasynthError: ``<path>: <what> not found``, ``<path>:<line>: invalid YAML (...)``, not a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise MegasynthError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise MegasynthError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise MegasynthError(f"{path}: top level must be a mapping")
    for ov in overrides or []:
        apply_override(data, ov)
    return data


def flatten(obj: Any, prefix: str) -> dict[str, Any]:
    """Dataclass fields as ``{dotted name: value}``, recursing into nested dataclasses only."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key))
        else:
            out[key] = copy.deepcopy(value)
    return out


MOVED_KEYS = {
    **{f"train.{k}": f"train.optimizer.{k}" for k in (f.name for f in dataclasses.fields(OptimizerConfig))},
    **{f"train.{k}": f"train.parallel.{k}" for k in (f.name for f in dataclasses.fields(ParallelConfig))},
    **{f"train.{k}": f"train.checkpoint.{k}" for k in (f.name for f in dataclasses.fields(CheckpointConfig))},
}
"""Keys of study files written before ``train`` had sections -> their place now (named in the error)."""


def build(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed YAML) as type ``tp`` (a dataclass, recursively); raise naming the dotted field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = where or "<root>"
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "normalise_yaml"):  # a section with a shorthand form (``sweep.executor``)
            value = tp.normalise_yaml(value)
        if not isinstance(value, dict):
            raise MegasynthError(f"{label}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                moved = MOVED_KEYS.get(_join(where, key))
                raise MegasynthError(f"{_join(where, key)}: moved to {moved}" if moved else
                                     f"{_join(where, key)}: unknown key (known: {', '.join(fields)})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = build(hints[name], value[name], _join(where, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MegasynthError(f"{_join(where, name)}: required")
        return tp(**kwargs)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return build(inner[0], value, where)
        for tp_i in inner:  # e.g. ``int | Literal["all"]``: the first member that takes the value
            try:
                return build(tp_i, value, where)
            except MegasynthError:
                continue
        raise MegasynthError(f"{label}: expected {' or '.join(_describe(a) for a in inner)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise MegasynthError(f"{label}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise MegasynthError(f"{label}: expected a list, got {type(value).__name__}")
        return [build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MegasynthError(f"{label}: expected a mapping, got {type(value).__name__}")
        return {str(k): build(args[1], v, _join(where, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 (pyyaml) reads 1e5 without a dot as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MegasynthError(f"{label}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MegasynthError(f"{label}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise MegasynthError(f"{label}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MegasynthError(f"{label}: expected a string, got {value!r}")
        return str(value)
    return value


def _describe(tp: Any) -> str:
    """A type as the error messages name it (``an integer``, ``'all'``)."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place; ``a.0.b`` indexes lists."""
    if "=" not in override:
        raise MegasynthError(f"override {override!r}: expected key=value")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
