"""The command line's shared behaviour: usage errors are one line with exit code 2, like every user error,
and a node without the solver (GPU nodes) still runs the verbs that need none."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args, words", [
    (["predict", "llama3-8b", "--bogus", "1"], "No such option: --bogus"),
    (["nosuchverb"], "No such command"),
    (["plan", "llama3-8b", "--cluster", "8xh100", "--global-batch-size", "x", "--seq-len", "8192"],
     "--global-batch-size"),
])
def test_usage_errors_are_one_line_with_exit_code_2(run_cli, args, words):
    code, out, err = run_cli(*args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err


def test_help_still_works(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "plan" in out and "predict" in out


def _cli_without_pulp(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; sys.modules['pulp'] = None; from planner.cli import main; "
            f"sys.argv = ['loadmaster', *{list(args)!r}]; main()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_without_the_solver_plan_says_what_to_install_and_predict_still_runs():
    res = _cli_without_pulp("plan", "llama3-8b", "--cluster", "8xh100")
    assert res.returncode == 2 and "pip install pulp highspy" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _cli_without_pulp("predict", "llama3-8b", "--cluster", "8xh100", "--plan",
                            "recipes/plans/llama3-8b-fsdp.yaml", "--json")
    assert res.returncode == 0 and '"step_time_s"' in res.stdout
