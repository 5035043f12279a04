"""Facts read from a t3 database itself (never from logs: newer builds log only
`SQLITE(<code>)`, so a log grep is not a migration check).

Opened read-only through a URI so a gate can never write the data it judges.
"""
from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

# Columns whose values are the user's history. Other columns may legitimately
# change in a migration (new columns, renamed status values); these may not.
PRECIOUS_COLUMNS = {
    "projection_threads": ("thread_id", "project_id", "title", "created_at"),
    "projection_thread_messages": ("message_id", "thread_id", "turn_id", "role", "text"),
    "projection_thread_sessions": ("thread_id",),
}
AUTH_TABLES = ("auth_sessions", "auth_pairing_links")


def connect_readonly(db: Path) -> sqlite3.Connection:
    uri = f"file:{quote(str(Path(db).resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]


def _columns(conn, table) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]


def precious_fingerprint(db: Path) -> dict[str, tuple[int, str]]:
    """{table: (row count, sha256 of the rows' keys and precious columns)} for every projection_* table."""
    result = {}
    with closing(connect_readonly(db)) as conn:
        for table in tables(conn):
            if not table.startswith("projection_"):
                continue
            present = _columns(conn, table)
            wanted = [c for c in PRECIOUS_COLUMNS.get(table, ()) if c in present] or present[:1]
            cols = ", ".join(f'"{c}"' for c in wanted)
            digest = hashlib.sha256()
            count = 0
            for row in conn.execute(f'SELECT {cols} FROM "{table}" ORDER BY {cols}'):
                digest.update(repr(row).encode())
                count += 1
            result[table] = (count, digest.hexdigest())
    return result


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


def describe_losses(before: dict, after: dict) -> list[str]:
    """Plain-words differences in precious data, e.g. 'projection_thread_messages lost 120 of 480 rows'."""
    losses = []
    for table, (count, digest) in sorted(before.items()):
        if table not in after:
            losses.append(f"{table} disappeared ({count} rows)")
            continue
        new_count, new_digest = after[table]
        if new_count < count:
            losses.append(f"{table} lost {count - new_count} of {count} rows")
        elif new_digest != digest and new_count == count:
            losses.append(f"{table} kept {count} rows but their keys or history columns changed")
        elif new_digest != digest:
            losses.append(f"{table} rows changed ({count} -> {new_count}, history columns differ)")
    return losses
