"""The catalogue of a user's backup dir: backup names (`<stem>-<kind>-<version>-<UTC ts><ext>`),
their manifests (`.<backup name>.json`: sha256, size, row counts, the build the user ran),
retention, and finding, copying out and discarding a backup.

A manifest is written *before* its backup gets its final name, so a backup under its final
name always has a complete manifest; every look-up here reads it and refuses to guess.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from runner.backups.trees import (DB_NAME_RE, RESTORE_PREFIX, SIDE_SUFFIXES, TMP_PREFIX, USER_RE, VERSION_PATTERN,
                                  VERSION_RE, BackupError, OpenDir, backup_errors, check_name, open_backup_dir)
from runner.userfiles import NotFound, UserFileError, describe, lstat_at, open_file_at, open_trusted_dir, read_head, unlink_at

log = logging.getLogger("t3-autoupdate.backup")

TS_FORMAT = "%Y%m%dT%H%M%SZ"
#: prebump: a run's restore point; daily: the daily job's; dryrun: a preview's seed, copied out
#: and discarded at once (its own name: a left-over one is never a restore point nor prunes one).
BACKUP_KINDS = ("prebump", "daily", "dryrun")
_MANIFEST_MAX = 64 * 1024


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


def _split(db_name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(db_name)
    return (stem, ext) if stem else (db_name, "")


def backup_file_name(db_name: str, kind: str, version: str, ts: str) -> str:
    """`state.sqlite` -> `state-<kind>-<version>-<ts>.sqlite` (kind: prebump, rolledback)."""
    stem, ext = _split(db_name)
    return f"{stem}-{kind}-{version}-{ts}{ext}"


def backup_name_re(db_name: str, kind: str) -> re.Pattern:
    stem, ext = _split(db_name)
    return re.compile(rf"{re.escape(stem)}-{kind}-(?P<version>{VERSION_PATTERN})-(?P<ts>\d{{8}}T\d{{6}}Z){re.escape(ext)}")


def manifest_name(backup_name: str) -> str:
    return f".{backup_name}.json"


def timestamp(now: datetime | None) -> tuple[datetime, str]:
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now = now.astimezone(timezone.utc).replace(microsecond=0)
    return now, now.strftime(TS_FORMAT)


def format_counts(counts: Mapping[str, int] | None, sign: bool = False) -> str:
    if counts is None:
        return "unknown"
    return ",".join(f"{t}:{n:+d}" if sign else f"{t}:{n}" for t, n in sorted(counts.items())) or "-"


def _backups_of(bdir: OpenDir, db_name: str, kind: str = "prebump") -> list[tuple[str, str, str]]:
    """(ts, name, version) of the backups of db_name, newest first."""
    pattern = backup_name_re(db_name, kind)
    found = [(m["ts"], name, m["version"]) for name in os.listdir(bdir.fd) if (m := pattern.fullmatch(name))]
    return sorted(found, reverse=True)


def prune(bdir: OpenDir, db_name: str, keep: int, protect: set[str], kind: str = "prebump") -> None:
    """Keep the newest `keep` backups of `kind` of db_name (and any in `protect`); best effort."""
    entries = _backups_of(bdir, db_name, kind)
    keepers = {name for _, name, _ in entries[:keep]} | protect
    present = {name for _, name, _ in entries}
    doomed = [name for _, name, _ in entries if name not in keepers]
    pattern = backup_name_re(db_name, kind)
    doomed += [n for n in os.listdir(bdir.fd) if n.startswith(".") and n.endswith(".json")
               and pattern.fullmatch(n[1:-5]) and n[1:-5] not in present]  # orphaned manifests
    for name in doomed:
        try:
            st = lstat_at(bdir.fd, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                unlink_at(bdir.fd, name)
                unlink_at(bdir.fd, manifest_name(name))
                log.info("backup pruned user_dir=%s file=%s", bdir.path, name)
        except OSError as exc:
            log.warning("could not prune %s: %s", bdir.path / name, exc)


def latest_backup(backup_root, os_user: str, db_name: str, version: str | None = None) -> BackupRecord | None:
    """The newest prebump backup of db_name (of `version` if given), from its manifest on disk.

    None if there is none. The newest one must be whole (regular file, valid manifest):
    otherwise BackupError, never a silent fall-back to an older one.
    """
    check_name(USER_RE, os_user, "OS user name")
    check_name(DB_NAME_RE, db_name, "database name")
    if version is not None:
        check_name(VERSION_RE, version, "version")
    with contextlib.ExitStack() as stack, backup_errors(os_user, f"looking up backups of {db_name} in {backup_root}"):
        bdir = open_backup_dir(stack, backup_root, os_user, None)
        if bdir is None:
            return None
        for ts, name, found_version in _backups_of(bdir, db_name):
            if version is None or found_version == version:
                return _read_manifest(bdir, name, os_user, db_name, found_version)
    return None


def _open_record(stack: contextlib.ExitStack, record: BackupRecord, backup_root) -> tuple[OpenDir, int]:
    """The backup dir and a no-follow descriptor of `record`'s file in it, its size as recorded."""
    bdir = open_backup_dir(stack, backup_root, record.os_user, None)
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
    with contextlib.ExitStack() as stack, backup_errors(record.os_user, f"copying {record.path} to {dest}"):
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
    with contextlib.ExitStack() as stack, backup_errors(record.os_user, f"removing {record.path}"):
        bdir = open_backup_dir(stack, backup_root, record.os_user, None)
        if bdir is None or Path(os.path.realpath(record.path.parent)) != bdir.path:
            raise UserFileError(f"{record.path} is not in {Path(backup_root) / record.os_user}")
        unlink_at(bdir.fd, record.path.name)
        unlink_at(bdir.fd, manifest_name(record.path.name))


def remove_backup_dir_if_empty(backup_root, os_user: str) -> bool:
    """rmdir `<backup_root>/<os_user>` when it is empty (a preview made it); never follows a link."""
    check_name(USER_RE, os_user, "OS user name")
    with contextlib.ExitStack() as stack, backup_errors(os_user, f"removing {Path(backup_root) / os_user}"):
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
    check_name(USER_RE, os_user, "OS user name")
    records = []
    with contextlib.ExitStack() as stack, backup_errors(os_user, f"listing backups in {backup_root}"):
        bdir = open_backup_dir(stack, backup_root, os_user, None)
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
                db_name, version = check_name(DB_NAME_RE, m["db_name"], "database name"), m["version"]
                if not backup_name_re(db_name, "prebump").fullmatch(name):
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


def _read_manifest(bdir: OpenDir, name: str, os_user: str, db_name: str, version: str) -> BackupRecord:
    shown = bdir.path / name
    st = lstat_at(bdir.fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        raise UserFileError(f"refusing {describe(st) if st else 'missing'} backup {shown}")
    try:
        fd = open_file_at(bdir.fd, manifest_name(name), bdir.path / manifest_name(name))
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
        if serving is not None and not (isinstance(serving, str) and VERSION_RE.fullmatch(serving)):
            raise ValueError("bad serving_version")
        return BackupRecord(os_user, db_name, shown, version, taken_at, int(m["bytes"]), sha, counts, serving)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserFileError(f"manifest of {shown} is unusable ({exc})") from None
