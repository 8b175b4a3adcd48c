"""Typed stage configs: dataclasses loaded from YAML with ``--key value`` overrides.

Every stage of the CLI has a dataclass config. Values come, in increasing priority, from the
dataclass defaults, an optional ``--config FILE.yaml`` and ``--key value`` flags. Nested
dataclasses (e.g. ``lagrange`` inside the RL config) are nested mappings in YAML and dotted
keys on the command line (``--lagrange.lr 0.05``). Dashes and underscores are equivalent in
keys (``--reward-model`` is ``reward_model``).

Unknown keys and values of the wrong type are errors that name the key, what was expected
and the valid choices; they never fall through silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key is unknown, missing, or has a value of the wrong type."""


_BOUNDS = ("ge", "gt", "le", "lt")


def option(default: Any = MISSING, help: str = "", *, aliases: tuple[str, ...] = (),  # noqa: A002
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           **kwargs) -> Any:
    """A dataclass field with a help string (shown by ``saferlhf <stage> --help``).

    ``aliases``: other names of the key, accepted in YAML and on the command line (e.g. the
    TRL / transformers name ``learning_rate`` for ``lr``). ``ge``/``gt``/``le``/``lt`` bound a
    number (inclusive / exclusive); ``from_dict`` enforces them and names the key. Floats are
    never NaN or infinite (null stands for "unbounded").
    """
    meta: dict[str, Any] = {"help": help, "aliases": tuple(aliases)}
    meta.update({k: v for k, v in zip(_BOUNDS, (ge, gt, le, lt)) if v is not None})
    if isinstance(default, (list, dict, set)):
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
        return dataclasses.field(metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)


def aliases_of(cls) -> dict[str, str]:
    """``{alias: canonical key}`` of a config class: the ``aliases`` of its fields, and its
    ``ALIASES`` class attribute, which may point into a nested section (``budget`` →
    ``lagrange.budget``)."""
    out = {_norm(a): f.name for f in fields(cls) for a in f.metadata.get("aliases", ())}
    out.update({_norm(a): c for a, c in getattr(cls, "ALIASES", {}).items()})
    return out


def _resolve_aliases(cls, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with alias keys renamed to their canonical keys (dotted ones nested)."""
    aliases = aliases_of(cls)
    if not aliases:
        return data
    out: dict[str, Any] = {}
    renamed: list[tuple[str, str, Any]] = []
    for raw_key, value in data.items():
        canonical = aliases.get(_norm(str(raw_key)))
        if canonical is None:
            out[raw_key] = value
        else:
            renamed.append((str(raw_key), canonical, value))
    for alias, canonical, value in renamed:
        head, _, rest = canonical.partition(".")
        given = {_norm(str(k)): v for k, v in out.items()}
        if not rest:
            if head in given and given[head] != value:
                raise ConfigError(f"config keys '{prefix}{alias}' and '{prefix}{head}' name the same setting "
                                  f"with different values ({value!r} vs {given[head]!r}); give one of them")
            out[head] = value
            continue
        section = given.get(head)
        section = dict(section) if isinstance(section, dict) else {}
        _set_nested(section, rest, value)
        out = {k: v for k, v in out.items() if _norm(str(k)) != head}
        out[head] = section
    return out


def describe_range(metadata: Any) -> str:
    """The valid range of a field in words (``">= 0"``, ``"in (0, 1]"``), or ``""``."""
    lo = ("[", metadata["ge"]) if "ge" in metadata else ("(", metadata["gt"]) if "gt" in metadata else None
    hi = ("]", metadata["le"]) if "le" in metadata else (")", metadata["lt"]) if "lt" in metadata else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Every numeric field of ``cfg`` finite and inside its ``option`` bounds, else ConfigError."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            continue  # nested configs are checked when they are built
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            key = prefix + f.name
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key '{key}' is {v}; give a finite number"
                                  + (f" {describe_range(f.metadata)}" if describe_range(f.metadata) else ""))
            m = f.metadata
            bad = (("ge" in m and v < m["ge"]) or ("gt" in m and v <= m["gt"])
                   or ("le" in m and v > m["le"]) or ("lt" in m and v >= m["lt"]))
            if bad:
                raise ConfigError(f"config key '{key}' got {v}; it must be {describe_range(m)} "
                                  f"(--{key.replace('_', '-')} VALUE)")


def _norm(key: str) -> str:
    return key.replace("-", "_")


def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(tp)):
            return args[0], True
    return tp, False


def describe_type(tp) -> str:
    inner, optional = _unwrap_optional(tp)
    if get_origin(inner) is Literal:
        s = "one of " + " | ".join(str(a) for a in get_args(inner))
    elif get_origin(inner) in (list, tuple):
        (arg, *_) = get_args(inner) or (str,)
        s = f"list of {getattr(arg, '__name__', str(arg))} (comma-separated on the CLI)"
    else:
        s = getattr(inner, "__name__", str(inner))
    return s + (" or null" if optional else "")


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(key: str, value: Any, tp) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise ConfigError."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in {"none", "null"}):
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be null; expected {describe_type(tp)}")
    origin = get_origin(inner)
    try:
        if origin is Literal:
            choices = get_args(inner)
            for c in choices:
                if value == c or (isinstance(value, str) and str(c) == value):
                    return c
            raise ConfigError(
                f"config key '{key}' got {value!r}; valid choices: {', '.join(map(str, choices))}"
            )
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if inner is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin in (list, tuple):
            (arg, *_) = get_args(inner) or (str,)
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError
            return [coerce(key, v.strip() if isinstance(v, str) else v, arg) for v in items if v != ""]
        if origin is dict or inner is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{key}' expects {describe_type(tp)}, got {value!r}"
        ) from None
    return value


def _unknown_key_error(key: str, cls, prefix: str) -> ConfigError:
    valid = [prefix + f.name for f in fields(cls)]
    close = difflib.get_close_matches(prefix + _norm(key), valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(
        f"unknown config key '{prefix}{key}' for {cls.__name__}.{hint} "
        f"Valid keys: {', '.join(valid)}"
    )


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "") -> T:
    """Build a config dataclass from a (possibly nested) mapping, strictly."""
    data = _resolve_aliases(cls, dict(data or {}), prefix)
    hints = _type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _norm(str(raw_key))
        if key in kwargs:
            raise ConfigError(f"config key '{prefix}{key}' is given twice (once as '{raw_key}')")
        if key not in by_name:
            raise _unknown_key_error(str(raw_key), cls, prefix)
        tp = hints[key]
        if is_dataclass(tp):
            if isinstance(value, tp):
                kwargs[key] = value
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{prefix}{key}' expects a mapping of {tp.__name__} keys")
            factory = by_name[key].default_factory
            if factory is not MISSING:  # a section's own defaults (e.g. DPO's multiplier) under the given keys
                value = {**dataclasses.asdict(factory()), **value}
            kwargs[key] = from_dict(tp, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(prefix + key, value, tp)
    missing = [
        prefix + f.name
        for f in fields(cls)
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ConfigError(
            f"missing required config key(s): {', '.join(missing)} "
            f"(give them as --{missing[0].replace('_', '-')} VALUE or in the YAML file)"
        )
    cfg = cls(**kwargs)
    check_ranges(cfg, prefix)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict of a config (for saving next to checkpoints)."""
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data


def _set_nested(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        target = target.setdefault(p, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is not a nested section")
    target[parts[-1]] = value


def _flag_kinds(cls, prefix: str = "") -> dict[str, Any]:
    """Map of every dotted key (nested included) to its type, for CLI parsing."""
    out: dict[str, Any] = {}
    hints = _type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            out.update(_flag_kinds(tp, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = tp
    return out


def parse_args(cls: type[T], argv: list[str]) -> T:
    """Parse ``[--config FILE.yaml] [--key value | --key=value | --flag | --no-flag] ...``.

    Boolean keys may be given bare (``--quick``) or with a value (``--quick false``).
    """
    kinds = _flag_kinds(cls)
    aliases = aliases_of(cls)
    data: dict[str, Any] = {}
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(
                f"unexpected argument {arg!r}: options are given as --key value "
                f"(see --help for the keys of {cls.__name__})"
            )
        key, eq, inline = arg[2:].partition("=")
        key = _norm(key)
        if key == "config":
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is None:
                raise ConfigError("--config needs a YAML file path")
            data = load_yaml(value)
            i += 1 if eq else 2
            continue
        key = aliases.get(key, key)
        if key.startswith("no_") and key not in kinds:
            key = "no_" + aliases.get(key[3:], key[3:])
        tp = kinds.get(key)
        if tp is None and key.startswith("no_") and _unwrap_optional(kinds.get(key[3:], str))[0] is bool:
            overrides.append((key[3:], False))
            i += 1
            continue
        if tp is None:
            valid = sorted(kinds)
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean: {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown option --{key.replace('_', '-')}.{hint} "
                f"Valid options: {', '.join('--' + k.replace('_', '-') for k in valid)}"
            )
        is_bool = _unwrap_optional(tp)[0] is bool
        if eq:
            value = inline
            i += 1
        elif is_bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
            value = True
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"option --{key.replace('_', '-')} needs a value ({describe_type(tp)})")
            value = argv[i + 1]
            i += 2
        overrides.append((key, value))
    for key, value in overrides:
        _set_nested(data, key, value)
    return from_dict(cls, data)


def help_text(cls, prefix: str = "", top=None, defaults=None) -> list[tuple[str, str, str]]:
    """Rows of (flag, type/choices, default + help) for every key, nested included; a key's
    aliases are listed beside its flag. ``defaults``: the instance a nested section's defaults
    come from (its field's default factory)."""
    top = top or cls
    rows = []
    hints = _type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            section = f.default_factory() if f.default_factory is not MISSING else None
            rows.extend(help_text(tp, f"{prefix}{f.name}.", top, section))
            continue
        if defaults is not None:
            default = repr(getattr(defaults, f.name))
        elif f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        flag = "--" + (prefix + f.name).replace("_", "-")
        names = [a for a, c in aliases_of(top).items() if c == prefix + f.name]
        if top is not cls:
            names += [prefix + a for a, c in aliases_of(cls).items() if c == f.name]
        if names:
            flag += " (alias " + ", ".join("--" + a.replace("_", "-") for a in names) + ")"
        kind = describe_type(tp)
        if describe_range(f.metadata):
            kind += f", {describe_range(f.metadata)}"
        rows.append((flag, kind, f"default {default}. {f.metadata.get('help', '')}".strip()))
    return rows
