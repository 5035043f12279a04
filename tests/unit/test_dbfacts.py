"""runner.dbfacts on small hand-made SQLite files: what counts as precious on V1 and V2,
how losses are named (also across the V1 -> V2 import), which file is live, and what
counts as a change of a database the build must leave alone."""
from __future__ import annotations

import sqlite3
from contextlib import closing

from runner import dbfacts

V1_SCHEMA = """
CREATE TABLE effect_sql_migrations (migration_id INTEGER PRIMARY KEY, created_at TEXT, name TEXT);
CREATE TABLE projection_threads (thread_id TEXT PRIMARY KEY, project_id TEXT, title TEXT, created_at TEXT,
                                 updated_at TEXT, deleted_at TEXT);
CREATE TABLE projection_thread_messages (message_id TEXT PRIMARY KEY, thread_id TEXT, turn_id TEXT, role TEXT,
                                         text TEXT, streaming INTEGER);
CREATE TABLE auth_sessions (session_id TEXT PRIMARY KEY, subject TEXT);
"""
V2_TABLES = """
CREATE TABLE orchestration_v2_projection_threads (thread_id TEXT PRIMARY KEY, project_id TEXT, title TEXT,
                                                  created_at TEXT, updated_at TEXT, payload_json TEXT);
CREATE TABLE orchestration_v2_projection_runs (thread_id TEXT, ordinal INTEGER, status TEXT,
                                               PRIMARY KEY (thread_id, ordinal));
CREATE TABLE orchestration_v2_projection_messages (message_id TEXT PRIMARY KEY, thread_id TEXT, role TEXT,
                                                   text TEXT);
"""


def v1_database(path, *, threads=4, messages=48, level=33):
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(V1_SCHEMA)
        conn.executemany("INSERT INTO effect_sql_migrations VALUES (?, '2026-01-01T00:00:00Z', ?)",
                         [(i, f"m{i}") for i in range(1, level + 1)])
        conn.executemany("INSERT INTO projection_threads VALUES (?, 'p', ?, '2026-01-01T00:00:00Z', "
                         "'2026-01-02T00:00:00Z', NULL)", [(f"t{i}", f"thread {i}") for i in range(threads)])
        conn.executemany("INSERT INTO projection_thread_messages VALUES (?, ?, 'turn', 'user', ?, 0)",
                         [(f"m{i}", f"t{i % threads}", f"text {i}") for i in range(messages)])
        conn.execute("INSERT INTO auth_sessions VALUES ('s1', 'owner')")
        conn.commit()
    return path


def import_into_v2(v1_path, v2_path, *, v2_messages=80, level=60, carry=True):
    """What a V2 build's first start makes: the V1 tables kept, V1 history carried into the
    V2 tables (with `carry`), native V2 history beside it."""
    with closing(sqlite3.connect(v1_path)) as src, closing(sqlite3.connect(v2_path)) as dst:
        src.backup(dst)
    with closing(sqlite3.connect(v2_path)) as conn:
        conn.executescript(V2_TABLES)
        conn.executemany("INSERT INTO effect_sql_migrations VALUES (?, '2026-06-01T00:00:00Z', ?)",
                         [(i, f"m{i}") for i in range(34, level + 1)])
        if carry:
            conn.execute("INSERT INTO orchestration_v2_projection_threads SELECT thread_id, project_id, title,"
                         " created_at, updated_at, '{\"historyOrigin\": \"v1_import\"}' FROM projection_threads")
            conn.execute("INSERT INTO orchestration_v2_projection_messages SELECT message_id, thread_id, role, text"
                         " FROM projection_thread_messages")
        conn.execute("INSERT INTO orchestration_v2_projection_threads VALUES ('v2t', 'p', 'new', "
                     "'2026-06-01T00:00:00Z', '2026-06-01T00:00:00Z', '{}')")
        conn.execute("INSERT INTO orchestration_v2_projection_runs VALUES ('v2t', 1, 'running')")
        conn.executemany("INSERT INTO orchestration_v2_projection_messages VALUES (?, 'v2t', 'user', ?)",
                         [(f"v{i}", f"v2 text {i}") for i in range(v2_messages)])
        conn.commit()
    return v2_path


def run(path, sql, *args):
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(sql, args)
        conn.commit()


def test_precious_is_every_projection_and_orchestration_v2_table(tmp_path):
    v2 = import_into_v2(v1_database(tmp_path / "state.sqlite"), tmp_path / "statev2.sqlite")
    assert sorted(dbfacts.precious_fingerprint(v2)) == [
        "orchestration_v2_projection_messages", "orchestration_v2_projection_runs",
        "orchestration_v2_projection_threads", "projection_thread_messages", "projection_threads"]
    counts = {t: n for t, (n, _) in dbfacts.precious_fingerprint(v2).items()}
    assert counts["orchestration_v2_projection_messages"] == 48 + 80 and counts["projection_thread_messages"] == 48


def test_v1_losses_keep_their_words(tmp_path):
    db = v1_database(tmp_path / "state.sqlite", messages=480)
    before = dbfacts.precious_fingerprint(db)
    run(db, "DELETE FROM projection_thread_messages WHERE rowid % 4 = 0")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(db)) == [
        "projection_thread_messages lost 120 of 480 rows"]


def test_v2_migration_that_drops_v2_rows_is_named(tmp_path):
    v2 = import_into_v2(v1_database(tmp_path / "state.sqlite"), tmp_path / "statev2.sqlite")
    before = dbfacts.precious_fingerprint(v2)
    run(v2, "DELETE FROM orchestration_v2_projection_messages WHERE message_id IN "
            "(SELECT message_id FROM orchestration_v2_projection_messages ORDER BY message_id LIMIT 12)")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(v2)) == [
        "orchestration_v2_projection_messages lost 12 of 128 rows"]


def test_a_run_finishing_is_not_a_loss(tmp_path):
    """A run's status and a streamed item's payload change in place: not history lost."""
    v2 = import_into_v2(v1_database(tmp_path / "state.sqlite"), tmp_path / "statev2.sqlite")
    before = dbfacts.precious_fingerprint(v2)
    run(v2, "UPDATE orchestration_v2_projection_runs SET status = 'completed'")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(v2)) == []


def test_import_that_loses_frozen_v1_tables_is_named_as_the_import(tmp_path):
    v1 = v1_database(tmp_path / "state.sqlite")
    before = dbfacts.precious_fingerprint(v1)
    v2 = import_into_v2(v1, tmp_path / "statev2.sqlite")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(v2), across_import=True) == []
    run(v2, "DELETE FROM projection_thread_messages WHERE message_id IN ('m1', 'm2', 'm3', 'm4')")
    run(v2, "DROP TABLE projection_threads")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(v2), across_import=True) == [
        "V1 -> V2 import lost 4 of 48 rows of the frozen V1 table projection_thread_messages",
        "V1 -> V2 import dropped the frozen V1 table projection_threads (4 rows)"]


def test_import_that_rewrites_frozen_v1_history_is_named(tmp_path):
    v1 = v1_database(tmp_path / "state.sqlite")
    before = dbfacts.precious_fingerprint(v1)
    v2 = import_into_v2(v1, tmp_path / "statev2.sqlite")
    run(v2, "UPDATE projection_thread_messages SET text = 'lost' WHERE message_id = 'm7'")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(v2), across_import=True) == [
        "V1 -> V2 import kept 48 rows of the frozen V1 table projection_thread_messages but changed their "
        "history columns"]


def test_import_must_carry_every_v1_thread_and_message_into_the_v2_tables(tmp_path):
    v1 = v1_database(tmp_path / "state.sqlite")
    v2 = import_into_v2(v1, tmp_path / "statev2.sqlite")
    assert dbfacts.import_losses(v1, v2) == []
    run(v2, "DELETE FROM orchestration_v2_projection_messages WHERE message_id IN ('m1', 'm2', 'm3', 'm4')")
    run(v2, "INSERT INTO orchestration_v2_projection_messages VALUES (NULL, 'v2t', 'user', 'keyless')")
    assert dbfacts.import_losses(v1, v2) == ["V1 -> V2 import lost 4 of 48 projection_thread_messages rows"]
    nothing = import_into_v2(v1, tmp_path / "not-carried.sqlite", carry=False)
    assert dbfacts.import_losses(v1, nothing) == [
        "V1 -> V2 import lost 4 of 4 projection_threads rows",
        "V1 -> V2 import lost 48 of 48 projection_thread_messages rows"]


def test_timestamps_repaired_by_a_migration_are_not_a_loss(tmp_path):
    """Migration 60 rewrites non-canonical timestamps on both sides of the import."""
    v1 = v1_database(tmp_path / "state.sqlite")
    before = dbfacts.precious_fingerprint(v1)
    run(v1, "UPDATE projection_threads SET created_at = '2026-01-01T00:00:00.000Z'")
    assert dbfacts.describe_losses(before, dbfacts.precious_fingerprint(v1)) == []


def test_live_database_is_the_file_the_build_opens(tmp_path):
    userdata = tmp_path / "userdata"
    userdata.mkdir()
    assert dbfacts.live_database_in(userdata) is None
    (userdata / "statev2.sqlite").mkdir()  # a directory of that name is no database
    assert dbfacts.live_database_in(userdata) is None
    v1_database(userdata / "state.sqlite")
    assert dbfacts.live_database_in(userdata) == userdata / "state.sqlite"
    (userdata / "statev2.sqlite").rmdir()
    import_into_v2(userdata / "state.sqlite", userdata / "statev2.sqlite")
    assert dbfacts.live_database_in(userdata) == userdata / "statev2.sqlite"


def test_layout_is_read_from_content_not_name(tmp_path):
    v1 = v1_database(tmp_path / "statev2-prebump-0.0.46-x.sqlite")
    v2 = import_into_v2(v1, tmp_path / "state-prebump-0.0.46-x.sqlite")
    assert dbfacts.layout_of_database(v1) == "v1"
    assert dbfacts.layout_of_database(v2) == "v2"


def test_migration_level_and_integrity(tmp_path):
    v1 = v1_database(tmp_path / "state.sqlite", level=33)
    assert dbfacts.migration_level(import_into_v2(v1, tmp_path / "statev2.sqlite", level=60)) == 60
    assert dbfacts.migration_level(v1) == 33
    assert dbfacts.integrity_problems(v1) == []


def test_content_fingerprint_sees_any_write_and_not_a_read(tmp_path):
    db = v1_database(tmp_path / "state.sqlite")
    first = dbfacts.content_fingerprint(db)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("SELECT COUNT(*) FROM projection_threads").fetchone()
    assert dbfacts.content_fingerprint(db) == first
    run(db, "INSERT INTO auth_sessions VALUES ('s2', 'someone')")  # not precious, still a write
    assert dbfacts.content_fingerprint(db) != first


def test_content_fingerprint_reads_committed_wal_content(tmp_path):
    db = v1_database(tmp_path / "state.sqlite")
    first = dbfacts.content_fingerprint(db)
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("UPDATE projection_threads SET title = 'renamed' WHERE thread_id = 't1'")
        writer.commit()
        assert (tmp_path / "state.sqlite-wal").stat().st_size > 0
        assert dbfacts.content_fingerprint(db) != first
    finally:
        writer.close()
