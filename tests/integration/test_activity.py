"""runner/activity.py: busy means a turn in flight or recent activity, read from the user's
own database with the real sqlite3 CLI, as the owner of their home; unjudgeable means busy."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner import activity, proc
from runner.activity import Activity, ActivityError

from tests.sim import dbgen

SQLITE3 = shutil.which("sqlite3")
needs_sqlite3 = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 CLI is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
NOW = datetime(2026, 11, 28, 8, 25, 47, tzinfo=timezone.utc)


# ------------------------------------------------------------------ pure

def test_argv():
    assert activity.activity_argv("/usr/bin/sqlite3", Path("/home/wizard/.t3/userdata/state.sqlite"), "SELECT 1;") == [
        "/usr/bin/sqlite3", "-init", "/dev/null", "-bail", "-nofollow", "-readonly", "-json",
        "-cmd", ".timeout 5000", "/home/wizard/.t3/userdata/state.sqlite", "SELECT 1;"]
    with pytest.raises(ActivityError):
        activity.activity_argv("sqlite3", Path("relative/state.sqlite"), "SELECT 1;")


def _row(**fields) -> str:
    row = {"in_flight_turns": 0, "in_flight_runs": 0, "run_statuses": None, "last_activity": None,
           "unparseable": 0, **fields}
    return json.dumps([row])


def test_parse_activity():
    assert activity.parse_activity(
        _row(in_flight_turns=2, last_activity="2026-11-28T08:25:47.123Z") + "\n"
    ) == Activity(2, datetime(2026, 11, 28, 8, 25, 47, 123000, tzinfo=timezone.utc))
    assert activity.parse_activity(_row()) == Activity(0, None)
    assert activity.parse_activity(_row(in_flight_runs=2, run_statuses="queued,running")) == \
        Activity(0, None, 2, ("queued", "running"))
    for bad in ("", "[]", "not json", '[{"in_flight_turns":0}]', _row(unparseable=1), _row(in_flight_turns=-1),
                _row(in_flight_turns="1"), _row(in_flight_runs=True), _row(run_statuses=3),
                _row(last_activity="yesterday"), _row() + _row()):
        with pytest.raises(ActivityError):
            activity.parse_activity(bad)


def test_v1_and_v2_shapes_are_required():
    """A database that is not the layout's shape cannot be judged; one that is gets a query."""
    v1 = {"projection_thread_sessions": {"thread_id", "active_turn_id", "updated_at"},
          "projection_threads": {"updated_at"}}
    assert "active_turn_id" in activity.activity_sql("v1", v1)
    with pytest.raises(ActivityError, match="not a t3 V2 database: no orchestration_v2_projection_runs"):
        activity.activity_sql("v2", v1)
    with pytest.raises(ActivityError, match="projection_thread_sessions.active_turn_id"):
        activity.activity_sql("v1", {**v1, "projection_thread_sessions": {"thread_id", "updated_at"}})
    v2 = {"orchestration_v2_projection_runs": {"thread_id", "ordinal", "status", "updated_at"},
          "orchestration_v2_projection_threads": {"updated_at"}}
    sql = activity.activity_sql("v2", v2)
    assert "orchestration_v2_projection_runs" in sql and "active_turn_id" not in sql
    with pytest.raises(ActivityError, match="unknown shape: orchestration_v2_projection_runs has none"):
        activity.activity_sql("v2", {**v2, "orchestration_v2_projection_runs": {"thread_id", "ordinal", "status"}})


@pytest.mark.parametrize("turns, idle_seconds, quiet, busy", [
    (1, 7 * 86400, 120, True),     # a turn in flight: busy however long ago the last write was
    (1, 7 * 86400, 0, True),       # ... even with no quiet buffer
    (0, 5, 120, True),             # recent activity, inside the buffer
    (0, 5, 0, False),              # quiet=0: only in-flight turns count
    (0, 119, 120, True),
    (0, 120, 120, False),          # exactly the buffer: idle
    (0, 7 * 86400, 120, False),    # old
    (0, -30, 120, True),           # in the future (clock skew): busy, not idle
    (0, None, 120, False),         # no threads at all
    ("run", 7 * 86400, 0, True),   # a V2 run in flight: busy however long ago
])
def test_busy_table(turns, idle_seconds, quiet, busy):
    last = None if idle_seconds is None else NOW - timedelta(seconds=idle_seconds)
    state = Activity(0, last, 1, ("running",)) if turns == "run" else Activity(turns, last)
    verdict, reason = activity.is_busy(state, now=NOW, quiet_seconds=quiet)
    assert verdict is busy, reason
    assert reason


def test_not_a_child_process_question():
    """The lesson: an open tab (agent child alive, nothing in flight, quiet) is idle."""
    verdict, reason = activity.is_busy(Activity(0, NOW - timedelta(hours=3)), now=NOW, quiet_seconds=120)
    assert verdict is False and "idle" in reason


# ------------------------------------------------------------------ owner_of

def test_owner_of(tmp_path):
    home = tmp_path / "home" / "wizard"
    home.mkdir(parents=True)
    st = os.lstat(home)
    assert activity.owner_of(home) == proc.UserIds(st.st_uid, st.st_gid)
    (tmp_path / "home" / "evil").symlink_to(home)
    with pytest.raises(ActivityError, match="symlink"):
        activity.owner_of(tmp_path / "home" / "evil")
    (tmp_path / "home" / "file").write_text("")
    with pytest.raises(ActivityError, match="not a directory"):
        activity.owner_of(tmp_path / "home" / "file")
    with pytest.raises(ActivityError, match="cannot stat"):
        activity.owner_of(tmp_path / "home" / "nobody-here")


@needs_root
def test_owner_of_a_users_home(tmp_path):
    home = tmp_path / "alice"
    home.mkdir()
    os.chown(home, 65534, 65533)
    assert activity.owner_of(home) == proc.UserIds(65534, 65533)


# ------------------------------------------------------------------ real databases, V1

def _database(tmp_path, name="wizard", **kwargs) -> tuple[Path, Path]:
    home = tmp_path / "home" / name
    db = home / ".t3" / "userdata" / "state.sqlite"
    dbgen.make_database(db, 33, threads=3, **kwargs)
    return home, db


def _judge(home: Path, *, quiet: float = 120, sqlite3_cli: str | None = None, now=None, run=proc.run):
    return activity.assess_user(home, home / ".t3" / "userdata", sqlite3=sqlite3_cli or SQLITE3,
                                now=now or datetime.now(timezone.utc), quiet_seconds=quiet, run=run)


@needs_sqlite3
@pytest.mark.parametrize("in_flight, updated_at, quiet, busy", [
    (True, "old", 120, True),
    (True, "recent", 0, True),
    (False, "recent", 120, True),
    (False, "recent", 0, False),
    (False, "old", 120, False),
    (False, "old", 0, False),
])
def test_busy_table_on_real_databases(tmp_path, in_flight, updated_at, quiet, busy):
    home, db = _database(tmp_path, in_flight=in_flight, updated_at=updated_at)
    owner = activity.owner_of(home)
    found = activity.user_activity(db, sqlite3=SQLITE3, as_user=owner)
    assert found.in_flight_turns == (1 if in_flight else 0) and found.in_flight_runs == 0
    now = datetime.now(timezone.utc)
    age = (now - found.last_activity).total_seconds()
    assert (0 <= age < 120) if updated_at == "recent" else (age > 6 * 86400)
    verdict, reason = activity.is_busy(found, now=now, quiet_seconds=quiet)
    assert verdict is busy, reason
    assert activity.assess(db, sqlite3=SQLITE3, as_user=owner, now=now, quiet_seconds=quiet)[0] is busy
    verdict, reason = _judge(home, quiet=quiet, now=now)
    assert verdict is busy and reason.endswith("(state.sqlite)"), reason


@needs_sqlite3
def test_last_activity_is_the_newest_of_threads_sessions_and_messages(tmp_path):
    home, db = _database(tmp_path, updated_at="old")
    newer = "2026-11-28T08:25:47.5Z"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE projection_threads SET updated_at = ? WHERE thread_id = 'thread-000001'", (newer,))
        # Lexically "...:47Z" > "...:47.5Z"; chronologically it is older. Chronology must win.
        conn.execute("UPDATE projection_thread_sessions SET updated_at = '2026-11-28T08:25:47Z'"
                     " WHERE thread_id = 'thread-000002'")
    found = activity.user_activity(db, sqlite3=SQLITE3, as_user=None)
    assert found == Activity(0, datetime(2026, 11, 28, 8, 25, 47, 500000, tzinfo=timezone.utc))
    with conn:  # a message (V1 messages have only created_at) newer than both
        conn.execute("UPDATE projection_thread_messages SET created_at = '2026-11-28T08:26:00Z'"
                     " WHERE message_id = 'msg-000000-000003'")
    conn.close()
    found = activity.user_activity(db, sqlite3=SQLITE3, as_user=None)
    assert found.last_activity == datetime(2026, 11, 28, 8, 26, tzinfo=timezone.utc)


@needs_sqlite3
def test_the_read_is_read_only(tmp_path):
    home, db = _database(tmp_path, in_flight=True)
    before = dbgen.precious_fingerprint(db), dbgen.table_counts(db)
    activity.user_activity(db, sqlite3=SQLITE3, as_user=None)
    assert (dbgen.precious_fingerprint(db), dbgen.table_counts(db)) == before


@needs_sqlite3
def test_the_reads_run_as_the_owner_of_the_home(tmp_path):
    home, db = _database(tmp_path)
    seen = []

    def spy(argv, **kwargs):
        seen.append(kwargs["as_user"])
        return proc.run(argv, **kwargs)

    owner = activity.owner_of(home)
    _judge(home, run=spy)
    assert seen == [owner, owner]  # the shape, then the activity


@needs_sqlite3
@needs_root
def test_as_another_user_root_only_files_are_not_read(tmp_path):
    """A real drop: the same file root reads fine cannot be read as uid 65534, and that
    user is then judged busy (fail closed), not idle."""
    home, db = _database(tmp_path, updated_at="old")
    os.chmod(db, 0o600)
    assert activity.user_activity(db, sqlite3=SQLITE3, as_user=None).in_flight_turns == 0
    os.chown(home, 65534, 65534)
    owner = activity.owner_of(home)
    assert owner.uid == 65534
    with pytest.raises(ActivityError, match="as uid 65534"):
        activity.user_activity(db, sqlite3=SQLITE3, as_user=owner)
    busy, reason = _judge(home)
    assert busy and reason.startswith("cannot judge activity") and "uid 65534" in reason


@needs_sqlite3
def test_unjudgeable_databases_are_busy(tmp_path):
    home, db = _database(tmp_path, updated_at="old")
    userdata = db.parent
    assert _judge(home)[0] is False  # the healthy one is idle
    assert _judge(home, sqlite3_cli=str(home / "no-such-sqlite3"))[0]

    def swap(make) -> tuple[bool, str]:
        """Replace the live database by something else, judge, put it back."""
        db.rename(tmp_path / "kept.sqlite")
        try:
            make(db)
            return _judge(home)
        finally:
            db.rmdir() if db.is_dir() and not db.is_symlink() else db.unlink(missing_ok=True)
            (tmp_path / "kept.sqlite").rename(db)

    verdicts = {
        "missing": swap(lambda path: None),
        "empty file": swap(lambda path: path.write_bytes(b"")),
        "not t3": swap(lambda path: sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()),
        "symlink": swap(lambda path: path.symlink_to(tmp_path / "kept.sqlite")),
        "garbage": swap(lambda path: path.write_bytes(b"not a database at all" * 100)),
        "directory": swap(lambda path: path.mkdir()),
    }
    for what, (busy, reason) in verdicts.items():
        assert busy and reason.startswith("cannot judge activity"), (what, reason)
    assert "no statev2.sqlite or state.sqlite" in verdicts["missing"][1]
    assert "not a t3 V1 database" in verdicts["not t3"][1]
    assert "symlink" in verdicts["symlink"][1]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE projection_threads SET updated_at = 'last tuesday' WHERE thread_id = 'thread-000000'")
    conn.close()
    busy, reason = _judge(home)
    assert busy and "not ISO 8601" in reason
    # A file not named like a live database is never judged as one.
    assert "not a t3 live database" in activity.assess(userdata / "notes.db", sqlite3=SQLITE3, as_user=None,
                                                       now=NOW, quiet_seconds=0)[1]


# ------------------------------------------------------------------ real databases, V2

V2_TABLES = (
    "CREATE TABLE orchestration_v2_projection_threads (thread_id TEXT PRIMARY KEY, project_id TEXT NOT NULL,"
    " title TEXT NOT NULL, default_provider TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
    " archived_at TEXT, deleted_at TEXT, payload_json TEXT NOT NULL DEFAULT '{}')",
    "CREATE TABLE orchestration_v2_projection_runs (run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL,"
    " ordinal INTEGER NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE orchestration_v2_projection_turn_items (turn_item_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL,"
    " type TEXT NOT NULL, status TEXT NOT NULL, ordinal INTEGER NOT NULL, updated_at TEXT NOT NULL,"
    " payload_json TEXT NOT NULL DEFAULT '{}')",
    "CREATE TABLE orchestration_v2_projection_messages (message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL,"
    " role TEXT NOT NULL, text TEXT NOT NULL, created_at TEXT NOT NULL)",
)
OLD = "2026-11-21T08:00:00.000Z"


def _v2_database(tmp_path, runs=(), *, frozen_v1_in_flight=False, recent_in=None, v1_beside=None,
                 name="wizard") -> tuple[Path, Path]:
    """A user whose live database is statev2.sqlite: the V1 tables frozen at the import (dbgen,
    schema 33) plus the orchestration_v2_* tables with `runs` as (thread, ordinal, status);
    `recent_in`: the one V2 table whose newest row is 5 s old (everything else is a week old);
    `v1_beside`: dbgen options for a frozen state.sqlite next to it."""
    home = tmp_path / "home" / name
    db = home / ".t3" / "userdata" / "statev2.sqlite"
    dbgen.make_database(db, 33, threads=2, in_flight=frozen_v1_in_flight, updated_at="old")
    if v1_beside is not None:
        dbgen.make_database(db.parent / "state.sqlite", 33, threads=2, **v1_beside)
    recent = (datetime.now(timezone.utc) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    def at(table):
        return recent if table == recent_in else OLD

    conn = sqlite3.connect(db)
    with conn:
        for sql in V2_TABLES:
            conn.execute(sql)
        conn.executemany("INSERT INTO orchestration_v2_projection_threads (thread_id, project_id, title, created_at,"
                         " updated_at) VALUES (?, 'project-000', ?, ?, ?)",
                         [(t, f"title {t}", OLD, at("orchestration_v2_projection_threads")) for t in ("t1", "t2")])
        conn.executemany("INSERT INTO orchestration_v2_projection_runs VALUES (?, ?, ?, ?, ?, ?)",
                         [(f"run-{i}", t, o, s, OLD, at("orchestration_v2_projection_runs"))
                          for i, (t, o, s) in enumerate(runs)])
        conn.execute("INSERT INTO orchestration_v2_projection_turn_items (turn_item_id, thread_id, type, status,"
                     " ordinal, updated_at) VALUES ('item-1', 't1', 'assistant_message', 'completed', 1, ?)",
                     (at("orchestration_v2_projection_turn_items"),))
        conn.execute("INSERT INTO orchestration_v2_projection_messages VALUES ('m-1', 't1', 'user', 'hi', ?)",
                     (at("orchestration_v2_projection_messages"),))
    conn.close()
    return home, db


@needs_sqlite3
@pytest.mark.parametrize("runs, in_flight, statuses", [
    ([], 0, ()),
    ([("t1", 1, "completed"), ("t1", 2, "running")], 1, ("running",)),
    ([("t1", 1, "running"), ("t1", 2, "completed")], 0, ()),     # only the NEWEST run of a thread counts
    ([("t1", 2, "completed"), ("t2", 1, "queued")], 1, ("queued",)),  # ... per thread
    ([("t1", 1, "failed"), ("t2", 1, "cancelled"), ("t2", 2, "interrupted")], 0, ()),
    ([("t1", 1, "streaming"), ("t2", 7, "waiting-for-approval")], 2, ("streaming", "waiting-for-approval")),
    ([("t1", 1, "Completed")], 1, ("Completed",)),              # not a known final status: in flight
    ([("t1", 10, "completed"), ("t1", 9, "running")], 0, ()),   # ordinal, not insertion order
])
def test_v2_a_run_is_in_flight_when_the_newest_run_of_a_thread_is_not_final(tmp_path, runs, in_flight, statuses):
    home, db = _v2_database(tmp_path, runs)
    found = activity.user_activity(db, sqlite3=SQLITE3, as_user=activity.owner_of(home))
    assert (found.in_flight_runs, found.run_statuses, found.in_flight_turns) == (in_flight, statuses, 0)
    busy, reason = _judge(home, quiet=0)
    assert busy is bool(in_flight), reason
    assert reason.endswith("(statev2.sqlite)")
    if in_flight:
        assert f"{in_flight} agent run(s) in flight" in reason and statuses[0] in reason


@needs_sqlite3
@pytest.mark.parametrize("table", ["orchestration_v2_projection_runs", "orchestration_v2_projection_turn_items",
                                   "orchestration_v2_projection_threads", "orchestration_v2_projection_messages"])
def test_v2_recent_activity_in_any_v2_table_is_busy(tmp_path, table):
    home, db = _v2_database(tmp_path, [("t1", 1, "completed")], recent_in=table)
    busy, reason = _judge(home, quiet=120)
    assert busy and "s ago (quiet buffer 120s)" in reason, reason
    assert _judge(home, quiet=0)[0] is False


@needs_sqlite3
def test_v2_the_frozen_v1_tables_never_make_a_turn_in_flight(tmp_path):
    """A V1 turn that was running at the import stays `active_turn_id` forever in the frozen V1
    tables, in statev2.sqlite and in state.sqlite: counting it would defer the user for good."""
    home, db = _v2_database(tmp_path, [("t1", 1, "completed")], frozen_v1_in_flight=True,
                            v1_beside={"in_flight": True, "updated_at": "recent"})
    busy, reason = _judge(home, quiet=120)
    assert not busy and reason.startswith("idle for") and reason.endswith("(statev2.sqlite)"), reason
    # The same V1 file judged as the live database (a pre-V2 host) is busy: the choice matters.
    assert activity.assess(db.parent / "state.sqlite", sqlite3=SQLITE3, as_user=None,
                           now=datetime.now(timezone.utc), quiet_seconds=120)[0]


@needs_sqlite3
def test_v2_unknown_shapes_and_statuses_are_busy(tmp_path):
    home, db = _v2_database(tmp_path, [("t1", 1, "completed")])
    assert _judge(home, quiet=0)[0] is False
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO orchestration_v2_projection_runs VALUES ('r-x', 't2', 1, 'completed', ?, ?)",
                     (OLD, "not a time"))
    busy, reason = _judge(home, quiet=0)
    assert busy and "not ISO 8601" in reason
    with conn:
        conn.execute("DELETE FROM orchestration_v2_projection_runs WHERE run_id = 'r-x'")
        conn.execute("ALTER TABLE orchestration_v2_projection_runs RENAME TO orchestration_v2_runs_renamed")
    conn.close()
    busy, reason = _judge(home, quiet=0)
    assert busy and "not a t3 V2 database: no orchestration_v2_projection_runs" in reason


@needs_sqlite3
@needs_root
def test_v2_judged_as_the_unprivileged_owner(tmp_path, tmp_path_factory):
    """uid 65534 owns the home and its files: the listing (root, no-follow) and both reads (as
    65534, a real drop) judge the V2 database; a file only root may read makes the user busy.
    pytest's temp root (/tmp/pytest-of-root, 0700) usually keeps uid 65534 from reaching the
    tree by path at all: then the child's refusal itself proves it was not root (root reads the
    very same tree fine, the control at the end)."""
    home, db = _v2_database(tmp_path, [("t1", 1, "completed"), ("t2", 3, "running")])
    for path in (home, home / ".t3", db.parent, db):
        os.chown(path, 65534, 65534)
    os.chmod(db, 0o600)
    base = tmp_path_factory.getbasetemp()
    reachable = all(p.stat().st_mode & 0o001 for p in base.parents)
    if reachable:
        for p in [base, *[a for a in tmp_path.parents if base in a.parents], tmp_path, tmp_path / "home"]:
            p.chmod(p.stat().st_mode | 0o011)
    seen = []

    def spy(argv, **kwargs):
        seen.append(kwargs["as_user"].uid)
        return proc.run(argv, **kwargs)

    busy, reason = _judge(home, quiet=0, run=spy)
    if reachable:
        assert busy and "1 agent run(s) in flight (status running)" in reason, reason
        assert seen == [65534, 65534]
        os.chown(db, 0, 0)
        busy, reason = _judge(home, quiet=0)
    assert busy and reason.startswith("cannot judge activity") and "as uid 65534" in reason, reason
    assert "unable to open database" in reason
    assert seen[0] == 65534
    for path in (home, home / ".t3", db.parent, db):  # control: the same tree owned by root
        os.chown(path, 0, 0)
    busy, reason = _judge(home, quiet=0)
    assert busy and "1 agent run(s) in flight (status running)" in reason, reason


@needs_sqlite3
@pytest.mark.parametrize("in_flight, updated_at, quiet, busy", [
    (True, "old", 0, True),
    (False, "recent", 120, True),
    (False, "recent", 0, False),
    (False, "old", 120, False),
])
def test_v2_users_of_the_simulated_t3(tmp_path, in_flight, updated_at, quiet, busy):
    """The same verdicts on what the simulator's own import and V2 writers produce (dbgen)."""
    home = tmp_path / "home" / "emo"
    userdata = home / ".t3" / "userdata"
    userdata.mkdir(parents=True)
    facts = dbgen.make_v2_user(userdata, in_flight=in_flight, updated_at=updated_at)
    verdict, reason = _judge(home, quiet=quiet)
    assert verdict is busy and reason.endswith("(statev2.sqlite)"), reason
    if in_flight:
        assert facts["in_flight_runs"] and "1 agent run(s) in flight (status running)" in reason, reason
