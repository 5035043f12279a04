"""The child processes of a backup or restore, run as the owner of the files: `sqlite3`
(the online copy, the checks, the row counts), `dd` (a restore's byte copy, no-follow,
exclusive create) and `mv` (a restore's rename in userdata: it replaces a symlink, never
writes through it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from runner import proc
from runner.userfiles import UserFileError

_TABLES_SQL = ("SELECT json_group_array(name) AS names FROM (SELECT name FROM sqlite_schema"
               " WHERE type = 'table' AND name GLOB 'projection_*' ORDER BY name)")


def _sql_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in "'\"\n\r\0"):
        raise UserFileError(f"refusing path with a quote, newline or NUL in SQL: {text!r}")
    return text


class OwnerTools:
    def __init__(self, owner: proc.UserIds, *, sqlite3: str, dd: str, mv: str, timeout: float, scratch: Path):
        self.owner, self.timeout = owner, timeout
        self.programs = {"sqlite3": sqlite3, "dd": dd, "mv": mv}
        # sqlite's temporary files go to a directory on disk the owner can write, never /tmp.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                    "SQLITE_TMPDIR": str(scratch), "TMPDIR": str(scratch)}

    def run(self, argv: list[str]) -> proc.Completed:
        try:
            return proc.run(argv, env=self.env, cwd="/", timeout=self.timeout, as_user=self.owner)
        except proc.CommandError as exc:
            hint = ""
            if self.owner.uid != os.geteuid():
                hint = f"; it ran as uid {self.owner.uid}, who must be able to reach every directory on its paths"
            raise proc.CommandError(exc.argv, exc.exit_code, exc.stdout, exc.stderr,
                                    reason=exc.reason + hint) from exc

    def _sqlite(self, db: Path, *commands: str, readonly: bool = False, json_out: bool = False) -> str:
        argv = [self.programs["sqlite3"], "-bail", "-nofollow", "-init", "/dev/null"]
        if readonly:
            argv += ["-readonly"]
        if readonly or json_out:
            argv += ["-json"]
        return self.run(argv + [str(db), *commands]).stdout

    def vacuum_into(self, src: Path, dest: Path) -> list[str]:
        """Copy `src` online into `dest`; returns the source's projection tables, read by the
        same process (what `check_and_count` then expects to find in the copy)."""
        arrays = _json_arrays(self._sqlite(src, ".timeout 5000", f"VACUUM INTO '{_sql_path(dest)}'", _TABLES_SQL,
                                           json_out=True))
        try:
            (rows,) = arrays
            return list(json.loads(rows[0]["names"]))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserFileError(f"unexpected output from sqlite3 copying {src} ({exc}): {arrays!r}"[:500]) from None

    def inspect(self, db: Path) -> tuple[list[str], list[str]]:
        """(problems, projection tables). No problems means integrity_check said ok (it does all
        that quick_check does and more: quick_check alone would only repeat part of it)."""
        arrays = _json_arrays(self._sqlite(db, "PRAGMA integrity_check", _TABLES_SQL, readonly=True))
        if len(arrays) != 2:
            raise UserFileError(f"unexpected output from sqlite3 checking {db}: {arrays!r}"[:500])
        return _integrity_problems(arrays[0]), json.loads(arrays[1][0]["names"])

    def check_and_count(self, db: Path, tables: list[str]) -> tuple[list[str], dict[str, int]]:
        """`inspect` and the row count of each of `tables` in one process: (problems, counts).
        The copy's projection tables must be exactly `tables` (the source's), else a problem."""
        commands = ["PRAGMA integrity_check", _TABLES_SQL] + ([_counts_sql(tables)] if tables else [])
        arrays = _json_arrays(self._sqlite(db, *commands, readonly=True))
        try:
            if len(arrays) != len(commands):
                raise ValueError("not one answer per statement")
            problems = _integrity_problems(arrays[0])
            found = json.loads(arrays[1][0]["names"])
            counts = {tables[row["i"]]: int(row["n"]) for row in arrays[2]} if tables else {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserFileError(f"unexpected output from sqlite3 checking {db} ({exc}): {arrays!r}"[:500]) from None
        if found != tables:
            problems.append(f"the copy's projection tables {found} are not the source's {tables}")
        return problems, counts

    def dd(self, dest: Path, *, src: Path) -> None:
        self.run([self.programs["dd"], f"of={dest}", "bs=4M", "oflag=nofollow", "conv=excl,fsync", "status=none",
                  f"if={src}", "iflag=nofollow"])

    def move(self, src: Path, dest: Path) -> None:
        self.run([self.programs["mv"], "-f", "-T", "--", str(src), str(dest)])


def _integrity_problems(rows: list[dict]) -> list[str]:
    answers = [str(v) for row in rows for v in row.values()]
    return [] if answers == ["ok"] else ["integrity_check: " + "; ".join(answers[:5])]


def _counts_sql(tables: list[str]) -> str:
    return " UNION ALL ".join(f'SELECT {i} AS i, count(*) AS n FROM "{t.replace(chr(34), chr(34) * 2)}"'
                              for i, t in enumerate(tables))


def _json_arrays(text: str) -> list[list[dict]]:
    """sqlite3 -json prints one array per statement that returned rows."""
    decoder, arrays, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return arrays
        value, i = decoder.raw_decode(text, i)
        arrays.append(value)
