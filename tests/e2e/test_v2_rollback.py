"""Going back: the backup set taken when a user LEFT the target build, every database in it
restored, every database not in it set aside (a statev2.sqlite when going back before the V2
import); a downward pin holds and points at that restore; a partial manual rollback keeps
last-good. Pure choice of the set first, then real CLI runs on the simulated world."""
from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import goodbuilds
from runner.backups.catalogue import BackupRecord
from runner.manual import backup_set_for
from tests.cli_checks import snapshot
from tests.runner_checks import assert_logs_in, assert_user_on, events, fingerprints, in_full, link_version
from tests.sim import builds, dbgen

V24 = "0.0.24"
V25 = builds.GOOD_VERSIONS["good-0.0.25"]
V26 = builds.GOOD_VERSIONS["good-0.0.26"]
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
T0 = datetime(2026, 6, 1, 4, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------ the choice of the set (pure)

def _set(version: str, hours: int, serving: str | None, *names: str) -> list[BackupRecord]:
    at = T0 + timedelta(hours=hours)
    return [BackupRecord("wizard", name, Path(f"/b/wizard/{name}-{version}-{hours}"), version, at, 1, "0" * 64,
                         {}, serving) for name in names or ("state.sqlite",)]


def test_the_set_taken_when_the_user_left_the_target():
    to_26 = _set(V26, 1, V24)                                   # left 0.0.24 for 0.0.26
    to_28 = _set(V28, 2, V26, "state.sqlite", "statev2.sqlite")  # left 0.0.26 (V2 by then) for 0.0.28
    records = to_26 + to_28
    assert backup_set_for(records, target=V24, current=V28) == to_26   # two hops back: the first set
    assert backup_set_for(records, target=V26, current=V28) == to_28   # one hop: both files
    assert backup_set_for(records, target=V25, current=V28) is None    # never ran 0.0.25: never guess


def test_deferred_and_failed_bumps_still_pick_the_last_set_on_the_target():
    """A backup pass for a build the user was not moved to (deferred, or the build failed a gate)
    is still a snapshot taken on the target, and the newest one is the state they left it in."""
    failed = _set(V25, 1, V24)     # 0.0.25 failed the health gate: the user stayed on 0.0.24
    deferred = _set(V26, 2, V24)   # busy at the 0.0.26 bump
    left = _set(V28, 3, V24)       # moved straight from 0.0.24 to 0.0.28
    assert backup_set_for(failed + deferred + left, target=V24, current=V28) == left


def test_backups_from_before_the_serving_record_fall_back_to_the_first_bump_past_the_target():
    older = _set(V26, 1, None) + _set(V26, 2, None)
    newer = _set(V28, 3, None, "state.sqlite", "statev2.sqlite")
    assert backup_set_for(older + newer, target=V24, current=V28) == older[1:]
    assert backup_set_for(older + newer, target=V26, current=V28) == newer
    assert backup_set_for(newer, target=V28, current=V28) is None
    assert backup_set_for(_set(V28, 3, V26), target=V24, current=V28) is None  # recorded, another build


# ------------------------------------------------------------------ releases that are the way back

def test_the_good_builds_and_the_users_releases_are_never_removable(tmp_path):
    links = {"wizard": V26, "emo": V24}
    cfg = SimpleNamespace(state_dir=tmp_path, last_good_path=tmp_path / "last-good", os_users=tuple(links),
                          releases_dir=tmp_path / "releases", active_link=lambda u: tmp_path / "active" / u)
    (tmp_path / "active").mkdir()
    for user, version in links.items():
        os.symlink(tmp_path / "releases" / version, tmp_path / "active" / user)
    goodbuilds.record_last_good(cfg, V25)
    goodbuilds.record_last_good(cfg, V26)
    assert (tmp_path / "previous-good").read_text().strip() == V25
    for version in (V24, V25, V26):
        assert goodbuilds.removable(cfg, version)
    assert "not newer than last-good" in goodbuilds.removable(cfg, "0.0.1")
    assert goodbuilds.removable(cfg, V28) is None  # a failed candidate nobody runs
    (tmp_path / "releases" / V28 / "bin").mkdir(parents=True)
    assert goodbuilds.remove_if_removable(cfg, V28) and not (tmp_path / "releases" / V28).exists()
    os.unlink(tmp_path / "active" / "emo")
    (tmp_path / "active" / "emo").mkdir()  # a link that cannot be read: keep everything
    assert "cannot be read" in goodbuilds.removable(cfg, V28)


# ------------------------------------------------------------------ real runs

def _add_thread(world, os_user: str, thread_id: str) -> None:
    """The user works: one more thread in their live database (their server keeps running)."""
    with sqlite3.connect(world.database(os_user)) as conn:
        conn.execute("INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at)"
                     " VALUES (?, 'project-000', 'new work', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
                     (thread_id,))


@pytest.mark.timeout(900)
def test_two_hops_back_restore_the_set_taken_when_leaving_the_target_and_set_aside_the_rest(world):
    """0.0.24 -> 0.0.26 -> 0.0.28, then `rollback --to 0.0.24`: each user gets the backup taken
    when they left 0.0.24 (the pre-bump backup of 0.0.26), not the one of 0.0.28 (taken on 0.0.26,
    with wizard's newer thread in it); a database that was not in that set (a statev2.sqlite) is
    set aside, kept, named, and reported."""
    before = fingerprints(world)
    up = world.run_tracker(T3_PIN=V26)
    assert up.exit_code == 0, up.stderr
    _add_thread(world, "wizard", "thread-on-026")
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    for user in world.users:
        assert_user_on(world, user.sso, V28)
    v2 = world.userdata("wizard") / "statev2.sqlite"
    dbgen.make_database(v2, 33, threads=2)  # a database no backup set of 0.0.24 has

    done = world.run_tracker("rollback", "--to", V24)
    assert done.exit_code == 0, done.stderr
    lines = events(done)
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        restored = [e for e in lines if e.startswith(f"RESTORED user={user.os_user} ")]
        assert len(restored) == 1 and f"state-prebump-{V26}-" in restored[0], lines
    assert fingerprints(world) == before  # the 0.0.24 state: wizard's 0.0.26 thread is not in it
    assert not v2.exists()
    [aside] = (world.backup_dest / "wizard").glob(f"statev2-rolledback-{V28}-*.sqlite")
    assert dbgen.table_counts(aside)["projection_threads"] == 2
    [line] = [e for e in lines if e.startswith("SET ASIDE user=wizard")]
    assert "database=statev2.sqlite" in line and f"kept_aside={aside}" in line
    [rolled] = [e for e in lines if e.startswith("ROLLED BACK ")]
    assert f"to={V24}" in rolled and f"set_aside=wizard:{aside}" in rolled
    # The rows written on 0.0.26 are kept aside too, in the replaced 0.0.28 database.
    [kept] = (world.backup_dest / "wizard").glob(f"state-rolledback-{V28}-*.sqlite")
    with sqlite3.connect(f"file:{kept}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM projection_threads WHERE thread_id = 'thread-on-026'").fetchone()
    assert (world.state_dir / "last-good").read_text().strip() == V24
    assert (world.state_dir / "previous-good").read_text().strip() == V28
    for user in world.users:
        assert_logs_in(world, user.sso)


@pytest.mark.timeout(900)
def test_a_pin_down_holds_keeps_the_way_back_and_rollback_to_is_the_way_down(world):
    """issue 10 item 2: 0.0.24 -> 0.0.25-nightly, then T3_PIN=0.0.24. The old code ran the gate,
    failed (`no column named role`), quarantined 0.0.24 and deleted releases/0.0.24."""
    world.registry.set_tag("nightly", V25)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    before = snapshot(world)
    held = world.run_tracker(T3_PIN=V24)
    assert held.exit_code == 0, held.stderr
    [hold] = [e for e in events(held) if e.startswith("HOLD ")]
    assert "code=pinned-down" in hold and f"rollback --to {V24}" in hold and "restore" in hold, hold
    assert not [e for e in events(held) if e.startswith(("UPDATE START", "BACKED UP", "HEALTH-CHECK"))]
    assert snapshot(world) == before  # nothing quarantined, no release removed, nobody touched
    assert (world.releases_dir / V24 / "bin" / "t3").exists()

    down = world.run_tracker("rollback", "--to", V24)
    assert down.exit_code == 0, down.stderr
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        assert_logs_in(world, user.sso)
    assert (world.state_dir / "last-good").read_text().strip() == V24
    assert (world.state_dir / "previous-good").read_text().strip() == V25
    assert (world.releases_dir / V25 / "bin" / "t3").exists()  # the previous good build stays installed
    assert os.readlink(world.bin_link) == str(world.releases_dir / V24 / "bin" / "t3")


@pytest.mark.timeout(900)
def test_a_partial_manual_rollback_keeps_last_good_and_says_who_is_where(world):
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    [backup_of_emo] = (world.backup_dest / "emo").glob(f"state-prebump-{V28}-*.sqlite")
    manifest = backup_of_emo.parent / f".{backup_of_emo.name}.json"
    kept = manifest.read_text()
    manifest.unlink()  # emo's backup can no longer be trusted: emo cannot go back

    partial = world.run_tracker("rollback", "--to", V24)
    assert partial.exit_code == 1, partial.stderr
    lines = events(partial)
    assert any(e.startswith("ROLLBACK FAILED user=emo") and "no manifest" in in_full(e) for e in lines), lines
    [line] = [e for e in lines if e.startswith("ROLLBACK PARTIAL ")]
    assert f"to={V24}" in line and f"left=emo:{V28}" in line, line
    assert not any(e.startswith("ROLLED BACK") for e in lines)
    assert_user_on(world, "emil.barzin", V28)  # untouched, still serving
    assert_user_on(world, "vbarzin", V24)
    assert_user_on(world, "ancaelena98", V24)
    assert (world.state_dir / "last-good").read_text().strip() == V28
    assert os.readlink(world.bin_link) == str(world.releases_dir / V28 / "bin" / "t3")
    status = world.run_tracker("status").stdout
    assert f"partial manual rollback to {V24}: emo on {V28}" in status, status
    wizard_line = [s for s in status.splitlines() if s.strip().startswith("wizard:")][0]
    assert f"link={V24}" in wizard_line and f"not on last-good {V28}" in wizard_line
    assert json.loads(world.run_tracker("status", "--json").stdout)["users"]["wizard"]["off_last_good"]

    manifest.write_text(kept)  # the operator fixes the cause and runs it again
    done = world.run_tracker("rollback", "--to", V24)
    assert done.exit_code == 0, done.stderr
    assert any(e.startswith(f"ROLLED BACK to={V24} users=emo") for e in events(done)), events(done)
    for user in world.users:
        assert_user_on(world, user.sso, V24)
    assert (world.state_dir / "last-good").read_text().strip() == V24
    assert link_version(world, "emo") == V24
