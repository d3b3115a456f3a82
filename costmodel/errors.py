"""The one user-error type of loadmaster and the strict dataclass loader every spec goes through."""
from __future__ import annotations

import dataclasses
import functools
import difflib
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class SpecError(ValueError):
    """A user error in a model, cluster, plan, job or profile file.

    Its message is one line: ``SOURCE: KEY: WHAT; FIX``. The CLI prints it and exits with code 2.
    """

    def __init__(self, source: str, key: str, problem: str, fix: str = "") -> None:
        self.source, self.key, self.problem, self.fix = str(source), key, problem, fix
        line = f"{_cut(self.source, 120)}: {_cut(key, 80)}: {_cut(problem, 400)}" + (f"; {fix}" if fix else "")
        super().__init__(" ".join(line.split()))


def _cut(text: str, limit: int) -> str:
    """A long name or value kept readable in a one-line error: its start and end around an ellipsis."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]}...{text[-(limit // 2 - 1):]}"


# Input bounds, checked before parsing: the largest shipped file (a measured profile) is ~40 KiB and uses no
# alias, so these only stop hostile or accidental inputs (a YAML alias bomb expands exponentially).
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_YAML_ALIASES = 32
_QUOTE_CHARS = 60
_short = reprlib.Repr()
_short.maxstring = _short.maxother = _QUOTE_CHARS
_short.maxlist = _short.maxdict = _short.maxtuple = 6
_short.maxlevel = 3


def short(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting user input in one-line errors: nested or
    huge values (an alias bomb's) are abbreviated without ever being expanded."""
    text = _short.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _TooManyAliases(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses more than MAX_YAML_ALIASES alias nodes (``*name``)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases = getattr(self, "aliases", 0) + 1
            if self.aliases > MAX_YAML_ALIASES:
                raise _TooManyAliases
        return super().compose_node(parent, index)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML (or JSON, which is YAML) file into a dict, turning every failure into a SpecError."""
    p = Path(path)
    try:
        size = p.stat().st_size if p.is_file() else 0
        if size > MAX_FILE_BYTES:
            raise SpecError(p, "<file>", f"is {size:,} bytes, more than the {MAX_FILE_BYTES:,} a spec file may be",
                            "point at the model, cluster, plan or profile YAML itself")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(p, "<file>", "no such file", "check the path or use a shipped recipe name") from None
    except IsADirectoryError:
        raise SpecError(p, "<file>", "is a directory, not a file", "point at the YAML file inside it") from None
    except UnicodeDecodeError:
        raise SpecError(p, "<file>", "is not UTF-8 text", "give a YAML or JSON file") from None
    except OSError as e:
        raise SpecError(p, "<file>", f"cannot be read ({e.strerror})", "check its permissions") from None
    return parse_yaml(text, p)


def parse_yaml(text: str, source: str | Path) -> dict:
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(source, "<file>", f"is {len(text):,} characters, more than the {MAX_FILE_BYTES:,} a spec "
                        "may be", "give the spec itself")
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses control characters
        data = loader.get_single_data()
    except _TooManyAliases:
        raise SpecError(source, "<file>", f"uses more than {MAX_YAML_ALIASES} YAML aliases (*name)",
                        "write the values out; spec files need no aliases") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(source, "<file>", f"is not valid YAML{where}", "fix the syntax") from None
    except (RecursionError, ValueError, OverflowError):
        raise SpecError(source, "<file>", "is not valid YAML", "fix the syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(source, "<file>", f"holds a {type(data).__name__}, not a mapping of keys",
                        "write one `key: value` per line")
    for k in data:
        if not isinstance(k, str):
            raise SpecError(source, short(k), "keys must be strings", "quote the key or fix the indentation")
    return data


_UNIONS = (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in _UNIONS:
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + (
            " or null" if type(None) in get_args(tp) else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _check(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits type ``tp``; returns (ok, converted value)."""
    origin = get_origin(tp)
    if tp is Any:
        return True, value
    if origin in _UNIONS:
        for arg in get_args(tp):
            ok, v = _check(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        return value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}, value
    if origin in (list, tuple):
        if not isinstance(value, list):
            return False, value
        (item,) = get_args(tp)[:1]
        out = []
        for v in value:
            ok, cv = _check(v, item)
            if not ok:
                return False, value
            out.append(cv)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 5.0e9 (no exponent sign) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


T = typing.TypeVar("T")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    """A dataclass's resolved field types (resolving them is most of a plan's parse time; the tuner parses many)."""
    return typing.get_type_hints(cls)


def build_dataclass(cls: type[T], data: dict, source: str | Path, *, what: str) -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys, missing keys and wrong types are SpecErrors."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            fix = f"did you mean `{close[0]}`?" if close else f"valid {what} keys: {', '.join(sorted(fields))}"
            raise SpecError(source, short(key).strip("'"), f"unknown {what} key", fix)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(source, name, f"missing (required in a {what})",
                                f"add `{name}: <{_type_name(hints[name])}>`")
            continue
        ok, value = _check(data[name], hints[name])
        if not ok:
            raise SpecError(source, name, f"is {short(data[name])} ({type(data[name]).__name__})",
                            f"it must be {_type_name(hints[name])}")
        kwargs[name] = value
    return cls(**kwargs)


def require(cond: bool, source: str | Path, key: str, problem: str, fix: str = "") -> None:
    """Raise a SpecError unless ``cond``; used for value checks after types are known."""
    if not cond:
        raise SpecError(source, key, problem, fix)
