"""A per-user lock between moving a user and minting for them.

The pairing CLI migrates the database it opens, and crossing some migrations
(31) deletes every pairing link. A credential minted by the old build just
before the user's server restarts on the new one would vanish under the
exchange. So while the tracker moves or restores a user it holds this lock
exclusively, and `t3-autoupdate mint` holds it shared: a login during a move
waits a moment and then mints with the new build on the migrated database.
flock is released by the kernel if either side dies.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

POLL_SECONDS = 0.05


class UserLockTimeout(TimeoutError):
    pass


def lock_path(state_dir: Path, os_user: str) -> Path:
    return Path(state_dir) / "maintenance" / f"{os_user}.lock"


@contextmanager
def user_lock(state_dir: Path, os_user: str, *, exclusive: bool, timeout: float):
    path = lock_path(state_dir, os_user)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UserLockTimeout(f"{os_user} is being moved or restored (lock {path} held > {timeout:g}s)")
                pause.wait(POLL_SECONDS)
        yield
    finally:
        os.close(fd)
