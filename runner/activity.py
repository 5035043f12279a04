"""Is a user busy? Read from their own database, as them, never from their process tree.

lessons.md: "the server has an agent child" was true whenever a tab was open, so one
user was deferred at every window for days. Busy now means what the contract lets us
see in the database (t3-contract.md, Persistence):

* a turn is in flight: a `projection_thread_sessions` row has `active_turn_id` set; or
* the last activity (newest `updated_at` over `projection_thread_sessions` and
  `projection_threads`) is within the quiet buffer (`busy_quiet`, default 120 s).
  A timestamp in the future (clock skew) counts as within the buffer.

The database is read with the sqlite3 CLI, read-only, AS THE USER who owns the home
directory (`owner_of`, an lstat that refuses a symlinked home). Why as the user: the
user controls every path under their home, and even a read-only WAL reader may create
`-shm`/`-wal` files; made by root, they would lock the user's own server out.

Fail closed: a database we cannot read (missing, unreadable, locked, not a t3 schema,
a timestamp we cannot parse) means we cannot judge the user, and a user we cannot judge
is not restarted. `assess` turns every such error into `(True, "cannot judge: ...")`,
so the canary defers that user with the reason on the marker.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import proc

__all__ = ["Activity", "ActivityError", "ACTIVITY_SQL", "activity_argv", "parse_activity",
           "owner_of", "user_activity", "is_busy", "assess"]

# One row, always (aggregates). julianday() parses ISO 8601 with `Z` and fractions; MAX over
# it is chronological (a plain MAX over text is not once fractions appear), and rows whose
# updated_at does not parse are counted so they can fail the read instead of being ignored.
ACTIVITY_SQL = (
    "SELECT"
    " (SELECT COUNT(*) FROM projection_thread_sessions"
    "   WHERE active_turn_id IS NOT NULL AND active_turn_id <> '') AS in_flight_turns,"
    " strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT MAX(j) FROM ("
    "   SELECT MAX(julianday(updated_at)) AS j FROM projection_thread_sessions"
    "   UNION ALL SELECT MAX(julianday(updated_at)) FROM projection_threads))) AS last_activity,"
    " (SELECT COUNT(*) FROM projection_thread_sessions"
    "   WHERE updated_at IS NOT NULL AND julianday(updated_at) IS NULL)"
    " + (SELECT COUNT(*) FROM projection_threads"
    "   WHERE updated_at IS NOT NULL AND julianday(updated_at) IS NULL) AS unparseable;"
)


class ActivityError(RuntimeError):
    """A user's activity cannot be judged (the caller must treat the user as busy)."""


@dataclass(frozen=True)
class Activity:
    in_flight_turns: int
    last_activity: datetime | None


def activity_argv(sqlite3: str, db_path: Path) -> list[str]:
    """The read-only query of one database: no rc file, no symlinked database, JSON out."""
    db = str(db_path)
    if not db.startswith("/"):
        raise ActivityError(f"database path must be absolute: {db!r}")
    return [sqlite3, "-init", "/dev/null", "-bail", "-nofollow", "-readonly", "-json",
            "-cmd", ".timeout 5000", db, ACTIVITY_SQL]


def parse_activity(stdout: str) -> Activity:
    """The CLI's JSON (`[{"in_flight_turns": 1, "last_activity": "...Z", "unparseable": 0}]`)."""
    try:
        rows = json.loads(stdout)
        (row,) = rows
        turns, last, bad = row["in_flight_turns"], row["last_activity"], row["unparseable"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ActivityError(f"unexpected sqlite3 output {stdout[:200]!r} ({exc})") from None
    if not isinstance(turns, int) or isinstance(turns, bool) or turns < 0:
        raise ActivityError(f"unexpected in-flight count {turns!r}")
    if bad:
        raise ActivityError(f"{bad} updated_at value(s) are not ISO 8601 timestamps")
    if last is None:
        return Activity(turns, None)
    try:
        moment = datetime.strptime(last, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise ActivityError(f"unexpected last activity {last!r}") from None
    return Activity(turns, moment)


def owner_of(path: Path) -> proc.UserIds:
    """Who owns `path` (a user's home directory), by lstat; a symlink or non-directory is refused."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ActivityError(f"cannot stat {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ActivityError(f"{path} is a symlink; refusing to act on it as its owner")
    if not stat.S_ISDIR(st.st_mode):
        raise ActivityError(f"{path} is not a directory")
    return proc.UserIds.owner_of(st)


def user_activity(db_path: Path, *, sqlite3: str, as_user: proc.UserIds | None,
                  timeout: float = 60.0, run=proc.run) -> Activity:
    """Read in-flight turns and the last activity from one database, as `as_user`.

    Raises ActivityError when the database cannot be read or judged.
    """
    argv = activity_argv(sqlite3, Path(db_path))
    try:
        done = run(argv, cwd="/", timeout=timeout, as_user=as_user)
    except proc.CommandError as exc:
        who = f" as uid {as_user.uid}" if as_user is not None else ""
        raise ActivityError(f"cannot read {db_path}{who}: {exc}") from exc
    return parse_activity(done.stdout)


def is_busy(activity: Activity, *, now: datetime, quiet_seconds: float) -> tuple[bool, str]:
    """(busy, reason). Busy iff a turn is in flight or the last activity is inside the quiet buffer."""
    if activity.in_flight_turns:
        return True, f"{activity.in_flight_turns} agent turn(s) in flight"
    last = activity.last_activity
    if last is None:
        return False, "idle: no thread activity recorded"
    idle_for = (now - last).total_seconds()
    if idle_for < 0:
        return True, f"last activity {last.isoformat()} is in the future (clock skew?); treated as busy"
    if idle_for < quiet_seconds:
        return True, f"active {idle_for:.0f}s ago (quiet buffer {quiet_seconds:g}s)"
    return False, f"idle for {idle_for:.0f}s (quiet buffer {quiet_seconds:g}s)"


def assess(db_path: Path, *, sqlite3: str, as_user: proc.UserIds | None, now: datetime,
           quiet_seconds: float, run=proc.run) -> tuple[bool, str]:
    """`is_busy` of the database's activity; an unreadable database is busy (fail closed)."""
    try:
        activity = user_activity(db_path, sqlite3=sqlite3, as_user=as_user, run=run)
    except ActivityError as exc:
        return True, f"cannot judge activity: {exc}"
    return is_busy(activity, now=now, quiet_seconds=quiet_seconds)
