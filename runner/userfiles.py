"""No-follow, directory-relative file primitives for root working in trees users control.

The tracker runs as root over `/home/<user>/.t3/userdata/` and `<backups>/<user>/`, which
their users can change at any moment. The rules these helpers encode:

* A trusted root (an operator-configured directory such as `/home` or
  `/var/backups/t3-state`) is opened normally, then must be owned by root (or by us) and
  writable by nobody else. Every component below it is opened with
  `O_NOFOLLOW|O_DIRECTORY` relative to its parent's descriptor, so a symlink anywhere
  under the trusted root is refused, never followed.
* Files are opened `O_NOFOLLOW|O_NONBLOCK` (a FIFO cannot hang us) after an `lstat`, and
  the descriptor is checked to be the same regular file.
* Root never creates or renames a file in a user's tree here: that is done by a child
  process running as the user (see `runner.backups`). What root does itself goes through
  descriptors: `fstat`, `fchmod`, `fchown`, `fsync`, reading, `mkdir` and `unlink`
  relative to a directory descriptor (neither follows a symlink in the last component).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = [
    "UserFileError", "NotFound", "check_name", "open_trusted_dir", "open_dir_at", "lstat_at",
    "open_file_at", "describe", "same_file", "sha256_fd", "write_all", "copy_to_new_file", "read_head", "unlink_at",
    "free_bytes_fd", "ensure_owned_dir", "close_quietly",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


class UserFileError(Exception):
    """A path is unsafe to act on (a symlink, not a directory, foreign owner, ...)."""


class NotFound(UserFileError):
    """The path does not exist."""


def check_name(name: str) -> str:
    """One path component: no separator, not `.`/`..`, not empty, no NUL."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UserFileError(f"invalid path component {name!r}")
    return name


def describe(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, word in ((stat.S_ISLNK, "symlink"), (stat.S_ISDIR, "directory"), (stat.S_ISREG, "regular file"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return word
    return "special file"


def close_quietly(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def open_trusted_dir(path: str | os.PathLike) -> tuple[int, Path]:
    """Open an operator-configured directory; returns (fd, canonical path).

    Symlinks in this path are the operator's and are resolved; the directory itself must
    be owned by root (or by the current user) and not writable by group or others,
    otherwise someone else could swap the entries below it.
    """
    real = Path(os.path.realpath(path))
    try:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such directory") from None
    except OSError as exc:
        raise UserFileError(f"cannot open directory {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        os.close(fd)
        raise UserFileError(f"refusing {path}: a trusted directory must be owned by root and writable only"
                            f" by its owner (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    return fd, real


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of `name` in `dir_fd`, None when it does not exist."""
    try:
        return os.stat(check_name(name), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(parent_fd: int, name: str, shown: str | os.PathLike) -> int:
    """Open the directory `name` below `parent_fd` without following a symlink."""
    check_name(name)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise NotFound(f"{shown}: no such directory") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = lstat_at(parent_fd, name)
            kind = describe(st) if st else "gone"
            raise UserFileError(f"refusing {kind} {shown}: expected a directory") from None
        raise UserFileError(f"cannot open directory {shown}: {exc.strerror}") from None


def open_file_at(dir_fd: int, name: str, shown: str | os.PathLike) -> int:
    """Open the regular file `name` in `dir_fd` read-only, refusing symlinks and special files."""
    st = lstat_at(dir_fd, name)
    if st is None:
        raise NotFound(f"{shown}: no such file")
    if not stat.S_ISREG(st.st_mode):
        raise UserFileError(f"refusing {describe(st)} {shown}: expected a regular file")
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise UserFileError(f"cannot open {shown}: {exc.strerror}") from None
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or not same_file(st, fst):
        os.close(fd)
        raise UserFileError(f"refusing {shown}: it changed while being opened")
    return fd


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def sha256_fd(fd: int) -> str:
    """SHA-256 of the whole file behind `fd` (positional reads; the offset is untouched)."""
    import hashlib  # here, not at the top: the mint imports this module on every login

    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (os.write may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_to_new_file(src_fd: int, dest: str | os.PathLike, mode: int, digest, limit: int | None = None) -> int:
    """Copy the file behind `src_fd`, from its start (positional reads), into the new file `dest`
    (exclusive, no-follow: never an existing path), `mode`, fsynced; every byte copied is fed to
    `digest` (a hashlib object), so the hash is of exactly what was copied. With `limit`, it
    stops once more than `limit` bytes were copied (a file grown meanwhile shows as a size
    mismatch, not as an endless copy). Returns the number of bytes copied."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    copied = 0
    try:
        while (limit is None or copied <= limit) and (chunk := os.pread(src_fd, _CHUNK, copied)):
            digest.update(chunk)
            write_all(out, chunk)
            copied += len(chunk)
        os.fchmod(out, mode)  # creation applied the umask
        os.fsync(out)
    finally:
        os.close(out)
    return copied


def read_head(fd: int, size: int) -> bytes:
    """Up to `size` bytes from the start of the file."""
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        if not chunk:
            break
        data += chunk
    return data


def unlink_at(dir_fd: int, name: str) -> bool:
    """Remove the entry `name` (a symlink is removed, never followed); False if absent."""
    try:
        os.unlink(check_name(name), dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def free_bytes_fd(fd: int) -> int:
    """Bytes available to unprivileged users on the filesystem holding `fd`."""
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def ensure_owned_dir(parent_fd: int, name: str, shown: str | os.PathLike, uid: int, gid: int,
                     mode: int = 0o700) -> int:
    """Create (if needed) and open the directory `name`, owned by uid:gid with `mode`.

    An existing entry must be a real directory (a symlink is refused) owned by root or
    already by uid; it is then chowned and chmodded through its descriptor.
    """
    check_name(name)
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UserFileError(f"cannot create directory {shown}: {exc.strerror}") from None
    fd = open_dir_at(parent_fd, name, shown)
    try:
        st = os.fstat(fd)
        allowed = {0, uid} if os.geteuid() == 0 else {os.geteuid()}
        if st.st_uid not in allowed:
            raise UserFileError(f"refusing {shown}: owned by uid {st.st_uid}, expected uid {uid}")
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def home_owner(path: Path):
    """Who owns `path` (a user's home directory), by lstat, as `proc.UserIds`: whoever owns the
    home is the user root acts as there. A symlink or a non-directory is refused (UserFileError)."""
    from .proc import UserIds

    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UserFileError(f"cannot stat {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UserFileError(f"{path} is a symlink; refusing to act on it as its owner")
    if not stat.S_ISDIR(st.st_mode):
        raise UserFileError(f"{path} is not a directory")
    return UserIds.owner_of(st)
