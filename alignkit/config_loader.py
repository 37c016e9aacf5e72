"""The machinery under `alignkit.config`: dataclass fields with help text, and YAML plus `--key value`
overrides loaded into a typed, validated dataclass.

Unknown keys are errors that suggest the closest valid key, so a typo never silently falls back to
a default. A field whose type is itself a dataclass (`monitor: MonitorConfig | None`) is a nested
section: built from a mapping with the same checks, its keys named `monitor.every` in errors and
on the command line (`--monitor.every 5`). Everything here is re-exported by `alignkit.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError


def option(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with its help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def choose(config, key: str, choices) -> None:
    """Refuses a value outside `choices` (a tuple, or a table whose keys are the choices), naming the key and the valid values."""
    value, choices = getattr(config, key), tuple(choices)
    if value not in choices:
        raise AlignkitError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def field_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _closest(name: str, choices, prefix: str = "") -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else f"; valid keys: {', '.join(prefix + c for c in sorted(choices))}"


def _section_class(annotation: Any) -> type | None:
    """The dataclass a nested-section field holds (`X` or `X | None`); None for a plain field."""
    union = typing.get_origin(annotation) in (types.UnionType, typing.Union)
    return next((a for a in (typing.get_args(annotation) if union else (annotation,)) if dataclasses.is_dataclass(a)), None)


def _coerce_section(value: Any, cls: type, optional: bool, key: str, source: str) -> Any:
    """A nested section from a mapping (or a YAML mapping given as text); empty or null means off (None) when optional."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if value is None or value == {}:
        return None if optional else cls()
    if not isinstance(value, dict):
        raise AlignkitError(f"{source}: key '{key}' must be a mapping of {key}.<key>: value, got {value!r}")
    return config_from_dict(cls, value, source, prefix=f"{key}.")


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Converts a YAML or command-line value to the field's declared type."""
    section = _section_class(annotation)
    if section is not None:
        return _coerce_section(value, section, type(None) in typing.get_args(annotation), key, source)
    kind = annotation if isinstance(annotation, type) else typing.get_origin(annotation) or annotation
    if isinstance(annotation, str):  # postponed annotations
        kind = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}.get(annotation, str)
    if isinstance(kind, types.UnionType):
        kind = next((a for a in typing.get_args(annotation) if a is not type(None)), str)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"true", "1", "yes", "on"}:
                return True
            if text in {"false", "0", "no", "off"}:
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is list:
            if isinstance(value, str):
                parsed = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
                value = parsed
            if not isinstance(value, list):
                raise ValueError(value)
            return value
        if kind is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return "" if value is None else str(value)
    except (TypeError, ValueError, yaml.YAMLError):
        name = getattr(kind, "__name__", str(kind))
        raise AlignkitError(f"{source}: key '{key}' must be {name}, got {value!r}") from None
    return value


def config_from_dict(cls, values: dict, source: str = "config", prefix: str = ""):
    """Builds `cls` from a dict, refusing unknown keys with the closest valid one; `prefix` names a nested section's keys."""
    if not isinstance(values, dict):
        raise AlignkitError(f"{source}: the config must be a mapping of key: value, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise AlignkitError(f"{source}: unknown key '{prefix}{key}'{_closest(name, fields, prefix)}")
        kwargs[name] = _coerce(value, hints.get(name, str), prefix + name, source)
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AlignkitError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise AlignkitError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(values, dict):
        raise AlignkitError(f"{path}: the config must be a mapping of key: value, got {type(values).__name__}")
    return values


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` / `--flag` pairs into a dict (values stay strings)."""
    values, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise AlignkitError(f"unexpected argument '{arg}': options take the form --key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        values[key.replace("-", "_")] = value
    return values


def _override_section(cls, key: str) -> tuple[str, str]:
    """`--name` -> (name, ""), `--section.name` -> (section, name); an unknown option is refused with the closest valid one."""
    head, _, name = key.replace("-", "_").partition(".")
    fields = {f.name for f in dataclasses.fields(cls)}
    if head not in fields:
        raise AlignkitError(f"unknown option '--{key}'{_closest(head, fields)}")
    section = _section_class(typing.get_type_hints(cls)[head]) if name else None
    if name and section is None:
        raise AlignkitError(f"unknown option '--{key}': {head} has no sub-keys; use --{head} value")
    if name and name not in {f.name for f in dataclasses.fields(section)}:
        raise AlignkitError(f"unknown option '--{key}'{_closest(name, field_help(section), head + '.')}")
    return head, name


def load_config(cls, path: str | Path | None = None, overrides: dict | list[str] | None = None):
    """YAML file (optional) then overrides (`--monitor.every 5` sets one key of a nested section); returns a validated `cls` instance."""
    values = read_yaml(path) if path else {}
    source = str(path) if path else "command line"
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    merged = {str(k).replace("-", "_"): v for k, v in values.items()}
    for key, value in (overrides or {}).items():
        head, name = _override_section(cls, key)
        if not name:
            merged[head] = value
            continue
        section = merged.get(head)
        section = (yaml.safe_load(section) if isinstance(section, str) else section) or {}
        if not isinstance(section, dict):
            raise AlignkitError(f"{source}: key '{head}' must be a mapping of {head}.<key>: value, got {section!r}")
        merged[head] = {**section, name: value}
    return config_from_dict(cls, merged, source)


def to_dict(config) -> dict:
    """The config as plain data (nested sections as mappings), as `save_config` writes it."""
    return dataclasses.asdict(config)


def save_config(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def config_with_overrides(cls, config=None, overrides: dict | None = None, source: str = "config"):
    """A validated `cls` from a `cls` instance, a dict or None, with keyword overrides on top (the Python entry points)."""
    base = dataclasses.asdict(config) if isinstance(config, cls) else dict(config or {})
    return config_from_dict(cls, {**base, **(overrides or {})}, source)
