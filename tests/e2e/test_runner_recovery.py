"""Every mutating command finishes or undoes an unfinished journal first, and recovery puts
back only users still on the journal's version: a user already moved back (by `rollback`,
or by hand) keeps the work they did since, and nothing misleading is set aside.

The run is killed mid-canary the way tests/e2e/test_runner_crash.py does it (a real tracker
process, SIGKILLed once its first user serves the new build)."""
from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import datetime, timezone

import pytest

from runner.units import serve_unit_name
from tests.e2e.killable import PHASE_DEADLINE, POLL, Tracker, assert_no_leftovers, read_journal, wait_for_journal
from tests.runner_checks import archives_a_thread_when_stopped, assert_logs_in, assert_user_on, events, fingerprints
from tests.sim import builds
from tests.sim.world import wait_until

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
BAD_ARCHIVED = builds.BAD_VERSIONS["migration-fails-archived"]

pytestmark = pytest.mark.timeout(600)


def kill_mid_canary(world) -> tuple[dict, str]:
    """A bump to 0.0.28 killed once its first user serves it; returns (journal, that user)."""
    world.registry.set_tag("nightly", V28)
    tracker = Tracker(world, "killed")
    journal = wait_for_journal(world, tracker, lambda j: j["phase"] == "canary" and j["moving"],
                               "a user moving in the canary")
    first = journal["moving"][0]
    sso = world.user(first).sso
    wait_until(lambda: tracker.check_alive(f"{first} on {V28}") or world.server_version(sso) == V28,
               PHASE_DEADLINE, f"{first} serving {V28}", interval=POLL)
    tracker.kill()
    assert_no_leftovers(world, tracker)
    return read_journal(world), first


def write_new_work(world, os_user: str) -> str:
    """A message the user writes after being moved back (through the server's own database)."""
    message_id = f"msg-new-work-{datetime.now(timezone.utc):%H%M%S%f}"
    with sqlite3.connect(world.database(os_user), timeout=10) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        thread = conn.execute("SELECT thread_id FROM projection_threads ORDER BY thread_id LIMIT 1").fetchone()[0]
        conn.execute("INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text, created_at)"
                     " VALUES (?, ?, ?, 'user', 'written after the rollback', ?)",
                     (message_id, thread, f"turn-new-{message_id}", datetime.now(timezone.utc).isoformat()))
    return message_id


def has_message(world, os_user: str, message_id: str) -> bool:
    with sqlite3.connect(f"file:{world.database(os_user)}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM projection_thread_messages WHERE message_id = ?",
                            (message_id,)).fetchone()[0] == 1


def set_aside(world, os_user: str) -> list[str]:
    return sorted(p.name for p in (world.backup_dest / os_user).glob("*rolledback*"))


def test_rollback_after_a_killed_run_recovers_first_and_the_next_run_keeps_new_work(world):
    before = fingerprints(world)
    journal, first = kill_mid_canary(world)

    back = world.run_tracker("rollback", "--to", V24)
    assert back.exit_code == 0, back.stderr
    lines = events(back)
    assert any(e.startswith(f"RECOVERED run={journal['run_id']} phase=canary") for e in lines), back.stderr
    assert not (world.state_dir / "journal").exists()
    assert world.freeze_file.exists()
    for user in world.users:
        assert_user_on(world, user.sso, V24)
    aside = {u.os_user: set_aside(world, u.os_user) for u in world.users}

    new_work = write_new_work(world, first)
    nxt = world.run_tracker()
    assert nxt.exit_code == 0, nxt.stderr
    lines = events(nxt)
    assert not [e for e in lines if e.startswith(("RECOVERED", "RESTORED", "SET ASIDE"))], nxt.stderr
    assert any(e.startswith("FROZEN") for e in lines), nxt.stderr
    assert has_message(world, first, new_work)  # the new work is still in the live database
    assert {u.os_user: set_aside(world, u.os_user) for u in world.users} == aside
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        assert_logs_in(world, user.sso)
    after = fingerprints(world)
    for os_user, tables in before.items():
        for table, (count, _) in tables.items():
            assert after[os_user][table][0] >= count, (os_user, table)


def test_recovery_leaves_alone_a_user_moved_back_by_hand(world):
    journal, first = kill_mid_canary(world)
    # The operator's own repair: stop, put the pre-bump backup back, relink, start.
    unit = serve_unit_name(first)
    world.systemctl_run("stop", unit)
    database = world.database(first)
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(journal["backups"][first]["state.sqlite"], database)
    world.point_user(first, V24)
    world.systemctl_run("start", unit)
    world.wait_instance_ready(world.user(first).sso)
    new_work = write_new_work(world, first)
    assert world.run_tracker("freeze", "--reason", "looking at the killed run").exit_code == 0

    nxt = world.run_tracker()
    assert nxt.exit_code == 0, nxt.stderr
    lines = events(nxt)
    assert any(e.startswith(f"LEFT ALONE user={first}") for e in lines), nxt.stderr
    recovered = [e for e in lines if e.startswith("RECOVERED")]
    assert len(recovered) == 1 and f"left alone {first}" in recovered[0], nxt.stderr
    assert not [e for e in lines if e.startswith(("RESTORED", "SET ASIDE")) and f"user={first}" in e], nxt.stderr
    assert has_message(world, first, new_work)
    assert not set_aside(world, first)
    assert not (world.state_dir / "journal").exists()
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        assert_logs_in(world, user.sso)


def test_a_failed_rollback_keeps_the_journal_and_the_next_run_finishes_it(make_world):
    """migration-fails-archived moves ancamilea, then fails emo's canary. ancamilea's pre-bump
    backup goes missing once it is moving, so its rollback fails: the journal (who was moved) must
    survive, `status` must say so, and once the backup is back the next run puts ancamilea
    back on 0.0.24 with its pre-bump database."""
    world = make_world(db_options={"wizard": {"threads": 8}})
    before = fingerprints(world)
    world.registry.set_tag("nightly", BAD_ARCHIVED)
    # emo archives a thread as the move stops him: past the health gate (seeded from every
    # user's backup), the migration meets it first at his canary.
    tracker = Tracker(world, "failing", T3_SYSTEMCTL=str(archives_a_thread_when_stopped(world, "emo")))
    journal = wait_for_journal(world, tracker, lambda j: j["phase"] == "canary" and "ancamilea" in j["moving"],
                               "ancamilea moving in the canary")
    backup = journal["backups"]["ancamilea"]["state.sqlite"]
    hidden = world.root / "hidden-backup"
    os.rename(backup, hidden)
    code = tracker.wait()
    assert code == 1, tracker.stderr
    assert "ROLLBACK FAILED user=ancamilea" in tracker.stderr
    kept = read_journal(world)
    assert kept is not None, "the journal (who was moved) was cleared after a failed rollback"
    assert kept["rollback_failed"] == ["ancamilea"] and set(kept["moving"]) == {"ancamilea", "emo"}
    status = world.run_tracker("status")
    assert status.exit_code == 0, status.stderr
    assert f"ROLLBACK FAILED, still on {BAD_ARCHIVED}: ancamilea" in status.stdout, status.stdout

    refused = world.run_tracker()  # still failing: refused, journal kept
    assert refused.exit_code == 1, refused.stderr
    assert any(e.startswith("REFUSED") for e in events(refused)), refused.stderr
    assert read_journal(world)["rollback_failed"] == ["ancamilea"]

    os.rename(hidden, backup)
    done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    lines = events(done)
    assert any(e.startswith("RESTORED user=ancamilea") for e in lines), done.stderr
    assert not any(e.startswith("RESTORED user=emo") for e in lines), done.stderr  # already back on 0.0.24
    assert any(e.startswith("RECOVERED") for e in lines) and any(e.startswith("FROZEN") for e in lines)
    assert not (world.state_dir / "journal").exists()
    assert fingerprints(world) == before
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        assert_logs_in(world, user.sso)
