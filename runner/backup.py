"""Pre-bump backups of every user's SQLite databases, and whole-file verified restores.

Root discipline. Everything under `<home>/.t3/userdata/` and `<backup_root>/<user>/` is
controlled by that user, so:

* root opens those trees with no-follow, directory-relative descriptors (`runner.userfiles`)
  below a trusted, root-owned parent; a symlinked home, `.t3`, `userdata`, backup dir or
  database is refused, never followed; the owner is whoever owns the home directory;
* every file in them is created, copied and renamed by a child process running as that
  owner (`proc.run(..., as_user=owner)`): `sqlite3` for the online copy and the checks,
  `dd` for the byte copy of a restore and the manifest, `mv` for renames (rename(2)
  replaces a symlink, never writes through it). The `sqlite3` child also gets `-nofollow`,
  which refuses a symlink anywhere in the paths it is given (they are canonical);
* root itself only reads, fstats, fchmods/fchowns, fsyncs through descriptors, and makes
  directories or unlinks entries relative to a directory descriptor; after each rename it
  checks that the final name is the very inode it verified.

A backup is `VACUUM INTO` a temporary name (one read transaction: a consistent snapshot
that includes committed WAL content and never blocks the running serve), checked with
`PRAGMA integrity_check` and `quick_check`, counted (`projection_*` rows), hashed, fsynced,
then renamed to `<stem>-prebump-<version>-<UTC ts><ext>`. Its manifest
`.<backup name>.json` (sha256, size, counts) is written *before* that rename, so a backup
under its final name always has a complete manifest; `latest_backup` reads it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Mapping

from runner import proc
from runner.userfiles import (NotFound, UserFileError, close_quietly, describe, ensure_owned_dir,
                              free_bytes_fd, lstat_at, open_dir_at, open_file_at, open_trusted_dir,
                              read_head, same_file, sha256_fd, unlink_at)

__all__ = ["BackupError", "BackupRecord", "RestoreReport", "find_user_databases", "check_free_space",
           "backup_user_databases", "restore_user_database", "set_aside_database", "latest_backup",
           "backup_file_name", "prebump_backups", "copy_backup_out", "discard_backup",
           "remove_backup_dir_if_empty", "backup_bytes_needed", "BACKUP_KINDS"]

log = logging.getLogger("t3-autoupdate.backup")

SQLITE_MAGIC = b"SQLite format 3\x00"
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
DB_LIKE_SUFFIXES = (".sqlite", ".sqlite3", ".db", ".db3")
TMP_PREFIX = ".t3-autoupdate-tmp-"          # temporaries in a backup dir
RESTORE_PREFIX = ".t3-autoupdate-restore-"  # temporaries in userdata
TS_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_MARGIN = 1.5
#: prebump: a run's restore point; daily: the daily job's; dryrun: a preview's seed, copied out
#: and discarded at once (its own name: a left-over one is never a restore point nor prunes one).
BACKUP_KINDS = ("prebump", "daily", "dryrun")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_DB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = r"[0-9A-Za-z][0-9A-Za-z.+-]{0,127}"
_VERSION_RE = re.compile(_VERSION)
_MANIFEST_MAX = 64 * 1024
_TABLES_SQL = ("SELECT json_group_array(name) AS names FROM (SELECT name FROM sqlite_schema"
               " WHERE type = 'table' AND name GLOB 'projection_*' ORDER BY name)")


class BackupError(Exception):
    """A backup or restore could not be done safely; the message names user and file."""


@dataclass(frozen=True)
class BackupRecord:
    os_user: str
    db_name: str
    path: Path
    version: str
    taken_at: datetime
    bytes: int
    sha256: str
    precious_counts: Mapping[str, int] = field(default_factory=dict, hash=False)
    serving_version: str | None = None  # the build the user ran when the copy was taken (None: not recorded)


@dataclass(frozen=True)
class RestoreReport:
    os_user: str
    db_name: str
    kept_aside: Path | None             # the replaced database, None if there was none
    rows_since_backup: dict[str, int] | None = field(hash=False)  # per projection table: replaced minus backup
    restored_sha256: str
    backup_path: Path


@dataclass
class _Dir:
    fd: int
    path: Path  # canonical


@dataclass
class _Copy:
    bytes: int
    sha256: str
    counts: dict[str, int] | None
    problems: list[str]
    copy_seconds: float
    verify_seconds: float


# --- names and validation ---------------------------------------------------------------

def _check(pattern: re.Pattern, value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BackupError(f"invalid {what} {value!r}")
    return value


def _split(db_name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(db_name)
    return (stem, ext) if stem else (db_name, "")


def backup_file_name(db_name: str, kind: str, version: str, ts: str) -> str:
    """`state.sqlite` -> `state-<kind>-<version>-<ts>.sqlite` (kind: prebump, rolledback)."""
    stem, ext = _split(db_name)
    return f"{stem}-{kind}-{version}-{ts}{ext}"


def _name_re(db_name: str, kind: str) -> re.Pattern:
    stem, ext = _split(db_name)
    return re.compile(rf"{re.escape(stem)}-{kind}-(?P<version>{_VERSION})-(?P<ts>\d{{8}}T\d{{6}}Z){re.escape(ext)}")


def _manifest_name(backup_name: str) -> str:
    return f".{backup_name}.json"


def _timestamp(now: datetime | None) -> tuple[datetime, str]:
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now = now.astimezone(timezone.utc).replace(microsecond=0)
    return now, now.strftime(TS_FORMAT)


def _sql_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in "'\"\n\r\0"):
        raise UserFileError(f"refusing path with a quote, newline or NUL in SQL: {text!r}")
    return text


@contextlib.contextmanager
def _errors(os_user: str | None, what: str):
    """Every failure leaves as a BackupError naming the user and the file."""
    try:
        yield
    except BackupError:
        raise
    except (UserFileError, proc.CommandError, OSError, ValueError) as exc:
        raise BackupError(f"{os_user + ': ' if os_user else ''}{what}: {exc}") from exc


# --- child processes, as the owner ------------------------------------------------------

class _Tools:
    def __init__(self, owner: proc.UserIds, *, sqlite3: str, dd: str, mv: str, timeout: float, scratch: Path):
        self.owner, self.timeout = owner, timeout
        self.programs = {"sqlite3": sqlite3, "dd": dd, "mv": mv}
        # sqlite's temporary files go to a directory on disk the owner can write, never /tmp.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                    "SQLITE_TMPDIR": str(scratch), "TMPDIR": str(scratch)}

    def run(self, argv: list[str], *, input: bytes | None = None) -> proc.Completed:
        try:
            return proc.run(argv, env=self.env, cwd="/", timeout=self.timeout, as_user=self.owner, input=input)
        except proc.CommandError as exc:
            hint = ""
            if self.owner.uid != os.geteuid():
                hint = f"; it ran as uid {self.owner.uid}, who must be able to reach every directory on its paths"
            raise proc.CommandError(exc.argv, exc.exit_code, exc.stdout, exc.stderr,
                                    reason=exc.reason + hint) from exc

    def _sqlite(self, db: Path, *commands: str, readonly: bool = False) -> str:
        argv = [self.programs["sqlite3"], "-bail", "-nofollow", "-init", "/dev/null"]
        if readonly:
            argv += ["-readonly", "-json"]
        return self.run(argv + [str(db), *commands]).stdout

    def vacuum_into(self, src: Path, dest: Path) -> None:
        self._sqlite(src, ".timeout 5000", f"VACUUM INTO '{_sql_path(dest)}'")

    def inspect(self, db: Path) -> tuple[list[str], list[str]]:
        """(problems, projection tables). No problems means integrity_check and quick_check said ok."""
        arrays = _json_arrays(self._sqlite(db, "PRAGMA integrity_check", "PRAGMA quick_check", _TABLES_SQL,
                                           readonly=True))
        if len(arrays) != 3:
            raise UserFileError(f"unexpected output from sqlite3 checking {db}: {arrays!r}"[:500])
        problems = []
        for check, rows in zip(("integrity_check", "quick_check"), arrays):
            answers = [str(v) for row in rows for v in row.values()]
            if answers != ["ok"]:
                problems.append(f"{check}: " + "; ".join(answers[:5]))
        tables = json.loads(arrays[2][0]["names"])
        return problems, tables

    def counts(self, db: Path, tables: list[str]) -> dict[str, int]:
        if not tables:
            return {}
        sql = " UNION ALL ".join(f'SELECT {i} AS i, count(*) AS n FROM "{t.replace(chr(34), chr(34) * 2)}"'
                                 for i, t in enumerate(tables))
        arrays = _json_arrays(self._sqlite(db, sql, readonly=True))
        return {tables[row["i"]]: int(row["n"]) for row in arrays[0]}

    def dd(self, dest: Path, *, src: Path | None = None, data: bytes | None = None) -> None:
        argv = [self.programs["dd"], f"of={dest}", "bs=4M", "oflag=nofollow", "conv=excl,fsync", "status=none"]
        if src is not None:
            argv += [f"if={src}", "iflag=nofollow"]
        self.run(argv, input=data)

    def move(self, src: Path, dest: Path) -> None:
        self.run([self.programs["mv"], "-f", "-T", "--", str(src), str(dest)])


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


# --- opening the trees ------------------------------------------------------------------

def _open_user_tree(stack: contextlib.ExitStack, os_user: str, userdata_dir, home_dir) -> tuple[_Dir, proc.UserIds]:
    """Open userdata with no-follow below the home's (trusted) parent; owner = the home's owner."""
    userdata = Path(userdata_dir)
    home = Path(home_dir) if home_dir is not None else userdata.parent.parent
    if not (userdata.is_absolute() and home.is_absolute()):
        raise UserFileError(f"{userdata} and {home} must be absolute paths")
    try:
        parts = userdata.relative_to(home).parts
    except ValueError:
        raise UserFileError(f"{userdata} is not inside the home {home}") from None
    top_fd, top = open_trusted_dir(home.parent)
    stack.callback(os.close, top_fd)
    fd = open_dir_at(top_fd, home.name, home)
    stack.callback(os.close, fd)
    st = os.fstat(fd)
    owner = proc.UserIds(st.st_uid, st.st_gid, os_user)
    if os.geteuid() != 0 and owner.uid != os.geteuid():
        raise UserFileError(f"{home} belongs to uid {owner.uid}: only root can act on another user's files")
    path = top / home.name
    for part in parts:
        _check_tree_dir(st, owner, path)
        path = path / part
        fd = open_dir_at(fd, part, path)
        stack.callback(os.close, fd)
        st = os.fstat(fd)
    _check_tree_dir(st, owner, path)
    return _Dir(fd, path), owner


def _check_tree_dir(st: os.stat_result, owner: proc.UserIds, shown: Path) -> None:
    if st.st_uid not in (owner.uid, 0):
        raise UserFileError(f"refusing {shown}: owned by uid {st.st_uid}, but the home by uid {owner.uid}")
    # A root-owned tree makes the children run as root: nobody else may be able to plant links in it.
    if owner.uid == 0 and st.st_mode & 0o022:
        raise UserFileError(f"refusing {shown}: root-owned home tree writable by group or others")


def _open_backup_dir(stack: contextlib.ExitStack, backup_root, os_user: str,
                     owner: proc.UserIds | None) -> _Dir | None:
    """`<backup_root>/<os_user>`, mode 0700 and owned by the owner (created when owner is given)."""
    try:
        root_fd, root = open_trusted_dir(backup_root)
    except NotFound:
        if owner is None:
            return None
        os.mkdir(backup_root, 0o700)
        root_fd, root = open_trusted_dir(backup_root)
        os.fchmod(root_fd, 0o711)  # searchable, not listable: each user reaches only their own dir
    stack.callback(os.close, root_fd)
    shown = root / os_user
    if owner is not None and owner.uid != os.geteuid() and not os.fstat(root_fd).st_mode & 0o011:
        raise UserFileError(f"{root} must be searchable (e.g. mode 0711): the copies run as uid {owner.uid}")
    if owner is None:
        try:
            fd = open_dir_at(root_fd, os_user, shown)
        except NotFound:
            return None
    else:
        fd = ensure_owned_dir(root_fd, os_user, shown, owner.uid, owner.gid, 0o700)
    stack.callback(os.close, fd)
    return _Dir(fd, shown)


def _scan_databases(tree: _Dir) -> list[str]:
    found = []
    for name in sorted(os.listdir(tree.fd)):
        if name.startswith((TMP_PREFIX, RESTORE_PREFIX)) or name.endswith(SIDE_SUFFIXES):
            continue
        shown = tree.path / name
        st = lstat_at(tree.fd, name)
        if st is None:
            continue
        if not stat.S_ISREG(st.st_mode):
            if name.lower().endswith(DB_LIKE_SUFFIXES):
                raise UserFileError(f"refusing {describe(st)} {shown}: a database must be a regular file")
            continue
        fd = open_file_at(tree.fd, name, shown)
        try:
            head = read_head(fd, len(SQLITE_MAGIC))
        finally:
            os.close(fd)
        if head != SQLITE_MAGIC:
            continue
        if not _DB_NAME_RE.fullmatch(name):
            raise UserFileError(f"refusing database {shown}: unexpected characters in its name")
        found.append(name)
    return found


SQLITE_HEADER = 100


def database_bytes(header: bytes, file_size: int) -> int:
    """What an online copy of a database needs: page count x page size as SQLite itself reckons
    them from the 100-byte header (the in-header page count when valid: non-zero and its
    version-valid-for equals the change counter; else the file size in whole pages). Not the
    file's size: a sparse tail past the last page is never copied."""
    if len(header) < SQLITE_HEADER or not header.startswith(SQLITE_MAGIC):
        return file_size
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return file_size  # not a valid header: SQLite refuses it, the copy fails and says so
    pages = int.from_bytes(header[28:32], "big")
    if not pages or header[24:28] != header[92:96]:
        pages = -(-file_size // page_size)
    return pages * page_size


def _database_bytes_at(dir_fd: int, name: str, shown: Path) -> int:
    fd = open_file_at(dir_fd, name, shown)
    try:
        return database_bytes(read_head(fd, SQLITE_HEADER), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _size_at(dir_fd: int, name: str) -> int:
    st = lstat_at(dir_fd, name)
    return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0


def _remove_stale(d: _Dir, prefix: str) -> None:
    """Temporaries a killed run left behind (the run lock guarantees they are not in use)."""
    for name in os.listdir(d.fd):
        if name.startswith(prefix):
            st = lstat_at(d.fd, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                unlink_at(d.fd, name)
                log.info("removed stale temporary %s", d.path / name)


def _remove_quietly(d: _Dir, names: list[str]) -> None:
    for name in names:
        try:
            unlink_at(d.fd, name)
        except OSError as exc:
            log.warning("could not remove %s: %s", d.path / name, exc)


# --- the pieces of a copy ---------------------------------------------------------------

def _take_ownership(fd: int, owner: proc.UserIds, shown: Path) -> None:
    """The file our child just created: 0600, owned by the owner, one link."""
    st = os.fstat(fd)
    creator = owner.uid if os.geteuid() == 0 else os.geteuid()
    if st.st_uid != creator or st.st_nlink != 1:
        raise UserFileError(f"refusing {shown}: not the file just created (uid {st.st_uid}, {st.st_nlink} links)")
    if os.geteuid() == 0 and st.st_gid != owner.gid:
        os.fchown(fd, owner.uid, owner.gid)
    os.fchmod(fd, 0o600)


def _move_into_place(tools: _Tools, d: _Dir, tmp: str, final: str, fd: int) -> None:
    tools.move(d.path / tmp, d.path / final)
    st = lstat_at(d.fd, final)
    if st is None or not same_file(st, os.fstat(fd)) or lstat_at(d.fd, tmp) is not None:
        raise UserFileError(f"{d.path / final} is not the verified file after the rename")
    os.fsync(d.fd)


def _write_manifest(tools: _Tools, bdir: _Dir, backup_name: str, content: dict) -> str:
    name = _manifest_name(backup_name)
    data = (json.dumps(content, indent=1, sort_keys=True) + "\n").encode()
    unlink_at(bdir.fd, name)  # an orphan of a killed run: its backup never got its final name
    tools.dd(bdir.path / name, data=data)
    fd = open_file_at(bdir.fd, name, bdir.path / name)
    try:
        _take_ownership(fd, tools.owner, bdir.path / name)
        if read_head(fd, len(data) + 1) != data:
            raise UserFileError(f"{bdir.path / name}: manifest does not read back as written")
    finally:
        os.close(fd)
    return name


def _copy_into_backup_dir(tools: _Tools, src: Path, bdir: _Dir, final: str, *, require_ok: bool,
                          manifest: Callable[[_Copy], dict] | None = None) -> _Copy:
    """Online copy of the database `src` to `bdir/final`, verified, hashed, fsynced, renamed."""
    if lstat_at(bdir.fd, final) is not None:
        raise UserFileError(f"{bdir.path / final} already exists")
    tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}-{final}"
    leftovers, fd = [tmp, tmp + "-journal"], None
    try:
        started = time.monotonic()
        tools.vacuum_into(src, bdir.path / tmp)
        copied = time.monotonic()
        fd = open_file_at(bdir.fd, tmp, bdir.path / tmp)
        _take_ownership(fd, tools.owner, bdir.path / tmp)
        problems, counts = [], None
        try:
            problems, tables = tools.inspect(bdir.path / tmp)
            if not problems:
                counts = tools.counts(bdir.path / tmp, tables)
        except (proc.CommandError, UserFileError) as exc:
            problems = problems or [f"check failed: {exc}"]
        if problems and require_ok:
            raise UserFileError(f"the copy failed verification: {' | '.join(problems)}")
        # (A copy kept aside is kept even when it does not check out: it may hold the only newer rows.)
        facts = _Copy(os.fstat(fd).st_size, sha256_fd(fd), counts, problems,
                      copied - started, time.monotonic() - copied)
        os.fsync(fd)
        if manifest is not None:
            leftovers.append(_manifest_name(final))
            _write_manifest(tools, bdir, final, manifest(facts))
        _move_into_place(tools, bdir, tmp, final, fd)
        return facts
    except BaseException:
        _remove_quietly(bdir, leftovers)
        raise
    finally:
        close_quietly(fd)


# --- public API -------------------------------------------------------------------------

def find_user_databases(userdata_dir, *, home_dir=None) -> list[str]:
    """Names of the SQLite databases directly in userdata (by header magic), sorted.

    A symlink or special file with a database-like name is refused (BackupError).
    `home_dir` defaults to `userdata_dir/../..` (`<home>/.t3/userdata`).
    """
    with contextlib.ExitStack() as stack, _errors(None, f"scanning {userdata_dir}"):
        tree, _ = _open_user_tree(stack, "", userdata_dir, home_dir)
        return _scan_databases(tree)


def _bytes_needed(tree: _Dir, names: list[str]) -> int:
    return sum(_database_bytes_at(tree.fd, n, tree.path / n) + _size_at(tree.fd, n + "-wal") for n in names)


def backup_bytes_needed(userdata_dir, *, home_dir=None) -> int:
    """What one backup set of a user's databases needs (page count x page size, plus each WAL),
    read no-follow as `backup_user_databases` reads it (`t3-autoupdate doctor` asks ahead)."""
    with contextlib.ExitStack() as stack, _errors(None, f"sizing {userdata_dir}"):
        tree, _ = _open_user_tree(stack, "", userdata_dir, home_dir)
        return _bytes_needed(tree, _scan_databases(tree))


def _default_free(path) -> int:
    if isinstance(path, int):
        return free_bytes_fd(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_free_space(dest_dir, needed_bytes: int, margin: float = DEFAULT_MARGIN, *,
                     free_bytes: Callable[[object], int] | None = None) -> int:
    """Raise BackupError unless `dest_dir` has needed_bytes x margin free; returns the free bytes."""
    required = int(needed_bytes * margin)
    free = (free_bytes or _default_free)(dest_dir)
    if free < required:
        raise BackupError(f"not enough free space in {dest_dir}: need {required} bytes ({_mb(required)};"
                          f" {needed_bytes} bytes x margin {margin:g}), only {free} bytes free ({_mb(free)})")
    return free


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def backup_user_databases(os_user: str, userdata_dir, backup_root, version: str, *, sqlite3: str = "sqlite3",
                          dd: str = "dd", mv: str = "mv", timeout: float = 1800, keep: int = 3,
                          now: datetime | None = None, margin: float = DEFAULT_MARGIN,
                          free_bytes: Callable[[object], int] | None = None,
                          home_dir=None, kind: str = "prebump", serving: str | None = None) -> list[BackupRecord]:
    """Back up every database of one user online, as that user, verified; prune to `keep`.

    `kind` names the copies: "prebump" (before a bump: the restore points of a rollback) or
    "daily" (the daily job) or "dryrun" (a preview's seed, copied out and discarded at once). Pruning counts and removes copies of the same kind only, so a
    daily backup never prunes a pre-bump restore point. `serving`: the build the user runs
    now, recorded in each manifest: the backups taken when a user left a build are the ones a
    rollback to that build restores.
    """
    if kind not in BACKUP_KINDS:
        raise BackupError(f"invalid backup kind {kind!r}")
    _check(_USER_RE, os_user, "OS user name")
    _check(_VERSION_RE, version, "version")
    if serving is not None:
        _check(_VERSION_RE, serving, "serving version")
    if keep < 1:
        raise BackupError(f"keep must be at least 1, not {keep}")
    taken_at, ts = _timestamp(now)
    with contextlib.ExitStack() as stack, _errors(os_user, f"backup of {userdata_dir}"):
        tree, owner = _open_user_tree(stack, os_user, userdata_dir, home_dir)
        names = _scan_databases(tree)
        if not names:
            log.info("backup none user=%s userdata=%s (no database)", os_user, tree.path)
            return []
        needed = _bytes_needed(tree, names)
        bdir = _open_backup_dir(stack, backup_root, os_user, owner)
        _remove_stale(bdir, TMP_PREFIX)
        while any(lstat_at(bdir.fd, backup_file_name(n, kind, version, ts)) is not None for n in names):
            taken_at, ts = _timestamp(taken_at + timedelta(seconds=1))  # a killed run's backup took this second
        try:
            check_free_space(bdir.path, needed, margin, free_bytes=free_bytes or (lambda _p: free_bytes_fd(bdir.fd)))
        except BackupError as exc:
            raise BackupError(f"{os_user}: {exc} (databases {', '.join(names)}, by page count x page size)") from None
        tools = _Tools(owner, sqlite3=sqlite3, dd=dd, mv=mv, timeout=timeout, scratch=bdir.path)
        records = []
        for name in names:
            final = backup_file_name(name, kind, version, ts)
            with _errors(os_user, f"backup of {tree.path / name} to {bdir.path / final}"):
                def manifest(c: _Copy, name=name, final=final) -> dict:
                    return {"format": 1, "os_user": os_user, "db_name": name, "file": final, "version": version,
                            "taken_at": taken_at.isoformat(), "bytes": c.bytes, "sha256": c.sha256,
                            "precious_counts": c.counts, "serving_version": serving}
                c = _copy_into_backup_dir(tools, tree.path / name, bdir, final, require_ok=True, manifest=manifest)
            record = BackupRecord(os_user, name, bdir.path / final, version, taken_at, c.bytes, c.sha256,
                                  dict(c.counts or {}), serving)
            log.info("backup ok user=%s db=%s file=%s bytes=%d sha256=%s precious=%s copy_s=%.2f verify_s=%.2f",
                     os_user, name, record.path, c.bytes, c.sha256, _fmt_counts(record.precious_counts),
                     c.copy_seconds, c.verify_seconds)
            records.append(record)
        for record in records:
            _prune(bdir, record.db_name, keep, {r.path.name for r in records}, kind)
        return records


def _fmt_counts(counts: Mapping[str, int] | None, sign: bool = False) -> str:
    if counts is None:
        return "unknown"
    return ",".join(f"{t}:{n:+d}" if sign else f"{t}:{n}" for t, n in sorted(counts.items())) or "-"


def _backups_of(bdir: _Dir, db_name: str, kind: str = "prebump") -> list[tuple[str, str, str]]:
    """(ts, name, version) of the backups of db_name, newest first."""
    pattern = _name_re(db_name, kind)
    found = [(m["ts"], name, m["version"]) for name in os.listdir(bdir.fd) if (m := pattern.fullmatch(name))]
    return sorted(found, reverse=True)


def _prune(bdir: _Dir, db_name: str, keep: int, protect: set[str], kind: str = "prebump") -> None:
    """Keep the newest `keep` backups of `kind` of db_name (and any in `protect`); best effort."""
    entries = _backups_of(bdir, db_name, kind)
    keepers = {name for _, name, _ in entries[:keep]} | protect
    present = {name for _, name, _ in entries}
    doomed = [name for _, name, _ in entries if name not in keepers]
    pattern = _name_re(db_name, kind)
    doomed += [n for n in os.listdir(bdir.fd) if n.startswith(".") and n.endswith(".json")
               and pattern.fullmatch(n[1:-5]) and n[1:-5] not in present]  # orphaned manifests
    for name in doomed:
        try:
            st = lstat_at(bdir.fd, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                unlink_at(bdir.fd, name)
                unlink_at(bdir.fd, _manifest_name(name))
                log.info("backup pruned user_dir=%s file=%s", bdir.path, name)
        except OSError as exc:
            log.warning("could not prune %s: %s", bdir.path / name, exc)


def latest_backup(backup_root, os_user: str, db_name: str = "state.sqlite",
                  version: str | None = None) -> BackupRecord | None:
    """The newest prebump backup of db_name (of `version` if given), from its manifest on disk.

    None if there is none. The newest one must be whole (regular file, valid manifest):
    otherwise BackupError, never a silent fall-back to an older one.
    """
    _check(_USER_RE, os_user, "OS user name")
    _check(_DB_NAME_RE, db_name, "database name")
    if version is not None:
        _check(_VERSION_RE, version, "version")
    with contextlib.ExitStack() as stack, _errors(os_user, f"looking up backups of {db_name} in {backup_root}"):
        bdir = _open_backup_dir(stack, backup_root, os_user, None)
        if bdir is None:
            return None
        for ts, name, found_version in _backups_of(bdir, db_name):
            if version is None or found_version == version:
                return _read_manifest(bdir, name, os_user, db_name, found_version)
    return None


def _open_record(stack: contextlib.ExitStack, record: BackupRecord, backup_root) -> tuple[_Dir, int]:
    """The backup dir and a no-follow descriptor of `record`'s file in it, its size as recorded."""
    bdir = _open_backup_dir(stack, backup_root, record.os_user, None)
    if bdir is None or Path(os.path.realpath(record.path.parent)) != bdir.path:
        raise UserFileError(f"{record.path} is not in {Path(backup_root) / record.os_user}")
    fd = open_file_at(bdir.fd, record.path.name, record.path)
    stack.callback(os.close, fd)
    size = os.fstat(fd).st_size
    if size != record.bytes:  # before reading it: a swapped sparse giant is refused at once
        raise UserFileError(f"{record.path} is {size} bytes, recorded {record.bytes}: changed, refusing it")
    return bdir, fd


def copy_backup_out(record: BackupRecord, backup_root, dest: Path) -> BackupRecord:
    """Copy a backup out of its user's dir into root's own `dest` (a new 0600 file), no-follow
    and non-blocking, checked against its record (size first, then sha256 of what was copied);
    returns the record of the copy. Nothing opens the user's file as SQLite."""
    with contextlib.ExitStack() as stack, _errors(record.os_user, f"copying {record.path} to {dest}"):
        _, fd = _open_record(stack, record, backup_root)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        stack.callback(os.close, out)
        digest, left = hashlib.sha256(), record.bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise UserFileError(f"{record.path} ended {left} bytes early")
            digest.update(chunk)
            os.write(out, chunk)
            left -= len(chunk)
        if digest.hexdigest() != record.sha256:
            raise UserFileError(f"{record.path} does not match its sha256 as recorded: changed, refusing it")
        os.fsync(out)
    return dataclasses.replace(record, path=Path(dest))


def discard_backup(record: BackupRecord, backup_root) -> None:
    """Remove a backup and its manifest from its user's dir (relative to the dir, no-follow)."""
    with contextlib.ExitStack() as stack, _errors(record.os_user, f"removing {record.path}"):
        bdir = _open_backup_dir(stack, backup_root, record.os_user, None)
        if bdir is None or Path(os.path.realpath(record.path.parent)) != bdir.path:
            raise UserFileError(f"{record.path} is not in {Path(backup_root) / record.os_user}")
        unlink_at(bdir.fd, record.path.name)
        unlink_at(bdir.fd, _manifest_name(record.path.name))


def remove_backup_dir_if_empty(backup_root, os_user: str) -> bool:
    """rmdir `<backup_root>/<os_user>` when it is empty (a preview made it); never follows a link."""
    _check(_USER_RE, os_user, "OS user name")
    with contextlib.ExitStack() as stack, _errors(os_user, f"removing {Path(backup_root) / os_user}"):
        root_fd, _ = open_trusted_dir(backup_root)
        stack.callback(os.close, root_fd)
        try:
            os.rmdir(os_user, dir_fd=root_fd)
        except OSError:  # not empty, gone, or not a directory: leave it as it is
            return False
    return True


def prebump_backups(backup_root, os_user: str) -> list[BackupRecord]:
    """Every pre-bump backup of every database of one user, from the manifests, oldest first.

    A manifest of a pre-bump backup that is not whole (unreadable, describing another file,
    its backup missing) is a BackupError: a restore picks a set of them, and never guesses."""
    _check(_USER_RE, os_user, "OS user name")
    records = []
    with contextlib.ExitStack() as stack, _errors(os_user, f"listing backups in {backup_root}"):
        bdir = _open_backup_dir(stack, backup_root, os_user, None)
        if bdir is None:
            return []
        for entry in sorted(os.listdir(bdir.fd)):
            name = entry[1:-len(".json")] if entry.startswith(".") and entry.endswith(".json") else ""
            if "-prebump-" not in name or name.startswith((TMP_PREFIX, RESTORE_PREFIX)):
                continue
            try:
                fd = open_file_at(bdir.fd, entry, bdir.path / entry)
                try:
                    m = json.loads(read_head(fd, _MANIFEST_MAX + 1)[:_MANIFEST_MAX])
                finally:
                    os.close(fd)
                db_name, version = _check(_DB_NAME_RE, m["db_name"], "database name"), m["version"]
                if not _name_re(db_name, "prebump").fullmatch(name):
                    raise ValueError(f"it does not name a pre-bump backup of {db_name}")
            except (ValueError, KeyError, TypeError, BackupError) as exc:
                raise UserFileError(f"manifest {bdir.path / entry} is unusable ({exc})") from None
            records.append(_read_manifest(bdir, name, os_user, db_name, str(version)))
        described = {r.path.name for r in records}
        for name in os.listdir(bdir.fd):  # a set missing a member would set that database aside
            if ("-prebump-" in name and not name.startswith(".") and not name.endswith(SIDE_SUFFIXES)
                    and name not in described):
                raise UserFileError(f"backup {bdir.path / name} has no manifest: refusing to guess")
    return sorted(records, key=lambda r: (r.taken_at, r.db_name))


def _read_manifest(bdir: _Dir, name: str, os_user: str, db_name: str, version: str) -> BackupRecord:
    shown = bdir.path / name
    st = lstat_at(bdir.fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        raise UserFileError(f"refusing {describe(st) if st else 'missing'} backup {shown}")
    try:
        fd = open_file_at(bdir.fd, _manifest_name(name), bdir.path / _manifest_name(name))
    except NotFound:
        raise UserFileError(f"backup {shown} has no manifest: refusing to guess its checksum") from None
    try:
        data = read_head(fd, _MANIFEST_MAX + 1)
    finally:
        os.close(fd)
    try:
        if len(data) > _MANIFEST_MAX:
            raise ValueError("too large")
        m = json.loads(data)
        if (m["file"], m["os_user"], m["db_name"], m["version"]) != (name, os_user, db_name, version):
            raise ValueError("it describes another file")
        counts = {str(k): int(v) for k, v in (m["precious_counts"] or {}).items()}
        sha = str(m["sha256"])
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError("bad sha256")
        taken_at = datetime.fromisoformat(m["taken_at"])
        serving = m.get("serving_version")
        if serving is not None and not (isinstance(serving, str) and _VERSION_RE.fullmatch(serving)):
            raise ValueError("bad serving_version")
        return BackupRecord(os_user, db_name, shown, version, taken_at, int(m["bytes"]), sha, counts, serving)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserFileError(f"manifest of {shown} is unusable ({exc})") from None


def _check_space(stack_dirs: list[tuple[_Dir, int]], margin: float, free_bytes) -> None:
    """needed bytes per directory, summed per filesystem."""
    per_dev: dict[int, tuple[_Dir, int]] = {}
    for d, needed in stack_dirs:
        dev = os.fstat(d.fd).st_dev
        first, total = per_dev.get(dev, (d, 0))
        per_dev[dev] = (first, total + needed)
    for d, needed in per_dev.values():
        check_free_space(d.path, needed, margin, free_bytes=free_bytes or (lambda _p, fd=d.fd: free_bytes_fd(fd)))


def _keep_aside(tools: _Tools, tree: _Dir, bdir: _Dir, db_name: str, failed_version: str,
                ts: str, keep: int | None = None) -> tuple[Path, dict[str, int] | None]:
    """Copy the live database (with its WAL content) to `<stem>-rolledback-<ver>-<ts><ext>`;
    with `keep`, only the newest `keep` such copies of `db_name` stay (this one always)."""
    kept = backup_file_name(db_name, "rolledback", failed_version, ts)
    n = 1
    while lstat_at(bdir.fd, kept) is not None:  # kept aside this second already (a rerun's recovery)
        kept = backup_file_name(db_name, "rolledback", failed_version, f"{ts}-{n}")
        n += 1
    c = _copy_into_backup_dir(tools, tree.path / db_name, bdir, kept, require_ok=False)
    if c.problems:
        log.error("kept aside %s, but the copy does not verify: %s", bdir.path / kept, " | ".join(c.problems))
    if keep is not None:
        _prune(bdir, db_name, keep, {kept}, "rolledback")
    return bdir.path / kept, c.counts


def restore_user_database(record: BackupRecord, userdata_dir, backup_root, *, failed_version: str,
                          sqlite3: str = "sqlite3", dd: str = "dd", mv: str = "mv", timeout: float = 1800,
                          now: datetime | None = None, margin: float = DEFAULT_MARGIN,
                          free_bytes: Callable[[object], int] | None = None, home_dir=None,
                          keep: int | None = None) -> RestoreReport:
    """Put `record`'s backup back as the user's database. The serve must already be stopped.
    `keep`: how many kept-aside copies of this database stay (the newest; None: all).

    The backup is verified (size, sha256) before anything is touched; the current database
    is kept aside in the backup dir; the verified copy replaces it by rename; stale
    -wal/-shm/-journal files are removed.
    """
    os_user, db_name = record.os_user, record.db_name
    _check(_USER_RE, os_user, "OS user name")
    _check(_DB_NAME_RE, db_name, "database name")
    _check(_VERSION_RE, failed_version, "failed version")
    _, ts = _timestamp(now)
    with contextlib.ExitStack() as stack, _errors(os_user, f"restore of {db_name} from {record.path}"):
        tree, owner = _open_user_tree(stack, os_user, userdata_dir, home_dir)
        live_path = tree.path / db_name
        bdir = _open_backup_dir(stack, backup_root, os_user, owner)
        name = record.path.name
        if Path(os.path.realpath(record.path.parent)) != bdir.path:
            raise UserFileError(f"{record.path} is not in {Path(backup_root) / os_user}")
        if not _name_re(db_name, "prebump").fullmatch(name):
            raise UserFileError(f"{name} is not a pre-bump backup of {db_name}")
        # 1. The backup itself, before anything is touched.
        bfd = open_file_at(bdir.fd, name, record.path)
        stack.callback(os.close, bfd)
        size = os.fstat(bfd).st_size
        # Size first: a swapped sparse multi-terabyte file is refused at once, not hashed for hours.
        sha = sha256_fd(bfd) if size == record.bytes else "(not hashed: size differs)"
        if (size, sha) != (record.bytes, record.sha256):
            raise UserFileError(f"backup {record.path} does not match its record (sha256 {sha}, {size} bytes;"
                                f" recorded {record.sha256}, {record.bytes} bytes): corrupt or changed, refusing"
                                f" to restore it; {live_path} left untouched")
        live = lstat_at(tree.fd, db_name)
        if live is not None and not stat.S_ISREG(live.st_mode):
            raise UserFileError(f"refusing {describe(live)} {live_path}: a database must be a regular file")
        live_bytes = _size_at(tree.fd, db_name) + _size_at(tree.fd, db_name + "-wal")
        _check_space([(bdir, live_bytes), (tree, record.bytes)], margin, free_bytes)
        tools = _Tools(owner, sqlite3=sqlite3, dd=dd, mv=mv, timeout=timeout, scratch=bdir.path)
        # 2. Keep the current database aside: rows written since the backup are never destroyed.
        kept, current = None, None
        if live is not None:
            kept, current = _keep_aside(tools, tree, bdir, db_name, failed_version, ts, keep)
        rows = None
        if current is not None:
            rows = {t: current.get(t, 0) - record.precious_counts.get(t, 0)
                    for t in sorted(set(current) | set(record.precious_counts))}
        # 3-5. Verified copy of the backup under a temporary name, then rename over the database.
        _remove_stale(tree, RESTORE_PREFIX)
        tmp = f"{RESTORE_PREFIX}{secrets.token_hex(6)}-{db_name}"
        fd = None
        try:
            tools.dd(tree.path / tmp, src=bdir.path / name)
            fd = open_file_at(tree.fd, tmp, tree.path / tmp)
            _take_ownership(fd, owner, tree.path / tmp)
            copied = sha256_fd(fd)
            if copied != record.sha256:
                raise UserFileError(f"the copy of {record.path} has sha256 {copied}, expected {record.sha256}")
            os.fsync(fd)
            problems, _ = tools.inspect(tree.path / tmp)
            if problems:
                raise UserFileError(f"the copy of {record.path} failed verification: {' | '.join(problems)}")
            _remove_side_files(tree, db_name)  # never let a stale WAL meet the restored file
            _move_into_place(tools, tree, tmp, db_name, fd)
            _remove_side_files(tree, db_name)
            os.fsync(tree.fd)
        except BaseException:
            _remove_quietly(tree, [tmp, tmp + "-journal"])
            raise
        finally:
            close_quietly(fd)
    log.info("restore ok user=%s db=%s from=%s sha256=%s kept_aside=%s rows_since_backup=%s",
             os_user, db_name, record.path, record.sha256, kept, _fmt_counts(rows, sign=True))
    return RestoreReport(os_user, db_name, kept, rows, record.sha256, record.path)


def _remove_side_files(tree: _Dir, db_name: str) -> None:
    for suffix in SIDE_SUFFIXES:
        if unlink_at(tree.fd, db_name + suffix):
            log.info("removed %s", tree.path / (db_name + suffix))


def set_aside_database(os_user: str, userdata_dir, backup_root, db_name: str, *, failed_version: str,
                       sqlite3: str = "sqlite3", dd: str = "dd", mv: str = "mv", timeout: float = 1800,
                       now: datetime | None = None, margin: float = DEFAULT_MARGIN,
                       free_bytes: Callable[[object], int] | None = None, home_dir=None,
                       keep: int | None = None) -> Path | None:
    """Keep aside, then remove, a database that has no pre-bump backup (one the failed build created,
    e.g. `statev2.sqlite`), so the older build and the next bump start from the restored state.
    Returns the kept-aside path, None if there was no such database. The serve must be stopped."""
    _check(_USER_RE, os_user, "OS user name")
    _check(_DB_NAME_RE, db_name, "database name")
    _check(_VERSION_RE, failed_version, "failed version")
    _, ts = _timestamp(now)
    with contextlib.ExitStack() as stack, _errors(os_user, f"setting aside {db_name} in {userdata_dir}"):
        tree, owner = _open_user_tree(stack, os_user, userdata_dir, home_dir)
        live = lstat_at(tree.fd, db_name)
        if live is None:
            return None
        if not stat.S_ISREG(live.st_mode):
            raise UserFileError(f"refusing {describe(live)} {tree.path / db_name}")
        bdir = _open_backup_dir(stack, backup_root, os_user, owner)
        _check_space([(bdir, _size_at(tree.fd, db_name) + _size_at(tree.fd, db_name + "-wal"))], margin, free_bytes)
        tools = _Tools(owner, sqlite3=sqlite3, dd=dd, mv=mv, timeout=timeout, scratch=bdir.path)
        kept, counts = _keep_aside(tools, tree, bdir, db_name, failed_version, ts, keep)
        unlink_at(tree.fd, db_name)
        _remove_side_files(tree, db_name)
        os.fsync(tree.fd)
    log.info("set aside user=%s db=%s kept_aside=%s precious=%s", os_user, db_name, kept, _fmt_counts(counts))
    return kept
