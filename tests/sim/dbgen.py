"""The populated-database generator: a t3 user's databases at a given schema level.

make_database() writes a V1 `state.sqlite`; make_v2_user() writes what a V2 user
really has: the `state.sqlite` frozen at the import and the `statev2.sqlite` made
from it by the simulator's own import, plus native V2 history; make_user() picks
by layout.

The schema comes from running the simulated t3's own migrations (t3sim), so the
generator and the simulator can never disagree about a table. Rows are what a
real user's database holds: threads with messages, one provider session per
thread (optionally with an agent turn in flight), auth sessions and pairing
links. `target_bytes` pads message text until the file reaches about that size
(benchmarks go up to ~1 GB; a real one reaches ~1.1 GB).

precious_fingerprint() summarises the tables that must never lose history, so a
test can say "the migration kept every message" in one comparison.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .t3pkg import t3sim

# Table -> (key column, precious columns). Later migrations add columns (pinned,
# model, ...); only these are history, so a good migration keeps the fingerprint.
PRECIOUS_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "projection_threads": (
        "thread_id", ("thread_id", "project_id", "title", "created_at", "updated_at", "deleted_at")),
    "projection_thread_messages": (
        "message_id", ("message_id", "thread_id", "turn_id", "role", "text", "created_at")),
    "projection_thread_sessions": (
        "thread_id", ("thread_id", "status", "provider_name", "active_turn_id", "last_error", "updated_at")),
}

# The orchestration_v2_* tables a V2 build writes (key column(s), precious columns).
PRECIOUS_V2_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "orchestration_v2_projection_threads": (
        "thread_id", ("thread_id", "project_id", "title", "created_at", "archived_at", "deleted_at", "payload_json")),
    "orchestration_v2_projection_runs": (
        "run_id", ("run_id", "thread_id", "ordinal", "status", "started_at", "completed_at")),
    "orchestration_v2_projection_messages": (
        "message_id", ("message_id", "thread_id", "run_ordinal", "role", "text", "created_at")),
    "orchestration_v2_projection_turn_items": (
        "turn_item_id", ("turn_item_id", "thread_id", "type", "status", "ordinal", "payload_json")),
    "orchestration_v2_projection_provider_threads": (
        "thread_id, provider", ("thread_id", "provider", "provider_thread_id")),
    "orchestration_v2_legacy_imports": (
        "thread_id", ("thread_id", "transcript_imported_at", "history_repair_version", "last_error")),
    "orchestration_v2_events": ("sequence", ("event_id", "thread_id", "event_type", "occurred_at", "payload_json")),
}
ALL_PRECIOUS_TABLES = {**PRECIOUS_TABLES, **PRECIOUS_V2_TABLES}

MIN_SCHEMA_LEVEL = 4  # the three projection tables exist from migration 4
AUTH_LEVEL = 26  # both auth tables exist from migration 26
SCOPES_LEVEL = 31  # AuthAuthorizationScopes: `scopes` replaces `role`
_BATCH = 2000  # rows per executemany
_MAX_MESSAGE_BYTES = 16 * 1024  # padding beyond this adds messages instead of growing them
_PAD_POOL_SIZE = 64


def _when(updated_at: str | datetime) -> datetime:
    if isinstance(updated_at, datetime):
        return updated_at.astimezone(timezone.utc)
    now = datetime.now(timezone.utc)
    if updated_at == "recent":
        return now - timedelta(seconds=5)
    if updated_at == "old":
        return now - timedelta(days=7)
    raise ValueError(f"updated_at must be 'old', 'recent' or a datetime, not {updated_at!r}")


def make_database(path: Path | str, schema_level: int, *, threads: int = 3, messages_per_thread: int = 10,
                  sessions: int = 2, pairing_links: int = 2, in_flight: bool = False,
                  updated_at: str | datetime = "old", target_bytes: int | None = None,
                  archived_threads: int = 0) -> dict:
    """Create a populated state.sqlite at `path` (which must not exist yet).

    threads, messages_per_thread: projection rows (each thread also gets a
      provider session row in projection_thread_sessions);
    sessions, pairing_links: auth_sessions / auth_pairing_links rows, live (ignored
      below schema level 26, where the auth tables do not exist yet);
    in_flight: the first thread has an agent turn running (active_turn_id set,
      status "running", its last message still streaming);
    updated_at: when threads and provider sessions last changed: "old" (7 days ago),
      "recent" (5 s ago) or a datetime;
    target_bytes: pad message text (and add messages when 16 KiB each is not
      enough) until the file is about this size;
    archived_threads: the last N threads are archived (deleted_at set), history
      some users have and others do not.

    Returns facts: {"path", "schema_level", "counts": {table: rows}, "bytes",
    "active_turns": {thread_id: turn_id}}.
    """
    path = Path(path)
    if not MIN_SCHEMA_LEVEL <= schema_level <= t3sim.LATEST_SCHEMA_LEVEL:
        raise ValueError(f"schema_level must be {MIN_SCHEMA_LEVEL}..{t3sim.LATEST_SCHEMA_LEVEL}")
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if threads < 1 and in_flight:
        raise ValueError("in_flight needs at least one thread")

    text_bytes, messages_per_thread = _message_plan(threads, messages_per_thread, target_bytes)
    stamp = t3sim.iso_z(_when(updated_at))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Bulk-load speed: no journal and no fsync while building a file nobody else
        # sees yet; it is switched to WAL (as t3 keeps it) once complete.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        t3sim.run_migrations(conn, schema_level)
        conn.execute("BEGIN")
        active_turns = _insert_projection(conn, threads, messages_per_thread, text_bytes, in_flight, stamp)
        if archived_threads:
            conn.execute("UPDATE projection_threads SET deleted_at = updated_at WHERE thread_id IN (SELECT thread_id"
                         " FROM projection_threads ORDER BY thread_id DESC LIMIT ?)", (archived_threads,))
        if schema_level >= AUTH_LEVEL:
            _insert_auth(conn, schema_level, sessions, pairing_links)
        conn.execute("COMMIT")
        counts = {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                  for table in _tables(conn)}
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    return {"path": str(path), "schema_level": schema_level, "counts": counts,
            "bytes": path.stat().st_size, "active_turns": active_turns}


def _message_plan(threads: int, messages_per_thread: int, target_bytes: int | None) -> tuple[int | None, int]:
    """(padded text size or None for natural text, messages per thread) for a target size."""
    if not target_bytes or threads < 1:
        return None, messages_per_thread
    # ~2% of a page goes to row headers, keys and b-tree slack at these row sizes.
    wanted_text = int(target_bytes * 0.97)
    per_message = wanted_text // max(1, threads * messages_per_thread)
    if per_message > _MAX_MESSAGE_BYTES:
        messages_per_thread = -(-wanted_text // (threads * _MAX_MESSAGE_BYTES))
        per_message = wanted_text // (threads * messages_per_thread)
    return max(per_message, 1), messages_per_thread


def _insert_projection(conn: sqlite3.Connection, threads: int, messages_per_thread: int,
                       text_bytes: int | None, in_flight: bool, stamp: str) -> dict[str, str]:
    base = datetime.fromisoformat(stamp.replace("Z", "+00:00")) - timedelta(hours=1)
    rng = random.Random(1)  # the same arguments give the same rows
    pad_pool = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz      \n", k=_MAX_MESSAGE_BYTES))
                for _ in range(_PAD_POOL_SIZE)] if text_bytes else []
    active_turns: dict[str, str] = {}
    thread_rows, session_rows = [], []
    for t in range(threads):
        thread_id = f"thread-{t:06d}"
        running = in_flight and t == 0
        thread_rows.append((thread_id, f"project-{t % 3:03d}", f"Thread {t}: refactor module {t}",
                            t3sim.iso_z(base), stamp, None))
        active_turn = f"turn-{t:06d}-{(messages_per_thread - 1) // 2:06d}" if running else None
        if running:
            active_turns[thread_id] = active_turn
        session_rows.append((thread_id, "running" if running else "ready", "codex", active_turn, None, stamp))
    conn.executemany("INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at,"
                     " deleted_at) VALUES (?, ?, ?, ?, ?, ?)", thread_rows)
    conn.executemany("INSERT INTO projection_thread_sessions (thread_id, status, provider_name, active_turn_id,"
                     " last_error, updated_at) VALUES (?, ?, ?, ?, ?, ?)", session_rows)

    def message_rows():
        for t in range(threads):
            for m in range(messages_per_thread):
                message_id = f"msg-{t:06d}-{m:06d}"
                role = "user" if m % 2 == 0 else "assistant"
                text = f"[{message_id}] {role} message {m} of thread {t}."
                if text_bytes:
                    text = (text + " " + pad_pool[(t * messages_per_thread + m) % _PAD_POOL_SIZE])[:text_bytes]
                created = t3sim.iso_z(base + timedelta(seconds=m))
                yield (message_id, f"thread-{t:06d}", f"turn-{t:06d}-{m // 2:06d}", role, text, created)

    insert = ("INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text, created_at)"
              " VALUES (?, ?, ?, ?, ?, ?)")
    batch = []
    for row in message_rows():
        batch.append(row)
        if len(batch) >= _BATCH:
            conn.executemany(insert, batch)
            batch.clear()
    conn.executemany(insert, batch)

    if active_turns and _has_table(conn, "projection_turns"):
        conn.executemany("INSERT INTO projection_turns (turn_id, thread_id, status, started_at) VALUES (?, ?, ?, ?)",
                         [(turn, thread, "running", stamp) for thread, turn in active_turns.items()])
    if active_turns and _has_column(conn, "projection_thread_messages", "is_streaming"):
        conn.executemany("UPDATE projection_thread_messages SET is_streaming = 1 WHERE turn_id = ? AND role = ?",
                         [(turn, "assistant") for turn in active_turns.values()])
    return active_turns


def _insert_auth(conn: sqlite3.Connection, schema_level: int, sessions: int, pairing_links: int) -> None:
    now = datetime.now(timezone.utc)
    grant_column = "scopes" if schema_level >= SCOPES_LEVEL else "role"
    grant = json.dumps(list(t3sim.OWNER_SCOPES)) if grant_column == "scopes" else t3sim.OWNER_ROLE
    issued, expires = t3sim.iso_z(now - timedelta(days=1)), t3sim.iso_z(now + timedelta(days=29))
    conn.executemany(
        f"INSERT INTO auth_sessions (session_id, subject, {grant_column}, method, client_label, issued_at,"
        " expires_at, last_connected_at) VALUES (?, 'owner', ?, ?, 'browser', ?, ?, ?)",
        [(f"session-{i:04d}-{os.urandom(8).hex()}", grant, t3sim.SESSION_METHOD, issued, expires, issued)
         for i in range(sessions)])
    conn.executemany(
        f"INSERT INTO auth_pairing_links (id, credential, method, {grant_column}, subject, label, created_at,"
        " expires_at) VALUES (?, ?, 'one-time-token', ?, 'owner', 'dbgen', ?, ?)",
        [(f"link-{i:04d}", t3sim.new_credential(), grant, t3sim.iso_z(now), t3sim.iso_z(now + timedelta(minutes=5)))
         for i in range(pairing_links)])


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _has_table(conn: sqlite3.Connection, table: str) -> bool:
    return table in _tables(conn)


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def query(path: Path | str, sql: str, *params) -> list[tuple]:
    """The rows one statement gives on a database file, on a connection of its own (closed after)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def schema_level(path: Path | str) -> int:
    """The highest migration recorded in a state database."""
    conn = sqlite3.connect(path)
    try:
        return t3sim.recorded_schema_level(conn)
    finally:
        conn.close()


def table_counts(path: Path | str) -> dict[str, int]:
    """Row count of every table in a database."""
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _tables(conn)}
    finally:
        conn.close()


def precious_fingerprint(path: Path | str, tables: dict = PRECIOUS_TABLES) -> dict[str, tuple[int, str]]:
    """table -> (row count, SHA-256 over the rows' precious columns, ordered by key).

    Compare before/after: equal means no history row was lost or changed. Only the
    precious columns count, so a migration that adds a column keeps the fingerprint.
    A missing table shows as (0, "missing"). `tables`: PRECIOUS_TABLES (the V1 ones,
    also frozen inside statev2), PRECIOUS_V2_TABLES or ALL_PRECIOUS_TABLES.
    """
    conn = sqlite3.connect(path)
    try:
        present = set(_tables(conn))
        result = {}
        for table, (key, columns) in tables.items():
            if table not in present:
                result[table] = (0, "missing")
                continue
            digest, count = hashlib.sha256(), 0
            for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {key}"):
                for value in row:
                    # Type tag and length prefix: no two different rows hash alike.
                    data = b"" if value is None else str(value).encode()
                    digest.update(b"%s%d:" % (type(value).__name__.encode(), len(data)))
                    digest.update(data)
                count += 1
            result[table] = (count, digest.hexdigest())
        return result
    finally:
        conn.close()


# --------------------------------------------------------------------- V2 users

V2_MIN_SCHEMA_LEVEL = 56  # the import (56) and every V2 table exist from here


def make_v2_user(userdata: Path | str, schema_level: int = 60, *, threads: int = 3, messages_per_thread: int = 10,
                 sessions: int = 2, pairing_links: int = 2, archived_threads: int = 0,
                 target_bytes: int | None = None, v1_schema_level: int = t3sim.LATEST_SCHEMA_LEVEL,
                 v2_threads: int = 2, runs_per_thread: int = 2, in_flight: bool = False,
                 updated_at: str | datetime = "old") -> dict:
    """A V2 user's `userdata/`: state.sqlite frozen at the import, and statev2.sqlite.

    The V1 part (threads, messages_per_thread, sessions, pairing_links,
    archived_threads, target_bytes; at v1_schema_level) is make_database's, last
    touched a week ago and idle, as a file frozen at the import is. statev2.sqlite
    is made from it by the simulator's own import (t3sim.import_v1_state) at
    `schema_level`, then gets native V2 history through the server's own writers:
    v2_threads threads with runs_per_thread runs each (a user message, an assistant
    reply and a turn item per run). in_flight: the first V2 thread's newest run is
    still running (its turn item streaming). updated_at: when the V2 history last
    changed ("old", "recent" or a datetime).

    Returns {"path" (statev2), "v1" (make_database's facts), "schema_level",
    "counts" (statev2's tables), "in_flight_runs": {thread_id: ordinal}}.
    """
    userdata = Path(userdata)
    if userdata.name != "userdata":
        raise ValueError(f"{userdata} is not a t3 base dir's userdata/ directory")
    if not V2_MIN_SCHEMA_LEVEL <= schema_level <= t3sim.LATEST_V2_SCHEMA_LEVEL:
        raise ValueError(f"a V2 schema_level must be {V2_MIN_SCHEMA_LEVEL}..{t3sim.LATEST_V2_SCHEMA_LEVEL}")
    if in_flight and (v2_threads < 1 or runs_per_thread < 1):
        raise ValueError("in_flight needs at least one V2 thread with a run")
    v2_path = userdata / t3sim.V2_NAME
    if v2_path.exists():
        raise FileExistsError(v2_path)
    v1 = make_database(userdata / t3sim.V1_NAME, v1_schema_level, threads=threads,
                       messages_per_thread=messages_per_thread, sessions=sessions, pairing_links=pairing_links,
                       archived_threads=archived_threads, target_bytes=target_bytes, updated_at="old")
    build = t3sim.Build("dbgen", {"layout": "v2", "schema_level": schema_level})
    t3sim.import_v1_state(build, t3sim.StateDir(str(userdata.parent), "v2"), lambda level, message: None)

    last = _when(updated_at)
    in_flight_runs: dict[str, int] = {}
    conn = t3sim.connect_state_db(str(v2_path))
    try:
        def write():
            for t in range(v2_threads):
                thread_id = f"v2-thread-{t:06d}"
                first = last - timedelta(minutes=runs_per_thread + 1)
                t3sim.v2_create_thread(conn, thread_id, f"V2 thread {t}: port module {t}", f"project-{t % 3:03d}",
                                       t3sim.iso_z(first))
                for r in range(runs_per_thread):
                    started = t3sim.iso_z(last - timedelta(minutes=runs_per_thread - r, seconds=30))
                    ended = t3sim.iso_z(last - timedelta(minutes=runs_per_thread - r - 1))
                    ordinal = t3sim.v2_start_run(conn, thread_id, f"[{thread_id}] request {r}", started)
                    if in_flight and t == 0 and r == runs_per_thread - 1:
                        in_flight_runs[thread_id] = ordinal
                        conn.execute("UPDATE orchestration_v2_projection_runs SET updated_at = ? WHERE thread_id = ?"
                                     " AND ordinal = ?", (ended, thread_id, ordinal))
                    else:
                        t3sim.v2_complete_run(conn, thread_id, f"[{thread_id}] reply {r}", ended)
        t3sim.in_transaction(conn, write)
    finally:
        conn.close()
    return {"path": str(v2_path), "v1": v1, "schema_level": schema_level, "counts": table_counts(v2_path),
            "in_flight_runs": in_flight_runs}


def make_user(userdata: Path | str, schema_level: int, layout: str = "v1", **options) -> dict:
    """A user's databases for a build of `layout` at `schema_level`: make_database's
    state.sqlite for "v1", make_v2_user's pair for "v2" (same option names where they mean
    the same: threads, messages_per_thread, in_flight, updated_at, ...)."""
    if layout == "v2":
        return make_v2_user(userdata, schema_level, **options)
    if layout != "v1":
        raise ValueError(f"layout must be 'v1' or 'v2', not {layout!r}")
    return make_database(Path(userdata) / t3sim.V1_NAME, schema_level, **options)
