"""The no-follow side of backups: a user's `userdata/` tree and backup dir opened as
directory descriptors, the name patterns, and the few file operations root does itself
through those descriptors (see `runner/backups/__init__.py` for the root discipline).

A symlinked home, `.t3`, `userdata`, backup dir or database is refused, never followed;
the owner of the files is whoever owns the home directory.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from runner import proc, userfiles
from runner.userfiles import (NotFound, UserFileError, describe, ensure_owned_dir, lstat_at, open_dir_at,
                              open_file_at, open_trusted_dir, read_head, same_file, unlink_at)
from runner.backups.tools import OwnerTools
from runner.usermap import OS_USER_RE

log = logging.getLogger("t3-autoupdate.backup")

SQLITE_MAGIC = b"SQLite format 3\x00"
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
DB_LIKE_SUFFIXES = (".sqlite", ".sqlite3", ".db", ".db3")
TMP_PREFIX = ".t3-autoupdate-tmp-"          # temporaries in a backup dir
RESTORE_PREFIX = ".t3-autoupdate-restore-"  # temporaries in userdata

USER_RE = OS_USER_RE  # checked with fullmatch
DB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_PATTERN = r"[0-9A-Za-z][0-9A-Za-z.+-]{0,127}"
VERSION_RE = re.compile(VERSION_PATTERN)


class BackupError(Exception):
    """A backup or restore could not be done safely; the message names user and file."""


@dataclass
class OpenDir:
    fd: int
    path: Path  # canonical


def check_name(pattern: re.Pattern, value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BackupError(f"invalid {what} {value!r}")
    return value


@contextlib.contextmanager
def backup_errors(os_user: str | None, what: str):
    """Every failure leaves as a BackupError naming the user and the file."""
    try:
        yield
    except BackupError:
        raise
    except (UserFileError, proc.CommandError, OSError, ValueError) as exc:
        raise BackupError(f"{os_user + ': ' if os_user else ''}{what}: {exc}") from exc


def open_user_tree(stack: contextlib.ExitStack, os_user: str, userdata_dir, home_dir) -> tuple[OpenDir, proc.UserIds]:
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
    return OpenDir(fd, path), owner


def _check_tree_dir(st: os.stat_result, owner: proc.UserIds, shown: Path) -> None:
    if st.st_uid not in (owner.uid, 0):
        raise UserFileError(f"refusing {shown}: owned by uid {st.st_uid}, but the home by uid {owner.uid}")
    # A root-owned tree makes the children run as root: nobody else may be able to plant links in it.
    if owner.uid == 0 and st.st_mode & 0o022:
        raise UserFileError(f"refusing {shown}: root-owned home tree writable by group or others")


def open_backup_dir(stack: contextlib.ExitStack, backup_root, os_user: str,
                     owner: proc.UserIds | None) -> OpenDir | None:
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
    return OpenDir(fd, shown)


def scan_databases(tree: OpenDir) -> list[str]:
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
        if not DB_NAME_RE.fullmatch(name):
            raise UserFileError(f"refusing database {shown}: unexpected characters in its name")
        found.append(name)
    return found


def size_at(dir_fd: int, name: str) -> int:
    st = lstat_at(dir_fd, name)
    return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0


def remove_stale(d: OpenDir, prefix: str) -> None:
    """Temporaries a killed run left behind (the run lock guarantees they are not in use)."""
    for name in os.listdir(d.fd):
        if name.startswith(prefix):
            st = lstat_at(d.fd, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                unlink_at(d.fd, name)
                log.info("removed stale temporary %s", d.path / name)


def remove_quietly(d: OpenDir, names: list[str]) -> None:
    for name in names:
        try:
            unlink_at(d.fd, name)
        except OSError as exc:
            log.warning("could not remove %s: %s", d.path / name, exc)


def take_ownership(fd: int, owner: proc.UserIds, shown: Path) -> None:
    """The file our child just created: 0600, owned by the owner, one link."""
    st = os.fstat(fd)
    creator = owner.uid if os.geteuid() == 0 else os.geteuid()
    if st.st_uid != creator or st.st_nlink != 1:
        raise UserFileError(f"refusing {shown}: not the file just created (uid {st.st_uid}, {st.st_nlink} links)")
    if os.geteuid() == 0 and st.st_gid != owner.gid:
        os.fchown(fd, owner.uid, owner.gid)
    os.fchmod(fd, 0o600)


def move_into_place(tools: OwnerTools | None, d: OpenDir, tmp: str, final: str, fd: int) -> None:
    """Rename `tmp` to `final` in `d`, then check `final` is the verified inode behind `fd`.

    In a user's own tree (`tools` given) the owner renames (`mv`): a home may sit on a
    filesystem that refuses root. In a backup dir (`tools` None: below the operator's
    trusted backup root, where root made the dir) root renames by the dir's descriptor.
    Either way rename(2) replaces a symlink, never writes through it."""
    if tools is not None:
        tools.move(d.path / tmp, d.path / final)
    else:
        os.rename(userfiles.check_name(tmp), userfiles.check_name(final), src_dir_fd=d.fd, dst_dir_fd=d.fd)
    st = lstat_at(d.fd, final)
    if st is None or not same_file(st, os.fstat(fd)) or lstat_at(d.fd, tmp) is not None:
        raise UserFileError(f"{d.path / final} is not the verified file after the rename")
    os.fsync(d.fd)


def create_file_at(d: OpenDir, name: str, data: bytes, owner: proc.UserIds) -> None:
    """A new file `name` in the backup dir `d` holding `data`, written by root (exclusive and
    no-follow: an existing name or a planted symlink is an error, never written through), given
    to the owner (0600) and fsynced. Opened by path: every component above `name` is root's
    (the trusted backup root and its entry for the user), and the new file must then be the
    one `d`'s descriptor sees under `name`."""
    shown = d.path / userfiles.check_name(name)
    fd = os.open(shown, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = lstat_at(d.fd, name)
        if st is None or not same_file(st, os.fstat(fd)):
            raise UserFileError(f"{shown} is not in the backup dir that was opened")
        userfiles.write_all(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, owner.uid, owner.gid)
        os.fsync(fd)
    finally:
        os.close(fd)


def find_user_databases(userdata_dir, *, home_dir=None) -> list[str]:
    """Names of the SQLite databases directly in userdata (by header magic), sorted.

    A symlink or special file with a database-like name is refused (BackupError).
    `home_dir` defaults to `userdata_dir/../..` (`<home>/.t3/userdata`).
    """
    with contextlib.ExitStack() as stack, backup_errors(None, f"scanning {userdata_dir}"):
        tree, _ = open_user_tree(stack, "", userdata_dir, home_dir)
        return scan_databases(tree)
