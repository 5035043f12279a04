"""A writer-preferring per-user lock between moving a user and minting for them.

The pairing CLI migrates the database it opens, and crossing some migrations
(31) deletes every pairing link. A credential minted by the old build just
before the user's server restarts on the new one would vanish under the
exchange. So while the tracker moves or restores a user it holds this lock
exclusively (a *writer*), and `t3-autoupdate mint` holds it shared (a
*reader*): a login during a move waits a moment and then mints with the new
build on the migrated database.

flock alone prefers readers: a pending LOCK_EX does not stop new LOCK_SH, so
staggered logins whose mints overlap would starve a move forever. Hence two
files, the classic turnstile:

* `<user>.gate`: a writer holds it exclusively for the whole move; a reader
  passes through it (takes it exclusively for a moment) before it takes the
  main lock, so once a writer is waiting no new reader gets in;
* `<user>.lock`: the main lock; readers in flight keep it shared and finish,
  then the writer gets it exclusively.

An uncontended lock never sleeps (the first non-blocking try succeeds: every
login runs the mint). A contended one is retried with a short backoff up to
its deadline. flock is released by the kernel if either side dies.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

FIRST_PAUSE = 0.002  # a reader's turn through the gate lasts microseconds
MAX_PAUSE = 0.05
_PAUSE = threading.Event()  # never set: its wait(t) is a pause usable from any thread


class UserLockTimeout(TimeoutError):
    pass


def lock_path(state_dir: Path, os_user: str) -> Path:
    return Path(state_dir) / "maintenance" / f"{os_user}.lock"


def gate_path(state_dir: Path, os_user: str) -> Path:
    return Path(state_dir) / "maintenance" / f"{os_user}.gate"


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _acquire(fd: int, mode: int, deadline: float, describe) -> None:
    """flock(fd, mode) before `deadline`: no sleep when free, a short backoff when held."""
    pause = FIRST_PAUSE
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserLockTimeout(describe()) from None
            _PAUSE.wait(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE)


@contextmanager
def user_lock(state_dir: Path, os_user: str, *, exclusive: bool, timeout: float):
    """Hold `os_user`'s lock (exclusive: a move or restore; shared: a mint) for the block.

    Raises UserLockTimeout (before the block runs) when it cannot be had within `timeout`."""
    path = lock_path(state_dir, os_user)
    deadline = time.monotonic() + timeout

    def describe() -> str:
        if exclusive:
            return f"{os_user}: mints or another move held the lock {path} for more than {timeout:g}s"
        return f"{os_user} is being moved or restored (lock {path} held > {timeout:g}s)"

    gate = _open(gate_path(state_dir, os_user))
    main = None
    try:
        _acquire(gate, fcntl.LOCK_EX, deadline, describe)
        main = _open(path)
        _acquire(main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline, describe)
        if not exclusive:  # through the turnstile: the next writer may queue at the gate now
            os.close(gate)
            gate = None
        yield
    finally:
        if main is not None:  # the main lock first: a reader admitted by the gate never waits on it
            os.close(main)
        if gate is not None:
            os.close(gate)
