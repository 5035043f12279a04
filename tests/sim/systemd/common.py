"""What every part of the simulated systemd shares: its limits and exit codes, its errors,
the program path the wrapper and the supervisor run, polling with a deadline, atomic writes."""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

# The program: both the systemctl command and, with the verb `__supervise`, a unit's supervisor.
PROGRAM = Path(__file__).resolve().parent.parent / "systemctl.py"

DEFAULT_TIMEOUT_STOP = 10.0
DEFAULT_RESTART_SEC = 0.1
START_WAIT = 10.0  # a supervisor that has not reported after this is a failed start
SIGKILL_WAIT = 5.0
POLL_MAX = 0.05

EXIT_OK, EXIT_FAILURE, EXIT_NOT_ACTIVE, EXIT_NO_SUCH_UNIT, EXIT_NOT_LOADED = 0, 1, 3, 4, 5
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
INACTIVE = ("inactive", "failed")
PASS_ENV = re.compile(r"^(PATH|LANG|LC_\w+|TMPDIR|PYTHON\w*|COVERAGE_\w+)$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SimError(Exception):
    """A command fails: message for stderr, systemctl's exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


class UnitSettingError(Exception):
    """The unit file has a setting this manager cannot use (LoadState=bad-setting)."""


class StartError(Exception):
    """The start failed before any process ran; ``result`` is systemd's Result=."""

    def __init__(self, message: str, result: str = "resources", status: int = 0):
        super().__init__(message)
        self.result = result
        self.status = status


def now() -> float:
    return time.time()


def format_timestamp(ts: float | None) -> str:
    """systemd's format: ``Sat 2026-11-28 08:25:47 UTC`` (local time zone); "" for never."""
    if not ts:
        return ""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def poll_until(predicate, timeout: float | None) -> bool:
    """Call ``predicate`` until true (True) or ``timeout`` seconds pass (False); no fixed sleeps."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.002
    while True:
        if predicate():
            return True
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
        else:
            time.sleep(delay)
        delay = min(delay * 2, POLL_MAX)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` at once for every reader (temp file, rename). No fsync: this is runtime
    state, which systemd keeps in memory and /run (a tmpfs), gone at a reboot with the
    processes it describes; an fsync per update cost tens of ms per start on a busy disk."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_id() -> str:
    """A random 128-bit id as systemd makes one (a v4 UUID, 32 hex digits): invocation ids."""
    import uuid  # here: only start jobs need it, and every call of the program pays its imports

    return uuid.uuid4().hex


def program_command(root: Path, unit_dir: Path, *, host_users: bool, user_map_file) -> list[str]:
    """The command line of the stand-in for one simulated machine: its root, its unit files and
    whose accounts User= may name; systemctl's arguments follow. `-I -S`: the program needs
    only the standard library and its own package (which it puts on sys.path itself), and
    the tests run it thousands of times: no site-packages to scan, no PYTHON* settings (so
    it always caches its bytecode)."""
    return [sys.executable, "-I", "-S", str(PROGRAM), "--root", str(root), "--unit-dir", str(unit_dir),
            *(["--host-users"] if host_users else []),
            *(["--user-map-file", str(user_map_file)] if user_map_file else [])]
