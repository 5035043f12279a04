"""The run lock's holder removes the private scratch a killed stage or rollback left
(`stage-*`, `rollback-*`): only those, only directories, never through a symlink, and never
a dry run's (a dry run takes no lock: one may be running now)."""
from __future__ import annotations

import os
from types import SimpleNamespace

from runner.phases.recover import remove_dead_runs_scratch
from runner.proc import UserIds
from runner.scratch import private_scratch


def left_by_a_killed_command(cfg, purpose: str):
    scratch = private_scratch(cfg, purpose, UserIds(64123, 64123))
    root_dir, gate_dir = scratch.__enter__()  # the command dies here: no __exit__, nothing removed
    (gate_dir / "npm-cache").mkdir()
    return scratch, root_dir


def test_a_killed_stage_and_rollback_are_removed_a_dry_run_and_a_symlink_are_not(tmp_path):
    cfg = SimpleNamespace(tmpdir=tmp_path / "scratch", gate_user="64123")
    # The context managers stay referenced: a collected one would run its cleanup.
    stage_cm, stage = left_by_a_killed_command(cfg, "stage")
    rollback_cm, rollback = left_by_a_killed_command(cfg, "rollback")
    dry_run, dry_run_root = left_by_a_killed_command(cfg, "dry-run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    os.symlink(outside, cfg.tmpdir / "stage-abcdefgh")

    assert sorted(remove_dead_runs_scratch(cfg)) == sorted([stage, rollback])
    assert not stage.exists() and not rollback.exists()
    assert dry_run_root.is_dir() and (outside / "keep").is_file()
    assert (cfg.tmpdir / "stage-abcdefgh").is_symlink()
    dry_run.__exit__(None, None, None)
    del stage_cm, rollback_cm


def test_no_scratch_root_yet_is_nothing_to_remove(tmp_path):
    assert remove_dead_runs_scratch(SimpleNamespace(tmpdir=tmp_path / "absent")) == []
