"""Checkpoints: SIGTERM saves and resuming continues exactly, resharding to another plan, torn checkpoints are
skipped, old ones pruned. AdamW here (its state must come back too); forked gloo ranks, in-process trainer."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
from trainer_harness import assert_close, config, plan_of, spawn

from launcher.runtime.checkpoint import is_complete, newest_complete

STEPS = 6
ADAM = dict(optimizer="adamw", lr=1e-2, steps=STEPS)


def train(rank: int, cfg, fault: str | None = None, drop_optimizer: bool = False) -> dict:
    """Worker: run the trainer, optionally with an injected fault or with optimizer restore sabotaged."""
    if fault:
        os.environ["LOADMASTER_FAULT"] = fault
    if drop_optimizer:  # negative control: restore the model only; the optimizer restarts from scratch
        import launcher.runtime.checkpoint as ck
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
        ck.get_state_dict = lambda part, opt, options: (get_model_state_dict(part, options=options), {})
        ck.set_state_dict = lambda part, opt, model_state_dict, optim_state_dict, options: \
            set_model_state_dict(part, model_state_dict, options=options)
    from launcher.runtime.trainer import run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run(cfg)
    out["warnings"] = [str(w.message) for w in caught]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted dp=2 run, and one preempted by SIGTERM on rank 1 during step 3 (0-based 2)."""
    root = tmp_path_factory.mktemp("ckpt")
    plan = plan_of(dp=2)
    full = spawn(train, 2, config(plan, out=str(root / "full"), **ADAM))[0]
    preempted = spawn(train, 2, config(plan, out=str(root / "pre"), **ADAM), "sigterm:1:2")
    return plan, full, preempted, root


def resume_copy(runs, name: str) -> Path:
    _, _, _, root = runs
    dst = root / name
    shutil.copytree(root / "pre", dst)
    return dst


def test_sigterm_saves_a_checkpoint_and_marks_the_run_preempted(runs):
    _, _, preempted, root = runs
    assert all(r["preempted"] and r["steps_done"] == 3 for r in preempted)  # every rank agreed
    assert (root / "pre" / "preempted").is_file()
    assert sorted(p.name for p in (root / "pre" / "checkpoints").iterdir()) == ["step-00000003"]


def test_resume_after_sigterm_equals_an_uninterrupted_run(runs):
    plan, full, _, _ = runs
    run_dir = resume_copy(runs, "resume")
    out = spawn(train, 2, config(plan, out=str(run_dir), **ADAM))[0]
    assert (out["start_step"], out["steps_done"]) == (3, STEPS)
    assert out["data_position"] == full["data_position"] == STEPS * plan.global_batch_size
    assert_close(out["losses"], full["losses"][3:], rtol=1e-6, what="resumed loss")
    assert_close(out["grad_norms"], full["grad_norms"][3:], rtol=1e-5, what="resumed grad norm")
    assert not (run_dir / "preempted").exists()


def test_resume_without_optimizer_state_would_be_caught(runs):
    plan, full, _, _ = runs
    out = spawn(train, 2, config(plan, out=str(resume_copy(runs, "no-optim")), **ADAM), None, True)[0]
    assert out["start_step"] == 3
    assert abs(out["losses"][1] - full["losses"][4]) > 1e-3 * full["losses"][4]


def test_checkpoint_from_dp4_resumes_under_dp2_tp2(runs, tmp_path):
    _, full, _, _ = runs  # uninterrupted dp=2 run: same model, seed and global batch
    dp4, dp2tp2 = plan_of(dp=4, micro_batch_size=1), plan_of(dp=2, tp=2)
    spawn(train, 4, config(dp4, out=str(tmp_path / "re"), **ADAM), "sigterm:2:2")
    out = spawn(train, 4, config(dp2tp2, out=str(tmp_path / "re"), **ADAM))[0]
    assert (out["start_step"], out["steps_done"]) == (3, STEPS)
    assert_close(out["losses"], full["losses"][3:], rtol=1e-4, what="resharded loss")
    assert_close(out["grad_norms"], full["grad_norms"][3:], rtol=1e-4, what="resharded grad norm")


def test_torn_checkpoints_are_skipped_with_a_warning(runs):
    plan, full, _, _ = runs
    run_dir = resume_copy(runs, "torn")
    ckpts = run_dir / "checkpoints"
    shutil.copytree(ckpts / "step-00000003", ckpts / "step-00000005")
    shard = next(p for p in (ckpts / "step-00000005").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # half-written shard
    shutil.copytree(ckpts / "step-00000003", ckpts / "step-00000004.tmp")  # never renamed: ignored
    out = spawn(train, 2, config(plan, out=str(run_dir), **ADAM))
    assert out[0]["resumed_from"].endswith("step-00000003") and out[0]["start_step"] == 3
    assert any("skipping torn checkpoint" in w and "step-00000005" in w for w in out[0]["warnings"])
    assert_close(out[0]["losses"], full["losses"][3:], rtol=1e-6, what="loss after skipping torn")


def test_completeness_check_names_what_is_missing(runs, tmp_path):
    _, _, _, root = runs
    good = root / "pre" / "checkpoints" / "step-00000003"
    assert is_complete(good) == (True, "")
    cases = {"no-marker": lambda d: (d / "loadmaster.json").unlink(),
             "no-metadata": lambda d: (d / ".metadata").unlink(),
             "bad-metadata": lambda d: (d / ".metadata").write_bytes(b"\x80\x04garbage"),
             "missing-shard": lambda d: next(d.glob("*.distcp")).unlink()}
    expected = {"no-marker": "loadmaster.json", "no-metadata": ".metadata", "bad-metadata": "unreadable",
                "missing-shard": "missing or shorter"}
    for name, damage in cases.items():
        d = tmp_path / name / "step-00000003"
        shutil.copytree(good, d)
        damage(d)
        ok, why = is_complete(d)
        assert not ok and expected[name] in why, (name, why)
        with pytest.warns(UserWarning, match="skipping torn"):
            assert newest_complete(d.parent) is None


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    cfg = config(plan_of(dp=2), out=str(tmp_path), checkpoint_every=1, keep_checkpoints=2, optimizer="sgd", steps=4)
    spawn(train, 2, cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
