"""Orchestration V2 (statev2.sqlite) through every phase, end to end: real tracker runs on the
simulated world (real npm, registry, systemctl and dispatch stand-ins, V1 and V2 users).

A first V2 bump imports every user's V1 history; a V2 -> V2 bump keeps every row; a V2 user with
a run in flight is deferred and drained once idle; a canary failure on a V2 bump restores both
files of every moved user; going back to a pre-V2 build restores state.sqlite and sets
statev2.sqlite aside (and a later re-upgrade imports afresh); a mixed host bumps correctly."""
from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from runner.units import serve_unit_name
from tests.runner_checks import assert_logs_in, assert_user_on, events, fingerprints, link_version, main_pids
from tests.sim import builds, dbgen

V24 = "0.0.24"
V46 = builds.V2_GOOD_VERSIONS["good-v2-0.0.46"]  # the first V2 build: imports state.sqlite
V47 = builds.V2_GOOD_VERSIONS["good-v2-0.0.47"]  # a V2 -> V2 migration
FAILS_ON_LIVE_V2_THREADS = builds.V2_BAD_VERSIONS["v2-migration-fails-populated"]
OLD = "2026-01-01T00:00:00.000Z"

pytestmark = pytest.mark.timeout(900)


def v2_file(world, os_user: str):
    return world.userdata(os_user) / "statev2.sqlite"


def v2_fingerprint(world, os_user: str) -> dict:
    return dbgen.precious_fingerprint(v2_file(world, os_user), dbgen.ALL_PRECIOUS_TABLES)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ids(path, table: str, column: str) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute(f"SELECT {column} FROM {table}")}


def assert_v2_user_on(world, sso: str, version: str) -> None:
    assert_user_on(world, sso, version)
    user = world.user(sso)
    assert world.live_database(user.os_user) == v2_file(world, user.os_user)


def test_v1_host_first_v2_bump_imports_every_users_history_and_leaves_state_sqlite_alone(world):
    v1_rows = fingerprints(world)
    v1_ids = {u.os_user: (ids(world.database(u.os_user), "projection_threads", "thread_id"),
                          ids(world.database(u.os_user), "projection_thread_messages", "message_id"))
              for u in world.users}
    world.registry.set_tag("nightly", V46)
    done = world.run_tracker()  # (logins throughout a bump: tests/e2e/test_runner_bump.py)
    assert done.exit_code == 0, done.stderr
    assert any(e.startswith(f"update complete version={V46}") for e in events(done))
    frozen = {}
    for user in world.users:
        assert_v2_user_on(world, user.sso, V46)
        threads, messages = v1_ids[user.os_user]
        v2 = v2_file(world, user.os_user)
        assert threads <= ids(v2, "orchestration_v2_projection_threads", "thread_id")
        assert messages <= ids(v2, "orchestration_v2_projection_messages", "message_id")
        assert fingerprints(world)[user.os_user] == v1_rows[user.os_user]  # state.sqlite: no history row changed
        frozen[user.os_user] = sha256(world.database(user.os_user))
        assert_logs_in(world, user.sso)  # every user pairs on V2...
        assert sha256(world.database(user.os_user)) == frozen[user.os_user]  # ...and state.sqlite stays frozen
        [backup] = (world.backup_dest / user.os_user).glob(f"state-prebump-{V46}-*.sqlite")
        assert not list((world.backup_dest / user.os_user).glob("statev2-prebump-*"))  # V1 then: one file


def test_v2_to_v2_bump_keeps_every_row_of_both_families(make_world):
    world = make_world(installed=V46)
    before = {u.os_user: (v2_fingerprint(world, u.os_user), sha256(world.database(u.os_user))) for u in world.users}
    world.registry.set_tag("nightly", V47)
    done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    for user in world.users:
        assert_v2_user_on(world, user.sso, V47)
        assert (v2_fingerprint(world, user.os_user), sha256(world.database(user.os_user))) == before[user.os_user]
        for name in ("state", "statev2"):  # both files backed up, one set
            assert len(list((world.backup_dest / user.os_user).glob(f"{name}-prebump-{V47}-*.sqlite"))) == 1
        assert_logs_in(world, user.sso)


def test_a_v2_user_with_a_run_in_flight_is_deferred_then_drained_once_idle(make_world):
    world = make_world(installed=V46, db_options={"emo": {"in_flight": True}})
    pids = main_pids(world)
    world.registry.set_tag("nightly", V47)
    done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    [deferred] = [e for e in events(done) if e.startswith("DEFERRED user=emo")]
    assert "1 agent run(s) in flight (status running)" in deferred and "statev2.sqlite" in deferred, deferred
    assert main_pids(world)["emo"] == pids["emo"]  # never restarted mid-run
    assert_v2_user_on(world, "emil.barzin", V46)
    assert_v2_user_on(world, "vbarzin", V47)
    assert_logs_in(world, "emil.barzin")
    marker = json.loads((world.state_dir / "deferred" / "emo").read_text())
    assert marker["version"] == V47 and "run(s) in flight" in marker["reason"]

    still = world.run_tracker("drain-deferred")  # the run is still going: nothing moves
    assert still.exit_code == 0, still.stderr
    assert main_pids(world)["emo"] == pids["emo"] and link_version(world, "emo") == V46

    with sqlite3.connect(v2_file(world, "emo")) as conn:  # the run ends (a while ago)
        conn.execute("UPDATE orchestration_v2_projection_runs SET status = 'completed', completed_at = ?,"
                     " updated_at = ? WHERE status NOT IN ('completed', 'failed', 'cancelled', 'interrupted')",
                     (OLD, OLD))
        conn.execute("UPDATE orchestration_v2_projection_turn_items SET status = 'completed', updated_at = ?"
                     " WHERE status <> 'completed'", (OLD,))
    drained = world.run_tracker("drain-deferred")
    assert drained.exit_code == 0, drained.stderr
    assert any(e.startswith("DRAINED user=emo") for e in events(drained)), drained.stderr
    assert_v2_user_on(world, "emil.barzin", V47)
    assert not (world.state_dir / "deferred" / "emo").exists()
    assert_logs_in(world, "emil.barzin")


STARTS_A_THREAD_WHEN_STOPPED = '''#!{python}
import sqlite3, subprocess, sys
code = subprocess.call([{real!r}, *sys.argv[1:]])
if sys.argv[1:2] == ["stop"] and {unit!r} in sys.argv[2:]:
    with sqlite3.connect({db!r}, timeout=10) as conn:
        conn.execute("INSERT OR IGNORE INTO orchestration_v2_projection_threads (thread_id, project_id, title,"
                     " created_at, updated_at) VALUES ('late-thread', 'project-000', 'late', {old!r}, {old!r})")
sys.exit(code)
'''


def starts_a_thread_when_stopped(world, os_user: str):
    """A systemctl for the runner (T3_SYSTEMCTL) under which `os_user`'s server writes a new live
    V2 thread as it stops: data newer than the pre-bump backup the health gate was seeded from."""
    import sys

    path = world.root / f"systemctl-{os_user}-starts-a-thread"
    path.write_text(STARTS_A_THREAD_WHEN_STOPPED.format(
        python=sys.executable, real=str(world.systemctl), unit=serve_unit_name(os_user),
        db=str(v2_file(world, os_user)), old=OLD))
    path.chmod(0o755)
    return path


def test_a_canary_failure_on_a_v2_bump_restores_both_files_of_every_moved_user(make_world):
    """The build's migration 62 fails on a live V2 thread. Nobody has one when the backups (and
    the health gate's seeds) are taken; emo starts one as his server stops for the move: emo's
    canary fails, and every user moved so far gets both of their files back from their set."""
    no_threads = {"threads": 0, "v2_threads": 0}
    world = make_world(installed=V46, threads=0, db_options={u: no_threads for u in ("wizard", "emo", "ancamilea")})
    before = {u.os_user: (v2_fingerprint(world, u.os_user), fingerprints(world)[u.os_user]) for u in world.users}
    world.registry.set_tag("nightly", FAILS_ON_LIVE_V2_THREADS)
    done = world.run_tracker(T3_SYSTEMCTL=str(starts_a_thread_when_stopped(world, "emo")))
    assert done.exit_code == 1, done.stderr
    lines = events(done)
    passed = [e.split()[2].split("=")[1] for e in lines if e.startswith("CANARY PASSED user=")]
    assert any(e.startswith("CANARY FAILED user=emo") for e in lines), lines
    assert any(e.startswith("ROLLED BACK") for e in lines), lines
    for os_user in (*passed, "emo"):
        for name in ("state.sqlite", "statev2.sqlite"):
            assert any(e.startswith(f"RESTORED user={os_user} database={name}") for e in lines), lines
    for user in world.users:
        assert_v2_user_on(world, user.sso, V46)
        assert_logs_in(world, user.sso)
        assert (v2_fingerprint(world, user.os_user), fingerprints(world)[user.os_user]) == before[user.os_user]
    # emo's thread, written after the backup, is not lost: it is in the copy kept aside.
    asides = list((world.backup_dest / "emo").glob(f"statev2-rolledback-{FAILS_ON_LIVE_V2_THREADS}-*.sqlite"))
    assert any("late-thread" in ids(a, "orchestration_v2_projection_threads", "thread_id") for a in asides)
    assert json.loads(world.freeze_file.read_text())["reason"].startswith("canary failed for emo")


def test_going_back_to_a_pre_v2_build_restores_state_sqlite_and_sets_statev2_aside(world):
    v1_rows = fingerprints(world)
    world.registry.set_tag("nightly", V46)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    for user in world.users:
        assert_v2_user_on(world, user.sso, V46)
        assert_logs_in(world, user.sso)  # V2 history written after the bump

    held = world.run_tracker(T3_PIN=V24)  # a pin down is not the way: it says which is
    assert held.exit_code == 0 and any("code=pinned-down" in e and f"rollback --to {V24}" in e
                                       for e in events(held)), held.stderr
    back = world.run_tracker("rollback", "--to", V24)
    assert back.exit_code == 0, back.stderr
    lines = events(back)
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        assert world.live_database(user.os_user) == world.database(user.os_user)  # no statev2.sqlite left
        [aside] = (world.backup_dest / user.os_user).glob(f"statev2-rolledback-{V46}-*.sqlite")
        assert any(e.startswith(f"SET ASIDE user={user.os_user} database=statev2.sqlite") and str(aside) in e
                   for e in lines), lines
        assert any(e.startswith(f"RESTORED user={user.os_user} database=state.sqlite") for e in lines), lines
        assert_logs_in(world, user.sso)
    assert fingerprints(world) == v1_rows
    [rolled] = [e for e in lines if e.startswith("ROLLED BACK ")]
    assert "set_aside=" in rolled and "statev2-rolledback" in rolled

    # Later, the V2 build again: a clean first import of the restored state.sqlite.
    assert world.run_tracker("unfreeze").exit_code == 0
    world.registry.set_tag("nightly", V47)
    again = world.run_tracker()
    assert again.exit_code == 0, again.stderr
    for user in world.users:
        assert_v2_user_on(world, user.sso, V47)
        assert ids(world.database(user.os_user), "projection_threads", "thread_id") <= \
            ids(v2_file(world, user.os_user), "orchestration_v2_projection_threads", "thread_id")
        assert_logs_in(world, user.sso)


def test_a_mixed_host_bumps_correctly_v1_user_deferred_while_the_others_went_v2(make_world):
    """emo's V1 turn keeps emo on 0.0.24 (state.sqlite) through the first V2 bump and the next;
    the next bump's health gate imports emo's V1 file as well, and emo, drained once idle, goes
    straight from 0.0.24 to 0.0.47 with a first import of their own."""
    world = make_world(db_options={"emo": {"in_flight": True}})
    emo_v1 = fingerprints(world)["emo"]
    for version in (V46, V47):
        world.registry.set_tag("nightly", version)
        done = world.run_tracker()
        assert done.exit_code == 0, done.stderr
        assert any(e.startswith("DEFERRED user=emo") and "turn(s) in flight" in e for e in events(done)), done.stderr
        assert_user_on(world, "emil.barzin", V24)
        assert world.live_database("emo") == world.database("emo")  # still V1: no statev2.sqlite
        for sso in ("vbarzin", "ancaelena98"):
            assert_v2_user_on(world, sso, version)
    for user in world.users:
        assert_logs_in(world, user.sso)
    with sqlite3.connect(world.database("emo")) as conn:
        conn.execute("UPDATE projection_thread_sessions SET active_turn_id = NULL, status = 'ready', updated_at = ?",
                     (OLD,))
    drained = world.run_tracker("drain-deferred")
    assert drained.exit_code == 0, drained.stderr
    assert_v2_user_on(world, "emil.barzin", V47)
    assert ids(world.database("emo"), "projection_thread_messages", "message_id") <= \
        ids(v2_file(world, "emo"), "orchestration_v2_projection_messages", "message_id")
    assert dbgen.precious_fingerprint(world.database("emo"))["projection_threads"] == emo_v1["projection_threads"]
    assert_logs_in(world, "emil.barzin")
