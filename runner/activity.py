"""Is a user busy? Read from their own live database, as them, never from their process tree.

docs/lessons.md: "the server has an agent child" was true whenever a tab was open, so one
user was deferred at every window for days. Busy now means what the contract lets us
see in the database the running build opens (docs: README "t3 database layouts";
`runner.livedb`): `statev2.sqlite` once it exists (layout V2), else `state.sqlite` (V1).

* V1: a turn is in flight when a `projection_thread_sessions` row has `active_turn_id` set.
* V2: a run is in flight when the newest run of a thread (by `ordinal`) in
  `orchestration_v2_projection_runs` has a status that is not final. Only the statuses in
  FINAL_RUN_STATUSES are final; any other (queued, running, streaming, a status a later
  build invents, NULL) counts as in flight: fail closed. The V1 tables a V2 database keeps
  are frozen at the import, so a V1 `active_turn_id` frozen there is not a turn in flight.
* Either layout: the last activity (newest timestamp over the thread, session, run, turn
  item and message tables of both families that exist) is within the quiet buffer
  (`busy_quiet`, default 120 s). A timestamp in the future (clock skew) counts as within it.

The databases are listed with no-follow, directory-relative operations
(`backups.trees.find_user_databases`) and read with the sqlite3 CLI, read-only, AS THE USER who
owns the home directory (`owner_of`, an lstat that refuses a symlinked home). Why as the
user: the user controls every path under their home, and even a read-only WAL reader may
create `-shm`/`-wal` files; made by root, they would lock the user's own server out.

Fail closed: no live database, a database we cannot read (unreadable, locked, a shape
that is not the layout's, a timestamp we cannot parse) means we cannot judge the user, and
a user we cannot judge is not restarted. `assess` turns every such error into
`(True, "cannot judge activity: ...")`, so the canary defers that user with the reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import livedb, proc
from .backups.trees import find_user_databases
from .userfiles import UserFileError, home_owner

__all__ = ["Activity", "ActivityError", "FINAL_RUN_STATUSES", "SCHEMA_SQL", "activity_sql", "activity_argv",
           "parse_activity", "owner_of", "user_activity", "is_busy", "assess", "assess_user"]

# A V2 run whose status is one of these has ended; every other status is in flight.
FINAL_RUN_STATUSES = ("completed", "failed", "cancelled", "interrupted")

V1_SESSIONS = "projection_thread_sessions"
V2_RUNS = "orchestration_v2_projection_runs"
# Tables whose timestamps say when the user last did something, per family.
ACTIVITY_TABLES = {
    "v1": (V1_SESSIONS, "projection_threads", "projection_thread_messages"),
    "v2": (V2_RUNS, "orchestration_v2_projection_turn_items", "orchestration_v2_projection_threads",
           "orchestration_v2_projection_messages"),
}
# A table's newest change: the first of these it has (updated_at >= created_at in a row). One
# column per table keeps it one scan of each (a real database reaches ~1.1 GB).
TIME_COLUMNS = ("updated_at", "created_at", "started_at")
# What a live database of each layout must have for a verdict at all (else: unknown shape).
REQUIRED = {
    "v1": {V1_SESSIONS: ("thread_id", "active_turn_id", "updated_at"), "projection_threads": ("updated_at",)},
    "v2": {V2_RUNS: ("thread_id", "ordinal", "status"), "orchestration_v2_projection_threads": ("updated_at",)},
}
_KNOWN_TABLES = ACTIVITY_TABLES["v1"] + ACTIVITY_TABLES["v2"]

# The columns of the tables above that exist: the activity query is built from them.
SCHEMA_SQL = (
    "SELECT m.name AS tbl, p.name AS col FROM sqlite_schema AS m, pragma_table_info(m.name) AS p"
    " WHERE m.type = 'table' AND m.name IN (" + ", ".join(f"'{t}'" for t in _KNOWN_TABLES) + ")"
    " ORDER BY 1, 2;"
)


class ActivityError(RuntimeError):
    """A user's activity cannot be judged (the caller must treat the user as busy)."""


@dataclass(frozen=True)
class Activity:
    in_flight_turns: int
    last_activity: datetime | None
    in_flight_runs: int = 0
    run_statuses: tuple[str, ...] = ()  # the non-final statuses of the runs in flight


def _shape(schema_stdout: str) -> dict[str, set[str]]:
    try:
        rows = json.loads(schema_stdout) if schema_stdout.strip() else []
        shape: dict[str, set[str]] = {}
        for row in rows:
            shape.setdefault(str(row["tbl"]), set()).add(str(row["col"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise ActivityError(f"unexpected sqlite3 output {schema_stdout[:200]!r} ({exc})") from None
    return shape


def activity_sql(layout: str, shape: dict[str, set[str]]) -> str:
    """The one-row activity query for a database of `layout` with these tables/columns.

    julianday() parses ISO 8601 with `Z` and fractions; MAX over it is chronological (a plain
    MAX over text is not once fractions appear); values that do not parse are counted so they
    fail the read instead of being ignored. Each table is scanned once.
    """
    if layout not in REQUIRED:
        raise ActivityError(f"unknown layout {layout!r}")
    missing = [f"{t}.{c}" if t in shape else t for t, cols in REQUIRED[layout].items()
               for c in cols if c not in shape.get(t, set())]
    if missing:
        raise ActivityError(f"not a t3 {layout.upper()} database: no {', '.join(dict.fromkeys(missing))}")
    stamps = []
    for table in ACTIVITY_TABLES["v1"] + ACTIVITY_TABLES["v2"]:
        if table not in shape:
            continue
        c = next((c for c in TIME_COLUMNS if c in shape[table]), None)
        if c is None:
            raise ActivityError(f"unknown shape: {table} has none of {', '.join(TIME_COLUMNS)}")
        stamps.append(f"SELECT MAX(julianday({c})) AS j, SUM({c} IS NOT NULL AND julianday({c}) IS NULL) AS bad"
                      f" FROM {table}")
    if layout == "v1":
        turns = (f"(SELECT COUNT(*) FROM {V1_SESSIONS}"
                 " WHERE active_turn_id IS NOT NULL AND active_turn_id <> '')")
        runs, statuses = "0", "NULL"
    else:
        turns = "0"  # V1 sessions in a V2 database are frozen at the import
        final = ", ".join(f"'{s}'" for s in FINAL_RUN_STATUSES)
        # The newest run of each thread; a run without an ordinal cannot be ordered: it counts too.
        open_runs = (f"FROM {V2_RUNS} AS r WHERE (r.ordinal IS NULL OR r.ordinal = (SELECT MAX(o.ordinal)"
                     f" FROM {V2_RUNS} AS o WHERE o.thread_id IS r.thread_id))"
                     f" AND (r.status IS NULL OR r.status NOT IN ({final}))")
        runs = f"(SELECT COUNT(*) {open_runs})"
        statuses = (f"(SELECT group_concat(s, ',') FROM (SELECT DISTINCT coalesce(r.status, 'NULL') AS s"
                    f" {open_runs} ORDER BY s))")
    return (f"WITH stamps(j, bad) AS ({' UNION ALL '.join(stamps)})"
            f" SELECT {turns} AS in_flight_turns, {runs} AS in_flight_runs, {statuses} AS run_statuses,"
            " strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT MAX(j) FROM stamps)) AS last_activity,"
            " (SELECT COALESCE(SUM(bad), 0) FROM stamps) AS unparseable;")


def activity_argv(sqlite3: str, db_path: Path, sql: str) -> list[str]:
    """A read-only query of one database: no rc file, no symlinked database, JSON out."""
    db = str(db_path)
    if not db.startswith("/"):
        raise ActivityError(f"database path must be absolute: {db!r}")
    return [sqlite3, "-init", "/dev/null", "-bail", "-nofollow", "-readonly", "-json",
            "-cmd", ".timeout 5000", db, sql]


def _count(row: dict, key: str) -> int:
    value = row[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ActivityError(f"unexpected {key.replace('_', ' ')} {value!r}")
    return value


def parse_activity(stdout: str) -> Activity:
    """The CLI's JSON: `[{"in_flight_turns": 1, "in_flight_runs": 0, "run_statuses": null,
    "last_activity": "...Z", "unparseable": 0}]`."""
    try:
        (row,) = json.loads(stdout)
        turns, runs = _count(row, "in_flight_turns"), _count(row, "in_flight_runs")
        last, bad, statuses = row["last_activity"], row["unparseable"], row["run_statuses"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ActivityError(f"unexpected sqlite3 output {stdout[:200]!r} ({exc})") from None
    if bad:
        raise ActivityError(f"{bad} timestamp value(s) are not ISO 8601")
    if statuses is not None and not isinstance(statuses, str):
        raise ActivityError(f"unexpected run statuses {statuses!r}")
    moment = None
    if last is not None:
        try:
            moment = datetime.strptime(last, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        except (TypeError, ValueError):
            raise ActivityError(f"unexpected last activity {last!r}") from None
    return Activity(turns, moment, runs, tuple(statuses.split(",")) if statuses else ())


def owner_of(path: Path) -> proc.UserIds:
    """Who owns `path` (a user's home directory), by lstat; a symlink or non-directory is refused."""
    try:
        return home_owner(path)
    except UserFileError as exc:
        raise ActivityError(str(exc)) from None


def user_activity(db_path: Path, *, sqlite3: str, as_user: proc.UserIds | None,
                  timeout: float = 60.0, run=proc.run) -> Activity:
    """Read in-flight turns or runs and the last activity from one live database, as `as_user`.

    The layout comes from the file's name (`runner.livedb`). Raises ActivityError when the
    database cannot be read or judged.
    """
    db_path = Path(db_path)
    layout = livedb.layout_of(db_path.name)
    if layout is None:
        raise ActivityError(f"{db_path.name} is not a t3 live database (expected "
                            f"{' or '.join(livedb.LIVE_NAMES)})")

    def query(sql: str) -> str:
        try:
            return run(activity_argv(sqlite3, db_path, sql), cwd="/", timeout=timeout, as_user=as_user).stdout
        except proc.CommandError as exc:
            who = f" as uid {as_user.uid}" if as_user is not None else ""
            raise ActivityError(f"cannot read {db_path}{who}: {exc}") from exc

    return parse_activity(query(activity_sql(layout, _shape(query(SCHEMA_SQL)))))


def is_busy(activity: Activity, *, now: datetime, quiet_seconds: float) -> tuple[bool, str]:
    """(busy, reason). Busy iff a turn or run is in flight or the last activity is inside the quiet buffer."""
    if activity.in_flight_turns:
        return True, f"{activity.in_flight_turns} agent turn(s) in flight"
    if activity.in_flight_runs:
        return True, (f"{activity.in_flight_runs} agent run(s) in flight"
                      f" (status {', '.join(activity.run_statuses) or 'unknown'})")
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
    busy, reason = is_busy(activity, now=now, quiet_seconds=quiet_seconds)
    return busy, f"{reason} ({Path(db_path).name})"


def assess_user(home_dir: Path, userdata_dir: Path, *, sqlite3: str, now: datetime, quiet_seconds: float,
                run=proc.run) -> tuple[bool, str]:
    """(busy, reason) for one user: their live database, read as the owner of their home.
    Anything that keeps us from judging (no live database, a symlink, an unreadable file) is busy."""
    try:
        owner = owner_of(home_dir)
        names = find_user_databases(userdata_dir, home_dir=home_dir)
    except Exception as exc:  # noqa: BLE001 - fail closed: a user we cannot judge is not restarted
        return True, f"cannot judge activity: {exc}"
    live = livedb.live_database_name(names)
    if live is None:
        return True, f"cannot judge activity: no {' or '.join(livedb.LIVE_NAMES)} in {userdata_dir}"
    return assess(Path(userdata_dir) / live, sqlite3=sqlite3, as_user=owner, now=now,
                  quiet_seconds=quiet_seconds, run=run)
