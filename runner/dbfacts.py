"""Facts read from a t3 database itself (never from logs: newer builds log only
`SQLITE(<code>)`, so a log grep is not a migration check).

Opened read-only through a URI so nothing here can write the data it judges. The
health gate (gates/) and the runner both read these facts; they live in the runner
so the runner never imports the gates.

Precious history is every `projection_*` table (layout V1, and frozen inside a V2
database) and every `orchestration_v2_*` table (layout V2); see runner/livedb.py for
the two layouts and which file is live.
"""
from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from .livedb import live_database_name

PRECIOUS_PREFIXES = ("projection_", "orchestration_v2_")
V2_PREFIX = "orchestration_v2_"
# Columns whose values are the user's history, per table: identity and content. Other
# columns may legitimately change (new columns, renamed status values, a run's status, a
# streamed turn item's payload, and timestamps: migration 60 rewrites non-canonical ones on
# both sides of the V2 import); these may not. A table not named here is judged by its
# first column (its key).
PRECIOUS_COLUMNS = {
    "projection_threads": ("thread_id", "project_id", "title"),
    "projection_thread_messages": ("message_id", "thread_id", "turn_id", "role", "text"),
    "projection_thread_sessions": ("thread_id",),
    "orchestration_v2_projection_threads": ("thread_id", "project_id", "title"),
    "orchestration_v2_projection_messages": ("message_id", "thread_id", "role", "text"),
    "orchestration_v2_projection_runs": ("thread_id", "ordinal"),
    "orchestration_v2_projection_turn_items": ("turn_item_id", "thread_id"),
}
AUTH_TABLES = ("auth_sessions", "auth_pairing_links")
# What the V1 -> V2 import must carry: V1 table -> (its key, the V2 table that receives it).
IMPORTED_INTO_V2 = {
    "projection_threads": ("thread_id", "orchestration_v2_projection_threads"),
    "projection_thread_messages": ("message_id", "orchestration_v2_projection_messages"),
}


def _readonly_uri(db: Path) -> str:
    return f"file:{quote(str(Path(db).resolve()))}?mode=ro"


def connect_readonly(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(_readonly_uri(db), uri=True, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]


def _columns(conn, table) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]


def live_database_in(userdata: Path) -> Path | None:
    """The database a build opens in this `userdata/` directory (statev2.sqlite once it
    exists, else state.sqlite), or None when there is neither."""
    name = live_database_name(p.name for p in Path(userdata).iterdir() if p.is_file())
    return Path(userdata) / name if name else None


def layout_of_database(db: Path) -> str:
    """'v2' for a database that holds `orchestration_v2_*` tables, else 'v1': what a file
    is by its content, whatever it is named (a backup's name is not `statev2.sqlite`)."""
    with closing(connect_readonly(db)) as conn:
        return "v2" if any(t.startswith(V2_PREFIX) for t in tables(conn)) else "v1"


def precious_fingerprint(db: Path) -> dict[str, tuple[int, str]]:
    """{table: (row count, sha256 of the rows' precious columns)} for every precious table."""
    result = {}
    with closing(connect_readonly(db)) as conn:
        for table in tables(conn):
            if not table.startswith(PRECIOUS_PREFIXES):
                continue
            present = _columns(conn, table)
            wanted = [c for c in PRECIOUS_COLUMNS.get(table, ()) if c in present] or present[:1]
            result[table] = _rows_digest(conn, table, wanted)
    return result


def _rows_digest(conn, table: str, columns: list[str]) -> tuple[int, str]:
    cols = ", ".join(f'"{c}"' for c in columns)
    digest = hashlib.sha256()
    count = 0
    for row in conn.execute(f'SELECT {cols} FROM "{table}" ORDER BY {cols}'):
        digest.update(repr(row).encode())
        count += 1
    return count, digest.hexdigest()


def content_fingerprint(db: Path) -> str:
    """sha256 of the schema and every row of every table: equal means nothing was written
    (read through SQLite, so content still in a WAL file counts, and a mere open does not)."""
    digest = hashlib.sha256()
    with closing(connect_readonly(db)) as conn:
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master ORDER BY type, name"):
            digest.update(repr((name, sql)).encode())
        for table in tables(conn):
            count, rows = _rows_digest(conn, table, _columns(conn, table))
            digest.update(f"{table}:{count}:{rows}".encode())
    return digest.hexdigest()


def migration_level(db: Path) -> int:
    """Highest recorded migration id; 0 for a database that has none yet."""
    with closing(connect_readonly(db)) as conn:
        if "effect_sql_migrations" not in tables(conn):
            return 0
        return conn.execute("SELECT COALESCE(MAX(migration_id), 0) FROM effect_sql_migrations").fetchone()[0]


def integrity_problems(db: Path) -> list[str]:
    """Everything `integrity_check` and `foreign_key_check` report; empty means clean."""
    with closing(connect_readonly(db)) as conn:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"foreign key violation in {r[0]} rowid {r[1]} -> {r[2]}"
                     for r in conn.execute("PRAGMA foreign_key_check")]
    return problems


def auth_row_counts(db: Path) -> dict[str, int]:
    with closing(connect_readonly(db)) as conn:
        present = set(tables(conn))
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in AUTH_TABLES if t in present}


def describe_losses(before: dict, after: dict, *, across_import: bool = False) -> list[str]:
    """Plain-words differences in precious data, for every table of `before`, e.g.
    'projection_thread_messages lost 120 of 480 rows'; across the V1 -> V2 import (V1 tables
    of the old file against the same tables kept, frozen, inside the new one) e.g.
    'V1 -> V2 import lost 4 of 48 rows of the frozen V1 table projection_thread_messages'."""
    losses = []
    for table, (count, digest) in sorted(before.items()):
        lost = _loss(table, count, digest, after.get(table))
        if lost is None:
            continue
        kind, new_count = lost
        if across_import:
            losses.append("V1 -> V2 import " + {
                "gone": f"dropped the frozen V1 table {table} ({count} rows)",
                "fewer": f"lost {count - new_count} of {count} rows of the frozen V1 table {table}",
                "changed": f"kept {count} rows of the frozen V1 table {table} but changed their history columns",
                "differ": f"changed the frozen V1 table {table} ({count} -> {new_count} rows, history columns differ)",
            }[kind])
        else:
            losses.append({
                "gone": f"{table} disappeared ({count} rows)",
                "fewer": f"{table} lost {count - new_count} of {count} rows",
                "changed": f"{table} kept {count} rows but their keys or history columns changed",
                "differ": f"{table} rows changed ({count} -> {new_count}, history columns differ)",
            }[kind])
    return losses


def _loss(table: str, count: int, digest: str, after: tuple[int, str] | None) -> tuple[str, int] | None:
    if after is None:
        return "gone", 0
    new_count, new_digest = after
    if new_count < count:
        return "fewer", new_count
    if new_digest == digest:
        return None
    return ("changed" if new_count == count else "differ"), new_count


def import_losses(v1_db: Path, v2_db: Path) -> list[str]:
    """What the V1 -> V2 import failed to carry into the V2 tables (the history a V2 build
    shows), by key, e.g. 'V1 -> V2 import lost 4 of 48 projection_thread_messages rows'."""
    losses = []
    with closing(connect_readonly(v2_db)) as conn:
        conn.execute("ATTACH DATABASE ? AS v1", (_readonly_uri(v1_db),))
        v1_tables = {r[0] for r in conn.execute("SELECT name FROM v1.sqlite_master WHERE type='table'")}
        v2_tables = set(tables(conn))
        for v1_table, (key, v2_table) in IMPORTED_INTO_V2.items():
            if v1_table not in v1_tables:
                continue
            total = conn.execute(f'SELECT COUNT(*) FROM v1."{v1_table}"').fetchone()[0]
            if v2_table not in v2_tables:
                if total:
                    losses.append(f"V1 -> V2 import lost {total} of {total} {v1_table} rows (no {v2_table})")
                continue
            # NOT EXISTS, not NOT IN: one NULL key on the V2 side would make NOT IN match nothing.
            missing = conn.execute(f'SELECT COUNT(*) FROM v1."{v1_table}" AS old WHERE NOT EXISTS '
                                   f'(SELECT 1 FROM main."{v2_table}" AS new WHERE new."{key}" = old."{key}")'
                                   ).fetchone()[0]
            if missing:
                losses.append(f"V1 -> V2 import lost {missing} of {total} {v1_table} rows")
    return losses
