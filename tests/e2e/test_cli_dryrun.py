"""`t3-autoupdate dry-run` and `T3_DRY_RUN=1`: the runbook's "preview the current nightly
without touching anything", through the real CLI on the simulated world."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.cli_checks import snapshot
from tests.runner_checks import events
from tests.sim import builds

V28 = builds.GOOD_VERSIONS["good-0.0.28"]
BAD = builds.BAD_VERSIONS["migration-drops-rows"]
HOW = {"dry-run": (("dry-run",), {}), "T3_DRY_RUN=1": ((), {"T3_DRY_RUN": "1"})}


def verdict_line(done) -> str:
    found = [line for line in done.stdout.splitlines() if line.startswith("DRY-RUN ")]
    assert len(found) == 1, (done.stdout, done.stderr)
    return found[0]


def report_of(line: str) -> Path:
    match = re.search(r" report=(\S+)$", line)
    assert match, line
    return Path(match.group(1))


def dry_run_of(world, how: str, version: str, exit_code: int):
    """The nightly tag on `version`, a dry run the `how` way ending in `exit_code`, and nothing
    changed (above all: no quarantine entry, no release dir, no backup); returns the run, its
    verdict line and the world's snapshot."""
    args, env = HOW[how]
    world.registry.set_tag("nightly", version)
    before = snapshot(world)
    done = world.run_tracker(*args, **env)
    assert done.exit_code == exit_code, done.stderr
    after = snapshot(world)
    assert after == before
    return done, verdict_line(done), after


@pytest.mark.parametrize("how", list(HOW))
def test_dry_run_of_a_good_nightly_passes_and_changes_nothing(world, how):
    done, line, _ = dry_run_of(world, how, V28, 0)
    assert line.startswith(f"DRY-RUN PASS {V28}:"), line
    report = report_of(line)
    assert report.is_file() and report.suffix == ".xml"
    assert report.is_relative_to(world.state_dir / "runs")
    assert 'failures="0"' in report.read_text()
    assert not [e for e in events(done) if e.startswith(("UPDATE START", "BACKED UP", "QUARANTINE"))]


@pytest.mark.parametrize("how", list(HOW))
def test_dry_run_of_a_bad_nightly_fails_with_the_cause_and_changes_nothing(world, how):
    _, line, after = dry_run_of(world, how, BAD, 1)
    assert line.startswith(f"DRY-RUN FAIL {BAD}:"), line
    assert "projection_thread_messages lost" in line  # the cause, not just "failed"
    assert report_of(line).is_file()
    assert after["quarantine"] == [] and BAD not in after["releases"]


def test_dry_run_when_frozen_still_previews_and_says_a_run_would_hold(world):
    world.registry.set_tag("nightly", V28)
    assert world.run_tracker("freeze", "--reason", "holiday").exit_code == 0
    before = snapshot(world)
    done = world.run_tracker("dry-run")
    assert done.exit_code == 0, done.stderr
    assert verdict_line(done).startswith(f"DRY-RUN PASS {V28} (a real run would hold: frozen: holiday):")
    assert snapshot(world) == before and world.freeze_file.exists()


def test_dry_run_with_nothing_newer_reports_that_a_run_would_hold(world):
    before = snapshot(world)  # nightly is still 0.0.24, the installed build
    done = world.run_tracker("dry-run")
    assert done.exit_code == 0, done.stderr
    line = verdict_line(done)
    assert line.startswith("DRY-RUN PASS 0.0.24 (a real run would hold:"), line
    assert snapshot(world) == before


def test_dry_run_of_a_build_that_lies_about_its_version_fails_at_staging_and_changes_nothing(world):
    liar = builds.BAD_VERSIONS["version-lie"]
    world.registry.set_tag("nightly", liar)
    before = snapshot(world)
    done = world.run_tracker("dry-run")
    assert done.exit_code == 1, done.stderr
    line = verdict_line(done)
    assert line.startswith(f"DRY-RUN FAIL {liar}: staging failed:"), line
    assert snapshot(world) == before


def test_dry_run_on_user_owned_homes_copies_as_each_user_and_leaves_no_copy(world):
    """issue 10 item 1: every home belongs to its user (a real uid); the preview's copies are
    made as them (in their own backup dir, then taken into private scratch) and none is left."""
    world.registry.set_tag("nightly", V28)
    for user in world.users:
        assert (world.home_root / user.os_user).stat().st_uid == world.uid_of(user.os_user) != 0
    (world.backup_dest / "emo").mkdir(mode=0o700)  # a user whose backup dir exists keeps it
    world.give_to_user("emo", world.backup_dest / "emo")
    before = snapshot(world)
    done = world.run_tracker("dry-run")
    assert done.exit_code == 0, done.stderr
    assert verdict_line(done).startswith(f"DRY-RUN PASS {V28}:")
    assert snapshot(world) == before
    assert (world.backup_dest / "emo").stat().st_uid == world.uid_of("emo")


def test_dry_run_with_a_users_backup_problem_fails_with_the_cause_and_never_crashes(world):
    world.registry.set_tag("nightly", V28)
    fifo = world.userdata("emo") / "scratch.db"
    os.mkfifo(fifo)
    world.give_to_user("emo", fifo)
    before = snapshot(world)
    done = world.run_tracker("dry-run")
    assert done.exit_code == 1, done.stderr
    line = verdict_line(done)
    assert line.startswith(f"DRY-RUN FAIL {V28}: backup failed: emo:"), line
    assert "refusing fifo" in line and "scratch.db" in line
    assert "CRASHED" not in done.stderr
    assert snapshot(world) == before
