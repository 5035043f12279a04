"""The tracker's own state on disk: every write atomic (temp, fsync, rename).

Layout under the state dir (docs/architecture.md "State on disk"): `last-good`, `active/<os_user>`
(release links), `deferred/<os_user>`, `quarantine/<version>.json`, `journal`,
`runs/<run-id>/`, `lock`. The freeze file lives elsewhere (`/etc` by default).
These are root's own directories, never a user's.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from typing import NamedTuple
from datetime import datetime, timezone
from pathlib import Path


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644, *, exclusive: bool = False) -> None:
    """Write a whole file or nothing: temp in the same dir, fsync, rename, fsync dir.
    `exclusive`: the temp file must be new (O_EXCL), never one that was left there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_json(path: Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` by renaming a fresh link over it: readers see old or new, never none."""
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.tmp-{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.rename(tmp, link)
    fsync_dir(link.parent)


#: Modes of the tracker's own directories. The state dir is 0711, not 0700: each user's serve
#: runs `<state>/active/<user>/bin/t3`, so users must traverse it (never list it); `runs/`
#: (logs, junit reports, crash tracebacks) is root's alone. Files are 0600 by the umask.
#: The scratch root (`tmpdir`) is 0710: runner.scratch gives its group to the gate user.
STATE_MODES = (("state_dir", 0o711), ("runs_dir", 0o700), ("active_dir", 0o711), ("releases_dir", 0o755),
               ("tmpdir", 0o710))
RUN_UMASK = 0o077


def secure_state_dirs(cfg) -> None:
    """Create the tracker's directories with their modes (STATE_MODES), or put the modes back.

    A path there that is a symlink, not a directory or not the runner's own is refused."""
    for attr, mode in STATE_MODES:
        path = Path(getattr(cfg, attr))
        path.mkdir(parents=True, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{attr} must be a directory of the runner's own (uid {os.geteuid()})", str(path))
        os.chmod(path, mode)


class LockBusy(Exception):
    pass


class RunLock:
    """One run at a time: an flock on the state dir's lock file (released by the kernel on death)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockBusy(f"another t3-autoupdate run holds {self.path} ({holder or 'unknown holder'})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={os.uname().nodename} since={iso(utc_now())}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Freeze(NamedTuple):  # not a dataclass: the mint imports this module on every login
    reason: str
    by: str = ""
    at: str = ""


def read_freeze(path: Path) -> Freeze | None:
    """A freeze file holds who/when/why; a bare `touch`ed (or unreadable) one still freezes."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Freeze(reason=f"freeze file present but unreadable: {exc}")
    try:
        data = json.loads(text)
        return Freeze(reason=str(data.get("reason", "")) or "(no reason given)",
                      by=str(data.get("by", "")), at=str(data.get("at", "")))
    except (ValueError, AttributeError):
        return Freeze(reason=text.strip() or "(no reason given: bare freeze file)")


def write_freeze(path: Path, reason: str, by: str) -> Freeze:
    freeze = Freeze(reason=reason, by=by, at=iso(utc_now()))
    atomic_json(path, freeze._asdict())
    return freeze


def read_text_or_none(path: Path) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except FileNotFoundError:
        return None


def new_run_id(now: datetime | None = None) -> str:
    now = now or utc_now()
    return now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
