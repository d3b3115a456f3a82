"""Command-line flags generated from a dataclass: its fields, their types and the docstring under each field are
the one definition of ``python -m launcher.runtime.train`` (TrainConfig), ``python -m launcher.launch`` and
``loadmaster launch`` (LaunchRequest). argparse parsers are built here; planner/cli.py turns the same ``Flag``
records into typer options. Standard library only: GPU nodes lack typer, and costmodel depends on nothing of ours.

Types: int, float, str, bool (``--x/--no-x``), ``Literal[...]`` (choices), ``X | None`` and ``list[X]`` (the flag
repeated, one value each). Field metadata, all optional:
  ``flag``       False: not a command-line flag (objects such as ``plan``, or values set by the program itself)
  ``positional`` True: a positional argument instead of ``--name``
  ``name``       the flag's name when it is not ``--field-name`` (e.g. ``--json`` for ``as_json``)
  ``aliases``    short names, e.g. ``("-o",)``
  ``metavar``    the value's name in help; default SECONDS (a ``_s`` field), N (int), X (float), else the field name
                 in capitals
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Flag:
    """One command-line flag for one dataclass field."""

    field: str
    """The dataclass field it sets."""
    names: tuple[str, ...]
    """``--field-name`` (or the field name for a positional) first, then the aliases."""
    type: type
    """int, float, str or bool (for a list field, the element type)."""
    default: Any
    """The field's default (a fresh copy for a list); ``dataclasses.MISSING`` when it has none."""
    help: str
    """The field's docstring on one line, ``other_field`` references written as ``--other-field``."""
    metavar: str | None
    """The value's name in help; None for bools and choices (they show their values)."""
    choices: tuple | None = None
    optional: bool = False
    """The field accepts None (``X | None``)."""
    multiple: bool = False
    """A ``list[X]`` field: the flag is given once per value."""
    positional: bool = False

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


class FlagError(ValueError):
    """A bad command line (unknown flag, a value of the wrong type or outside the choices), as one line."""

    def __init__(self, prog: str, problem: str) -> None:
        self.prog, self.problem = prog, " ".join(problem.split())
        super().__init__(f"{prog}: {self.problem}; see {prog} --help")


class FlagParser(argparse.ArgumentParser):
    """argparse that raises FlagError instead of printing its usage and exiting, so each entry point reports a
    bad flag like any other user error (one line, exit code 2). Abbreviations are off: ``--lr`` must not become
    ``--lr-something`` by accident."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, formatter_class=_DefaultsHelp, **kwargs)

    def error(self, message: str):
        raise FlagError(self.prog, message)


class _DefaultsHelp(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the default is None (the docstring says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of ``cls`` (and of its dataclass bases), read from the class source."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def flags(cls: type) -> list[Flag]:
    """The flags of dataclass ``cls``, in field order; TypeError for a flag field of a type flags cannot carry."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]
    names = {f.name: _flag_name(f) for f in fields}
    out = []
    for f in fields:
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring: write one under the field (it is the "
                            "flag's help)")
        kind, choices, optional, multiple = _parse_type(hints[f.name], f"{cls.__name__}.{f.name}")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        metavar = f.metadata.get("metavar")
        if metavar is None and kind is not bool and choices is None:
            metavar = ("SECONDS" if f.name.endswith("_s") else "N" if kind is int else "X" if kind is float
                       else f.name.upper())
        help_text = re.sub(r"``(\w+)``", lambda m: names.get(m.group(1), m.group(1)), " ".join(docs[f.name].split()))
        out.append(Flag(field=f.name, names=(names[f.name], *f.metadata.get("aliases", ())), type=kind,
                        default=default, help=help_text, metavar=metavar, choices=choices, optional=optional,
                        multiple=multiple, positional=bool(f.metadata.get("positional"))))
    return out


def _flag_name(f: dataclasses.Field) -> str:
    if f.metadata.get("positional"):
        return f.name
    return f.metadata.get("name") or "--" + f.name.replace("_", "-")


def _parse_type(hint: Any, where: str) -> tuple[type, tuple | None, bool, bool]:
    """(scalar type, choices, accepts None, is a list) of a field's type hint."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"{where}: a flag holds one type, not {hint}")
        hint = args[0]
    multiple = typing.get_origin(hint) is list
    if multiple:
        hint = typing.get_args(hint)[0]
    choices = None
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    if hint not in (int, float, str, bool):
        raise TypeError(f"{where}: {hint} cannot be a command-line flag; mark the field metadata={{'flag': False}}")
    return hint, choices, optional, multiple


def add_flags(parser: argparse.ArgumentParser, cls: type) -> list[Flag]:
    """Add an argument for every flag of ``cls`` to ``parser``; returns the flags."""
    fl = flags(cls)
    for f in fl:
        kw: dict[str, Any] = dict(help=f.help.replace("%", "%%"), metavar=f.metavar)
        if f.positional:
            parser.add_argument(f.field, **kw)
            continue
        kw.update(dest=f.field, default=None if f.required else f.default, required=f.required)
        if f.type is bool:
            kw.update(action=argparse.BooleanOptionalAction)
            del kw["metavar"]
        else:
            kw.update(type=f.type, choices=f.choices)
        if f.multiple:
            kw.update(action="append", default=None)
        parser.add_argument(*f.names, **kw)
    return fl


def from_namespace(cls: type, namespace: argparse.Namespace, **others: Any):
    """``cls`` built from parsed flags (a list flag never given takes the field's default) and ``others``."""
    values = {}
    for f in flags(cls):
        value = getattr(namespace, f.field)
        values[f.field] = f.default if (f.multiple and value is None) else value
    return cls(**values, **others)
