"""The `loadmaster` command line: typer commands, rich output, one-line user errors with exit code 2.

Each verb lives in its own module (`planner/cli_*.py`) exposing ``register(app)``; this file wires them and
owns the error handling, so every verb reports a user error the same way.
"""
from __future__ import annotations

import enum
import inspect
import json
import math
import sys
import warnings
from typing import Any, Callable, Optional

import typer
import typer.core
from rich.console import Console

from costmodel.errors import SpecError

_click = getattr(typer.core, "_click", None) or getattr(typer.core, "click")  # typer >= 0.20 vendors click


class _OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (unknown verb or flag, a value of the wrong type) are user errors like any other: one line
    on stderr and exit code 2, not click's usage panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click.exceptions.NoArgsIsHelpError as e:
            err_console.print(e.ctx.get_help() if e.ctx else "", highlight=False)
            code = USER_ERROR
        except _click.exceptions.UsageError as e:
            where = e.ctx.command_path if e.ctx else "loadmaster"
            err_console.print(f"[bold red]error:[/] {where}: {' '.join(e.format_message().split())} "
                              f"(see {where} --help)", highlight=False, soft_wrap=True)
            code = USER_ERROR
        except KeyboardInterrupt:
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


_typer_display_type = typer.core._TyperParameter.display_type


def _conventional_metavar(self, ctx) -> str:
    """Help shows ``MODEL``, ``N``, ``X`` or nothing (a switch) where typer would print ``<str>``, ``<int>`` or
    ``<bool>``; choices and lists keep typer's rendering."""
    desc = self.type_descriptor
    if desc.is_choice or desc.is_list or desc.is_tuple:
        return _typer_display_type(self, ctx)
    if desc.is_path:
        return "PATH"
    if isinstance(self, typer.core.TyperArgument):
        return ""  # its name (MODEL) already says it
    kind = self.bare_type()
    return {"bool": "", "int": "N", "float": "X"}.get(kind, (self.name or "value").upper())


typer.core._TyperParameter.display_type = _conventional_metavar
typer.core.TyperArgument.display_name_raw = property(lambda self: self.metavar or (self.name or "").upper())
typer.core.TyperArgument._usage_display_name = lambda self: (  # click's usage style: MODEL, [MODEL], FILES...
    (self.display_name_raw if self.required else f"[{self.display_name_raw}]") + ("..." if self.nargs != 1 else ""))


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Plan, predict and launch distributed training of large transformers.")
console = Console()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("loadmaster")
        except PackageNotFoundError:  # run from a source tree that was never installed
            v = "unknown (not installed)"
        console.print(f"loadmaster {v}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="Print the version and exit.")) -> None:
    """Plan, predict and launch distributed training of large transformers."""

err_console = Console(stderr=True)

USER_ERROR = 2


def fail(message: str, as_json: bool = False) -> None:
    """Print one line to stderr and exit with the user-error code; with ``--json`` also one JSON object on
    stdout (``{"error": ..., "exit_code": 2}``), so a script reading stdout gets JSON either way."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if as_json:
        print_json({"error": message, "exit_code": USER_ERROR})
    raise typer.Exit(USER_ERROR)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body, turning SpecError/ValueError into the one-line error and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.formatwarning = lambda m, c, f, l, line=None: f"warning: {m}\n"
                return fn(*args, **kwargs)
        except SpecError as e:
            fail(str(e), as_json)
        except ValueError as e:  # user-facing ValueErrors name the value and the fix (TorchTitan style)
            fail(" ".join(str(e).split()), as_json)
        except FileNotFoundError as e:
            fail(f"{e.filename}: no such file", as_json)
        except ModuleNotFoundError as e:  # an optional package a verb imports late (scipy on a GPU node)
            package = (e.name or "").split(".")[0]
            if package not in OPTIONAL:
                raise
            fail(f"{fn.__name__.removesuffix('_cmd')} needs the Python package {package}, which is not installed "
                 f"here; pip install {OPTIONAL[package]}", as_json)
    return wrapper


def flag_parameters(cls: type) -> list[inspect.Parameter]:
    """typer parameters for the flags of dataclass ``cls`` (costmodel/flags.py: names, types, defaults, metavars
    and the field docstrings as help), for a command's ``__signature__``. Choices arrive as their string value."""
    from costmodel.flags import flags
    params = []
    for f in flags(cls):
        kind = enum.Enum(f"{cls.__name__}_{f.field}", {str(c): c for c in f.choices}) if f.choices else f.type
        annotation = list[kind] if f.multiple else (Optional[kind] if f.optional else kind)
        default = f.default if not f.required else ...
        if f.positional:
            info = typer.Argument(default, metavar=f.metavar, help=f.help)
        elif f.type is bool:  # metavar "" hides typer's <bool>
            info = typer.Option(default, f"{f.name}/--no-{f.name[2:]}", *f.names[1:], metavar="", help=f.help)
        else:
            info = typer.Option(default, *f.names, metavar=f.metavar, help=f.help)
        params.append(inspect.Parameter(f.field, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
    return params


def flag_values(values: dict[str, Any]) -> dict[str, Any]:
    """The values typer passed for ``flag_parameters``, with choices back as plain strings."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


def check_flags(*bounds: tuple[str, Any, float], high: dict[str, float] | None = None) -> None:
    """Each ``(flag, value, lowest)`` given (not None) lies in [lowest, high[flag]]; else a one-line ValueError."""
    for flag, value, low in bounds:
        top = (high or {}).get(flag)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (top is not None and value > top):
            where = f"between {low:g} and {top:g}" if top is not None else f"{low:g} or more"
            raise ValueError(f"{flag} is {value}; use a value {where}")


def check_choice(flag: str, value: Any, choices: tuple) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"{flag} is {value!r}; use one of {', '.join(map(str, choices))}")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")


_registered = False
# packages a verb may import that a GPU node lacks, and what to install for them
OPTIONAL = {"pulp": "pulp highspy", "highspy": "pulp highspy", "scipy": "scipy", "pandas": "pandas"}


def register_all() -> None:
    """Add every verb's command to ``app`` (once); a verb whose optional package is missing says so when run."""
    global _registered
    if _registered:
        return
    _registered = True
    import importlib
    for name in ("cli_predict", "cli_plan", "cli_launch", "cli_profile", "cli_export", "cli_calibrate",
                 "cli_verify", "cli_rehearse"):
        try:
            mod = importlib.import_module(f"planner.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"planner.{name}":  # verb not built yet
                continue
            if e.name in OPTIONAL:  # a GPU node without the solver still predicts, launches and profiles
                _missing_dependency(name.removeprefix("cli_"), e.name)
                continue
            raise
        mod.register(app)



def _missing_dependency(verb: str, module: str) -> None:
    @app.command(verb, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 add_help_option=False)
    def unavailable() -> None:
        fail(f"{verb} needs the Python package {module}, which is not installed here; "
             f"pip install {OPTIONAL[module]}")


def main() -> None:
    register_all()
    app()

if __name__ == "__main__":
    main()
