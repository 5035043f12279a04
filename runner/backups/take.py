"""Taking backups: every SQLite database of one user, online, as that user, verified.

A backup is `VACUUM INTO` a temporary name (one read transaction: a consistent snapshot
that includes committed WAL content and never blocks the running serve), checked with
`PRAGMA integrity_check`, counted (`projection_*` rows: the same two sqlite3 processes, run as
the owner, copy and list the source's tables, then check the copy and count them), hashed and
fsynced by root meanwhile; root then writes its manifest and renames it to its catalogue name
(`runner.backups.catalogue`), both through the backup dir's descriptor (`trees`). Free space is checked first, by page count x page size (not the file's size).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from runner import proc
from runner.backups.catalogue import (BACKUP_KINDS, BackupRecord, backup_file_name, format_counts, manifest_name,
                                      prune, timestamp)
from runner.backups.tools import OwnerTools
from runner.backups.trees import (SQLITE_MAGIC, TMP_PREFIX, USER_RE, VERSION_RE, BackupError, OpenDir, backup_errors, check_name,
                                  create_file_at, lstat_at, move_into_place, open_backup_dir, open_user_tree, remove_quietly,
                                  remove_stale, scan_databases, size_at, take_ownership)
from runner.userfiles import UserFileError, close_quietly, free_bytes_fd, open_file_at, read_head, sha256_fd, unlink_at

log = logging.getLogger("t3-autoupdate.backup")

DEFAULT_MARGIN = 1.5


@dataclass
class _Copy:
    bytes: int
    sha256: str
    counts: dict[str, int] | None
    problems: list[str]
    copy_seconds: float
    verify_seconds: float


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


def _write_manifest(bdir: OpenDir, owner: proc.UserIds, backup_name: str, content: dict) -> str:
    name = manifest_name(backup_name)
    unlink_at(bdir.fd, name)  # an orphan of a killed run: its backup never got its final name
    create_file_at(bdir, name, (json.dumps(content, indent=1, sort_keys=True) + "\n").encode(), owner)
    return name


class _HashAndSync:
    """sha256 of the file behind `fd`, then fsync, in a thread of its own (hashlib and the
    reads release the GIL); `result()` waits and returns the digest or raises its error."""

    def __init__(self, fd: int):
        self._digest, self._error = None, None
        self._thread = threading.Thread(target=self._work, args=(fd,), name="backup-sha256", daemon=True)
        self._thread.start()

    def _work(self, fd: int) -> None:
        try:
            self._digest = sha256_fd(fd)
            os.fsync(fd)
        except OSError as exc:
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest


def copy_into_backup_dir(tools: OwnerTools, src: Path, bdir: OpenDir, final: str, *, require_ok: bool,
                          manifest: Callable[[_Copy], dict] | None = None) -> _Copy:
    """Online copy of the database `src` to `bdir/final`, verified, hashed, fsynced, renamed."""
    if lstat_at(bdir.fd, final) is not None:
        raise UserFileError(f"{bdir.path / final} already exists")
    tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}-{final}"
    leftovers, fd = [tmp, tmp + "-journal"], None
    try:
        started = time.monotonic()
        tables = tools.vacuum_into(src, bdir.path / tmp)
        copied = time.monotonic()
        fd = open_file_at(bdir.fd, tmp, bdir.path / tmp)
        take_ownership(fd, tools.owner, bdir.path / tmp)
        # Root hashes and syncs the copy (by descriptor) while the owner's sqlite3 checks and
        # counts it: both read the same pages, so on a large database the two overlap.
        hashed = _HashAndSync(fd)
        problems, counts = [], None
        try:
            problems, counts = tools.check_and_count(bdir.path / tmp, tables)
        except (proc.CommandError, UserFileError) as exc:
            problems = [f"check failed: {exc}"]
        finally:
            digest = hashed.result()
        if problems and require_ok:
            raise UserFileError(f"the copy failed verification: {' | '.join(problems)}")
        # (A copy kept aside is kept even when it does not check out: it may hold the only newer rows.)
        facts = _Copy(os.fstat(fd).st_size, digest, None if problems else counts, problems,
                      copied - started, time.monotonic() - copied)
        if manifest is not None:
            leftovers.append(manifest_name(final))
            _write_manifest(bdir, tools.owner, final, manifest(facts))
        move_into_place(None, bdir, tmp, final, fd)
        return facts
    except BaseException:
        remove_quietly(bdir, leftovers)
        raise
    finally:
        close_quietly(fd)


def _bytes_needed(tree: OpenDir, names: list[str]) -> int:
    return sum(_database_bytes_at(tree.fd, n, tree.path / n) + size_at(tree.fd, n + "-wal") for n in names)


def backup_bytes_needed(userdata_dir, *, home_dir=None) -> int:
    """What one backup set of a user's databases needs (page count x page size, plus each WAL),
    read no-follow as `backup_user_databases` reads it (`t3-autoupdate doctor` asks ahead)."""
    with contextlib.ExitStack() as stack, backup_errors(None, f"sizing {userdata_dir}"):
        tree, _ = open_user_tree(stack, "", userdata_dir, home_dir)
        return _bytes_needed(tree, scan_databases(tree))


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
    check_name(USER_RE, os_user, "OS user name")
    check_name(VERSION_RE, version, "version")
    if serving is not None:
        check_name(VERSION_RE, serving, "serving version")
    if keep < 1:
        raise BackupError(f"keep must be at least 1, not {keep}")
    taken_at, ts = timestamp(now)
    with contextlib.ExitStack() as stack, backup_errors(os_user, f"backup of {userdata_dir}"):
        tree, owner = open_user_tree(stack, os_user, userdata_dir, home_dir)
        names = scan_databases(tree)
        if not names:
            log.info("backup none user=%s userdata=%s (no database)", os_user, tree.path)
            return []
        needed = _bytes_needed(tree, names)
        bdir = open_backup_dir(stack, backup_root, os_user, owner)
        remove_stale(bdir, TMP_PREFIX)
        while any(lstat_at(bdir.fd, backup_file_name(n, kind, version, ts)) is not None for n in names):
            taken_at, ts = timestamp(taken_at + timedelta(seconds=1))  # a killed run's backup took this second
        try:
            check_free_space(bdir.path, needed, margin, free_bytes=free_bytes or (lambda _p: free_bytes_fd(bdir.fd)))
        except BackupError as exc:
            raise BackupError(f"{os_user}: {exc} (databases {', '.join(names)}, by page count x page size)") from None
        tools = OwnerTools(owner, sqlite3=sqlite3, dd=dd, mv=mv, timeout=timeout, scratch=bdir.path)
        records = []
        for name in names:
            final = backup_file_name(name, kind, version, ts)
            with backup_errors(os_user, f"backup of {tree.path / name} to {bdir.path / final}"):
                def manifest(c: _Copy, name=name, final=final) -> dict:
                    return {"format": 1, "os_user": os_user, "db_name": name, "file": final, "version": version,
                            "taken_at": taken_at.isoformat(), "bytes": c.bytes, "sha256": c.sha256,
                            "precious_counts": c.counts, "serving_version": serving}
                c = copy_into_backup_dir(tools, tree.path / name, bdir, final, require_ok=True, manifest=manifest)
            record = BackupRecord(os_user, name, bdir.path / final, version, taken_at, c.bytes, c.sha256,
                                  dict(c.counts or {}), serving)
            log.info("backup ok user=%s db=%s file=%s bytes=%d sha256=%s precious=%s copy_s=%.2f verify_s=%.2f",
                     os_user, name, record.path, c.bytes, c.sha256, format_counts(record.precious_counts),
                     c.copy_seconds, c.verify_seconds)
            records.append(record)
        for record in records:
            prune(bdir, record.db_name, keep, {r.path.name for r in records}, kind)
        return records


def check_space(stack_dirs: list[tuple[OpenDir, int]], margin: float, free_bytes) -> None:
    """needed bytes per directory, summed per filesystem."""
    per_dev: dict[int, tuple[OpenDir, int]] = {}
    for d, needed in stack_dirs:
        dev = os.fstat(d.fd).st_dev
        first, total = per_dev.get(dev, (d, 0))
        per_dev[dev] = (first, total + needed)
    for d, needed in per_dev.values():
        check_free_space(d.path, needed, margin, free_bytes=free_bytes or (lambda _p, fd=d.fd: free_bytes_fd(fd)))
