"""Which databases seed the health gate: every user's own live database.

`--seed-db` names them, as the runner passes them: `user=path` entries, comma-separated
(`wizard=/b/wizard/state-prebump-….sqlite,emo=/b/emo/statev2-prebump-….sqlite,emo=/b/emo/state-prebump-….sqlite`).
The entries of one user are that user's seed: a V2 user's live `statev2.sqlite` and the
`state.sqlite` frozen beside it at the import (a faithful copy of the base dir needs both).
Each case is named after its user (`populated-emo`), so `pytest gates/test_health.py -k emo`
checks one user. A plain path still works for people (`--seed-db /tmp/copy.sqlite`: case
`populated-copy`, or `populated-copy-1`, `-2`, … for several).

Without `--seed-db` the seeds are every user's newest pre-bump backups (or `--seed-user`'s
only): the databases of that user's newest backup batch.

A file's place in the throwaway base dir is read from its content, not its name (a backup
is named `statev2-prebump-<version>-<ts>.sqlite`): `orchestration_v2_*` tables make it the
`statev2.sqlite`, anything else the `state.sqlite`.
"""
from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from runner.backups import catalogue
from runner.backups.trees import BackupError
from runner.dbfacts import layout_of_database, precious_fingerprint
from runner.livedb import LIVE_NAMES, V1_NAME, V2_NAME, live_database_name
from runner.usermap import OS_USER

from runner.t3client import GateFailure
from .throwaway import copy_database

FRESH_CASE = "fresh-empty"
_USER_ENTRY = re.compile(rf"({OS_USER})=(.+)")
NAME_OF_LAYOUT = {"v1": V1_NAME, "v2": V2_NAME}


@dataclass(frozen=True)
class Seed:
    """One populated case: whose data, and which files (none: found in the user's backups)."""

    case: str
    user: str | None
    files: tuple[Path, ...] = ()

    @property
    def shown(self) -> str:
        return self.user or ", ".join(str(f) for f in self.files)


def parse_seed_option(text: str) -> list[Seed]:
    """`--seed-db` as seeds, in order of first appearance; ValueError names a bad entry."""
    by_user: dict[str, list[Path]] = {}
    plain: list[Path] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        named = _USER_ENTRY.fullmatch(entry)
        if named:
            by_user.setdefault(named.group(1), []).append(Path(named.group(2)))
        elif "=" in entry.split("/", 1)[0]:
            raise ValueError(f"--seed-db entry {entry!r}: the part before '=' is not an OS user name")
        else:
            plain.append(Path(entry))
    seeds = [Seed(f"populated-{user}", user, tuple(files)) for user, files in by_user.items()]
    if len(plain) == 1:
        seeds.append(Seed("populated-copy", None, (plain[0],)))
    else:
        seeds += [Seed(f"populated-copy-{i + 1}", None, (path,)) for i, path in enumerate(plain)]
    return seeds


def default_seeds(users: list[str]) -> list[Seed]:
    """One case per OS user, its files found in the backups when the case runs."""
    return [Seed(f"populated-{user}", user) for user in users]


def backed_up_files(backup_root: Path, user: str) -> tuple[Path, ...]:
    """The user's newest pre-bump backup batch: the newest backup of each live-database name
    taken with the newest one (a statev2.sqlite set aside by a rollback across the import
    leaves older statev2 backups behind, which are no longer that user's data)."""
    __tracebackhide__ = True
    try:
        found = [r for r in (catalogue.latest_backup(backup_root, user, name) for name in LIVE_NAMES) if r]
    except BackupError as exc:
        raise GateFailure(f"no seed database for {user}: {exc}") from None
    if not found:
        raise GateFailure(f"no seed database: no pre-bump backup of {user} under {backup_root}; pass --seed-db")
    newest = max(r.taken_at for r in found)
    return tuple(r.path for r in found if r.taken_at == newest)


def place_seed(seed: Seed, files: tuple[Path, ...], userdata: Path) -> Path:
    """Copy a seed's files into a throwaway `userdata/` under the names a build opens;
    returns the live one. Fails closed on a missing file, two files of one layout, a seed
    without a live database, or (for a seed given by hand) one without history."""
    __tracebackhide__ = True
    placed: dict[str, Path] = {}
    for source in files:
        if not source.is_file():
            raise GateFailure(f"seed database {source} does not exist")
        name = NAME_OF_LAYOUT[layout_of_database(source)]
        if name in placed:
            raise GateFailure(f"seed of {seed.shown} gives two {name} databases: {placed[name]} and {source}")
        placed[name] = source
    live_name = live_database_name(placed)
    if live_name is None:
        raise GateFailure(f"seed of {seed.shown} names no database")
    for name, source in placed.items():
        copy_database(source, userdata / name)
    live = userdata / live_name
    # A seed named by user is that user's real starting point, checked even when it is empty;
    # one given by hand must hold history, or the populated case would prove nothing.
    if seed.user is None and not any(count for count, _ in precious_fingerprint(live).values()):
        raise GateFailure(f"seed database {placed[live_name]} holds no history; the gate needs a populated copy")
    return live


def auth_tables_of(conn: sqlite3.Connection) -> list[str]:
    """Every auth table of a database (`auth_sessions`, `auth_pairing_links` and any other
    `auth_*`, V1 or V2): the contract calls them disposable."""
    return [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'auth\\_%' ESCAPE '\\' ORDER BY name")]


def scrub_credentials(db: Path) -> dict[str, int]:
    """Delete every session and pairing credential from a private copy (never a user's own
    file), so no browser cookie or pairing link of a real user is valid against a throwaway
    server; returns the rows each table held. The gate's own mint then makes the only session."""
    with closing(sqlite3.connect(db, timeout=5.0)) as conn:
        conn.execute("PRAGMA secure_delete = ON")  # the deleted secrets do not linger in free pages
        counts = {}
        with conn:
            for table in auth_tables_of(conn):
                counts[table] = conn.execute(f'DELETE FROM "{table}"').rowcount
    return counts
