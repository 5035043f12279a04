"""The populated-database generator and the precious-rows fingerprint."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from tests.sim import dbgen
from tests.sim.t3pkg import t3sim


def rows(path, sql, *params):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


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
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(path, "PRAGMA foreign_key_check") == []


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
    assert rows(tmp_path / "30.sqlite", "SELECT DISTINCT role FROM auth_sessions") == [("owner",)]
    scopes = dbgen.make_database(tmp_path / "31.sqlite", 31, pairing_links=4)
    assert rows(tmp_path / "31.sqlite", "SELECT DISTINCT scopes FROM auth_pairing_links") == [('["owner"]',)]
    assert role["counts"]["auth_sessions"] == 3 and scopes["counts"]["auth_pairing_links"] == 4
    early = dbgen.make_database(tmp_path / "20.sqlite", 20, sessions=3)
    assert "auth_sessions" not in early["counts"]  # no auth tables yet: nothing to fill


def test_in_flight_turn_and_timestamps(tmp_path):
    path = tmp_path / "state.sqlite"
    facts = dbgen.make_database(path, 33, threads=3, in_flight=True, updated_at="recent")
    assert list(facts["active_turns"]) == ["thread-000000"]
    sessions = rows(path, "SELECT thread_id, status, active_turn_id, updated_at FROM projection_thread_sessions"
                          " ORDER BY thread_id")
    (busy_id, busy_status, busy_turn, _), *idle = sessions
    assert (busy_id, busy_status, busy_turn) == ("thread-000000", "running", facts["active_turns"][busy_id])
    assert all(status == "ready" and turn is None for _, status, turn, _ in idle)
    assert rows(path, "SELECT status FROM projection_turns WHERE turn_id = ?", busy_turn) == [("running",)]
    for (_, _, _, updated) in sessions:
        assert updated.endswith("Z")
        age = datetime.now(timezone.utc) - datetime.fromisoformat(updated.replace("Z", "+00:00"))
        assert timedelta(0) <= age < timedelta(minutes=1)


def test_updated_at_old_and_explicit(tmp_path):
    dbgen.make_database(tmp_path / "old.sqlite", 33, updated_at="old")
    (updated,), = rows(tmp_path / "old.sqlite", "SELECT MAX(updated_at) FROM projection_threads")
    assert datetime.now(timezone.utc) - datetime.fromisoformat(updated.replace("Z", "+00:00")) > timedelta(days=6)
    moment = datetime(2026, 6, 9, 3, 4, 5, tzinfo=timezone.utc)
    dbgen.make_database(tmp_path / "fixed.sqlite", 33, updated_at=moment)
    assert rows(tmp_path / "fixed.sqlite", "SELECT DISTINCT updated_at FROM projection_thread_sessions") == [
        ("2026-06-09T03:04:05.000Z",)]


def test_target_bytes_reaches_about_that_size(tmp_path):
    target = 8 * 1024 * 1024
    facts = dbgen.make_database(tmp_path / "big.sqlite", 33, threads=4, messages_per_thread=10, target_bytes=target)
    assert 0.85 * target <= facts["bytes"] <= 1.15 * target
    # 16 KiB a message at most: the rest comes as more messages, as in a real history.
    assert facts["counts"]["projection_thread_messages"] > 40
    assert rows(tmp_path / "big.sqlite", "SELECT MAX(LENGTH(text)) FROM projection_thread_messages")[0][0] <= 16384


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
