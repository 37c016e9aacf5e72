"""The machinery under `alignkit.config`: dataclass fields with help text, and YAML plus `--key value`
overrides loaded into a typed, validated dataclass.

Unknown keys are errors that suggest the closest valid key, so a typo never silently falls back to
a default. A field whose type is itself a dataclass (`monitor: MonitorConfig | None`) is a nested
section: built from a mapping with the same checks, its keys named `monitor.every` in errors and
on the command line (`--monitor.every 5`). A training stage also reads TRL's argument names (`model_name_or_path`,
`per_device_train_batch_size`, ...: `alignkit.trl_names`), so a TRL config file runs unchanged. Everything here is
re-exported by `alignkit.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit import trl_names
from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounds:
    """The values a numeric field admits: limits `ge`/`gt`/`le`/`lt`, values `allow`ed outside them
    (max_steps: -1), and for a list its `length` and the bounds of each item. `text` says the range in
    words where the limits alone would mislead; `why` replaces the help text's first clause in messages;
    `example` is the valid value a message suggests (default: the field's default)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allow: tuple = ()
    length: int | None = None
    items: Bounds | None = None
    text: str = ""
    why: str = ""
    example: Any = None

    def admits(self, value: float) -> bool:
        if value in self.allow:
            return True
        return (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """The range in words: `in [0, 1)`, `at least 1`, `positive`, `2 numbers, each in [0, 1)`."""
        if self.text:
            return self.text
        if self.items is not None:
            count = f"{self.length} numbers" if self.length is not None else "a list of numbers"
            return f"{count}, each {self.items.describe()}"
        low, high = (self.ge, "[") if self.ge is not None else (self.gt, "(")
        top, close = (self.le, "]") if self.le is not None else (self.lt, ")")
        if low is not None and top is not None:
            return f"in {high}{_number(low)}, {_number(top)}{close}"
        if low is not None:
            if self.gt == 0:
                return "positive"
            return f"{_number(low)} or more" if self.ge == 0 else (f"at least {_number(low)}" if self.ge is not None else f"greater than {_number(low)}")
        if top is not None:
            return f"at most {_number(top)}" if self.le is not None else f"less than {_number(top)}"
        return "a finite number"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def option(default: Any, help: str, *, ge=None, gt=None, le=None, lt=None, allow=(), length=None, items=None,
           range_text: str = "", why: str = "", example: Any = None, **kwargs) -> Any:
    """A dataclass field with its help text and, for a number (or a list of numbers), the range it must lie in
    (checked by `config_from_dict`; see `Bounds`); mutable defaults are copied per instance."""
    metadata = {"help": help}
    if any(v is not None for v in (ge, gt, le, lt, length, items, example)) or allow or range_text:
        items = Bounds(**items) if isinstance(items, dict) else items
        metadata["bounds"] = Bounds(ge, gt, le, lt, tuple(allow), length, items, range_text, why, example)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def choose(config, key: str, choices) -> None:
    """Refuses a value outside `choices` (a tuple, or a table whose keys are the choices), naming the key and the valid values."""
    value, choices = getattr(config, key), tuple(choices)
    if value not in choices:
        raise AlignkitError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def field_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _closest(name: str, choices, prefix: str = "", trl=()) -> str:
    """`; did you mean 'x'?`: the closest of `choices`, or of TRL's names (`trl`) when one is closer and close (0.8); else the valid keys."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    theirs = difflib.get_close_matches(name, list(trl), n=1, cutoff=0.8)
    if theirs and (not match or difflib.SequenceMatcher(None, name, theirs[0]).ratio() > difflib.SequenceMatcher(None, name, match[0]).ratio()):
        match = theirs
    return f"; did you mean '{prefix}{match[0]}'?" if match else f"; valid keys: {', '.join(prefix + c for c in sorted(choices))}"


def _section_class(annotation: Any) -> type | None:
    """The dataclass a nested-section field holds (`X` or `X | None`); None for a plain field."""
    union = typing.get_origin(annotation) in (types.UnionType, typing.Union)
    return next((a for a in (typing.get_args(annotation) if union else (annotation,)) if dataclasses.is_dataclass(a)), None)


def _coerce_section(value: Any, cls: type, optional: bool, key: str, source: str) -> Any:
    """A nested section from a mapping (or a YAML mapping given as text); empty or null means off (None) when optional."""
    if isinstance(value, cls):
        value = dataclasses.asdict(value)  # checked like a mapping, so a Python-built section passes the same checks
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


def _coerce(value: Any, annotation: Any, key: str, source: str, hint: str = "") -> Any:
    """Converts a YAML or command-line value to the field's declared type; `hint` ends the message of a wrong type."""
    section = _section_class(annotation)
    if section is not None:
        return _coerce_section(value, section, type(None) in typing.get_args(annotation), key, source)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (types.UnionType, typing.Union) and type(None) in args:  # `float | None`
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        annotation = next(a for a in args if a is not type(None))
    kind = annotation if isinstance(annotation, type) else typing.get_origin(annotation) or annotation
    if isinstance(annotation, str):  # postponed annotations
        kind = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}.get(annotation, str)
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
            return _whole_number(value)
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
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        name = getattr(kind, "__name__", str(kind))
        raise AlignkitError(f"{source}: key '{key}' must be {name}, got {value!r}{hint}") from None
    return value


def _whole_number(value: Any) -> int:
    """An int from an int, an integral float or text ("8", "1e3", "2.0"); a fraction, NaN or inf is a ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = float(value)
    if isinstance(value, float) and not value.is_integer():  # also NaN and inf
        raise ValueError(value)
    return int(value)


# ---------------------------------------------------------------- ranges

def _number_kind(annotation: Any) -> type | None:
    """int or float for a numeric field (`float | None` included), else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def field_bounds(cls, name: str) -> Bounds | None:
    """The field's `Bounds`: its own, or those of the nearest base class declaring it (a command that
    re-declares a shared field for its default or help keeps the shared range)."""
    for base in cls.__mro__:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and "bounds" in f.metadata:
            return f.metadata["bounds"]
    return None


def _why(f: dataclasses.Field, bounds: Bounds | None) -> str:
    if bounds is not None and bounds.why:
        return bounds.why
    text = re.split(r"\. (?=[A-Z])", f.metadata.get("help", ""))[0].rstrip(".")  # the first sentence ("et al. 2023" kept)
    if text.endswith(")") and " (" in text:  # "rows per micro-batch (per process)": the clause without its aside
        text = text[: text.rindex(" (")]
    word = text.split(" ")[0]
    return text[:1].lower() + text[1:] if word[1:] == word[1:].lower() else text  # "Rows" -> "rows", "AdamW" stays


def _fix(f: dataclasses.Field, bounds: Bounds | None, key: str) -> str:
    """What to do: the key, and a valid value for it written as on the command line (the example, else the default)."""
    value = bounds.example if bounds is not None and bounds.example is not None else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    return f"; fix it in the YAML or pass --{key} {','.join(map(str, value)) if isinstance(value, list) else value}"


def _type_hint(f: dataclasses.Field, bounds: Bounds | None, kind: type | None, key: str) -> str:
    """What a numeric field takes, added to a wrong-type message."""
    if kind is None:
        return ""
    what = "a whole number" if kind is int else "a number"
    return f"; it takes {what}, {(bounds or Bounds()).describe()} ({_why(f, bounds)}){_fix(f, bounds, key)}"


def _out_of_range(source: str, key: str, value: Any, f: dataclasses.Field, bounds: Bounds | None) -> AlignkitError:
    text = (bounds or Bounds()).describe()
    return AlignkitError(f"{source}: key {key} must be {text}, got {value!r} ({_why(f, bounds)}){_fix(f, bounds, key)}")


def _non_finite(value: Any, path: str = "") -> tuple[str, Any] | None:
    """The first NaN or infinite number inside a list or mapping, as (path, value), e.g. `[0].weight`."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        found = _non_finite(item, f"{path}[{name}]" if isinstance(value, list) else f"{path}.{name}")
        if found:
            return found
    return None


def _check_list(config, f: dataclasses.Field, bounds: Bounds | None, key: str, source: str) -> None:
    """A list or mapping field: no NaN/inf anywhere inside; with bounds, its length and every item (made a float) in range."""
    value = getattr(config, f.name)
    found = _non_finite(value)
    if found:
        path, number = found
        raise AlignkitError(f"{source}: key {key}{path} must be a finite number, got {number!r} ({_why(f, bounds)}); fix it in the YAML")
    if bounds is None or bounds.items is None:
        return
    try:
        numbers = [float(v) if not isinstance(v, bool) else None for v in value]
    except (TypeError, ValueError, OverflowError):
        numbers = [None]
    if None in numbers or (bounds.length is not None and len(numbers) != bounds.length) or not all(map(bounds.items.admits, numbers)):
        raise _out_of_range(source, key, value if None in numbers else numbers, f, bounds)
    setattr(config, f.name, numbers)


def check_ranges(config, source: str = "config", prefix: str = "") -> None:
    """Every number of `config` finite and within its field's `Bounds`; lists and mappings searched for NaN/inf.
    Nested sections are checked when they are built (`_coerce_section`)."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(config):
        value, key, annotation, bounds = getattr(config, f.name), prefix + f.name, hints.get(f.name, str), field_bounds(cls, f.name)
        if _section_class(annotation) is not None:
            continue
        if isinstance(value, (list, dict)):
            _check_list(config, f, bounds, key, source)
        elif _number_kind(annotation) and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not (bounds or Bounds()).admits(value):
            raise _out_of_range(source, key, value, f, bounds)


def config_from_dict(cls, values: dict, source: str = "config", prefix: str = "", preferred=()):
    """Builds `cls` from a dict, refusing unknown keys with the closest valid one; `prefix` names a nested section's keys.
    A training stage's dict may use TRL's names (`alignkit.trl_names`); `preferred` keys (the command line's) win a
    disagreement with the file's other name for the same setting."""
    if not isinstance(values, dict):
        raise AlignkitError(f"{source}: the config must be a mapping of key: value, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values, renamed = (values, {}) if prefix else _from_trl(cls, values, source, hints, preferred)
    try:
        kwargs = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise AlignkitError(f"{source}: unknown key '{prefix}{key}'{_closest(name, fields, prefix, _trl(cls, prefix))}")
            annotation = hints.get(name, str)
            hint = _type_hint(fields[name], field_bounds(cls, name), _number_kind(annotation), prefix + name)
            kwargs[name] = _coerce(value, annotation, prefix + name, source, hint)
        config = cls(**kwargs)
        check_ranges(config, source, prefix)
        validate = getattr(config, "validate", None)
        if validate:
            try:
                validate()
            except AlignkitError as exc:  # the cross-field checks know no file: name it
                raise AlignkitError(f"{source}: {exc}") from None
    except AlignkitError as exc:
        raise _name_trl_keys(exc, renamed) from None
    return config


def _trl(cls, prefix: str) -> frozenset:
    return frozenset() if prefix else trl_names.names_for(cls) or frozenset()


def _from_trl(cls, values: dict, source: str, hints: dict, preferred) -> tuple[dict, dict]:
    """`values` in alignkit's names (TRL's read through `trl_names.translate`), one value per key, the ignored TRL keys
    warned about once; and {alignkit key: the TRL key that set it} for messages."""
    preferred = {str(k).replace("-", "_") for k in preferred}
    try:
        translation = trl_names.translate(cls, values, preferred)
    except AlignkitError as exc:  # a refused TRL key or value: name the file
        raise AlignkitError(f"{source}: {exc}") from None
    if translation is None:
        return values, {}
    if translation.ignored:
        log.warning(f"{source}: ignored TRL keys (no alignkit equivalent): {', '.join(translation.ignored)}")
    chosen, renamed = {}, {}
    for target, candidates in translation.candidates.items():
        renamed.update({target: key for key, _, _ in candidates if key != target and target not in renamed})
        if len(candidates) == 1 or target not in hints:
            chosen[target] = candidates[-1][1]
            continue
        typed = [(key, _coerce(value, hints[target], key, source), written) for key, value, written in candidates]
        winners = [c for c in typed if c[0] in preferred] or typed
        if any(c[1] != winners[0][1] for c in winners):
            (first, _, said), (second, _, other) = winners[0], next(c for c in winners if c[1] != winners[0][1])
            raise AlignkitError(f"{source}: {first} is {said!r} but {second} is {other!r}, and both set alignkit's {target}; "
                                f"keep one of them (or give both the same value)")
        chosen[target] = winners[0][1]
    return chosen, renamed


def _name_trl_keys(exc: AlignkitError, renamed: dict) -> AlignkitError:
    """A message about an alignkit key that a TRL key set says so: `... --batch_size 8 (set by per_device_train_batch_size)`."""
    text = str(exc)
    keys = [trl for target, trl in renamed.items() if re.search(rf"(key '?|--){re.escape(target)}\b", text)]
    return AlignkitError(f"{text} (set by {', '.join(keys)})") if keys else exc


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise AlignkitError(f"config file {path} is a folder; pass the YAML file inside it")
    if not path.is_file():
        raise AlignkitError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise AlignkitError(f"config file {path}: byte {exc.start} is not UTF-8 text; save the config as UTF-8 YAML") from None
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
    trl = trl_names.names_for(cls) or set()
    if head not in fields and not name and head in trl:  # a TRL name, read by config_from_dict
        return head, ""
    if head not in fields:
        raise AlignkitError(f"unknown option '--{key}'{_closest(head, fields, trl=trl)}")
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
    return config_from_dict(cls, merged, source, preferred=list(overrides or {}))


def to_dict(config) -> dict:
    """The config as plain data (nested sections as mappings), as `save_config` writes it."""
    return dataclasses.asdict(config)


def save_config(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def config_with_overrides(cls, config=None, overrides: dict | None = None, source: str = "config"):
    """A validated `cls` from a `cls` instance, a dict or None, with keyword overrides on top (the Python entry points)."""
    base = dataclasses.asdict(config) if isinstance(config, cls) else dict(config or {})
    return config_from_dict(cls, {**base, **(overrides or {})}, source, preferred=list(overrides or {}))
