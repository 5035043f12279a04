"""runner/activity.py: busy means a turn in flight or recent activity, read from the user's
own database with the real sqlite3 CLI, as the owner of their home; unjudgeable means busy."""
from __future__ import annotations

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
    assert activity.activity_argv("/usr/bin/sqlite3", Path("/home/wizard/.t3/userdata/state.sqlite")) == [
        "/usr/bin/sqlite3", "-init", "/dev/null", "-bail", "-nofollow", "-readonly", "-json",
        "-cmd", ".timeout 5000", "/home/wizard/.t3/userdata/state.sqlite", activity.ACTIVITY_SQL]
    with pytest.raises(ActivityError):
        activity.activity_argv("sqlite3", Path("relative/state.sqlite"))


def test_parse_activity():
    assert activity.parse_activity(
        '[{"in_flight_turns":2,"last_activity":"2026-11-28T08:25:47.123Z","unparseable":0}]\n'
    ) == Activity(2, datetime(2026, 11, 28, 8, 25, 47, 123000, tzinfo=timezone.utc))
    assert activity.parse_activity('[{"in_flight_turns":0,"last_activity":null,"unparseable":0}]') == Activity(0, None)
    for bad in ("", "[]", "not json", '[{"in_flight_turns":0}]',
                '[{"in_flight_turns":0,"last_activity":null,"unparseable":1}]',
                '[{"in_flight_turns":-1,"last_activity":null,"unparseable":0}]',
                '[{"in_flight_turns":"1","last_activity":null,"unparseable":0}]',
                '[{"in_flight_turns":0,"last_activity":"yesterday","unparseable":0}]'):
        with pytest.raises(ActivityError):
            activity.parse_activity(bad)


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
])
def test_busy_table(turns, idle_seconds, quiet, busy):
    last = None if idle_seconds is None else NOW - timedelta(seconds=idle_seconds)
    verdict, reason = activity.is_busy(Activity(turns, last), now=NOW, quiet_seconds=quiet)
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


# ------------------------------------------------------------------ real databases

def _database(tmp_path, name="wizard", **kwargs) -> tuple[Path, Path]:
    home = tmp_path / "home" / name
    db = home / ".t3" / "userdata" / "state.sqlite"
    dbgen.make_database(db, 33, threads=3, **kwargs)
    return home, db


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
    assert found.in_flight_turns == (1 if in_flight else 0)
    now = datetime.now(timezone.utc)
    age = (now - found.last_activity).total_seconds()
    assert (0 <= age < 120) if updated_at == "recent" else (age > 6 * 86400)
    verdict, reason = activity.is_busy(found, now=now, quiet_seconds=quiet)
    assert verdict is busy, reason
    assert activity.assess(db, sqlite3=SQLITE3, as_user=owner, now=now, quiet_seconds=quiet)[0] is busy


@needs_sqlite3
def test_last_activity_is_the_newest_of_threads_and_sessions(tmp_path):
    home, db = _database(tmp_path, updated_at="old")
    newer = "2026-11-28T08:25:47.5Z"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE projection_threads SET updated_at = ? WHERE thread_id = 'thread-000001'", (newer,))
        # Lexically "...:47Z" > "...:47.5Z"; chronologically it is older. Chronology must win.
        conn.execute("UPDATE projection_thread_sessions SET updated_at = '2026-11-28T08:25:47Z'"
                     " WHERE thread_id = 'thread-000002'")
    conn.close()
    found = activity.user_activity(db, sqlite3=SQLITE3, as_user=None)
    assert found == Activity(0, datetime(2026, 11, 28, 8, 25, 47, 500000, tzinfo=timezone.utc))


@needs_sqlite3
def test_the_read_is_read_only(tmp_path):
    home, db = _database(tmp_path, in_flight=True)
    before = dbgen.precious_fingerprint(db), dbgen.table_counts(db)
    activity.user_activity(db, sqlite3=SQLITE3, as_user=None)
    assert (dbgen.precious_fingerprint(db), dbgen.table_counts(db)) == before


@needs_sqlite3
def test_the_read_runs_as_the_owner_of_the_home(tmp_path):
    home, db = _database(tmp_path)
    seen = []

    def spy(argv, **kwargs):
        seen.append(kwargs["as_user"])
        return proc.run(argv, **kwargs)

    owner = activity.owner_of(home)
    activity.user_activity(db, sqlite3=SQLITE3, as_user=owner, run=spy)
    assert seen == [owner]


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
    busy, reason = activity.assess(db, sqlite3=SQLITE3, as_user=owner, now=datetime.now(timezone.utc),
                                   quiet_seconds=120)
    assert busy and reason.startswith("cannot judge activity")


@needs_sqlite3
def test_unjudgeable_databases_are_busy(tmp_path):
    home, db = _database(tmp_path, updated_at="old")
    now = datetime.now(timezone.utc)

    def judge(path):
        return activity.assess(path, sqlite3=SQLITE3, as_user=None, now=now, quiet_seconds=120)

    assert judge(db)[0] is False  # the healthy one is idle
    missing = judge(home / "nope.sqlite")
    assert missing[0] and "cannot judge" in missing[1]
    empty = home / "empty.sqlite"
    sqlite3.connect(empty).close()
    assert judge(empty)[0]  # no t3 tables
    (home / "link.sqlite").symlink_to(db)
    assert judge(home / "link.sqlite")[0]  # -nofollow: a symlinked database is refused
    garbage = home / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    assert judge(garbage)[0]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE projection_threads SET updated_at = 'last tuesday' WHERE thread_id = 'thread-000000'")
    conn.close()
    busy, reason = judge(db)
    assert busy and "not ISO 8601" in reason
    assert activity.assess(db, sqlite3=str(home / "no-such-sqlite3"), as_user=None, now=now,
                           quiet_seconds=120)[0]
