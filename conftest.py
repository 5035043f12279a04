"""Shared pytest plumbing: the guard that stops tests touching the real machine.

The tracker runs as root over other people's data, so its own tests must never
write outside their temporary root, use the machine's global npm prefix, reach
the real systemctl, or talk to anything but loopback. Two layers enforce it:

* an audit hook (PEP 578) that refuses, in this process, any write, sqlite
  open, exec or connect that escapes; it raises *before* the operation runs;
* a sandboxed environment for child processes: HOME, TMPDIR and npm's prefix,
  cache and user config point into the temporary root, and a `systemctl` trap
  sits first on PATH that records the escape and fails.

The hook is process-wide and cannot be removed, so it is switched on for the
session and off again before pytest writes its own reports.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_REAL_SYSTEMCTL = {"/usr/bin/systemctl", "/bin/systemctl", "/usr/sbin/systemctl", "/sbin/systemctl"}


class GuardViolation(PermissionError):
    """A test tried to touch the real machine."""


class _Guard:
    def __init__(self) -> None:
        self.active = False
        self.roots: list[str] = []
        self.violations: list[str] = []

    def allowed_path(self, path) -> bool:
        if isinstance(path, int):  # an already-open descriptor; its open was checked
            return True
        try:
            text = os.fsdecode(path)
        except TypeError:
            return True
        if text in ("/dev/null", ":memory:", "") or text.startswith("file::memory:"):
            return True
        full = os.path.abspath(text)
        if "/__pycache__/" in full or full.endswith("/__pycache__"):  # Python's own bytecode cache
            return True
        return any(full == r or full.startswith(r + os.sep) for r in self.roots)

    def refuse(self, what: str) -> None:
        self.violations.append(what)
        raise GuardViolation(f"test guard: refused {what}")

    def check_npm_prefix(self, argv, env) -> None:
        """npm may only run with its prefix inside the test root: never the machine's global one."""
        if not argv or os.path.basename(os.fsdecode(list(argv)[0])) != "npm":
            return
        words = [os.fsdecode(a) for a in argv]
        explicit = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--prefix"]
        explicit += [w.split("=", 1)[1] for w in words if w.startswith("--prefix=")]
        prefix = explicit[-1] if explicit else (env if env is not None else os.environ).get("npm_config_prefix")
        if not prefix or not self.allowed_path(prefix):
            self.refuse(f"npm with the machine's global prefix ({prefix or 'npm default'})")

    def hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and path is not None and not self.allowed_path(path):
                self.refuse(f"write to {path!r} outside the test root")
        elif event in ("os.remove", "os.rmdir", "os.mkdir"):
            path = _at(args[0], args[-1])
            if not self.allowed_path(path):
                self.refuse(f"{event} on {path!r} outside the test root")
        elif event in ("os.chmod", "os.chown", "os.truncate", "os.utime"):
            # chmod/chown/utime take a dir_fd last: judge the path it names (truncate has none)
            path = _at(args[0], args[-1]) if event != "os.truncate" else args[0]
            if not self.allowed_path(path):
                self.refuse(f"{event} on {path!r} outside the test root")
        elif event in ("os.rename", "os.link"):
            path = _at(args[1], args[3])
            if not self.allowed_path(path):
                self.refuse(f"{event} to {path!r} outside the test root")
        elif event == "os.symlink":
            path = _at(args[1], args[2])
            if not self.allowed_path(path):
                self.refuse(f"{event} at {path!r} outside the test root")
        elif event == "shutil.rmtree":
            if not self.allowed_path(args[0]):
                self.refuse(f"rmtree of {args[0]!r} outside the test root")
        elif event == "sqlite3.connect":
            database = args[0]
            if isinstance(database, str) and database.startswith("file:"):  # a URI: judge its path
                from urllib.parse import unquote, urlsplit

                database = unquote(urlsplit(database).path) or ":memory:"
            if not self.allowed_path(database):
                self.refuse(f"sqlite3 open of {database!r} outside the test root")
        elif event in ("subprocess.Popen", "os.exec", "os.posix_spawn"):
            executable = args[0]
            argv = args[1] if len(args) > 1 else None
            if isinstance(argv, (str, bytes)):
                argv = [argv]
            env = args[3] if event == "subprocess.Popen" else (args[2] if len(args) > 2 else None)
            self.check_npm_prefix(argv, env)
            for candidate in (executable, (list(argv)[0] if argv else None)):
                if candidate is None:
                    continue
                name = os.fsdecode(candidate)
                resolved = name if os.sep in name else (shutil.which(name) or name)
                if os.path.realpath(resolved) in {os.path.realpath(p) for p in _REAL_SYSTEMCTL}:
                    self.refuse(f"exec of the real systemctl ({resolved})")
        elif event == "socket.connect":
            sock, address = args
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host = address[0]
                if not _is_loopback(host):
                    self.refuse(f"network connection to {address!r} (loopback only)")


def _at(path, dir_fd):
    """A directory-relative path as the absolute path it names (through /proc/self/fd)."""
    if isinstance(path, int) or not isinstance(dir_fd, int) or dir_fd < 0:
        return path
    text = os.fsdecode(path)
    if os.path.isabs(text):
        return text
    try:
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
    except OSError:
        return path


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


GUARD = _Guard()
sys.addaudithook(GUARD.hook)

_TRAP = """#!/bin/sh
echo "test guard: the real systemctl was reached: $*" >&2
echo "$*" >> "{marker}"
exit 97
"""


_TESTS_DIR = Path(__file__).resolve().parent / "tests"


def _runs_project_tests(session) -> bool:
    """The guard is for the project's own tests; `pytest gates` on a live host is
    the gate acting on the real machine on purpose, so it stays unguarded."""
    return any(_TESTS_DIR in Path(str(item.path)).resolve().parents for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def machine_guard(request, tmp_path_factory):
    """Fail any test that escapes its temporary root (see module docstring)."""
    if not _runs_project_tests(request.session):
        yield GUARD
        return
    base = tmp_path_factory.getbasetemp().resolve()
    _make_traversable(base)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker's basetemp sits in the controller's, which pytest (re)made 0700.
        _make_traversable(base.parent)
    _traversable_mktemp(tmp_path_factory)
    sandbox = base / "guard"
    for sub in ("home", "tmp", "npm-global", "npm-cache", "trap-bin"):
        (sandbox / sub).mkdir(parents=True, exist_ok=True)
    marker = sandbox / "real-systemctl-reached"
    trap = sandbox / "trap-bin" / "systemctl"
    trap.write_text(_TRAP.format(marker=marker))
    trap.chmod(0o755)
    # Two files: npm 11 refuses to load one file as both user and global config.
    (sandbox / "npmrc").write_text("update-notifier=false\nfund=false\naudit=false\n")
    (sandbox / "npmrc-global").write_text("")
    env = {
        "HOME": str(sandbox / "home"),
        "TMPDIR": str(sandbox / "tmp"),
        "npm_config_prefix": str(sandbox / "npm-global"),
        "npm_config_cache": str(sandbox / "npm-cache"),
        "npm_config_userconfig": str(sandbox / "npmrc"),
        "npm_config_globalconfig": str(sandbox / "npmrc-global"),
        "npm_config_update_notifier": "false",
        "PATH": f"{sandbox / 'trap-bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import tempfile

    tempfile.tempdir = None  # re-read TMPDIR
    GUARD.roots = [str(base)]
    GUARD.active = True
    try:
        yield GUARD
    finally:
        GUARD.active = False
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = None
    if marker.exists():
        pytest.fail(f"test guard: a child process reached the real systemctl: {marker.read_text()!r}")


_OWN_BASETEMP: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """A basetemp of our own (`/tmp/pytest-t3-autoupdate-XXXX`) unless --basetemp is given.

    The runner drops to unprivileged uids (users, the gate user) that must reach files the
    tests put in tmp_path, as they reach /var/lib/t3-autoupdate on a host, so the chain must
    be traversable (0711: follow a given path, list nothing). pytest's default chain cannot
    be: every pytest session of the same user (another checkout's, running at the same
    time) resets `/tmp/pytest-of-<user>` to 0700, and a dropped uid loses its way mid-test."""
    if config.option.basetemp is None and os.geteuid() == 0:
        import tempfile

        config.option.basetemp = tempfile.mkdtemp(prefix="pytest-t3-autoupdate-")
        _OWN_BASETEMP.append(config.option.basetemp)


def pytest_unconfigure(config):
    for path in _OWN_BASETEMP:
        shutil.rmtree(path, ignore_errors=True)


def _make_traversable(path: Path) -> None:
    """0711 on the basetemp (pytest makes it 0700); see pytest_configure."""
    if path.stat().st_uid == os.geteuid():
        path.chmod(0o711)


def _traversable_mktemp(factory) -> None:
    """Every directory tmp_path_factory makes (tmp_path included, and module-scoped worlds)
    0711 too: pytest makes them 0700 (see pytest_configure)."""
    made = factory.mktemp

    def mktemp(*args, **kwargs):
        path = made(*args, **kwargs)
        path.chmod(0o711)
        return path
    factory.mktemp = mktemp


@pytest.fixture(autouse=True)
def _guard_violations_fail_the_test(machine_guard):
    """A violation swallowed by the code under test still fails the test."""
    before = len(machine_guard.violations)
    yield
    new = machine_guard.violations[before:]
    if new:
        pytest.fail("test guard: " + "; ".join(new), pytrace=False)
