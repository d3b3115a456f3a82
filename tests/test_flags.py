"""Flags generated from dataclasses (costmodel/flags.py): the trainer's flags are TrainConfig's fields, the flags of
`python -m launcher.launch` and the options of `loadmaster launch` are LaunchRequest's, each with the field's
docstring as help; values round-trip into the dataclass with their types; bad values are one-line errors."""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch.distributed.run as torchrun
import typer.main
from trainer_harness import TINY, plan_of

from costmodel.flags import FlagError, FlagParser, add_flags, flags, from_namespace
from launcher.launch import request as launch_request
from launcher.launch.request import LaunchRequest
from launcher.runtime import train
from launcher.runtime.config import TrainConfig
from planner.cli import app, flag_parameters, flag_values, register_all

NOT_TRAINER_FLAGS = {"plan", "model", "plan_source"}  # objects (--plan and --model name their files) and provenance


def docstrings(cls: type) -> dict[str, str]:
    """The docstring under each field, read with a regex (an oracle independent of flags.py's ast reader)."""
    found = re.findall(r'^    (\w+): [^\n]*\n    """(.*?)"""', inspect.getsource(cls), re.M | re.S)
    return {name: " ".join(doc.split()) for name, doc in found}


def is_docstring_help(help_text: str, doc: str) -> bool:
    """The help is the docstring, where ``name`` references may read as the flag (--name)."""
    return help_text == doc or ("``" in doc and help_text.startswith(doc.split("``")[0]))


def test_every_train_config_field_is_a_trainer_flag_with_its_docstring_as_help():
    docs = docstrings(TrainConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}
    generated = {f.field: f for f in flags(TrainConfig)}
    assert set(generated) == set(docs) - NOT_TRAINER_FLAGS
    help_text = " ".join(train.parser().format_help().split())
    for name, f in generated.items():
        assert f.name == "--" + name.replace("_", "-")
        assert is_docstring_help(f.help, docs[name]), (name, f.help)
        assert f"{f.help}" in help_text, name


def test_every_launch_request_field_is_a_launch_flag_and_a_loadmaster_launch_option():
    docs = docstrings(LaunchRequest)
    generated = {f.field: f for f in flags(LaunchRequest)}
    assert set(generated) == set(docs) - {"train_args"}  # train_args: whatever follows `--`
    argparse_help = " ".join(launch_request.parser().format_help().split())
    register_all()
    options = {p.name: p for p in typer.main.get_command(app).commands["launch"].params}
    for name, f in generated.items():
        assert is_docstring_help(f.help, docs[name]), (name, f.help)
        assert f.help in argparse_help, name
        assert options[name].help == f.help and f.names[0] in options[name].opts + options[name].secondary_opts
    assert generated["as_json"].name == "--json" and generated["target"].positional


def test_metavars_name_the_value():
    by_field = {f.field: f.metavar for f in flags(TrainConfig) + flags(LaunchRequest)}
    assert (by_field["steps"], by_field["collective_timeout_s"], by_field["join_timeout_s"], by_field["lr"],
            by_field["data"], by_field["out"], by_field["rdzv_endpoint"]) == ("N", "SECONDS", "SECONDS", "X",
                                                                           "PATH", "DIR", "HOST:PORT")
    assert by_field["optimizer"] is None and by_field["resume"] is None  # choices and bools show their values


def sample_values(fl) -> dict:
    """A value unlike the default for every flag, of the field's type."""
    out = {}
    for f in fl:
        if f.choices:
            out[f.field] = next(c for c in reversed(f.choices) if c != f.default)
        elif f.type is bool:
            out[f.field] = not f.default if f.default is not None else False
        elif f.type is int:
            out[f.field] = 7
        elif f.type is float:
            out[f.field] = 0.25
        else:
            out[f.field] = f"value-of-{f.field}"
    return out


def command_line(fl, values: dict) -> list[str]:
    argv = []
    for f in fl:
        v = values[f.field]
        if f.positional:
            argv.append(v)
        elif f.type is bool:
            argv.append(f.name if v else f"--no-{f.name[2:]}")
        else:
            argv += [f.name, str(v)]
    return argv


def test_trainer_flags_round_trip_into_train_config_with_their_types():
    fl = flags(TrainConfig)
    values = sample_values(fl)
    args = train.parser().parse_args(["--plan", "p.yaml", *command_line(fl, values)])
    cfg = from_namespace(TrainConfig, args, plan=plan_of(), model=TINY)
    for name, v in values.items():
        assert getattr(cfg, name) == v and type(getattr(cfg, name)) is type(v), name
    defaults = from_namespace(TrainConfig, train.parser().parse_args(["--plan", "p.yaml"]), plan=plan_of(),
                              model=TINY)
    assert defaults == TrainConfig(plan=plan_of(), model=TINY)


def test_launch_flags_give_the_same_request_from_both_entry_points(run_cli, monkeypatch):
    fl = flags(LaunchRequest)
    values = sample_values(fl)
    argv = [*command_line(fl, values), "--", "--lr", "0.1"]
    req = launch_request.parse_args(argv)
    assert req == LaunchRequest(**values, train_args=["--lr", "0.1"])
    got = []
    monkeypatch.setattr(launch_request, "run_launch", lambda r: got.append(r) or 0)
    code, _, err = run_cli("launch", *argv)
    assert code == 0 and got == [req], err
    code, _, err = run_cli("launch", "plan.yaml", "-m", "m.yaml", "-o", "run", "--json")
    assert code == 0 and got[-1] == LaunchRequest(target="plan.yaml", model="m.yaml", out="run", as_json=True)


def test_no_trainer_flag_is_taken_by_torchrun():
    """torchrun rejects script flags that abbreviate its own; every trainer flag, both bool forms, passes."""
    fl = flags(TrainConfig)
    values = sample_values(fl)
    argv = ["--plan", "p.yaml", "--model", "m", *command_line(fl, values),
            *[f"--no-{f.name[2:]}" if values[f.field] else f.name for f in fl if f.type is bool]]
    args = torchrun.parse_args(["--nproc-per-node", "2", "-m", "launcher.runtime.train", *argv])
    assert args.training_script_args == argv


@pytest.mark.parametrize("argv, needle", [
    (["--plan", "p.yaml", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--plan", "p.yaml", "--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'"),
    (["--plan", "p.yaml", "--stpes", "3"], "unrecognized arguments: --stpes 3"),
    (["--plan", "p.yaml", "--max", "3"], "unrecognized arguments: --max 3"),  # no abbreviations
])
def test_bad_trainer_flags_are_one_line_errors_with_exit_code_2(argv, needle, capsys):
    assert train.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: python -m launcher.runtime.train: ") and needle in lines[0]
    assert lines[0].endswith("see python -m launcher.runtime.train --help")


def test_bad_launch_flags_are_one_line_errors_with_exit_code_2(capsys):
    assert launch_request.main(["plan.yaml", "--nnodes", "two"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: python -m launcher.launch: argument --nnodes: invalid int value: 'two'; see "
                     "python -m launcher.launch --help"]


@dataclass(kw_only=True)
class Toy:
    """Every kind of field flags.py turns into a flag."""

    name: str = field(metadata={"positional": True, "metavar": "NAME"})
    """What to call it."""
    sizes: list[int] = field(default_factory=list)
    """Sizes, one per ``--sizes``."""
    mode: Literal["fast", "exact"] | None = None
    """How to run; None picks one."""
    check: bool | None = None
    """Check the result; None = only on CPU."""
    hidden: object = field(default=None, metadata={"flag": False})
    """Not on the command line."""


def test_lists_choices_and_optional_bools_parse_on_argparse_and_typer():
    p = FlagParser(prog="toy")
    add_flags(p, Toy)
    got = from_namespace(Toy, p.parse_args(["a", "--sizes", "1", "--sizes", "4", "--mode", "exact", "--no-check"]))
    assert got == Toy(name="a", sizes=[1, 4], mode="exact", check=False)
    assert from_namespace(Toy, p.parse_args(["b"])) == Toy(name="b")
    with pytest.raises(FlagError, match="argument --mode: invalid choice: 'slow'"):
        p.parse_args(["b", "--mode", "slow"])
    cli = typer.Typer()
    seen = []

    def toy(**kw) -> None:
        seen.append(Toy(**flag_values(kw)))
    toy.__signature__ = inspect.Signature(flag_parameters(Toy))
    toy.__annotations__ = {x.name: x.annotation for x in flag_parameters(Toy)}
    cli.command()(toy)
    from typer.testing import CliRunner
    res = CliRunner().invoke(cli, ["a", "--sizes", "1", "--sizes", "4", "--mode", "exact", "--no-check"])
    assert res.exit_code == 0 and seen == [got], res.output
    assert CliRunner().invoke(cli, ["b", "--mode", "slow"]).exit_code == 2


def test_a_field_flags_cannot_carry_must_be_marked():
    @dataclass
    class Bad:
        plan: object = None
        """An object, not a flag."""

    with pytest.raises(TypeError, match=r"Bad.plan: .* metadata=\{'flag': False\}"):
        flags(Bad)

    @dataclass
    class Undocumented:
        steps: int = 1

    with pytest.raises(TypeError, match="Undocumented.steps has no docstring"):
        flags(Undocumented)
