"""The simulated t3 (T3 Code): the `t3` CLI and server of one simulated build.

This single stdlib-only module is copied into every simulated npm tarball as
`lib/t3sim.py` and run by the package's `bin/t3` with whatever `python3` is on
PATH. It obeys the contract in shared/spec/t3-contract.md, including its drifts.
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
* `crash_at_start` affects `serve` only: `--version` and the pairing CLI still
  work, as they would for a build whose server crashes on boot.
* Builds with `sql_error_style: "code"` (the newer ones) render SQLite errors
  as `PersistenceSqlError: SQLITE(<code>) <errstr>`, without SQLite's detailed
  message, so grepping their logs for SQLite text finds nothing.

No environment knobs: everything a test needs is a command-line flag or file.
"""
from __future__ import annotations

import argparse
import email.utils
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    statements: tuple[str, ...]

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


class MigrationError(RuntimeError):
    """A migration failed; the transaction was rolled back. str() is the log line."""


def migrations_for(schema_level: int, variants: dict | None = None) -> list[Migration]:
    """The migrations a build knows, 1..schema_level, with its variant bodies in place."""
    chosen = []
    by_id = {int(k): v for k, v in (variants or {}).items()}
    for migration in MIGRATIONS:
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

    def __init__(self, base_dir: str) -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.path = os.path.join(self.base_dir, "userdata")
        self.db_path = os.path.join(self.path, "state.sqlite")
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
    """Run the build's pending migrations on `state`, logging like t3."""
    conn = state.connect()
    try:
        applied = run_migrations(conn, build.schema_level, build.migration_variants, build.sql_error_style)
    finally:
        conn.close()
    if applied:
        log("INFO", f"Migrations ran successfully: {', '.join(m.label for m in applied)}")
    else:
        log("INFO", "Migrations ran successfully: no pending migrations")


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
# The HTTP server.

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>T3 Code</title></head>
<body><div id="root"></div><script type="module">/* t3 v{version} */</script></body></html>
"""


class T3HTTPServer(ThreadingHTTPServer):
    # On SIGTERM, requests already being handled are finished (server_close joins them),
    # as a real server drains before it exits.
    daemon_threads = False
    block_on_close = True

    def __init__(self, host: str, port: int, app: "ServerApp") -> None:
        self.app = app
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), T3RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(host), a reverse DNS lookup that can
        # stall for seconds on an offline machine; t3 never needs the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ServerApp:
    """What the request handlers share: the build, the state dir and the cookie rule."""

    def __init__(self, build: Build, state: StateDir, host: str | None, port: int, log: Log) -> None:
        self.build = build
        self.state = state
        self.host = host
        self.port = port
        self.log = log
        self.environment_id = state.environment_id()
        self.cookie_names = session_cookie_names(build.cookie_mode, host, port, state.path, self.environment_id)

    @property
    def cookie_name(self) -> str:
        return self.cookie_names[0]

    def authenticated_session(self, cookie_headers: list[str]) -> sqlite3.Row | None:
        cookies = parse_cookie_header(cookie_headers)
        candidates = [value for name in self.cookie_names for value in cookies.get(name, [])]
        if not candidates:
            return None
        conn = self.state.connect()
        try:
            for token in candidates:
                session = live_session(conn, token)
                if session is not None:
                    return session
        finally:
            conn.close()
        return None


class T3RequestHandler(BaseHTTPRequestHandler):
    server: T3HTTPServer

    def version_string(self) -> str:
        return "t3"

    @property
    def app(self) -> ServerApp:
        return self.server.app

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib's signature)
        self.app.log("DEBUG", "http " + (format % args))

    # -- routing
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        routes = {
            "/api/auth/session": self.handle_session,
            "/.well-known/t3/environment": self.handle_environment,
            "/api/threads": self.handle_threads,
        }
        if path in routes:
            return routes[path]()
        if path in self.post_routes():
            return self.send_json(405, {"error": "Method Not Allowed"})
        if path.startswith("/api/"):
            return self.send_json(404, {"error": "Not Found"})
        # Everything else is the web app (a single-page app answers every path).
        self.send_body(200, INDEX_HTML.format(version=self.app.build.version).encode(), "text/html; charset=utf-8")

    def do_HEAD(self) -> None:
        path = self.path.split("?", 1)[0]
        status = 404 if path.startswith("/api/") else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        handler = self.post_routes().get(self.path.split("?", 1)[0])
        if handler is None:
            return self.send_json(404, {"error": "Not Found"})
        handler()

    def post_routes(self) -> dict:
        # Only the build's own exchange path exists: 0.0.24 has /api/auth/bootstrap,
        # 0.0.25+ /api/auth/browser-session, a bad build something else again.
        return {self.app.build.exchange_path: self.handle_exchange}

    # -- endpoints
    def handle_exchange(self) -> None:
        try:
            body = json.loads(self.read_body() or b"")
        except (ValueError, UnicodeDecodeError):
            return self.send_json(400, {"error": "Malformed JSON body"})
        credential = body.get("credential") if isinstance(body, dict) else None
        if not isinstance(credential, str) or not credential:
            return self.send_json(400, {"error": "Expected a JSON body with a credential"})
        build = self.app.build
        try:
            conn = self.app.state.connect()
            try:
                session = consume_credential(conn, build, credential, self.headers.get("User-Agent"))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            message = describe_sql_error(exc, build.sql_error_style)
            self.app.log("ERROR", f"pairing exchange failed: {message}")
            return self.send_json(500, {"error": message})
        if session is None:
            return self.send_json(401, {"error": "Invalid, expired or already used credential"})
        headers = []
        if build.sets_cookie:  # the `pairing-no-cookie` profile is the 200-without-cookie bug
            headers.append(("Set-Cookie", self.session_cookie(session)))
        grant_column, grant_json = session["grant"]
        if grant_column == "scopes":
            payload = {"authenticated": True, "scopes": grant_json, "sessionMethod": SESSION_METHOD,
                       "expiresAt": session["expires_at"]}
        else:
            payload = {"ok": True}  # old builds answered no session details
        self.send_json(200, payload, headers)

    def session_cookie(self, session: dict) -> str:
        expires = email.utils.format_datetime(parse_iso_z(session["expires_at"]), usegmt=True)
        return f"{self.app.cookie_name}={session['session_id']}; HttpOnly; Path=/; SameSite=Lax; Expires={expires}"

    def handle_session(self) -> None:
        try:
            session = self.app.authenticated_session(self.headers.get_all("Cookie") or [])
        except sqlite3.Error as exc:
            return self.send_json(500, {"error": describe_sql_error(exc, self.app.build.sql_error_style)})
        payload: dict = {
            "authenticated": session is not None,
            "auth": {
                "sessionCookieName": self.app.cookie_name,
                "policy": "remote-reachable" if is_remote_reachable(self.app.host) else "loopback-browser",
                "bootstrapMethods": ["one-time-token"],
            },
        }
        if session is not None:
            payload["sessionMethod"] = SESSION_METHOD
            payload["expiresAt"] = session["expires_at"]
            if "scopes" in session.keys():
                payload["scopes"] = json.loads(session["scopes"])
            else:
                payload["role"] = session["role"]
        self.send_json(200, payload)

    def handle_environment(self) -> None:
        # The real version of the running code, even when `--version` lies.
        self.send_json(200, {"environmentId": self.app.environment_id, "serverVersion": self.app.build.version})

    def handle_threads(self) -> None:
        """An authenticated read of the precious history (what a proxied request sees)."""
        try:
            if self.app.authenticated_session(self.headers.get_all("Cookie") or []) is None:
                return self.send_json(401, {"error": "Unauthorized"})
            conn = self.app.state.connect()
            try:
                rows = conn.execute(
                    "SELECT t.thread_id, t.title, t.updated_at, COUNT(m.message_id) AS messages"
                    " FROM projection_threads t LEFT JOIN projection_thread_messages m USING (thread_id)"
                    " WHERE t.deleted_at IS NULL GROUP BY t.thread_id ORDER BY t.updated_at DESC").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return self.send_json(500, {"error": describe_sql_error(exc, self.app.build.sql_error_style)})
        self.send_json(200, {"threads": [
            {"threadId": r["thread_id"], "title": r["title"], "updatedAt": r["updated_at"],
             "messageCount": r["messages"]} for r in rows]})

    # -- plumbing
    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status: int, payload: dict, headers: list[tuple[str, str]] = ()) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json", headers)

    def send_body(self, status: int, body: bytes, content_type: str,
                  headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# --------------------------------------------------------------------------
# Commands.

def cmd_serve(build: Build, args: argparse.Namespace) -> int:
    stop = threading.Event()
    # SIGTERM/SIGINT only set a flag: the main thread owns shutdown, so a signal
    # arriving mid-migration cannot leave a half transaction behind.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    if build.crash_at_start:
        print("Error: t3 failed to start: Cannot find module '@t3tools/server-runtime'", file=sys.stderr)
        return 1

    state = StateDir(args.base_dir)
    state.prepare()
    log = Log(state.log_path)
    log("INFO", f"t3 v{build.version} starting (base dir {state.base_dir})")
    try:
        migrate_state(build, state, log)
    except MigrationError as exc:
        log("ERROR", str(exc))
        return 1
    except sqlite3.Error as exc:
        log("ERROR", f"Failed to open {state.db_path}: {describe_sql_error(exc, build.sql_error_style)}")
        return 1

    if build.never_ready:
        # The bad build hangs after migrating: alive, never listening.
        log("INFO", "Starting server...")
        while not stop.wait(1.0):
            pass
        return 0

    host = args.host if args.host is not None else "127.0.0.1"
    try:
        httpd = T3HTTPServer(host, args.port, None)  # the app needs the bound port first
    except OSError as exc:
        log("ERROR", f"Failed to listen on {host}:{args.port}: {exc}")
        return 1
    port = httpd.server_address[1]
    httpd.app = ServerApp(build, state, args.host, port, log)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    shown_host = f"[{host}]" if ":" in host else host
    log("INFO", f"Listening on http://{shown_host}:{port}")
    while not stop.wait(1.0):
        pass
    log("INFO", "Shutting down")
    httpd.shutdown()
    httpd.server_close()
    return 0


def _open_migrated(build: Build, base_dir: str) -> sqlite3.Connection:
    """The CLI's own database access: it runs pending migrations first, like t3's."""
    state = StateDir(base_dir)
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
