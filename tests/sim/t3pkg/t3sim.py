"""The simulated t3 (T3 Code): the `t3` CLI and server of one simulated build.

This stdlib-only module is copied into every simulated npm tarball as
`lib/t3sim.py` (the server, `serve`, as `lib/t3serve.py` beside it: a CLI start
imports only what the CLI needs) and run by the package's `bin/t3` with whatever
`python3` is on PATH. It obeys the contract in docs/t3-contract.md, including its drifts.
What differs between builds is not code but data: the package's own
`package.json` (the version) and `profile.json` (the behaviour profile, written
by tests/sim/builds.py). Keeping one code base means a bad build is bad only in
the way its profile says, never by accident.

Choices the contract leaves open, fixed here so gates and tests can agree:

* State lives in `D/userdata/`: `state.sqlite`, `settings.json`, `secrets/`,
  `logs/server.log` and `environment-id` (the contract lists environment-id among
  the userdata files, so it lives there too). The environment id is 32 random hex
  digits written once, without a newline, and never changed.
* Host-scoped cookie (`cookie_mode: "host-scoped"`, the 0.0.34 rule): for a
  loopback or unset host the name is `t3_session_<port>_<h>`, where h is the first
  12 hex digits of SHA-256 of `os.path.abspath("D/userdata")` (UTF-8). No realpath:
  the path as the server was given it, made absolute.
* Env-scoped cookie (`cookie_mode: "env-scoped"`): for a remote-reachable host the
  name is `t3_session_<h>`, h = first 12 hex of SHA-256 of the environment-id file's
  content (stripped); a valid legacy `t3_session` cookie is still accepted there.
  For loopback hosts it behaves as host-scoped.
* The session cookie's value is the `auth_sessions.session_id` of the session.
* `ready_delay` (seconds) is start-up work after the migration: the server listens only
  then (a good build that is slow to become ready; benchmarks set it).
* `crash_at_start` affects `serve` only: `--version` and the pairing CLI still
  work, as they would for a build whose server crashes on boot.
* Builds with `sql_error_style: "code"` (the newer ones) render SQLite errors
  as `PersistenceSqlError: SQLITE(<code>) <errstr>`, without SQLite's detailed
  message, so grepping their logs for SQLite text finds nothing.

* Orchestration V2 (`layout: "v2"`): the build opens only `userdata/statev2.sqlite`;
  when it is missing, the server and the CLI alike first create it by importing
  `state.sqlite` (see import_v1_state; the V1 file is never written) or, on a fresh
  base dir, empty. A pre-V2 build never looks at statev2.sqlite.
* History the server writes (`POST /api/threads` starts a thread with its agent run
  in flight, `POST /api/threads/<id>/complete` ends it; both need a session) goes to
  the orchestration_v2_* tables on V2 builds and the projection_* tables on V1 ones.

No environment knobs: everything a test needs is a command-line flag or file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sqlite3
import sys
import threading
from datetime import datetime, timedelta, timezone

CREDENTIAL_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CREDENTIAL_LENGTH = 12
SESSION_LIFETIME = timedelta(days=30)
LEGACY_COOKIE_NAME = "t3_session"
DEFAULT_PORT = 3773
SESSION_METHOD = "browser-session-cookie"
OWNER_ROLE = "owner"
OWNER_SCOPES = ("owner",)

# The profile a build runs when its profile.json leaves a field out. builds.py
# writes every field, so these only matter for hand-made package directories.
DEFAULT_PROFILE = {
    "name": "default",
    "schema_level": 33,
    "auth_shape": "scopes",  # "role" (up to 0.0.24) or "scopes" (0.0.25 on)
    "exchange_path": "/api/auth/browser-session",
    "cookie_mode": "classic",  # "classic" | "host-scoped" | "env-scoped"
    "sets_cookie": True,
    "migration_variants": {},  # {"33": "fails-populated"}: replace a migration body
    "never_ready": False,
    "reported_version": None,  # what `--version` claims, when it lies
    "crash_at_start": False,
    "sql_error_style": "message",  # "message" | "code"
    "layout": "v1",  # "v1": state.sqlite | "v2": statev2.sqlite, imported from state.sqlite once
    "writes_v1_state": False,  # a bad V2 build that keeps writing state.sqlite after the import
    "ready_delay": 0.0,  # seconds of start-up work after migrating, before the server listens
}


# --------------------------------------------------------------------------
# Time helpers: every timestamp t3 stores is ISO 8601 UTC with milliseconds and Z.

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso_z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_ttl(text: str) -> timedelta:
    """`5m`, `30s`, `2h`, `1d` (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    unit = text[-1:] if text[-1:] in units else "s"
    number = text[:-1] if text[-1:] in units else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid duration {text!r} (expected e.g. 30s, 5m, 2h)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return timedelta(seconds=value * units[unit])


# --------------------------------------------------------------------------
# Migrations. Numbered like t3's Effect SQL migrator: every migration above the
# highest recorded id runs, all in one transaction.

class Migration:
    """One numbered migration. (A plain class, not a dataclass: every CLI start imports this
    module, and dataclasses costs more to import than the rest of what the CLI needs.)"""

    __slots__ = ("id", "name", "statements")

    def __init__(self, id: int, name: str, statements: tuple[str, ...]) -> None:  # noqa: A002 (t3's own word)
        self.id, self.name, self.statements = id, name, statements

    def __repr__(self) -> str:
        return f"Migration({self.id}, {self.name!r})"

    @property
    def label(self) -> str:
        return f"{self.id}_{self.name}"


def _auth_tables(grant_column: str) -> tuple[str, ...]:
    """The two auth tables; `grant_column` is `role TEXT` before 31, `scopes` from 31."""
    return (
        f"""CREATE TABLE auth_pairing_links (
            id TEXT PRIMARY KEY,
            credential TEXT NOT NULL UNIQUE,
            method TEXT NOT NULL,
            {grant_column} NOT NULL,
            subject TEXT NOT NULL,
            label TEXT,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            consumed_at TEXT,
            revoked_at TEXT)""",
        f"""CREATE TABLE auth_sessions (
            session_id TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            {grant_column} NOT NULL,
            method TEXT NOT NULL,
            client_label TEXT,
            issued_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            last_connected_at TEXT,
            revoked_at TEXT)""",
    )


_AUTH_INDEXES = (
    "CREATE INDEX idx_auth_sessions_subject ON auth_sessions(subject)",
    "CREATE INDEX idx_auth_pairing_links_expires_at ON auth_pairing_links(expires_at)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ProjectionProjects", ("""CREATE TABLE projection_projects (
        project_id TEXT PRIMARY KEY, title TEXT NOT NULL, workspace_root TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT)""",)),
    Migration(2, "ProjectionThreads", ("""CREATE TABLE projection_threads (
        thread_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT)""",)),
    Migration(3, "ProjectionThreadMessages", ("""CREATE TABLE projection_thread_messages (
        message_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL REFERENCES projection_threads(thread_id),
        turn_id TEXT, role TEXT NOT NULL, text TEXT NOT NULL, created_at TEXT NOT NULL)""",)),
    Migration(4, "ProjectionThreadSessions", ("""CREATE TABLE projection_thread_sessions (
        thread_id TEXT PRIMARY KEY REFERENCES projection_threads(thread_id),
        status TEXT NOT NULL, provider_name TEXT, active_turn_id TEXT, last_error TEXT,
        updated_at TEXT NOT NULL)""",)),
    Migration(5, "OrchestrationEvents", ("""CREATE TABLE orchestration_events (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
        aggregate_kind TEXT NOT NULL, stream_id TEXT NOT NULL, stream_version INTEGER NOT NULL,
        event_type TEXT NOT NULL, occurred_at TEXT NOT NULL, payload_json TEXT NOT NULL)""",)),
    Migration(6, "OrchestrationEventsStreamIndex", (
        "CREATE UNIQUE INDEX idx_orchestration_events_stream ON orchestration_events(stream_id, stream_version)",)),
    Migration(7, "ProjectionThreadMessagesThreadIndex", (
        "CREATE INDEX idx_projection_thread_messages_thread ON projection_thread_messages(thread_id, created_at)",)),
    Migration(8, "ProjectionThreadActivities", ("""CREATE TABLE projection_thread_activities (
        activity_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, turn_id TEXT, kind TEXT NOT NULL,
        summary TEXT NOT NULL, created_at TEXT NOT NULL)""",)),
    Migration(9, "ProjectionTurns", ("""CREATE TABLE projection_turns (
        turn_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, status TEXT NOT NULL,
        started_at TEXT NOT NULL, completed_at TEXT)""",)),
    Migration(10, "ProjectionPendingApprovals", ("""CREATE TABLE projection_pending_approvals (
        request_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, turn_id TEXT, status TEXT NOT NULL,
        created_at TEXT NOT NULL, resolved_at TEXT)""",)),
    Migration(11, "ProjectionCheckpoints", ("""CREATE TABLE projection_checkpoints (
        thread_id TEXT NOT NULL, turn_count INTEGER NOT NULL, checkpoint_ref TEXT NOT NULL,
        created_at TEXT NOT NULL, PRIMARY KEY (thread_id, turn_count))""",)),
    Migration(12, "ProjectionThreadsProjectIndex", (
        "CREATE INDEX idx_projection_threads_project ON projection_threads(project_id)",)),
    Migration(13, "ProjectionThreadMessagesStreaming", (
        "ALTER TABLE projection_thread_messages ADD COLUMN is_streaming INTEGER NOT NULL DEFAULT 0",)),
    Migration(14, "ProjectionThreadsModel", ("ALTER TABLE projection_threads ADD COLUMN model TEXT",)),
    Migration(15, "ProjectionThreadSessionsRuntimeMode", (
        "ALTER TABLE projection_thread_sessions ADD COLUMN runtime_mode TEXT",)),
    Migration(16, "ProviderSessionRuntime", ("""CREATE TABLE provider_session_runtime (
        thread_id TEXT PRIMARY KEY, provider_name TEXT NOT NULL, resume_cursor_json TEXT,
        updated_at TEXT NOT NULL)""",)),
    Migration(17, "ProjectionState", ("""CREATE TABLE projection_state (
        projector TEXT PRIMARY KEY, last_applied_sequence INTEGER NOT NULL, updated_at TEXT NOT NULL)""",)),
    Migration(18, "ProjectionThreadsBranch", ("ALTER TABLE projection_threads ADD COLUMN branch TEXT",)),
    Migration(19, "ProjectionThreadsWorktreePath", ("ALTER TABLE projection_threads ADD COLUMN worktree_path TEXT",)),
    Migration(20, "ProjectionTurnsThreadIndex", (
        "CREATE INDEX idx_projection_turns_thread ON projection_turns(thread_id, started_at)",)),
    Migration(21, "OrchestrationCommandReceipts", ("""CREATE TABLE orchestration_command_receipts (
        command_id TEXT PRIMARY KEY, aggregate_kind TEXT NOT NULL, aggregate_id TEXT NOT NULL,
        accepted_at TEXT NOT NULL, result_sequence INTEGER, status TEXT NOT NULL)""",)),
    Migration(22, "ProjectionThreadMessagesAttachments", (
        "ALTER TABLE projection_thread_messages ADD COLUMN attachments_json TEXT",)),
    Migration(23, "ProjectionProjectsScripts", ("ALTER TABLE projection_projects ADD COLUMN scripts_json TEXT",)),
    Migration(24, "ProjectionThreadActivitiesSequence", (
        "ALTER TABLE projection_thread_activities ADD COLUMN sequence INTEGER",)),
    Migration(25, "AuthPairingLinks", _auth_tables("role TEXT")[:1]),
    Migration(26, "AuthSessions", _auth_tables("role TEXT")[1:]),
    Migration(27, "AuthSessionsSubjectIndex", _AUTH_INDEXES[:1]),
    Migration(28, "ProjectionThreadsInteractionMode", (
        "ALTER TABLE projection_threads ADD COLUMN interaction_mode TEXT",)),
    Migration(29, "ProjectionThreadsArchivedAt", ("ALTER TABLE projection_threads ADD COLUMN archived_at TEXT",)),
    Migration(30, "AuthPairingLinksExpiryIndex", _AUTH_INDEXES[1:]),
    # Crossing 31 logs every browser out: both auth tables are dropped, not altered.
    Migration(31, "AuthAuthorizationScopes", (
        "DROP TABLE auth_pairing_links",
        "DROP TABLE auth_sessions",
        *_auth_tables("scopes TEXT"),
        *_AUTH_INDEXES,
    )),
    Migration(32, "AuthPairingLinksProofKey", (
        "ALTER TABLE auth_pairing_links ADD COLUMN proof_key_thumbprint TEXT",)),
    Migration(33, "ThreadPinned", (
        "ALTER TABLE projection_threads ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",)),
)
LATEST_SCHEMA_LEVEL = MIGRATIONS[-1].id

# Bad bodies a profile can put in place of a good migration (same id and name, as
# a real regression would ship).
MIGRATION_VARIANTS: dict[str, Migration] = {
    # Meant to copy updated_at, copies deleted_at: NULL for every live thread, so it
    # breaks the NOT NULL only when live threads exist. An empty database migrates.
    "fails-populated": Migration(33, "ThreadPinned", (
        "ALTER TABLE projection_threads ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE projection_thread_pins (
            thread_id TEXT PRIMARY KEY REFERENCES projection_threads(thread_id),
            pinned_at TEXT NOT NULL)""",
        "INSERT INTO projection_thread_pins (thread_id, pinned_at) SELECT thread_id, deleted_at FROM projection_threads",
    )),
    # Pins every live thread at its last update and archived ones at... nothing: breaks the
    # NOT NULL only for users who have archived threads. A seed without any passes.
    "fails-on-archived": Migration(33, "ThreadPinned", (
        "ALTER TABLE projection_threads ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE projection_thread_pins (
            thread_id TEXT PRIMARY KEY REFERENCES projection_threads(thread_id),
            pinned_at TEXT NOT NULL)""",
        "INSERT INTO projection_thread_pins (thread_id, pinned_at) SELECT thread_id,"
        " CASE WHEN deleted_at IS NULL THEN updated_at END FROM projection_threads",
    )),
    # A "dedupe" step gone wrong: deletes every third message and reports success.
    "drops-rows": Migration(33, "ThreadPinned", (
        "ALTER TABLE projection_threads ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",
        "DELETE FROM projection_thread_messages WHERE rowid % 3 = 0",
    )),
}


# --------------------------------------------------------------------------
# Orchestration V2 (the 0.0.46 nightlies on). A V2 build keeps its history in
# `userdata/statev2.sqlite`: on first start it copies `state.sqlite` there (read
# only: the V1 file stays byte-for-byte as it was), brings the copied V1 tables up
# to the last V1 level, then runs the V2 migrations below, whose 56 imports every V1
# thread and message into the orchestration_v2_* tables. From then on the V1 tables
# in statev2 are frozen (only auth, which also lives there, keeps changing) and new
# history goes to orchestration_v2_*. The ids continue past 50, as t3's do.

V1_NAME = "state.sqlite"
V2_NAME = "statev2.sqlite"
# A run whose status is one of these is over; any other status (queued, running,
# waiting_for_approval, ...) means a run is in flight when it is the thread's newest.
V2_RUN_FINAL_STATUSES = ("completed", "failed", "interrupted", "cancelled")
V1_IMPORT_ORIGIN = "v1_import"
_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
# Canonical t3 timestamp: milliseconds and Z. Migration 60 repairs anything else.
_CANONICAL_TS_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z"


def _repair_timestamps(table: str, column: str) -> str:
    return (f"UPDATE {table} SET {column} = strftime('%Y-%m-%dT%H:%M:%fZ', {column})"
            f" WHERE {column} IS NOT NULL AND {column} NOT GLOB '{_CANONICAL_TS_GLOB}'"
            f" AND strftime('%Y-%m-%dT%H:%M:%fZ', {column}) IS NOT NULL")


_V2_IMPORT_THREADS = (
    "INSERT INTO orchestration_v2_projection_threads (thread_id, project_id, title, default_provider, created_at,"
    " updated_at, archived_at, deleted_at, payload_json)"
    " SELECT t.thread_id, t.project_id, t.title,"
    " (SELECT s.provider_name FROM projection_thread_sessions s WHERE s.thread_id = t.thread_id),"
    " t.created_at, t.updated_at, t.archived_at, t.deleted_at,"
    f" json_object('historyOrigin', '{V1_IMPORT_ORIGIN}', 'v1ThreadId', t.thread_id)"
    " FROM projection_threads t")
_V2_IMPORT_MESSAGES = (
    "INSERT INTO orchestration_v2_projection_messages (message_id, thread_id, run_ordinal, role, text, created_at,"
    " updated_at, payload_json)"
    " SELECT m.message_id, m.thread_id, NULL, m.role, m.text, m.created_at, m.created_at,"
    f" json_object('historyOrigin', '{V1_IMPORT_ORIGIN}', 'v1TurnId', m.turn_id)"
    " FROM projection_thread_messages m")
_V2_IMPORT_LEDGER = (
    "INSERT INTO orchestration_v2_legacy_imports (thread_id, imported_at, transcript_imported_at,"
    f" history_repair_version, last_error) SELECT thread_id, {_NOW_SQL}, {_NOW_SQL}, 1, NULL FROM projection_threads")
_V2_LEGACY_IMPORTS_TABLE = """CREATE TABLE orchestration_v2_legacy_imports (
        thread_id TEXT PRIMARY KEY, imported_at TEXT NOT NULL, transcript_imported_at TEXT,
        history_repair_version INTEGER NOT NULL DEFAULT 0, last_error TEXT)"""
_V2_THREAD_PINS_TABLE = """CREATE TABLE orchestration_v2_thread_pins (
        thread_id TEXT PRIMARY KEY REFERENCES orchestration_v2_projection_threads(thread_id),
        pinned_at TEXT NOT NULL)"""

V2_MIGRATIONS: tuple[Migration, ...] = (
    Migration(50, "OrchestrationV2Events", ("""CREATE TABLE orchestration_v2_events (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, thread_id TEXT NOT NULL,
        event_type TEXT NOT NULL, occurred_at TEXT NOT NULL, payload_json TEXT NOT NULL)""",)),
    Migration(51, "OrchestrationV2ProjectionProviderThreads", (
        """CREATE TABLE orchestration_v2_projection_provider_threads (
        thread_id TEXT NOT NULL, provider TEXT NOT NULL, provider_thread_id TEXT NOT NULL,
        resume_cursor_json TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (thread_id, provider))""",)),
    Migration(52, "OrchestrationV2ProjectionRuns", ("""CREATE TABLE orchestration_v2_projection_runs (
        run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, ordinal INTEGER NOT NULL, status TEXT NOT NULL,
        provider TEXT, started_at TEXT NOT NULL, completed_at TEXT, updated_at TEXT NOT NULL, last_error TEXT,
        UNIQUE (thread_id, ordinal))""",)),
    Migration(53, "OrchestrationV2ProjectionMessages", ("""CREATE TABLE orchestration_v2_projection_messages (
        message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, run_ordinal INTEGER, role TEXT NOT NULL,
        text TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        payload_json TEXT NOT NULL DEFAULT '{}')""",)),
    Migration(54, "OrchestrationV2ProjectionTurnItems", ("""CREATE TABLE orchestration_v2_projection_turn_items (
        turn_item_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, run_ordinal INTEGER, type TEXT NOT NULL,
        status TEXT NOT NULL, ordinal INTEGER NOT NULL, updated_at TEXT NOT NULL,
        payload_json TEXT NOT NULL DEFAULT '{}')""",)),
    Migration(55, "OrchestrationV2ProjectionThreads", ("""CREATE TABLE orchestration_v2_projection_threads (
        thread_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT NOT NULL, default_provider TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, archived_at TEXT, deleted_at TEXT,
        payload_json TEXT NOT NULL DEFAULT '{}')""",)),
    # The one-way import: every V1 thread and message gets its V2 row (same ids).
    Migration(56, "OrchestrationV2LegacyImports", (
        _V2_LEGACY_IMPORTS_TABLE, _V2_IMPORT_THREADS, _V2_IMPORT_MESSAGES, _V2_IMPORT_LEDGER)),
    Migration(57, "OrchestrationV2RunsThreadIndex", (
        "CREATE INDEX idx_orchestration_v2_runs_thread ON orchestration_v2_projection_runs(thread_id, ordinal)",)),
    Migration(58, "OrchestrationV2MessagesThreadIndex", (
        "CREATE INDEX idx_orchestration_v2_messages_thread"
        " ON orchestration_v2_projection_messages(thread_id, created_at)",)),
    Migration(59, "OrchestrationV2TurnItemsThreadIndex", (
        "CREATE INDEX idx_orchestration_v2_turn_items_thread"
        " ON orchestration_v2_projection_turn_items(thread_id, ordinal)",)),
    # Both sides of the import (inside statev2): timestamps without milliseconds or Z.
    Migration(60, "RepairImportedTimestamps", tuple(_repair_timestamps(t, c) for t, c in (
        ("projection_threads", "created_at"), ("projection_threads", "updated_at"),
        ("projection_thread_messages", "created_at"), ("projection_thread_sessions", "updated_at"),
        ("orchestration_v2_projection_threads", "created_at"), ("orchestration_v2_projection_threads", "updated_at"),
        ("orchestration_v2_projection_messages", "created_at"), ("orchestration_v2_projection_messages", "updated_at"),
    ))),
    Migration(61, "OrchestrationV2ThreadsPinned", (
        "ALTER TABLE orchestration_v2_projection_threads ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",)),
    Migration(62, "OrchestrationV2ThreadPins", (
        _V2_THREAD_PINS_TABLE,
        "INSERT INTO orchestration_v2_thread_pins (thread_id, pinned_at)"
        " SELECT thread_id, updated_at FROM orchestration_v2_projection_threads WHERE pinned = 1",)),
)
LATEST_V2_SCHEMA_LEVEL = V2_MIGRATIONS[-1].id

MIGRATION_VARIANTS.update({
    # The import carries every V1 thread but only two of every three V1 messages into V2
    # (a broken batching cursor). The frozen V1 copy keeps them all; the V2 history, what
    # the user now sees, lost a third.
    "import-drops-messages": Migration(56, "OrchestrationV2LegacyImports", (
        _V2_LEGACY_IMPORTS_TABLE, _V2_IMPORT_THREADS, _V2_IMPORT_MESSAGES + " WHERE m.rowid % 3 <> 0",
        _V2_IMPORT_LEDGER)),
    # Pins copied from archived_at (NULL for every live V2 thread): an empty database
    # migrates, any database with V2 threads fails the NOT NULL and rolls back.
    "v2-fails-populated": Migration(62, "OrchestrationV2ThreadPins", (
        _V2_THREAD_PINS_TABLE,
        "INSERT INTO orchestration_v2_thread_pins (thread_id, pinned_at)"
        " SELECT thread_id, archived_at FROM orchestration_v2_projection_threads",)),
    # A "dedupe" gone wrong: every third V2 message deleted, success reported.
    "v2-drops-rows": Migration(62, "OrchestrationV2ThreadPins", (
        _V2_THREAD_PINS_TABLE,
        "INSERT INTO orchestration_v2_thread_pins (thread_id, pinned_at)"
        " SELECT thread_id, updated_at FROM orchestration_v2_projection_threads WHERE pinned = 1",
        "DELETE FROM orchestration_v2_projection_messages WHERE rowid % 3 = 0")),
})


class MigrationError(RuntimeError):
    """A migration failed; the transaction was rolled back. str() is the log line."""


def migrations_for(schema_level: int, variants: dict | None = None) -> list[Migration]:
    """The migrations a build knows, 1..schema_level, with its variant bodies in place.

    A level above the last V1 migration is a V2 build's: every V1 migration, then the
    V2 ones up to that level (only ever run on statev2.sqlite).
    """
    chosen = []
    by_id = {int(k): v for k, v in (variants or {}).items()}
    for migration in MIGRATIONS + V2_MIGRATIONS:
        if migration.id > schema_level:
            break
        if migration.id in by_id:
            variant = MIGRATION_VARIANTS[by_id[migration.id]]
            if variant.id != migration.id:
                raise ValueError(f"variant {by_id[migration.id]!r} replaces {variant.id}, not {migration.id}")
            migration = variant
        chosen.append(migration)
    return chosen


def recorded_schema_level(conn: sqlite3.Connection) -> int:
    """The highest migration id recorded in the database (0 for a new database)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'effect_sql_migrations'").fetchone()
    if not exists:
        return 0
    return conn.execute("SELECT COALESCE(MAX(migration_id), 0) FROM effect_sql_migrations").fetchone()[0]


def run_migrations(conn: sqlite3.Connection, schema_level: int, variants: dict | None = None,
                   error_style: str = "message") -> list[Migration]:
    """Apply every known migration above the recorded level, in ONE transaction.

    `conn` must be in autocommit mode (isolation_level=None) so the transaction
    here is the only one. An older build on a newer database (recorded level above
    `schema_level`) runs nothing and succeeds: it only fails later, at query time.
    Returns the migrations applied; raises MigrationError after rolling back.
    """
    conn.execute("""CREATE TABLE IF NOT EXISTS effect_sql_migrations (
        migration_id INTEGER PRIMARY KEY NOT NULL,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        name TEXT NOT NULL)""")
    conn.execute("BEGIN IMMEDIATE")  # take the write lock first: two migrators must not interleave
    try:
        current = recorded_schema_level(conn)
        pending = [m for m in migrations_for(schema_level, variants) if m.id > current]
        for migration in pending:
            try:
                for statement in migration.statements:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationError(
                    f'Migration "{migration.label}" failed: {describe_sql_error(exc, error_style)}') from exc
            conn.execute("INSERT INTO effect_sql_migrations (migration_id, created_at, name) VALUES (?, ?, ?)",
                         (migration.id, iso_z(utc_now()), migration.name))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return pending


# sqlite3_errstr() texts for the primary result codes a newer build would print.
_SQLITE_ERRSTR = {
    1: "SQL logic error", 5: "database is locked", 6: "database table is locked",
    8: "attempt to write a readonly database", 10: "disk I/O error",
    11: "database disk image is malformed", 13: "database or disk is full",
    14: "unable to open database file", 19: "constraint failed", 26: "file is not a database",
}


def describe_sql_error(exc: sqlite3.Error, style: str) -> str:
    """SQLite's message (older builds) or only `SQLITE(<code>) <errstr>` (newer builds)."""
    if style != "code":
        return str(exc)
    code = (getattr(exc, "sqlite_errorcode", None) or 1) & 0xFF
    return f"PersistenceSqlError: SQLITE({code}) {_SQLITE_ERRSTR.get(code, getattr(exc, 'sqlite_errorname', 'error'))}"


# --------------------------------------------------------------------------
# The build: version and behaviour, read from the package directory.

class Build:
    """One installed simulated build: its package.json version and profile.json."""

    def __init__(self, version: str, profile: dict, package_dir: str | None = None) -> None:
        self.version = version
        self.profile = {**DEFAULT_PROFILE, **profile}
        self.package_dir = package_dir

    @classmethod
    def load(cls, package_dir: str) -> "Build":
        with open(os.path.join(package_dir, "package.json"), encoding="utf-8") as fh:
            version = json.load(fh)["version"]
        profile_path = os.path.join(package_dir, "profile.json")
        profile = {}
        if os.path.exists(profile_path):
            with open(profile_path, encoding="utf-8") as fh:
                profile = json.load(fh)
        return cls(version, profile, package_dir)

    def __getattr__(self, field: str):
        # build.schema_level, build.cookie_mode, ...: the profile's fields.
        try:
            return self.__dict__["profile"][field]
        except KeyError:
            raise AttributeError(field) from None

    @property
    def reported_version_text(self) -> str:
        return f"t3 v{self.profile['reported_version'] or self.version}"


# --------------------------------------------------------------------------
# The state directory and its database.

class StateDir:
    """`D/userdata/` and the files t3 keeps there."""

    def __init__(self, base_dir: str, layout: str = "v1") -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.path = os.path.join(self.base_dir, "userdata")
        self.v1_path = os.path.join(self.path, V1_NAME)
        self.v2_path = os.path.join(self.path, V2_NAME)
        # The one database this build opens: a pre-V2 build never looks at statev2.sqlite.
        self.db_path = self.v2_path if layout == "v2" else self.v1_path
        self.environment_id_path = os.path.join(self.path, "environment-id")
        self.log_path = os.path.join(self.path, "logs", "server.log")

    def prepare(self) -> None:
        """Create the directory layout, settings.json and a stable environment id."""
        os.makedirs(os.path.join(self.path, "logs"), exist_ok=True)
        os.makedirs(os.path.join(self.path, "secrets"), mode=0o700, exist_ok=True)
        settings = os.path.join(self.path, "settings.json")
        if not os.path.exists(settings):
            _create_exclusively(settings, "{}\n")
        if not os.path.exists(self.environment_id_path):
            _create_exclusively(self.environment_id_path, secrets.token_hex(16))

    def environment_id(self) -> str:
        with open(self.environment_id_path, encoding="utf-8") as fh:
            return fh.read().strip()

    def connect(self) -> sqlite3.Connection:
        """A connection set up like t3's: WAL, busy_timeout=5000, foreign_keys=ON."""
        return connect_state_db(self.db_path)


def _create_exclusively(path: str, content: str) -> None:
    # O_EXCL: when the CLI and the server race to create it, the first one wins and
    # the id stays stable.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)


def connect_state_db(db_path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=5.0, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Log:
    """Log lines go to stderr and, for the server, also to userdata/logs/server.log."""

    def __init__(self, file_path: str | None = None) -> None:
        self.file_path = file_path
        self.lock = threading.Lock()

    def __call__(self, level: str, message: str) -> None:
        line = f"{iso_z(utc_now())} {level} {message}\n"
        with self.lock:
            sys.stderr.write(line)
            sys.stderr.flush()
            if self.file_path:
                try:
                    with open(self.file_path, "a", encoding="utf-8") as fh:
                        fh.write(line)
                except OSError:
                    pass  # a log file we cannot write must not stop the server


def migrate_state(build: Build, state: StateDir, log: Log) -> None:
    """Run the build's pending migrations on its database, logging like t3.

    A V2 build without a statev2.sqlite first imports state.sqlite (or starts empty).
    """
    if build.layout == "v2" and not os.path.exists(state.v2_path):
        applied = import_v1_state(build, state, log)
    else:
        conn = state.connect()
        try:
            applied = run_migrations(conn, build.schema_level, build.migration_variants, build.sql_error_style)
        finally:
            conn.close()
    if build.layout == "v2" and build.writes_v1_state:
        mirror_to_v1_state(state)
    if applied:
        log("INFO", f"Migrations ran successfully: {', '.join(m.label for m in applied)}")
    else:
        log("INFO", "Migrations ran successfully: no pending migrations")


def import_v1_state(build: Build, state: StateDir, log: Log) -> list[Migration]:
    """Create statev2.sqlite: a copy of state.sqlite (when there is one), migrated.

    The V1 file is only read (a read-only connection, so not even a checkpoint touches
    it). The copy is built under a temporary name and linked into place only once fully
    migrated: a failed import leaves no statev2.sqlite, and of a server and a CLI that
    race, the first link wins and the other uses it. Returns the migrations applied.
    """
    import urllib.parse  # here, not at the top: most CLI starts never import

    temporary = f"{state.v2_path}.import-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        target = sqlite3.connect(temporary, isolation_level=None)
        try:
            if os.path.exists(state.v1_path):
                # No -wal file: no connection has it open, nothing is pending, so it is read
                # as immutable (no -wal/-shm left behind). Otherwise read only, WAL included.
                quiet = not os.path.exists(state.v1_path + "-wal")
                source = sqlite3.connect(f"file:{urllib.parse.quote(state.v1_path)}?"
                                         + ("immutable=1" if quiet else "mode=ro"), uri=True)
                try:
                    source.backup(target)
                finally:
                    source.close()
                log("INFO", f"Importing {V1_NAME} into {V2_NAME}")
            # No WAL while it is private: the file must be whole before the link.
            target.execute("PRAGMA journal_mode = DELETE")
            target.execute("PRAGMA foreign_keys = ON")
            applied = run_migrations(target, build.schema_level, build.migration_variants, build.sql_error_style)
        finally:
            target.close()
        try:
            os.link(temporary, state.v2_path)
        except FileExistsError:
            log("INFO", f"{V2_NAME} was created meanwhile; using it")
            return []
    finally:
        for leftover in (temporary, temporary + "-journal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    connect_state_db(state.v2_path).close()  # WAL from now on, like every t3 database
    return applied


def mirror_to_v1_state(state: StateDir) -> None:
    """The `writes_v1_state` bug: a V1 projector still runs against state.sqlite after the
    import, so the file that should be frozen changes on every start."""
    if not os.path.exists(state.v1_path):
        return
    conn = connect_state_db(state.v1_path)
    try:
        conn.execute("INSERT INTO projection_state (projector, last_applied_sequence, updated_at)"
                     " VALUES ('orchestration-v1-mirror', 1, ?) ON CONFLICT (projector) DO UPDATE SET"
                     " last_applied_sequence = last_applied_sequence + 1, updated_at = excluded.updated_at",
                     (iso_z(utc_now()),))
    finally:
        conn.close()


# --------------------------------------------------------------------------
# History the server writes: a thread with a user message starts an agent run (V2) or
# turn (V1); completing it adds the assistant's reply. V2 builds write only the
# orchestration_v2_* tables; V1 builds the projection_* ones. Callers hold the
# transaction (dbgen reuses these inside its own).

def _v2_event(conn: sqlite3.Connection, thread_id: str, event_type: str, now: str, payload: dict) -> None:
    conn.execute("INSERT INTO orchestration_v2_events (event_id, thread_id, event_type, occurred_at, payload_json)"
                 " VALUES (?, ?, ?, ?, ?)", (f"evt-{secrets.token_hex(8)}", thread_id, event_type, now,
                                             json.dumps(payload)))


def v2_create_thread(conn: sqlite3.Connection, thread_id: str, title: str, project_id: str, now: str,
                     provider: str = "codex") -> None:
    conn.execute("INSERT INTO orchestration_v2_projection_threads (thread_id, project_id, title, default_provider,"
                 " created_at, updated_at, payload_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (thread_id, project_id, title, provider, now, now, json.dumps({"historyOrigin": "v2"})))
    conn.execute("INSERT INTO orchestration_v2_projection_provider_threads (thread_id, provider, provider_thread_id,"
                 " updated_at) VALUES (?, ?, ?, ?)", (thread_id, provider, f"{provider}-{thread_id}", now))
    _v2_event(conn, thread_id, "thread.created", now, {"title": title, "projectId": project_id})


def v2_start_run(conn: sqlite3.Connection, thread_id: str, text: str, now: str, provider: str = "codex") -> int:
    """A new run (the thread's newest, status running) for a user message; its ordinal."""
    ordinal = conn.execute("SELECT COALESCE(MAX(ordinal), 0) + 1 FROM orchestration_v2_projection_runs"
                           " WHERE thread_id = ?", (thread_id,)).fetchone()[0]
    item = conn.execute("SELECT COALESCE(MAX(ordinal), 0) + 1 FROM orchestration_v2_projection_turn_items"
                        " WHERE thread_id = ?", (thread_id,)).fetchone()[0]
    conn.execute("INSERT INTO orchestration_v2_projection_runs (run_id, thread_id, ordinal, status, provider,"
                 " started_at, updated_at) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                 (f"run-{thread_id}-{ordinal:04d}", thread_id, ordinal, provider, now, now))
    conn.execute("INSERT INTO orchestration_v2_projection_messages (message_id, thread_id, run_ordinal, role, text,"
                 " created_at, updated_at) VALUES (?, ?, ?, 'user', ?, ?, ?)",
                 (f"msg-{thread_id}-{ordinal:04d}-user", thread_id, ordinal, text, now, now))
    # The assistant's reply streams into a turn item, rewritten in place until the run ends.
    conn.execute("INSERT INTO orchestration_v2_projection_turn_items (turn_item_id, thread_id, run_ordinal, type,"
                 " status, ordinal, updated_at, payload_json) VALUES (?, ?, ?, 'assistant_message', 'streaming',"
                 " ?, ?, ?)", (f"item-{thread_id}-{item:04d}", thread_id, ordinal, item, now, json.dumps({"text": ""})))
    conn.execute("UPDATE orchestration_v2_projection_threads SET updated_at = ? WHERE thread_id = ?", (now, thread_id))
    _v2_event(conn, thread_id, "run.started", now, {"ordinal": ordinal})
    return ordinal


def v2_complete_run(conn: sqlite3.Connection, thread_id: str, reply: str, now: str) -> int | None:
    """End the thread's newest run if it is in flight; its ordinal, or None."""
    row = conn.execute("SELECT ordinal, status FROM orchestration_v2_projection_runs WHERE thread_id = ?"
                       " ORDER BY ordinal DESC LIMIT 1", (thread_id,)).fetchone()
    if row is None or row[1] in V2_RUN_FINAL_STATUSES:
        return None
    ordinal = row[0]
    conn.execute("UPDATE orchestration_v2_projection_runs SET status = 'completed', completed_at = ?, updated_at = ?"
                 " WHERE thread_id = ? AND ordinal = ?", (now, now, thread_id, ordinal))
    conn.execute("UPDATE orchestration_v2_projection_turn_items SET status = 'completed', updated_at = ?,"
                 " payload_json = ? WHERE thread_id = ? AND run_ordinal = ?",
                 (now, json.dumps({"text": reply}), thread_id, ordinal))
    conn.execute("INSERT INTO orchestration_v2_projection_messages (message_id, thread_id, run_ordinal, role, text,"
                 " created_at, updated_at) VALUES (?, ?, ?, 'assistant', ?, ?, ?)",
                 (f"msg-{thread_id}-{ordinal:04d}-assistant", thread_id, ordinal, reply, now, now))
    conn.execute("UPDATE orchestration_v2_projection_threads SET updated_at = ? WHERE thread_id = ?", (now, thread_id))
    _v2_event(conn, thread_id, "run.completed", now, {"ordinal": ordinal})
    return ordinal


def v1_start_turn(conn: sqlite3.Connection, thread_id: str, title: str, project_id: str, text: str,
                  now: str) -> str:
    """A V1 thread (created if new) with a user message and its turn in flight; the turn id."""
    turn_id = f"turn-{thread_id}-{secrets.token_hex(4)}"
    conn.execute("INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at)"
                 " VALUES (?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET updated_at = excluded.updated_at",
                 (thread_id, project_id, title, now, now))
    conn.execute("INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text, created_at)"
                 " VALUES (?, ?, ?, 'user', ?, ?)", (f"msg-{turn_id}-user", thread_id, turn_id, text, now))
    conn.execute("INSERT INTO projection_thread_sessions (thread_id, status, provider_name, active_turn_id,"
                 " updated_at) VALUES (?, 'running', 'codex', ?, ?) ON CONFLICT (thread_id) DO UPDATE SET"
                 " status = 'running', active_turn_id = excluded.active_turn_id, updated_at = excluded.updated_at",
                 (thread_id, turn_id, now))
    return turn_id


def v1_complete_turn(conn: sqlite3.Connection, thread_id: str, reply: str, now: str) -> str | None:
    row = conn.execute("SELECT active_turn_id FROM projection_thread_sessions WHERE thread_id = ?",
                       (thread_id,)).fetchone()
    if row is None or not row[0]:
        return None
    conn.execute("INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text, created_at)"
                 " VALUES (?, ?, ?, 'assistant', ?, ?)", (f"msg-{row[0]}-assistant", thread_id, row[0], reply, now))
    conn.execute("UPDATE projection_thread_sessions SET status = 'ready', active_turn_id = NULL, updated_at = ?"
                 " WHERE thread_id = ?", (now, thread_id))
    conn.execute("UPDATE projection_threads SET updated_at = ? WHERE thread_id = ?", (now, thread_id))
    return row[0]


def in_transaction(conn: sqlite3.Connection, work):
    """Run work() inside BEGIN IMMEDIATE ... COMMIT (rolled back on any error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


# --------------------------------------------------------------------------
# Authentication: pairing links, sessions and the session cookie's name.

def new_credential() -> str:
    return "".join(secrets.choice(CREDENTIAL_ALPHABET) for _ in range(CREDENTIAL_LENGTH))


def create_pairing_link(conn: sqlite3.Connection, build: Build, ttl: timedelta, label: str | None = None) -> dict:
    """Insert a one-time pairing link; return the JSON object the CLI prints.

    Role builds write `role`, scopes builds write `scopes`: on a database of the
    other shape SQLite itself refuses (`table ... has no column named role`).
    """
    now = utc_now()
    link_id = secrets.token_hex(8)
    credential = new_credential()
    expires_at = iso_z(now + ttl)
    grant_column, grant_value, grant_json = _grant(build)
    conn.execute(
        f"INSERT INTO auth_pairing_links (id, credential, method, {grant_column}, subject, label, created_at, expires_at)"
        " VALUES (?, ?, 'one-time-token', ?, 'owner', ?, ?, ?)",
        (link_id, credential, grant_value, label, iso_z(now), expires_at))
    return {"id": link_id, "credential": credential, "expiresAt": expires_at, grant_column: grant_json}


def _grant(build: Build) -> tuple[str, str, object]:
    """(column, stored value, JSON value) of what a credential grants in this build."""
    if build.auth_shape == "role":
        return "role", OWNER_ROLE, OWNER_ROLE
    return "scopes", json.dumps(list(OWNER_SCOPES)), list(OWNER_SCOPES)


def consume_credential(conn: sqlite3.Connection, build: Build, credential: str,
                       client_label: str | None) -> dict | None:
    """Trade a live pairing credential for a new session, atomically.

    Returns the session (`session_id`, `expires_at`, `grant`), or None when the
    credential is unknown, expired, already consumed or revoked.
    """
    now = utc_now()
    conn.execute("BEGIN IMMEDIATE")
    try:
        link = conn.execute("SELECT * FROM auth_pairing_links WHERE credential = ?", (credential,)).fetchone()
        if link is None or link["consumed_at"] or link["revoked_at"] or parse_iso_z(link["expires_at"]) <= now:
            conn.execute("ROLLBACK")
            return None
        conn.execute("UPDATE auth_pairing_links SET consumed_at = ? WHERE id = ?", (iso_z(now), link["id"]))
        grant_column, grant_value, grant_json = _grant(build)
        if grant_column in link.keys():  # keep what the link granted
            grant_value = link[grant_column]
            grant_json = json.loads(grant_value) if grant_column == "scopes" else grant_value
        session_id = secrets.token_urlsafe(32)
        expires_at = iso_z(now + SESSION_LIFETIME)
        conn.execute(
            f"INSERT INTO auth_sessions (session_id, subject, {grant_column}, method, client_label, issued_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, link["subject"], grant_value, SESSION_METHOD, client_label, iso_z(now), expires_at))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return {"session_id": session_id, "expires_at": expires_at, "grant": (grant_column, grant_json)}


def live_session(conn: sqlite3.Connection, session_id: str) -> sqlite3.Row | None:
    row = conn.execute("SELECT * FROM auth_sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None or row["revoked_at"] or parse_iso_z(row["expires_at"]) <= utc_now():
        return None
    return row


def is_remote_reachable(host: str | None) -> bool:
    """0.0.0.0, :: and any non-loopback address are remote-reachable; unset is not."""
    if not host or host == "localhost":
        return False
    import ipaddress  # here, not at the top: only the server asks (see t3serve.py)

    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a host name other than localhost: reachable from elsewhere


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def session_cookie_names(cookie_mode: str, host: str | None, port: int, state_dir: str,
                         environment_id: str) -> tuple[str, ...]:
    """The cookie names a server accepts; the first is the one it sets and reports.

    `state_dir` is the absolute `D/userdata` path (see the module docstring).
    """
    if cookie_mode == "classic":
        return (LEGACY_COOKIE_NAME,)
    if not is_remote_reachable(host):  # host-scoped and env-scoped agree on loopback
        return (f"{LEGACY_COOKIE_NAME}_{port}_{_short_hash(state_dir)}",)
    if cookie_mode == "host-scoped":
        return (LEGACY_COOKIE_NAME,)
    if cookie_mode == "env-scoped":
        return (f"{LEGACY_COOKIE_NAME}_{_short_hash(environment_id)}", LEGACY_COOKIE_NAME)
    raise ValueError(f"unknown cookie_mode {cookie_mode!r}")


def parse_cookie_header(values: list[str]) -> dict[str, list[str]]:
    """Cookie headers to name -> values (a name may repeat; each value is tried)."""
    cookies: dict[str, list[str]] = {}
    for header in values:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                cookies.setdefault(name, []).append(value.strip().strip('"'))
    return cookies


# --------------------------------------------------------------------------
# Commands.

def cmd_serve(build: Build, args: argparse.Namespace) -> int:
    # The server lives in t3serve.py beside this file (bin/t3 puts both on sys.path): the
    # CLI's commands, a mint on every login above all, never import http.server and the rest.
    from t3serve import serve

    return serve(build, args)


def _open_migrated(build: Build, base_dir: str) -> sqlite3.Connection:
    """The CLI's own database access: it runs pending migrations first, like t3's."""
    state = StateDir(base_dir, build.layout)
    state.prepare()
    migrate_state(build, state, Log())
    return state.connect()


def cmd_pairing_create(build: Build, args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl)
    conn = _open_migrated(build, args.base_dir)
    try:
        link = create_pairing_link(conn, build, ttl, args.label)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(link, indent=2))
    else:
        print(f"Pairing credential: {link['credential']}\nExpires at: {link['expiresAt']}")
    return 0


def cmd_pairing_list(build: Build, args: argparse.Namespace) -> int:
    conn = _open_migrated(build, args.base_dir)
    try:
        rows = conn.execute("SELECT * FROM auth_pairing_links ORDER BY created_at").fetchall()
    finally:
        conn.close()
    links = [{"id": r["id"], "label": r["label"], "createdAt": r["created_at"], "expiresAt": r["expires_at"],
              "consumedAt": r["consumed_at"], "revokedAt": r["revoked_at"]} for r in rows]
    print(json.dumps(links, indent=2) if args.json else "\n".join(f"{l['id']} {l['expiresAt']}" for l in links))
    return 0


def cmd_session_list(build: Build, args: argparse.Namespace) -> int:
    conn = _open_migrated(build, args.base_dir)
    try:
        rows = conn.execute("SELECT * FROM auth_sessions ORDER BY issued_at").fetchall()
    finally:
        conn.close()
    sessions = [{"sessionId": r["session_id"][:8], "subject": r["subject"], "method": r["method"],
                 "issuedAt": r["issued_at"], "expiresAt": r["expires_at"], "revokedAt": r["revoked_at"]}
                for r in rows]
    print(json.dumps(sessions, indent=2) if args.json
          else "\n".join(f"{s['sessionId']} {s['expiresAt']}" for s in sessions))
    return 0


def _revoke(table: str, key: str):
    def command(build: Build, args: argparse.Namespace) -> int:
        conn = _open_migrated(build, args.base_dir)
        try:
            changed = conn.execute(f"UPDATE {table} SET revoked_at = ? WHERE {key} = ? AND revoked_at IS NULL",
                                   (iso_z(utc_now()), args.id)).rowcount
        finally:
            conn.close()
        if not changed:
            print(f"Error: no active entry {args.id!r}", file=sys.stderr)
            return 1
        print(f"Revoked {args.id}")
        return 0
    return command


def build_parser() -> argparse.ArgumentParser:
    default_base = os.environ.get("T3_HOME") or os.path.join(os.path.expanduser("~"), ".t3")
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--base-dir", default=default_base, help="t3 home (state in <base-dir>/userdata)")

    parser = argparse.ArgumentParser(prog="t3", description="T3 Code (simulated)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", parents=[base], help="run the server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.set_defaults(run=cmd_serve)

    auth = commands.add_parser("auth").add_subparsers(dest="auth_command", required=True)
    pairing = auth.add_parser("pairing").add_subparsers(dest="pairing_command", required=True)
    create = pairing.add_parser("create", parents=[base])
    create.add_argument("--ttl", default="5m")
    create.add_argument("--label", default=None)
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=cmd_pairing_create)
    listing = pairing.add_parser("list", parents=[base])
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_pairing_list)
    revoke = pairing.add_parser("revoke", parents=[base])
    revoke.add_argument("id")
    revoke.set_defaults(run=_revoke("auth_pairing_links", "id"))

    session = auth.add_parser("session").add_subparsers(dest="session_command", required=True)
    session_list = session.add_parser("list", parents=[base])
    session_list.add_argument("--json", action="store_true")
    session_list.set_defaults(run=cmd_session_list)
    session_revoke = session.add_parser("revoke", parents=[base])
    session_revoke.add_argument("id")
    session_revoke.set_defaults(run=_revoke("auth_sessions", "session_id"))
    return parser


def main(argv: list[str] | None = None, package_dir: str | None = None) -> int:
    """Entry point of bin/t3. Returns the exit code."""
    if package_dir is None:
        print("Error: t3sim.main needs the package directory", file=sys.stderr)
        return 2
    build = Build.load(package_dir)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(build.reported_version_text)
        return 0
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(build, args)
    except MigrationError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"Error: {describe_sql_error(exc, build.sql_error_style)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
