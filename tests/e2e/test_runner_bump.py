"""End to end: real tracker runs on the simulated deployment (real npm, registry,
systemctl stand-in, dispatch, three users with populated databases)."""
from __future__ import annotations

import json
import os

import pytest

from tests.runner_checks import (archives_a_thread_when_stopped, assert_failures_only_in_own_restart_windows,
                                 assert_history_kept, assert_logs_in, assert_requests_fail_only_in_own_restart_windows,
                                 assert_user_on, events, fingerprints, in_full, main_pids, probing_logins,
                                 probing_requests, restart_windows, summary_of)
from tests.sim import builds

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]


@pytest.mark.timeout(900)  # probers on every user load a shared machine
def test_good_nightly_bump_fails_logins_only_inside_each_users_own_restart(world):
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    with probing_logins(world, interval=0.1) as logins, probing_requests(world, interval=0.05) as requests_seen:
        done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    failed = assert_failures_only_in_own_restart_windows(world, logins, done)
    print("requests with a cookie:", assert_requests_fail_only_in_own_restart_windows(world, requests_seen, done))
    windows = restart_windows(done)
    assert sorted(windows) == sorted(u.os_user for u in world.users)
    for user in world.users:
        report = logins[user.sso]
        assert len(report.successes) >= 5, report.summary()
        (start, end), = windows[user.os_user]
        print(f"{user.sso}: {failed[user.sso]} of {len(report.attempts)} logins failed; "
              f"restart window {1000 * (end - start):.0f} ms")
    for user in world.users:
        assert_user_on(world, user.sso, V28)
    assert_history_kept(world, before)
    assert (world.state_dir / "last-good").read_text().strip() == V28
    assert os.readlink(world.bin_link) == str(world.releases_dir / V28 / "bin" / "t3")
    assert not (world.state_dir / "journal").exists()
    summary = summary_of(world)
    assert (summary["from"], summary["to"], summary["result"]) == (V24, V28, "updated")
    assert sorted(summary["per_user"]) == sorted(u.os_user for u in world.users)
    reports = [summary["health_report"], *summary["canary_reports"]]
    assert len(reports) == 1 + len(world.users) and all(os.path.isfile(r) for r in reports)
    for user in world.users:
        backups = list((world.backup_dest / user.os_user).glob(f"state-prebump-{V28}-*.sqlite"))
        assert len(backups) == 1
        assert_logs_in(world, user.sso)
    assert any(e.startswith("update complete version=" + V28) for e in events(done))


def test_busy_user_is_deferred_and_keeps_logging_in(make_world):
    world = make_world(db_options={"emo": {"in_flight": True}})
    world.registry.set_tag("nightly", V28)
    with probing_logins(world) as logins:
        done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    assert_failures_only_in_own_restart_windows(world, logins, done)
    assert logins["emil.barzin"].ok, logins["emil.barzin"].summary()  # never restarted: never failed
    assert "emo" not in restart_windows(done)
    assert_user_on(world, "emil.barzin", V24)  # old link, old server, old schema: consistent
    assert_user_on(world, "vbarzin", V28)
    marker = json.loads((world.state_dir / "deferred" / "emo").read_text())
    assert marker["version"] == V28 and "turn" in marker["reason"]
    assert any(e.startswith("DEFERRED user=emo") for e in events(done))
    assert_logs_in(world, "emil.barzin")
    # The turn ends; the idle-gated drain job moves emo with the same safe routine.
    import sqlite3
    with sqlite3.connect(world.database("emo")) as conn:
        conn.execute("UPDATE projection_thread_sessions SET active_turn_id = NULL, status = 'ready',"
                     " updated_at = '2026-01-01T00:00:00Z'")
    drained = world.run_tracker("drain-deferred")
    assert drained.exit_code == 0, drained.stderr
    assert_user_on(world, "emil.barzin", V28)
    assert not (world.state_dir / "deferred" / "emo").exists()
    assert_logs_in(world, "emil.barzin")


def test_drain_defers_a_user_whose_link_is_unusable_and_moves_the_others(make_world):
    """Two busy users deferred; by the drain one's release link names no release (changed by
    hand): that user stays deferred with the reason, the other is moved."""
    world = make_world(db_options={"emo": {"in_flight": True}, "wizard": {"in_flight": True}})
    world.registry.set_tag("nightly", V28)
    done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    assert_user_on(world, "emil.barzin", V24)
    assert_user_on(world, "vbarzin", V24)
    import sqlite3
    for os_user in ("emo", "wizard"):  # the turns end
        with sqlite3.connect(world.database(os_user)) as conn:
            conn.execute("UPDATE projection_thread_sessions SET active_turn_id = NULL, status = 'ready',"
                         " updated_at = '2026-01-01T00:00:00Z'")
    link = world.active_dir / "wizard"
    link.unlink()
    link.symlink_to("/nowhere/not-a-version")

    drained = world.run_tracker("drain-deferred")
    assert drained.exit_code == 0, drained.stderr
    assert_user_on(world, "emil.barzin", V28)
    assert any(e.startswith("DEFERRED user=wizard") and "release link unusable" in e for e in events(drained))
    assert (world.state_dir / "deferred" / "wizard").exists()
    assert world.server_version("vbarzin") == V24  # still serving what it ran, untouched


def test_bad_build_is_stopped_by_the_health_gate_with_zero_failed_logins(world):
    bad = builds.BAD_VERSIONS["migration-drops-rows"]
    before, pids = fingerprints(world), main_pids(world)
    world.registry.set_tag("nightly", bad)
    with probing_logins(world) as logins:
        done = world.run_tracker()
    assert done.exit_code == 1
    assert not logins.pop("dispatch failures")
    assert all(r.ok for r in logins.values()), {s: r.summary() for s, r in logins.items()}
    assert main_pids(world) == pids  # nobody restarted
    for user in world.users:
        assert_user_on(world, user.sso, V24)
    assert_history_kept(world, before)
    quarantined = json.loads((world.state_dir / "quarantine" / f"{bad}.json").read_text())
    assert "projection_thread_messages lost" in quarantined["reason"]
    assert not (world.releases_dir / bad).exists()
    assert not world.freeze_file.exists()  # a health failure touches no user: no freeze needed
    assert any(e.startswith("HEALTH-CHECK FAILED") and "lost" in e for e in events(done))
    again = world.run_tracker()  # quarantined: never retried
    assert again.exit_code == 0 and any("code=quarantined" in e for e in events(again))


def test_canary_failure_on_the_second_user_restores_both_and_freezes(make_world):
    # Nobody has archived threads when the pre-bump backups (the health gate's seeds) are
    # taken; emo, moved second, archives one as the canary stops his server: the build's
    # migration fails on emo's data only, and only at his restart.
    world = make_world(db_options={"wizard": {"threads": 8}})
    bad = builds.BAD_VERSIONS["migration-fails-archived"]
    before = fingerprints(world)
    world.registry.set_tag("nightly", bad)
    done = world.run_tracker(T3_SYSTEMCTL=str(archives_a_thread_when_stopped(world, "emo")))
    assert done.exit_code == 1, done.stderr
    lines = events(done)
    assert any(e.startswith("CANARY PASSED user=ancamilea") for e in lines), lines
    failed = [e for e in lines if e.startswith("CANARY FAILED user=emo")]
    assert failed and 'Migration "33_' in in_full(failed[0]), lines  # the unit's own log names the cause
    assert any(e.startswith("ROLLED BACK") for e in lines), lines
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        assert_logs_in(world, user.sso)
    assert_history_kept(world, before)
    for os_user in ("ancamilea", "emo"):  # both touched users: restored, replaced file kept aside
        assert list((world.backup_dest / os_user).glob(f"state-rolledback-{bad}-*.sqlite"))
        assert any(e.startswith(f"RESTORED user={os_user}") for e in lines)
    assert not list((world.backup_dest / "wizard").glob("state-rolledback-*"))
    freeze = json.loads(world.freeze_file.read_text())
    assert "canary failed for emo" in freeze["reason"]
    assert (world.state_dir / "quarantine" / f"{bad}.json").exists()
    assert (world.state_dir / "last-good").read_text().strip() == V24
    held = world.run_tracker()
    assert held.exit_code == 0 and any(e.startswith("FROZEN") for e in events(held))
