"""The populated-database generator and the precious-rows fingerprint."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from tests.sim import dbgen
from tests.sim.dbgen import query
from tests.sim.t3pkg import t3sim


def schema_sql(conn) -> list[tuple]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
                        ).fetchall()


def test_default_database_facts(tmp_path):
    path = tmp_path / "state.sqlite"
    facts = dbgen.make_database(path, 33)
    assert facts["schema_level"] == 33 and dbgen.schema_level(path) == 33
    counts = facts["counts"]
    assert counts["projection_threads"] == 3
    assert counts["projection_thread_messages"] == 30
    assert counts["projection_thread_sessions"] == 3
    assert counts["auth_sessions"] == 2 and counts["auth_pairing_links"] == 2
    assert counts == dbgen.table_counts(path)
    assert facts["bytes"] == path.stat().st_size
    assert facts["active_turns"] == {}
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    assert query(path, "PRAGMA foreign_key_check") == []


@pytest.mark.parametrize("level", [4, 25, 30, 31, 32, 33])
def test_schema_is_exactly_what_the_simulator_migrates(tmp_path, level):
    path = tmp_path / "state.sqlite"
    dbgen.make_database(path, level)
    reference = sqlite3.connect(tmp_path / "reference.sqlite", isolation_level=None)
    t3sim.run_migrations(reference, level)
    generated = sqlite3.connect(path)
    try:
        assert schema_sql(generated) == schema_sql(reference)
    finally:
        generated.close()
        reference.close()


def test_auth_rows_follow_the_schema(tmp_path):
    role = dbgen.make_database(tmp_path / "30.sqlite", 30, sessions=3)
    assert query(tmp_path / "30.sqlite", "SELECT DISTINCT role FROM auth_sessions") == [("owner",)]
    scopes = dbgen.make_database(tmp_path / "31.sqlite", 31, pairing_links=4)
    assert query(tmp_path / "31.sqlite", "SELECT DISTINCT scopes FROM auth_pairing_links") == [('["owner"]',)]
    assert role["counts"]["auth_sessions"] == 3 and scopes["counts"]["auth_pairing_links"] == 4
    early = dbgen.make_database(tmp_path / "20.sqlite", 20, sessions=3)
    assert "auth_sessions" not in early["counts"]  # no auth tables yet: nothing to fill


def test_in_flight_turn_and_timestamps(tmp_path):
    path = tmp_path / "state.sqlite"
    facts = dbgen.make_database(path, 33, threads=3, in_flight=True, updated_at="recent")
    assert list(facts["active_turns"]) == ["thread-000000"]
    sessions = query(path, "SELECT thread_id, status, active_turn_id, updated_at FROM projection_thread_sessions"
                          " ORDER BY thread_id")
    (busy_id, busy_status, busy_turn, _), *idle = sessions
    assert (busy_id, busy_status, busy_turn) == ("thread-000000", "running", facts["active_turns"][busy_id])
    assert all(status == "ready" and turn is None for _, status, turn, _ in idle)
    assert query(path, "SELECT status FROM projection_turns WHERE turn_id = ?", busy_turn) == [("running",)]
    for (_, _, _, updated) in sessions:
        assert updated.endswith("Z")
        age = datetime.now(timezone.utc) - datetime.fromisoformat(updated.replace("Z", "+00:00"))
        assert timedelta(0) <= age < timedelta(minutes=1)


def test_updated_at_old_and_explicit(tmp_path):
    dbgen.make_database(tmp_path / "old.sqlite", 33, updated_at="old")
    (updated,), = query(tmp_path / "old.sqlite", "SELECT MAX(updated_at) FROM projection_threads")
    assert datetime.now(timezone.utc) - datetime.fromisoformat(updated.replace("Z", "+00:00")) > timedelta(days=6)
    moment = datetime(2026, 6, 9, 3, 4, 5, tzinfo=timezone.utc)
    dbgen.make_database(tmp_path / "fixed.sqlite", 33, updated_at=moment)
    assert query(tmp_path / "fixed.sqlite", "SELECT DISTINCT updated_at FROM projection_thread_sessions") == [
        ("2026-06-09T03:04:05.000Z",)]


def test_target_bytes_reaches_about_that_size(tmp_path):
    target = 8 * 1024 * 1024
    facts = dbgen.make_database(tmp_path / "big.sqlite", 33, threads=4, messages_per_thread=10, target_bytes=target)
    assert 0.85 * target <= facts["bytes"] <= 1.15 * target
    # 16 KiB a message at most: the rest comes as more messages, as in a real history.
    assert facts["counts"]["projection_thread_messages"] > 40
    assert query(tmp_path / "big.sqlite", "SELECT MAX(LENGTH(text)) FROM projection_thread_messages")[0][0] <= 16384


def test_refuses_an_existing_file_and_unknown_levels(tmp_path):
    path = tmp_path / "state.sqlite"
    dbgen.make_database(path, 33)
    with pytest.raises(FileExistsError):
        dbgen.make_database(path, 33)
    for level in (3, 34):
        with pytest.raises(ValueError):
            dbgen.make_database(tmp_path / f"{level}.sqlite", level)


def test_fingerprint_sees_lost_and_changed_history_only(tmp_path):
    path = tmp_path / "state.sqlite"
    dbgen.make_database(path, 33)
    before = dbgen.precious_fingerprint(path)
    assert before == dbgen.precious_fingerprint(path)
    assert before["projection_thread_messages"][0] == 30

    def change(sql):
        conn = sqlite3.connect(path)
        with conn:
            conn.execute(sql)
        conn.close()
        return dbgen.precious_fingerprint(path)

    # Not history: a new column's value, and the disposable auth tables.
    assert change("UPDATE projection_threads SET pinned = 1") == before
    assert change("DELETE FROM auth_sessions") == before
    # History: an edited message and a deleted one.
    edited = change("UPDATE projection_thread_messages SET text = text || '!' WHERE message_id = 'msg-000001-000003'")
    assert edited["projection_thread_messages"][0] == 30 and edited != before
    deleted = change("DELETE FROM projection_thread_messages WHERE message_id = 'msg-000002-000000'")
    assert deleted["projection_thread_messages"][0] == 29
    gone = change("DROP TABLE projection_thread_messages")
    assert gone["projection_thread_messages"] == (0, "missing")


# --------------------------------------------------------------------- V2 users

def _schema_of_a_fresh_v2_build(tmp_path, level):
    """What a V2 build creates on an empty base dir, by the simulator's own import."""
    home = tmp_path / f"fresh-{level}"
    (home / "userdata").mkdir(parents=True)
    build = t3sim.Build("x", {"layout": "v2", "schema_level": level})
    t3sim.import_v1_state(build, t3sim.StateDir(str(home), "v2"), lambda *_: None)
    conn = sqlite3.connect(home / "userdata" / "statev2.sqlite")
    try:
        return schema_sql(conn)
    finally:
        conn.close()


def test_v2_user_has_the_frozen_v1_file_and_an_imported_statev2(tmp_path):
    userdata = tmp_path / "home" / ".t3" / "userdata"
    facts = dbgen.make_v2_user(userdata, 60, threads=3, messages_per_thread=4, v2_threads=2, runs_per_thread=3,
                               archived_threads=1, updated_at="recent")
    assert sorted(p.name for p in userdata.iterdir()) == ["state.sqlite", "statev2.sqlite"]
    v1, v2 = userdata / "state.sqlite", userdata / "statev2.sqlite"
    assert facts["path"] == str(v2) and facts["schema_level"] == dbgen.schema_level(v2) == 60
    assert facts["v1"]["schema_level"] == dbgen.schema_level(v1) == 33
    conn = sqlite3.connect(v2)
    try:
        assert schema_sql(conn) == _schema_of_a_fresh_v2_build(tmp_path, 60)  # exactly the simulator's schema
    finally:
        conn.close()
    assert query(v2, "PRAGMA journal_mode") == [("wal",)] and query(v2, "PRAGMA integrity_check") == [("ok",)]
    # The V1 tables inside statev2 are the V1 file's rows, frozen at the import.
    assert dbgen.precious_fingerprint(v2) == dbgen.precious_fingerprint(v1)
    origins = query(v2, "SELECT json_extract(payload_json, '$.historyOrigin'), COUNT(*)"
                       " FROM orchestration_v2_projection_threads GROUP BY 1 ORDER BY 1")
    assert origins == [("v1_import", 3), ("v2", 2)]
    counts = facts["counts"]
    assert counts["orchestration_v2_legacy_imports"] == 3
    assert counts["orchestration_v2_projection_runs"] == 6
    assert counts["orchestration_v2_projection_turn_items"] == 6
    assert counts["orchestration_v2_projection_provider_threads"] == 2
    assert counts["orchestration_v2_projection_messages"] == 12 + 2 * 3 * 2  # imported + user/assistant per run
    assert counts["orchestration_v2_events"] > 0
    assert facts["in_flight_runs"] == {}
    assert query(v2, "SELECT DISTINCT status FROM orchestration_v2_projection_runs") == [("completed",)]
    # V2 activity is recent; the frozen V1 file is old and idle.
    (v2_last,), = query(v2, "SELECT MAX(updated_at) FROM orchestration_v2_projection_runs")
    assert datetime.now(timezone.utc) - datetime.fromisoformat(v2_last.replace("Z", "+00:00")) < timedelta(minutes=1)
    (v1_last,), = query(v1, "SELECT MAX(updated_at) FROM projection_threads")
    assert datetime.now(timezone.utc) - datetime.fromisoformat(v1_last.replace("Z", "+00:00")) > timedelta(days=6)
    assert query(v1, "SELECT COUNT(*) FROM projection_thread_sessions WHERE active_turn_id IS NOT NULL") == [(0,)]


def test_v2_user_with_a_run_in_flight(tmp_path):
    facts = dbgen.make_v2_user(tmp_path / "userdata", 61, v2_threads=2, runs_per_thread=2, in_flight=True)
    assert facts["in_flight_runs"] == {"v2-thread-000000": 2}
    v2 = facts["path"]
    # The run in flight is the thread's newest by ordinal, with a non-final status.
    newest = query(v2, "SELECT r.thread_id, r.status FROM orchestration_v2_projection_runs r WHERE r.ordinal ="
                      " (SELECT MAX(ordinal) FROM orchestration_v2_projection_runs WHERE thread_id = r.thread_id)"
                      " ORDER BY r.thread_id")
    assert newest == [("v2-thread-000000", "running"), ("v2-thread-000001", "completed")]
    assert "running" not in t3sim.V2_RUN_FINAL_STATUSES
    assert query(v2, "SELECT status FROM orchestration_v2_projection_turn_items WHERE thread_id = 'v2-thread-000000'"
                    " ORDER BY ordinal") == [("completed",), ("streaming",)]
    assert dbgen.schema_level(v2) == 61


def test_make_user_picks_the_layout_and_refuses_nonsense(tmp_path):
    assert dbgen.make_user(tmp_path / "a" / "userdata", 33)["path"] == str(tmp_path / "a/userdata/state.sqlite")
    assert dbgen.make_user(tmp_path / "b" / "userdata", 60, "v2", in_flight=True)["in_flight_runs"]
    with pytest.raises(ValueError):
        dbgen.make_user(tmp_path / "c" / "userdata", 33, "v3")
    for level in (33, 55, 63):
        with pytest.raises(ValueError):
            dbgen.make_v2_user(tmp_path / f"d{level}" / "userdata", level)
    with pytest.raises(ValueError):
        dbgen.make_v2_user(tmp_path / "e", 60)  # not a userdata/ directory
    with pytest.raises(FileExistsError):
        dbgen.make_v2_user(tmp_path / "b" / "userdata", 60)


def test_v2_fingerprint_sees_lost_v2_history(tmp_path):
    v2 = dbgen.make_v2_user(tmp_path / "userdata", 60)["path"]
    before = dbgen.precious_fingerprint(v2, dbgen.ALL_PRECIOUS_TABLES)
    assert set(before) == set(dbgen.PRECIOUS_TABLES) | set(dbgen.PRECIOUS_V2_TABLES)
    conn = sqlite3.connect(v2)
    with conn:
        conn.execute("DELETE FROM orchestration_v2_projection_messages WHERE rowid = 1")
    conn.close()
    after = dbgen.precious_fingerprint(v2, dbgen.ALL_PRECIOUS_TABLES)
    assert {t for t in after if after[t] != before[t]} == {"orchestration_v2_projection_messages"}
    assert dbgen.precious_fingerprint(v2) == {t: before[t] for t in dbgen.PRECIOUS_TABLES}
