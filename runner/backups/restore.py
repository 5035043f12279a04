"""Restores: a verified backup put back over a user's database by rename, the replaced
database kept aside first (rows written since the backup are never destroyed); and a
database that has no backup in the set (one a failed build created) set aside.
The user's serve must be stopped.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from runner.backups.catalogue import BackupRecord, backup_file_name, backup_name_re, format_counts, prune, timestamp
from runner.backups.take import DEFAULT_MARGIN, check_space, copy_into_backup_dir
from runner.backups.tools import OwnerTools
from runner.backups.trees import (DB_NAME_RE, RESTORE_PREFIX, SIDE_SUFFIXES, USER_RE, VERSION_RE, OpenDir,
                                  backup_errors, check_name, move_into_place, open_backup_dir, open_user_tree,
                                  remove_quietly, remove_stale, size_at, take_ownership)
from runner.userfiles import UserFileError, close_quietly, describe, lstat_at, open_file_at, sha256_fd, unlink_at

log = logging.getLogger("t3-autoupdate.backup")


@dataclass(frozen=True)
class RestoreReport:
    os_user: str
    db_name: str
    kept_aside: Path | None             # the replaced database, None if there was none
    rows_since_backup: dict[str, int] | None = field(hash=False)  # per projection table: replaced minus backup
    restored_sha256: str
    backup_path: Path


def _checked_stamp(os_user: str, db_name: str, failed_version: str, now: datetime | None) -> str:
    """The names a restore or set-aside puts on a command line, checked; the stamp of its kept-aside copy."""
    check_name(USER_RE, os_user, "OS user name")
    check_name(DB_NAME_RE, db_name, "database name")
    check_name(VERSION_RE, failed_version, "failed version")
    return timestamp(now)[1]


def _keep_aside(tools: OwnerTools, tree: OpenDir, bdir: OpenDir, db_name: str, failed_version: str,
                ts: str, keep: int | None = None) -> tuple[Path, dict[str, int] | None]:
    """Copy the live database (with its WAL content) to `<stem>-rolledback-<ver>-<ts><ext>`;
    with `keep`, only the newest `keep` such copies of `db_name` stay (this one always)."""
    kept = backup_file_name(db_name, "rolledback", failed_version, ts)
    n = 1
    while lstat_at(bdir.fd, kept) is not None:  # kept aside this second already (a rerun's recovery)
        kept = backup_file_name(db_name, "rolledback", failed_version, f"{ts}-{n}")
        n += 1
    c = copy_into_backup_dir(tools, tree.path / db_name, bdir, kept, require_ok=False)
    if c.problems:
        log.error("kept aside %s, but the copy does not verify: %s", bdir.path / kept, " | ".join(c.problems))
    if keep is not None:
        prune(bdir, db_name, keep, {kept}, "rolledback")
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
    ts = _checked_stamp(os_user, db_name, failed_version, now)
    with contextlib.ExitStack() as stack, backup_errors(os_user, f"restore of {db_name} from {record.path}"):
        tree, owner = open_user_tree(stack, os_user, userdata_dir, home_dir)
        live_path = tree.path / db_name
        bdir = open_backup_dir(stack, backup_root, os_user, owner)
        name = record.path.name
        if Path(os.path.realpath(record.path.parent)) != bdir.path:
            raise UserFileError(f"{record.path} is not in {Path(backup_root) / os_user}")
        if not backup_name_re(db_name, "prebump").fullmatch(name):
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
        live_bytes = size_at(tree.fd, db_name) + size_at(tree.fd, db_name + "-wal")
        check_space([(bdir, live_bytes), (tree, record.bytes)], margin, free_bytes)
        tools = OwnerTools(owner, sqlite3=sqlite3, dd=dd, mv=mv, timeout=timeout, scratch=bdir.path)
        # 2. Keep the current database aside: rows written since the backup are never destroyed.
        kept, current = None, None
        if live is not None:
            kept, current = _keep_aside(tools, tree, bdir, db_name, failed_version, ts, keep)
        rows = None
        if current is not None:
            rows = {t: current.get(t, 0) - record.precious_counts.get(t, 0)
                    for t in sorted(set(current) | set(record.precious_counts))}
        # 3-5. Verified copy of the backup under a temporary name, then rename over the database.
        remove_stale(tree, RESTORE_PREFIX)
        tmp = f"{RESTORE_PREFIX}{secrets.token_hex(6)}-{db_name}"
        fd = None
        try:
            tools.dd(tree.path / tmp, src=bdir.path / name)
            fd = open_file_at(tree.fd, tmp, tree.path / tmp)
            take_ownership(fd, owner, tree.path / tmp)
            copied = sha256_fd(fd)
            if copied != record.sha256:
                raise UserFileError(f"the copy of {record.path} has sha256 {copied}, expected {record.sha256}")
            os.fsync(fd)
            problems, _ = tools.inspect(tree.path / tmp)
            if problems:
                raise UserFileError(f"the copy of {record.path} failed verification: {' | '.join(problems)}")
            _remove_side_files(tree, db_name)  # never let a stale WAL meet the restored file
            move_into_place(tools, tree, tmp, db_name, fd)
            _remove_side_files(tree, db_name)
            os.fsync(tree.fd)
        except BaseException:
            remove_quietly(tree, [tmp, tmp + "-journal"])
            raise
        finally:
            close_quietly(fd)
    log.info("restore ok user=%s db=%s from=%s sha256=%s kept_aside=%s rows_since_backup=%s",
             os_user, db_name, record.path, record.sha256, kept, format_counts(rows, sign=True))
    return RestoreReport(os_user, db_name, kept, rows, record.sha256, record.path)


def _remove_side_files(tree: OpenDir, db_name: str) -> None:
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
    ts = _checked_stamp(os_user, db_name, failed_version, now)
    with contextlib.ExitStack() as stack, backup_errors(os_user, f"setting aside {db_name} in {userdata_dir}"):
        tree, owner = open_user_tree(stack, os_user, userdata_dir, home_dir)
        live = lstat_at(tree.fd, db_name)
        if live is None:
            return None
        if not stat.S_ISREG(live.st_mode):
            raise UserFileError(f"refusing {describe(live)} {tree.path / db_name}")
        bdir = open_backup_dir(stack, backup_root, os_user, owner)
        check_space([(bdir, size_at(tree.fd, db_name) + size_at(tree.fd, db_name + "-wal"))], margin, free_bytes)
        tools = OwnerTools(owner, sqlite3=sqlite3, dd=dd, mv=mv, timeout=timeout, scratch=bdir.path)
        kept, counts = _keep_aside(tools, tree, bdir, db_name, failed_version, ts, keep)
        unlink_at(tree.fd, db_name)
        _remove_side_files(tree, db_name)
        os.fsync(tree.fd)
    log.info("set aside user=%s db=%s kept_aside=%s precious=%s", os_user, db_name, kept, format_counts(counts))
    return kept
