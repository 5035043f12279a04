#!/usr/bin/env python3
"""A `systemctl` stand-in that runs real processes from real unit files.

    python3 systemctl.py --root ROOT [--unit-dir DIR] [--host-users] [--user-map-file FILE] <systemctl arguments...>

or, with no environment needed, the wrapper ``install_systemctl(root, unit_dir)`` writes
to ``ROOT/bin/systemctl``. Unit files come from ``--unit-dir`` (default
``ROOT/etc/systemd/system``); ``NAME@INSTANCE.service`` instantiates ``NAME@.service``,
and drop-ins (``NAME@.service.d/*.conf``, ``NAME@INSTANCE.service.d/*.conf``) apply.

There is no daemon. ``start`` launches a small supervisor (this file, verb
``__supervise``) in its own session; the supervisor starts the service's main process in
a session of its own (standing in for the unit's cgroup), waits for it, records its exit
status, kills what is left of the session as KillMode= says, and applies Restart=. All
state lives under ``ROOT/run/simctl/``: ``<unit>.json`` (atomic writes: temp file, fsync,
rename), ``<unit>.log`` (the process's stdout/stderr and the manager's own lines, like
the journal), ``loaded/<unit>.json`` (the unit definition as last loaded).

Faithful to systemd where the tracker can tell the difference:
* a main process that exited or is a zombie is never reported active (checked in
  /proc/<pid>/stat, with its start time, so a reused pid is not mistaken for it);
* ``start`` of a Type=simple unit returns 0 once the process is forked, even if it dies
  at once; a oneshot ``start`` waits for the command and fails with it;
* exit 0 or death by SIGTERM/SIGINT/SIGHUP/SIGPIPE is clean (inactive); anything else,
  a stop that needed SIGKILL included, leaves the unit failed; Restart=, RestartSec=,
  StartLimitBurst=/StartLimitIntervalSec= (manual starts count too) apply;
* a loaded unit keeps its old definition until ``daemon-reload`` while it is running,
  failed or enabled (a warning is printed, ``NeedDaemonReload=yes``), as systemd does;
  an inactive, not enabled unit is loaded afresh (systemd unloads those);
* ActiveEnterTimestamp keeps the last activation after the unit stops, as systemd does;
  it is empty only for a unit never started.
* User= names a *simulated* user: the process runs as the caller and the unit log says so;
  HOME is then WorkingDirectory=. The machine's passwd database is never consulted for it
  (a real account that happens to share a world user's name, as on a host with users
  wizard, emo and ancamilea, must never run the world's processes), unless the stand-in
  was started with ``--host-users`` (``install_systemctl(..., host_users=True)``): then
  User= switches to that account when running as root and the account exists.
  ``--user-map-file FILE`` (``install_systemctl(..., user_map_file=...)``) names the
  simulated world's own accounts: a JSON object ``{"<name>": {"uid": N, "gid": N, "home":
  "/path"}}``. A User= found there runs as that uid/gid (when the stand-in runs as root)
  with HOME, USER and LOGNAME set, as systemd does for a real account: the world's users
  are real unprivileged uids with no passwd entry. The map wins over --host-users.
Deliberate differences: the child environment is systemd's (USER, LOGNAME, HOME, SHELL,
INVOCATION_ID, the unit's Environment=/EnvironmentFile=) on top of a pass-through of the
caller's PATH, LANG/LC_*, TMPDIR and PYTHON* (so the sandboxed test environment
holds); TimeoutStopSec defaults to 10 s (systemd: 90 s); Type=notify/forking/exec are
run as simple; processes that leave the main process's session escape KillMode; timers
are only recorded (start/stop/enable), never fired; Memory*=/OOMPolicy= are parsed and
reported by ``show`` (drop-ins applied, as ``cat`` shows them) but not enforced.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import fnmatch
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()

DEFAULT_TIMEOUT_STOP = 10.0
DEFAULT_RESTART_SEC = 0.1
START_WAIT = 10.0  # a supervisor that has not reported after this is a failed start
SIGKILL_WAIT = 5.0
POLL_MAX = 0.05

EXIT_OK, EXIT_FAILURE, EXIT_NOT_ACTIVE, EXIT_NO_SUCH_UNIT, EXIT_NOT_LOADED = 0, 1, 3, 4, 5
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
SUFFIXES = ("service", "timer", "socket", "target", "path", "mount", "slice", "scope")
INACTIVE = ("inactive", "failed")
PASS_ENV = re.compile(r"^(PATH|LANG|LC_\w+|TMPDIR|PYTHON\w*|COVERAGE_\w+)$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_UNIT_NAME = re.compile(r"^([A-Za-z0-9:_.\\-]+?)(?:@([A-Za-z0-9:_.\\-]*))?\.(" + "|".join(SUFFIXES) + r")$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


# --------------------------------------------------------------------------- small tools

def now() -> float:
    return time.time()


def format_timestamp(ts: float | None) -> str:
    """systemd's format: ``Sat 2026-11-28 08:25:47 UTC`` (local time zone); "" for never."""
    if not ts:
        return ""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def parse_timespan(text: str) -> float | None:
    """systemd time span (``30``, ``1min 30s``, ``500ms``, ``infinity``) in seconds; None = infinity."""
    text = text.strip()
    if text in ("infinity", ""):
        return None
    units = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1,
             "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600,
             "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        if m.start() != pos:
            raise UnitSettingError(f"invalid time span {text!r}")
        unit = m.group(2) or "s"
        if unit not in units:
            raise UnitSettingError(f"invalid time unit in {text!r}")
        total += float(m.group(1)) * units[unit]
        pos = m.end()
    if pos != len(text):
        raise UnitSettingError(f"invalid time span {text!r}")
    return total


def format_timespan(seconds: float | None) -> str:
    if seconds is None:
        return "infinity"
    usec = round(seconds * 1_000_000)
    if usec == 0:
        return "0"
    parts = []
    for name, size in (("d", 86400_000_000), ("h", 3600_000_000), ("min", 60_000_000), ("s", 1_000_000), ("ms", 1000), ("us", 1)):
        if usec >= size:
            parts.append(f"{usec // size}{name}")
            usec %= size
    return " ".join(parts)


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    session: int
    start: int  # clock ticks since boot: with the pid, names one process for good


def proc_stat(pid: int) -> ProcStat | None:
    if not pid or pid <= 0:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and ")"
    return ProcStat(state=fields[0], pgrp=int(fields[2]), session=int(fields[3]), start=int(fields[19]))


def proc_alive(pid: int | None, start: int | None = None) -> bool:
    """True when ``pid`` runs (not exited, not a zombie) and, if given, started at ``start``."""
    st = proc_stat(pid or 0)
    return st is not None and st.state not in ("Z", "X", "x") and (start is None or st.start == start)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``: the unit's stand-in cgroup."""
    if not sid:
        return []
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st and st.session == sid and st.state not in ("Z", "X", "x"):
                members.append(int(entry.name))
    return members


def send(pids, sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def reap_children() -> None:
    """Reap any exited children without blocking (the supervisor is a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def signal_number(name: str) -> int:
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals(name if name.startswith("SIG") else "SIG" + name))
    except KeyError:
        raise UnitSettingError(f"unknown signal {name!r}") from None


def status_text(code: int, status: int) -> str:
    if code == CLD_EXITED:
        return f"code=exited, status={status}/" + ("SUCCESS" if status == 0 else {1: "FAILURE", 2: "INVALIDARGUMENT", 200: "CHDIR", 203: "EXEC", 217: "USER"}.get(status, str(status)))
    try:
        name = signal.Signals(status).name[3:]
    except ValueError:
        name = str(status)
    return f"code={'dumped' if code == CLD_DUMPED else 'killed'}, status={status}/{name}"


# --------------------------------------------------------------------------- unit file syntax

def split_words(text: str) -> list[str]:
    """systemd's word splitting: whitespace, '...' and "..." quoting, C-style escapes."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = None
    i, n = 0, len(text)
    escapes = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
               "\\": "\\", '"': '"', "'": "'", "s": " ", " ": " ", "\t": "\t"}
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                cur.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
            else:
                cur.append(escapes.get(nxt, "\\" + nxt))
                i += 2
            in_word = True
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                cur.append(c)
        elif c in "\"'":
            quote = c
            in_word = True
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quote:
        raise UnitSettingError(f"unbalanced quoting in {text!r}")
    if in_word:
        words.append("".join(cur))
    return words


def parse_unit_text(fragments: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The [Section] Key=value entries of a unit file and its drop-ins, in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for path, text in fragments:
        section = None
        pending = ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            if not pending and (not line or line[0] in "#;"):
                continue
            if line.endswith("\\"):  # continued on the next line, the backslash becoming a space
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                sections.setdefault(section, [])
                continue
            if "=" not in line or section is None:
                raise UnitSettingError(f"{path}: cannot parse line {line!r}")
            key, value = line.split("=", 1)
            sections[section].append((key.strip(), value.strip()))
    return sections


def parse_env_file(text: str) -> list[tuple[str, str]]:
    """An EnvironmentFile=: KEY=VALUE lines, # and ; comments, shell-like quoting."""
    pairs = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i].strip()
            i += 1
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        if not _ENV_NAME.match(key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\([\\"$`])', r"\1", value[1:-1])
        else:
            value = re.sub(r"\\(.)", r"\1", value)
        pairs.append((key, value))
    return pairs


def unescape_unit_name(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text.replace("-", "/"))


def expand_argument(word: str, env: dict[str, str]) -> list[str]:
    """One ExecStart= argument with variables substituted: ``$VAR`` alone splits at whitespace
    (zero or more words), ``${VAR}`` anywhere gives exactly its value, ``$$`` is ``$``."""
    whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
    if whole:
        return env.get(whole.group(1), "").split()
    return [re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                   lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), word)]


# --------------------------------------------------------------------------- units

@dataclass
class UnitName:
    name: str
    prefix: str
    instance: str | None
    suffix: str

    @property
    def template(self) -> str | None:
        return f"{self.prefix}@.{self.suffix}" if self.instance is not None else None


def parse_unit_name(text: str) -> UnitName:
    name = text if any(text.endswith("." + s) for s in SUFFIXES) else text + ".service"
    m = _UNIT_NAME.match(name)
    if not m or "/" in text:
        raise SimError(f'Invalid unit name "{text}".')
    return UnitName(name, m.group(1), m.group(2), m.group(3))


@dataclass
class Command:
    path: str
    argv: list[str]  # unexpanded words; argv[0] may differ from path ("@" prefix)
    ignore_failure: bool = False
    expand: bool = True
    privileged: bool = False


@dataclass
class Unit:
    uname: UnitName
    fragments: list[tuple[str, str]]
    need_reload: bool
    description: str = ""
    type: str = "simple"
    exec_start: list[Command] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)
    environment_files: list[tuple[str, bool]] = field(default_factory=list)
    working_directory: tuple[str, bool] | None = None
    user: str | None = None
    restart: str = "no"
    restart_sec: float = DEFAULT_RESTART_SEC
    timeout_stop: float | None = DEFAULT_TIMEOUT_STOP
    timeout_start: float | None = None
    kill_mode: str = "control-group"
    kill_signal: int = int(signal.SIGTERM)
    remain_after_exit: bool = False
    start_limit_burst: int = 5
    start_limit_interval: float = 10.0
    install: bool = False
    bad_setting: str | None = None  # why the unit cannot be used (LoadState=bad-setting)

    @property
    def name(self) -> str:
        return self.uname.name

    @property
    def is_service(self) -> bool:
        return self.uname.suffix == "service"


def _specifiers(value: str, table: dict[str, str], where: str) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in table:
            raise UnitSettingError(f"{where}: unsupported specifier %{key}")
        return table[key]

    if re.search(r"%$", value):
        raise UnitSettingError(f"{where}: trailing %")
    return re.sub(r"%(.)", sub, value)


@dataclass(frozen=True)
class Account:
    """What User= resolves to: a passwd entry's fields (the machine's, or a world's own)."""
    pw_name: str
    pw_uid: int
    pw_gid: int
    pw_dir: str
    pw_shell: str = "/bin/sh"
    groups: tuple[int, ...] = ()


def read_user_map(path: str | os.PathLike | None) -> dict[str, Account]:
    """The simulated world's accounts (see the module docstring); {} without a file."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
        return {name: Account(name, int(e["uid"]), int(e["gid"]), str(e["home"]), groups=(int(e["gid"]),))
                for name, e in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SimError(f"bad --user-map-file {path}: {exc}") from None


def host_account(name: str, host_users: bool, user_map: dict | None = None):
    """User='s account, or None: the world's own map first, the machine's passwd only with --host-users."""
    if user_map and name in user_map:
        return user_map[name]
    if not host_users:
        return None
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return None


def build_unit(uname: UnitName, fragments: list[tuple[str, str]], need_reload: bool, root: Path,
               host_users: bool = False, user_map: dict | None = None) -> Unit:
    """Interpret the unit's settings, specifiers applied; raise UnitSettingError if unusable."""
    unit = Unit(uname, fragments, need_reload)
    sections = parse_unit_text(fragments)
    table = {"i": uname.instance or "", "I": unescape_unit_name(uname.instance or ""),
             "n": uname.name, "N": uname.name.rsplit(".", 1)[0], "p": uname.prefix,
             "P": unescape_unit_name(uname.prefix), "t": str(root / "run"), "%": "%"}
    service = sections.get("Service", [])
    for key, value in service:
        if key == "User":
            unit.user = _specifiers(value, table, "User=") or None
    if unit.user:
        table["u"] = unit.user
        entry = host_account(unit.user, host_users, user_map)
        if entry is not None:
            table["h"], table["U"] = entry.pw_dir, str(entry.pw_uid)
    else:
        entry = pwd.getpwuid(os.getuid())
        table.update(u=entry.pw_name, U=str(entry.pw_uid), h=entry.pw_dir)

    for key, value in sections.get("Unit", []):
        if key == "Description":
            unit.description = _specifiers(value, table, "Description=")
        elif key == "StartLimitBurst":
            unit.start_limit_burst = int(value)
        elif key in ("StartLimitIntervalSec", "StartLimitInterval"):
            unit.start_limit_interval = parse_timespan(value) or 0.0
    unit.description = unit.description or uname.name
    unit.install = bool(sections.get("Install"))

    for key, value in service:
        where = f"{key}="
        if key == "Type":
            if value not in ("simple", "exec", "oneshot", "notify", "notify-reload", "forking", "idle", "dbus"):
                raise UnitSettingError(f"Type={value} is not a service type")
            unit.type = "oneshot" if value == "oneshot" else "simple"
        elif key == "ExecStart":
            if not value:
                unit.exec_start = []
                continue
            unit.exec_start.append(_parse_command(_specifiers(value, table, where)))
        elif key == "Environment":
            if not value:
                unit.environment = []
                continue
            for word in split_words(_specifiers(value, table, where)):
                name, sep, val = word.partition("=")
                if sep and _ENV_NAME.match(name):
                    unit.environment.append((name, val))
        elif key == "EnvironmentFile":
            if not value:
                unit.environment_files = []
                continue
            value = _specifiers(value, table, where)
            optional = value.startswith("-")
            path = value[1:] if optional else value
            if not path.startswith("/"):
                raise UnitSettingError(f"EnvironmentFile= path is not absolute: {path!r}")
            unit.environment_files.append((path, optional))
        elif key == "WorkingDirectory":
            value = _specifiers(value, table, where)
            optional = value.startswith("-")
            path = value[1:] if optional else value
            if path == "~":
                path = table.get("h", "")
            if not path.startswith("/"):
                raise UnitSettingError(f"WorkingDirectory= path is not absolute: {path!r}")
            unit.working_directory = (path, optional)
        elif key == "Restart":
            if value not in ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog"):
                raise UnitSettingError(f"Restart={value} is not a restart setting")
            unit.restart = value
        elif key == "RestartSec":
            unit.restart_sec = parse_timespan(value) or 0.0
        elif key == "TimeoutStopSec":
            unit.timeout_stop = parse_timespan(value)
        elif key == "TimeoutStartSec":
            unit.timeout_start = parse_timespan(value)
        elif key == "TimeoutSec":
            unit.timeout_stop = unit.timeout_start = parse_timespan(value)
        elif key == "KillMode":
            if value not in ("control-group", "mixed", "process", "none"):
                raise UnitSettingError(f"KillMode={value} is not a kill mode")
            unit.kill_mode = value
        elif key == "KillSignal":
            unit.kill_signal = signal_number(value)
        elif key == "RemainAfterExit":
            unit.remain_after_exit = value.lower() in ("1", "yes", "true", "on")
    if uname.suffix == "service":
        if not unit.exec_start:
            raise UnitSettingError("Service has no ExecStart= setting")
        if unit.type != "oneshot" and len(unit.exec_start) > 1:
            raise UnitSettingError("Service has more than one ExecStart= setting, which is only allowed for Type=oneshot services")
    return unit


def _parse_command(value: str) -> Command:
    words = split_words(value)
    if not words:
        raise UnitSettingError("empty ExecStart=")
    first = words[0]
    flags = re.match(r"^[-@:+!]*", first).group(0)
    path = first[len(flags):]
    argv = [path] + words[1:]
    if "@" in flags:
        if len(words) < 2:
            raise UnitSettingError("ExecStart= with @ needs an argv[0]")
        argv = words[1:]
    if not path.startswith("/"):
        raise UnitSettingError(f"ExecStart= executable path is not absolute: {path!r}")
    return Command(path, argv, ignore_failure="-" in flags, expand=":" not in flags,
                   privileged=bool(set(flags) & {"+", "!"}))


# --------------------------------------------------------------------------- the manager

@dataclass
class ExecSpec:
    path: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    user: tuple[int, int, list[int]] | None
    notes: list[str]


class Manager:
    def __init__(self, root: Path, unit_dir: Path | None = None, *, host_users: bool = False,
                 user_map_file: str | os.PathLike | None = None):
        self.root = Path(root).resolve()
        self.host_users = host_users
        self.user_map_file = str(user_map_file) if user_map_file else None
        self.user_map = read_user_map(self.user_map_file)
        self.unit_dir = Path(unit_dir).resolve() if unit_dir else self.root / "etc" / "systemd" / "system"
        self.state_dir = self.root / "run" / "simctl"
        self.loaded_dir = self.state_dir / "loaded"
        self.loaded_dir.mkdir(parents=True, exist_ok=True)

    # ---- state files
    def state_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def read_state(self, name: str) -> dict:
        try:
            return json.loads(self.state_path(name).read_text())
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def _flock(self, path: Path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def job_lock(self, name: str):
        """Held for a whole start/stop/restart job: jobs on one unit never interleave."""
        return self._flock(self.state_dir / f"{name}.job.lock")

    def update_state(self, name: str, change) -> dict:
        """Read-modify-write the unit's state under its (short-held) state lock."""
        with self._flock(self.state_dir / f"{name}.state.lock"):
            st = self.read_state(name)
            change(st)
            atomic_write(self.state_path(name), json.dumps(st, indent=1, sort_keys=True).encode())
            return st

    def known_units(self) -> list[str]:
        names = {p.name[:-5] for p in self.state_dir.glob("*.json")}
        if self.unit_dir.is_dir():
            for p in self.unit_dir.iterdir():
                with contextlib.suppress(SimError):
                    u = parse_unit_name(p.name)
                    if p.is_file() and u.instance is None and u.name == p.name:
                        names.add(p.name)
        return sorted(names)

    def log(self, name: str, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} simctl[{os.getpid()}]: {message}\n"
        fd = os.open(self.log_path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    # ---- loading unit definitions
    def _disk_fragments(self, u: UnitName) -> list[tuple[str, str]]:
        candidates = [self.unit_dir / u.name]
        if u.template:
            candidates.append(self.unit_dir / u.template)
        fragment = next((p for p in candidates if p.is_file()), None)
        if fragment is None:
            return []
        dropins: dict[str, Path] = {}
        for d in ([self.unit_dir / f"{u.template}.d"] if u.template else []) + [self.unit_dir / f"{u.name}.d"]:
            if d.is_dir():
                for conf in sorted(d.glob("*.conf")):
                    dropins[conf.name] = conf
        return [(str(p), p.read_text()) for p in [fragment] + [dropins[k] for k in sorted(dropins)]]

    def load(self, name: str) -> Unit | None:
        """The unit as the manager has it loaded (None: no such unit). See module docstring."""
        u = parse_unit_name(name)
        disk = self._disk_fragments(u)
        cache = self.loaded_dir / f"{u.name}.json"
        st = self.read_state(u.name)
        referenced = st.get("enabled") or st.get("active_state", "inactive") != "inactive"
        cached = None
        with contextlib.suppress(FileNotFoundError):
            cached = [tuple(x) for x in json.loads(cache.read_text())]
        if referenced and cached is not None:
            fragments, need_reload = cached, cached != disk
        else:
            fragments, need_reload = disk, False
            if not disk:
                cache.unlink(missing_ok=True)
            elif cached != disk:
                atomic_write(cache, json.dumps(disk).encode())
        if not fragments:
            return None
        try:
            return build_unit(u, fragments, need_reload, self.root, self.host_users, self.user_map)
        except UnitSettingError as e:
            return Unit(u, fragments, need_reload, bad_setting=str(e))

    def daemon_reload(self) -> None:
        """Every loaded unit reads its files again now (as systemd does): a unit file changed
        after the reload shows NeedDaemonReload=yes, whether or not the unit was asked about."""
        for p in self.loaded_dir.glob("*.json"):
            p.unlink(missing_ok=True)
        for name in self.known_units():
            self.load(name)

    def require(self, name: str, verb: str) -> Unit:
        name = parse_unit_name(name).name
        unit = self.load(name)
        if unit is None:
            raise SimError(f"Failed to {verb} {name}: Unit {name} not found.", EXIT_NOT_LOADED)
        if unit.uname.instance == "":
            raise SimError(f"Failed to {verb} {name}: Unit name {name} is missing the instance name.")
        if unit.need_reload:
            print(f"Warning: The unit file, source configuration file or drop-ins of {name} changed on disk. "
                  "Run 'systemctl daemon-reload' to reload units.", file=sys.stderr)
        return unit

    # ---- observed state
    def view(self, name: str) -> dict:
        """The unit's state, corrected by what /proc says about its processes: a main
        process that exited or is a zombie is never active."""
        def read() -> dict:
            st = self.read_state(name)
            st.setdefault("active_state", "inactive")
            st.setdefault("sub_state", "dead")
            return st

        def supervised(st) -> bool:
            return proc_alive(st.get("supervisor_pid"), st.get("supervisor_start"))

        def settled() -> bool:  # not in the instant between a main process's death and its record
            st = read()
            main = st.get("main_pid") or 0
            return not main or proc_alive(main, st.get("main_start")) or not supervised(st)

        st = read()
        if st["active_state"] in INACTIVE or st.get("type") is None or st["sub_state"] == "exited":
            return st
        poll_until(settled, 0.5)
        st = read()
        if st["active_state"] in INACTIVE or not st.get("supervisor_pid"):  # not yet forked: a start job runs
            return st
        main = st.get("main_pid") or 0
        if main and not proc_alive(main, st.get("main_start")):
            st["main_pid"] = 0
            if supervised(st):
                st.update(active_state="deactivating", sub_state="final-sigterm")
            else:
                st.update(active_state="failed", sub_state="failed", result="supervisor-lost")
        elif not main and not supervised(st):  # nothing runs and nobody will record it: lost
            st.update(active_state="failed", sub_state="failed", result="supervisor-lost")
        return st

    # ---- jobs
    def start(self, name: str) -> int:
        unit = self.require(name, "start")
        with self.job_lock(unit.name):
            return self._start_locked(unit)

    def stop(self, name: str) -> int:
        name = parse_unit_name(name).name
        if self.load(name) is None and not self.read_state(name):
            raise SimError(f"Failed to stop {name}: Unit {name} not loaded.", EXIT_NOT_LOADED)
        with self.job_lock(name):
            self._stop_locked(name)
        return EXIT_OK

    def restart(self, name: str) -> int:
        unit = self.require(name, "restart")
        name = unit.name
        with self.job_lock(name):
            self._stop_locked(name)
            return self._start_locked(unit)

    def _job_failed(self, name: str, why: str) -> int:
        print(f"Job for {name} failed because {why}.\n"
              f'See "systemctl status {name}" and "journalctl -xeu {name}" for details.', file=sys.stderr)
        return EXIT_FAILURE

    def _record_failure(self, name: str, result: str, message: str) -> None:
        self.log(name, message)
        self.log(name, f"{name}: Failed with result '{result}'.")

        def change(st):
            transition(st, "failed", "failed")
            st.update(result=result, main_pid=0)
        self.update_state(name, change)

    def _start_locked(self, unit: Unit) -> int:
        name = unit.name
        if unit.bad_setting:
            print(f"simctl: {name}: {unit.bad_setting}", file=sys.stderr)
            raise SimError(f"Failed to start {name}: Unit {name} has a bad unit file setting.")
        st = self.view(name)
        if st["active_state"] == "active" or (st["active_state"] == "activating" and st["sub_state"] != "auto-restart"):
            return EXIT_OK
        if st["active_state"] not in INACTIVE:  # waiting to auto-restart, or ending: let that finish first
            self._stop_locked(name)
        if not unit.is_service:
            self.update_state(name, lambda s: transition(s, "active", "waiting" if unit.uname.suffix == "timer" else "active"))
            return EXIT_OK
        t = now()
        recent = [x for x in self.read_state(name).get("start_times", []) if t - x < unit.start_limit_interval]
        if len(recent) >= unit.start_limit_burst:
            self._record_failure(name, "start-limit-hit", f"{name}: Start request repeated too quickly.")
            return self._job_failed(name, "start of the service was attempted too often")
        try:
            self.exec_spec(unit, unit.exec_start[0])  # fail early on what systemd checks before forking
        except StartError as e:
            self._record_failure(name, e.result, f"{name}: {e}")
            return self._job_failed(name, "of unavailable resources or another system error")
        invocation = uuid.uuid4().hex

        def begin(s):
            transition(s, "activating", "start")
            s.update(invocation=invocation, main_pid=0, main_start=None, supervisor_pid=0, supervisor_start=None,
                     stop_requested=False, result="success", type=unit.type, kill_mode=unit.kill_mode,
                     kill_signal=unit.kill_signal, timeout_stop=unit.timeout_stop, start_times=recent + [t],
                     remain_after_exit=unit.remain_after_exit)
        self.update_state(name, begin)
        log_fd = os.open(self.log_path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            supervisor = subprocess.Popen(
                [sys.executable, str(HERE), "--root", str(self.root), "--unit-dir", str(self.unit_dir),
                 *(["--host-users"] if self.host_users else []),
                 *(["--user-map-file", self.user_map_file] if self.user_map_file else []),
                 "__supervise", name, invocation],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True)
        finally:
            os.close(log_fd)
        sup_stat = proc_stat(supervisor.pid)
        if sup_stat:  # the supervisor records itself too; this closes the window before it does
            self.update_state(name, lambda s: s.update(supervisor_pid=supervisor.pid, supervisor_start=sup_stat.start)
                              if s.get("invocation") == invocation else None)

        def reported() -> bool:
            s = self.read_state(name)
            if s.get("invocation") != invocation:
                return True
            if unit.type == "oneshot":
                return s.get("active_state") in INACTIVE or s.get("sub_state") == "exited"
            return bool(s.get("main_pid")) or s.get("active_state") in INACTIVE or s.get("sub_state") == "auto-restart"

        timeout = unit.timeout_start if unit.type == "oneshot" else START_WAIT
        if not poll_until(lambda: reported() or supervisor.poll() is not None, timeout) or not reported():
            timed_out = supervisor.poll() is None
            with contextlib.suppress(ProcessLookupError):
                supervisor.kill()
            supervisor.wait()
            self._record_failure(name, "timeout" if timed_out else "resources", f"{name}: supervisor did not report a start")
            return self._job_failed(name, "a timeout was exceeded" if timed_out else "of unavailable resources or another system error")
        final = self.read_state(name)
        if unit.type == "oneshot" and final.get("result") != "success":
            return self._job_failed(name, "the control process exited with error code")
        return EXIT_OK

    def _stop_locked(self, name: str) -> None:
        st = self.read_state(name)
        if not st or st.get("active_state", "inactive") in INACTIVE:
            return
        if st.get("type") is None:  # a passive unit (timer, target): nothing runs
            self.update_state(name, lambda s: transition(s, "inactive", "dead"))
            return
        sup_pid, sup_start = st.get("supervisor_pid"), st.get("supervisor_start")
        main, main_start = st.get("main_pid") or 0, st.get("main_start")
        mode, sig, timeout = st.get("kill_mode", "control-group"), st.get("kill_signal", int(signal.SIGTERM)), st.get("timeout_stop")

        def begin(s):
            s["stop_requested"] = True
            if s.get("active_state") == "active":
                transition(s, "deactivating", "stop-sigterm")
        self.update_state(name, begin)
        self.log(name, f"Stopping {name}...")
        if main and proc_alive(main, main_start):
            targets = session_members(main) if mode == "control-group" else [main]
            send(targets, sig)
            send(targets, signal.SIGCONT)
            if not poll_until(lambda: not proc_alive(main, main_start), timeout):
                def timed_out(s):
                    if s.get("result", "success") == "success":
                        s["result"] = "timeout"
                self.update_state(name, timed_out)
                self.log(name, f"{name}: State 'stop-sigterm' timed out. Killing.")
                send(session_members(main) if mode in ("control-group", "mixed") else [main], signal.SIGKILL)
                poll_until(lambda: not proc_alive(main, main_start), SIGKILL_WAIT)

        def finished() -> bool:
            s = self.read_state(name)
            return s.get("active_state") in INACTIVE or not proc_alive(sup_pid, sup_start)
        poll_until(finished, (timeout or DEFAULT_TIMEOUT_STOP) + SIGKILL_WAIT)
        if self.read_state(name).get("active_state") not in INACTIVE:  # the supervisor is gone: finish for it
            kill_leftovers(main, main_start, mode, sig, timeout, reap=False)
            self.update_state(name, lambda s: finalize(s, self, name))

    # ---- the process a unit runs
    def exec_spec(self, unit: Unit, cmd: Command) -> ExecSpec:
        """argv, environment, directory and credentials for ``cmd``; StartError if systemd would refuse."""
        notes: list[str] = []
        env = {k: v for k, v in os.environ.items() if PASS_ENV.match(k)}
        env.setdefault("PATH", DEFAULT_PATH)
        cwd = None
        user = None
        if unit.working_directory:
            path, optional = unit.working_directory
            if os.path.isdir(path):
                cwd = path
            elif not optional:
                raise StartError(f"Changing to the requested working directory failed: {path}", "exit-code", 200)
        if unit.user and not cmd.privileged:
            entry = host_account(unit.user, self.host_users, self.user_map)
            if entry is not None:
                env.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir, SHELL=entry.pw_shell)
                if os.geteuid() == 0:
                    groups = list(entry.groups) if isinstance(entry, Account) else \
                        os.getgrouplist(entry.pw_name, entry.pw_gid)
                    user = (entry.pw_uid, entry.pw_gid, groups)
                elif entry.pw_uid != os.geteuid():
                    notes.append(f"User={unit.user}: not running as root, so running as uid {os.geteuid()} instead (simulation)")
            else:
                notes.append(f"User={unit.user}: a simulated user (the machine's passwd is not consulted), "
                             f"so running as uid {os.geteuid()} (simulation)")
                env.update(USER=unit.user, LOGNAME=unit.user, HOME=cwd or env.get("HOME", "/"), SHELL="/bin/sh")
        env.update(unit.environment)
        for path, optional in unit.environment_files:
            try:
                env.update(parse_env_file(Path(path).read_text()))
            except OSError as e:
                if not optional:
                    raise StartError(f"Failed to load environment files: {path}: {e.strerror}") from None
        env["INVOCATION_ID"] = uuid.uuid4().hex
        argv = [cmd.argv[0]]
        for word in cmd.argv[1:]:
            argv.extend(expand_argument(word, env) if cmd.expand else [word])
        return ExecSpec(cmd.path, argv, env, cwd, user, notes)


def transition(st: dict, active: str, sub: str) -> None:
    """Move to ``active``/``sub``, stamping the timestamps systemd keeps."""
    t = now()
    prev = st.get("active_state", "inactive")
    if prev != active:
        if prev in INACTIVE:
            st["inactive_exit_ts"] = t
        if prev == "active":
            st["active_exit_ts"] = t
        if active == "active":
            st["active_enter_ts"] = t
        if active in INACTIVE:
            st["inactive_enter_ts"] = t
        st["state_change_ts"] = t
    st["active_state"], st["sub_state"] = active, sub


def finalize(st: dict, manager: Manager, name: str) -> None:
    """The end of a run: inactive after a clean end, failed otherwise."""
    st["main_pid"] = 0
    if st.get("result", "success") == "success":
        if st.get("stop_requested"):
            manager.log(name, f"Stopped {name}.")
        transition(st, "inactive", "dead")
    else:
        manager.log(name, f"{name}: Failed with result '{st['result']}'.")
        transition(st, "failed", "failed")


def kill_leftovers(sid: int, sid_start: int | None, mode: str, sig: int, timeout: float | None, reap: bool) -> None:
    """After the main process (``sid``, started at ``sid_start``) is gone, end the rest of its
    session as KillMode= says. The session id stays reserved while any member lives; if the
    number now names another process, the session is someone else's: leave it alone."""
    leader = proc_stat(sid)
    if mode in ("process", "none") or (leader and leader.start != sid_start) or not session_members(sid):
        return

    def gone() -> bool:
        if reap:
            reap_children()
        return not session_members(sid)
    if mode == "control-group":
        send(session_members(sid), sig)
        send(session_members(sid), signal.SIGCONT)
        if poll_until(gone, timeout):
            return
    send(session_members(sid), signal.SIGKILL)
    poll_until(gone, SIGKILL_WAIT)


# --------------------------------------------------------------------------- the supervisor

def _become_subreaper() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def supervise(manager: Manager, name: str, invocation: str) -> int:
    """Run the unit's process(es), record every transition, restart as Restart= says."""
    _become_subreaper()
    me = proc_stat(os.getpid())

    def update(change):
        """Change the state only while it is still this invocation's."""
        return manager.update_state(name, lambda s: change(s) if s.get("invocation") == invocation else None)

    def current() -> dict | None:
        st = manager.read_state(name)
        return st if st.get("invocation") == invocation else None

    update(lambda s: s.update(supervisor_pid=os.getpid(), supervisor_start=me.start))
    while True:
        unit = manager.load(name)
        if unit is None or unit.bad_setting:
            update(lambda s: (s.update(result="resources"), finalize(s, manager, name)))
            return 1
        for cmd in unit.exec_start:
            result = _run_one(manager, unit, cmd, update)
            st = current()
            if result != "success" or st is None or st.get("stop_requested"):
                break
        if st is None:
            return 0
        if unit.type == "oneshot" and result == "success" and unit.remain_after_exit and not st.get("stop_requested"):
            update(lambda s: (transition(s, "active", "exited"), s.update(main_pid=0)))
            return 0
        if st.get("stop_requested") or not _wants_restart(unit.restart, st.get("result", "success")):
            update(lambda s: finalize(s, manager, name))
            return 0

        def schedule(s):
            s["n_restarts"] = s.get("n_restarts", 0) + 1
            transition(s, "activating", "auto-restart")
            s.update(main_pid=0)
        st = update(schedule)
        manager.log(name, f"{name}: Scheduled restart job, restart counter is at {st['n_restarts']}.")
        if poll_until(lambda: (current() or {"stop_requested": True}).get("stop_requested"), unit.restart_sec):
            update(lambda s: (s.update(result="success"), finalize(s, manager, name)))
            return 0
        t = now()
        recent = [x for x in st.get("start_times", []) if t - x < unit.start_limit_interval]
        if len(recent) >= unit.start_limit_burst:
            manager.log(name, f"{name}: Start request repeated too quickly.")
            update(lambda s: (s.update(result="start-limit-hit"), finalize(s, manager, name)))
            return 0
        update(lambda s: s.update(start_times=recent + [t], result="success"))


def _wants_restart(policy: str, result: str) -> bool:
    clean = result == "success"
    return {"always": True, "on-success": clean, "on-failure": not clean,
            "on-abnormal": result in ("signal", "core-dump", "timeout"),
            "on-abort": result in ("signal", "core-dump")}.get(policy, False)


def _run_one(manager: Manager, unit: Unit, cmd: Command, update) -> str:
    """Start one command, wait for it, record its end; return systemd's Result=."""
    name = unit.name
    try:
        spec = manager.exec_spec(unit, cmd)
    except StartError as e:
        manager.log(name, f"{name}: {e}")
        update(lambda s, e=e: s.update(result=e.result, exec_main_code=CLD_EXITED if e.status else 0,
                                  exec_main_status=e.status))
        return e.result
    for note in spec.notes:
        manager.log(name, note)
    log_fd = os.open(manager.log_path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    extra = {}
    if spec.user:
        extra = dict(user=spec.user[0], group=spec.user[1], extra_groups=spec.user[2])
    try:
        child = subprocess.Popen(spec.argv, executable=spec.path, stdin=subprocess.DEVNULL, stdout=log_fd,
                                 stderr=log_fd, env=spec.env, cwd=spec.cwd, start_new_session=True,
                                 umask=0o022, **extra)
    except (OSError, subprocess.SubprocessError) as e:
        failed_on = getattr(e, "filename", None)  # the directory for chdir, None for credentials
        status = 200 if spec.cwd and failed_on == spec.cwd else 217 if spec.user and failed_on is None else 203
        manager.log(name, f"{name}: Failed to execute {spec.path}: {e}")
        manager.log(name, f"{name}: Main process exited, {status_text(CLD_EXITED, status)}")
        update(lambda s: s.update(result="exit-code", exec_main_code=CLD_EXITED, exec_main_status=status,
                                  exec_main_exit_ts=now()))
        return "exit-code"
    finally:
        os.close(log_fd)
    start = proc_stat(child.pid)

    def running(s):
        if unit.type != "oneshot":
            transition(s, "active", "running")
        s.update(main_pid=child.pid, main_start=start.start if start else None, exec_main_pid=child.pid,
                 exec_main_start_ts=now(), exec_main_code=0, exec_main_status=0)
    update(running)
    if unit.type != "oneshot":
        manager.log(name, f"Started {unit.description}.")
    while True:
        pid, status = os.waitpid(-1, 0)  # also reaps orphans handed to this subreaper
        if pid == child.pid:
            break
    child.returncode = status  # reaped here, not by Popen
    if os.WIFEXITED(status):
        code, value = CLD_EXITED, os.WEXITSTATUS(status)
        clean = value == 0
        result = "exit-code"
    else:
        value = os.WTERMSIG(status)
        code = CLD_DUMPED if os.WCOREDUMP(status) else CLD_KILLED
        clean = value in CLEAN_SIGNALS and code == CLD_KILLED
        result = "core-dump" if code == CLD_DUMPED else "signal"
    clean = clean or cmd.ignore_failure
    if not clean:
        manager.log(name, f"{name}: Main process exited, {status_text(code, value)}")

    def ended(s):
        if s.get("result", "success") == "success" and not clean:
            s["result"] = result
        s.update(main_pid=0, exec_main_code=code, exec_main_status=value, exec_main_exit_ts=now())
        if s.get("active_state") == "active":
            transition(s, "deactivating", "stop-sigterm" if s.get("stop_requested") else "final-sigterm")
    st = update(ended)
    kill_leftovers(child.pid, start.start if start else None, unit.kill_mode, unit.kill_signal, unit.timeout_stop, reap=True)
    return st.get("result", "success")


# --------------------------------------------------------------------------- commands

RESOURCE_PROPERTIES = ("MemoryHigh", "MemoryMax", "MemorySwapMax", "OOMPolicy")
PROPERTIES = [
    "Type", "Restart", "RestartUSec", "NRestarts", "MainPID", "ExecMainStartTimestamp", "ExecMainExitTimestamp",
    "ExecMainPID", "ExecMainCode", "ExecMainStatus", "Result", "User", "WorkingDirectory", "Environment",
    "EnvironmentFiles", "ExecStart", "KillMode", "KillSignal", "TimeoutStopUSec", "Id", "Names", "Description",
    "LoadState", "ActiveState", "SubState", "FragmentPath", "DropInPaths", "UnitFileState", "NeedDaemonReload",
    "InvocationID", "StateChangeTimestamp", "InactiveExitTimestamp", "ActiveEnterTimestamp",
    "ActiveExitTimestamp", "InactiveEnterTimestamp", *RESOURCE_PROPERTIES,
]


def properties(manager: Manager, name: str) -> dict[str, str]:
    unit = manager.load(name)
    st = manager.view(name) if unit or manager.read_state(name) else {"active_state": "inactive", "sub_state": "dead"}
    props = {"Id": name, "Names": name, "Description": name, "LoadState": "not-found",
             "ActiveState": st["active_state"], "SubState": st["sub_state"], "MainPID": str(st.get("main_pid") or 0),
             "UnitFileState": "", "FragmentPath": "", "DropInPaths": "", "NeedDaemonReload": "no"}
    for key, ts in (("StateChangeTimestamp", "state_change_ts"), ("InactiveExitTimestamp", "inactive_exit_ts"),
                    ("ActiveEnterTimestamp", "active_enter_ts"), ("ActiveExitTimestamp", "active_exit_ts"),
                    ("InactiveEnterTimestamp", "inactive_enter_ts"), ("ExecMainStartTimestamp", "exec_main_start_ts"),
                    ("ExecMainExitTimestamp", "exec_main_exit_ts")):
        props[key] = format_timestamp(st.get(ts))
    if unit is None:
        return props
    props.update(Description=unit.description, FragmentPath=unit.fragments[0][0],
                 DropInPaths=" ".join(p for p, _ in unit.fragments[1:]),
                 NeedDaemonReload="yes" if unit.need_reload else "no",
                 UnitFileState=("enabled" if st.get("enabled") else "disabled") if unit.install else "static",
                 InvocationID=st.get("invocation", ""))
    if unit.bad_setting:
        props["LoadState"] = "bad-setting"
        return props
    props["LoadState"] = "loaded"
    if unit.is_service:
        props.update(
            Type=unit.type, Restart=unit.restart, RestartUSec=format_timespan(unit.restart_sec),
            NRestarts=str(st.get("n_restarts", 0)), ExecMainPID=str(st.get("exec_main_pid", 0)),
            ExecMainCode=str(st.get("exec_main_code", 0)), ExecMainStatus=str(st.get("exec_main_status", 0)),
            Result=st.get("result", "success"), User=unit.user or "",
            WorkingDirectory=unit.working_directory[0] if unit.working_directory else "",
            Environment=" ".join(f"{k}={v}" for k, v in unit.environment),
            EnvironmentFiles=" ".join(f"{p} (ignore_errors={'yes' if o else 'no'})" for p, o in unit.environment_files),
            ExecStart=" ".join("{ path=%s ; argv[]=%s }" % (c.path, " ".join(c.argv)) for c in unit.exec_start),
            KillMode=unit.kill_mode, KillSignal=str(unit.kill_signal), TimeoutStopUSec=format_timespan(unit.timeout_stop),
        )
        props.update(resource_properties(unit))
    return props


# ---- resource control as `show` reports it, and `cat`: both see the drop-ins applied

RESOURCE_DEFAULTS = {"MemoryHigh": "infinity", "MemoryMax": "infinity", "MemorySwapMax": "infinity",
                     "OOMPolicy": "stop"}
_MEMORY = re.compile(r"^(\d+)([KMGT]?)$")


def memory_bytes(value: str) -> str:
    """A Memory*= setting as `systemctl show` prints it: bytes (1024-based suffixes) or infinity."""
    if value == "infinity":
        return value
    m = _MEMORY.match(value)
    if not m:
        raise UnitSettingError(f"cannot parse memory limit {value!r}")
    return str(int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def resource_properties(unit: Unit) -> dict[str, str]:
    """The effective MemoryHigh/MemoryMax/MemorySwapMax/OOMPolicy of a service: the unit file,
    then each drop-in in order (an empty assignment resets to the default)."""
    settings = dict(RESOURCE_DEFAULTS)
    for key, value in parse_unit_text(unit.fragments).get("Service", []):
        if key in settings:
            value = value or RESOURCE_DEFAULTS[key]
            settings[key] = memory_bytes(value) if key.startswith("Memory") else value
    return settings


def cmd_cat(manager: Manager, names: list[str]) -> int:
    """`systemctl cat`: the unit file and its drop-ins, each under a `# <path>` line."""
    if not names:
        raise SimError("Too few arguments.")
    blocks = []
    for raw in names:
        name = parse_unit_name(raw).name
        fragments = manager._disk_fragments(parse_unit_name(name))
        if not fragments:
            raise SimError(f"No files found for {name}.", EXIT_FAILURE)
        blocks.extend(f"# {path}\n{text.rstrip()}\n" for path, text in fragments)
    print("\n".join(blocks), end="")
    return EXIT_OK


@dataclass
class Options:
    properties: list[str] = field(default_factory=list)
    value: bool = False
    all: bool = False
    quiet: bool = False
    legend: bool = True
    plain: bool = False
    now: bool = False
    types: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    lines: int = 10


_FLAGS = {"--value": "value", "-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "--plain": "plain",
          "--now": "now", "--no-legend": None, "--no-pager": None, "-l": None, "--full": None, "--no-block": None,
          "--system": None, "--no-ask-password": None, "--no-reload": None, "-f": None, "--force": None}
_WITH_ARG = {"-p": "property", "--property": "property", "-P": "P", "-t": "type", "--type": "type",
             "--state": "state", "-n": "lines", "--lines": "lines"}


def parse_args(args: list[str]) -> tuple[Options, list[str]]:
    opts, positional = Options(), []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positional.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positional.append(a)
            continue
        if a == "--user":
            raise SimError("simctl: only the system manager is simulated (--user is not supported)")
        if a == "--no-legend":
            opts.legend = False
            continue
        if a in _FLAGS:
            if _FLAGS[a]:
                setattr(opts, _FLAGS[a], True)
            continue
        key, value = a, None
        if a.startswith("--") and "=" in a:
            key, value = a.split("=", 1)
        elif not a.startswith("--") and len(a) > 2:
            if a[:2] in _WITH_ARG:
                key, value = a[:2], a[2:]
            elif all(f"-{c}" in _FLAGS for c in a[1:]):
                for c in a[1:]:
                    if _FLAGS[f"-{c}"]:
                        setattr(opts, _FLAGS[f"-{c}"], True)
                continue
        if key not in _WITH_ARG:
            raise SimError(f"systemctl: unrecognized option '{a}'")
        if value is None:
            if i >= len(args):
                raise SimError(f"systemctl: option '{a}' requires an argument")
            value = args[i]
            i += 1
        what = _WITH_ARG[key]
        if what in ("property", "P"):
            opts.properties.extend(p for p in value.split(",") if p)
            opts.value = opts.value or what == "P"
        elif what == "type":
            opts.types.extend(value.split(","))
        elif what == "state":
            opts.states.extend(value.split(","))
        elif what == "lines":
            opts.lines = int(value)
    return opts, positional


def cmd_show(manager: Manager, opts: Options, names: list[str]) -> int:
    blocks = []
    for name in names:
        props = properties(manager, parse_unit_name(name).name)
        keys = opts.properties or [k for k in PROPERTIES if k in props and (props[k] or opts.all)]
        lines = [props[k] if opts.value else f"{k}={props[k]}" for k in keys if k in props]
        blocks.append("\n".join(lines))
    out = "\n\n".join(blocks)
    if out:
        print(out)
    return EXIT_OK


def cmd_is(manager: Manager, opts: Options, names: list[str], wanted: tuple[str, ...], miss_code: int) -> int:
    hit = False
    for name in names:
        name = parse_unit_name(name).name
        state = manager.view(name)["active_state"] if manager.read_state(name) else "inactive"
        hit = hit or state in wanted
        if not opts.quiet:
            print(state)
    return EXIT_OK if hit else miss_code


def cmd_list_units(manager: Manager, opts: Options, patterns: list[str]) -> int:
    rows = []
    for name in manager.known_units():
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if opts.types and name.rsplit(".", 1)[-1] not in opts.types:
            continue
        props = properties(manager, name)
        states = {props["LoadState"], props["ActiveState"], props["SubState"]}
        if opts.states:
            if not states & set(opts.states):
                continue
        elif not opts.all and props["ActiveState"] == "inactive":
            continue
        rows.append([name, props["LoadState"], props["ActiveState"], props["SubState"], props["Description"]])
    table = ([["UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"]] if opts.legend else []) + rows
    widths = [max((len(r[c]) for r in table), default=0) for c in range(4)]
    for index, row in enumerate(table):
        text = " ".join(row[c].ljust(widths[c]) for c in range(4)) + " " + row[4]
        if not opts.plain:
            is_header = opts.legend and index == 0
            text = ("● " if not is_header and row[2] == "failed" else "  ") + text
        print(text.rstrip())
    if opts.legend:
        print("\nLOAD   = Reflects whether the unit definition was properly loaded.\n"
              "ACTIVE = The high-level unit activation state, i.e. generalization of SUB.\n"
              "SUB    = The low-level unit activation state, values depend on unit type.\n")
        print(f"{len(rows)} loaded units listed.")
    return EXIT_OK


def cmd_status(manager: Manager, opts: Options, names: list[str]) -> int:
    code = EXIT_OK
    for index, raw in enumerate(names):
        name = parse_unit_name(raw).name
        unit = manager.load(name)
        if unit is None:
            print(f"Unit {name} could not be found.", file=sys.stderr)
            code = max(code, EXIT_NO_SUCH_UNIT)
            continue
        p = properties(manager, name)
        active = p["ActiveState"]
        dot = "●" if active != "failed" else "×"
        if index:
            print()
        print(f"{dot} {name} - {p['Description']}")
        print(f"     Loaded: {p['LoadState']} ({p['FragmentPath']}; {p['UnitFileState'] or 'static'})")
        detail = f"{active} ({p['SubState']})" if active != "failed" else f"failed (Result: {p.get('Result', '')})"
        since = p["StateChangeTimestamp"]
        print(f"     Active: {detail}" + (f" since {since}" if since else ""))
        if p["MainPID"] != "0":
            print(f"   Main PID: {p['MainPID']}")
        if opts.lines > 0 and manager.log_path(name).exists():
            tail = manager.log_path(name).read_text(errors="replace").splitlines()[-opts.lines:]
            if tail:
                print()
                print("\n".join(tail))
        if active not in ("active", "reloading"):
            code = max(code, EXIT_NOT_ACTIVE)
    return code


def cmd_enable(manager: Manager, opts: Options, names: list[str], enable: bool) -> int:
    verb = "enable" if enable else "disable"
    for raw in names:
        name = parse_unit_name(raw).name
        unit = manager.load(name)
        if unit is None:
            raise SimError(f"Failed to {verb} unit: Unit file {name} does not exist.", EXIT_FAILURE)
        if unit.uname.instance == "":
            raise SimError(f"Failed to {verb} unit: Unit {name} is a template; name an instance.")
        manager.update_state(name, lambda s: s.update(enabled=enable))
    for raw in names:
        if opts.now:
            code = manager.start(raw) if enable else manager.stop(raw)
            if code:
                return code
    return EXIT_OK


def cmd_reset_failed(manager: Manager, names: list[str]) -> int:
    for name in names or manager.known_units():
        name = parse_unit_name(name).name

        def reset(s):
            if s.get("active_state") == "failed":
                transition(s, "inactive", "dead")
            s.update(result="success", start_times=[], n_restarts=0)
        if manager.read_state(name):
            manager.update_state(name, reset)
    return EXIT_OK


def run(argv: list[str]) -> int:
    root = unit_dir = user_map_file = None
    host_users = False
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--host-users":
            host_users = True
            i += 1
            continue
        if a == "--user-map-file" and i + 1 < len(argv):
            user_map_file = argv[i + 1]
            i += 2
            continue
        if a in ("--root", "--unit-dir") and i + 1 < len(argv):
            root, unit_dir = (argv[i + 1], unit_dir) if a == "--root" else (root, argv[i + 1])
            i += 2
            continue
        if a.startswith("--root=") or a.startswith("--unit-dir="):
            key, value = a.split("=", 1)
            root, unit_dir = (value, unit_dir) if key == "--root" else (root, value)
            i += 1
            continue
        rest.append(a)
        i += 1
    if not root:
        print("simctl: --root is required", file=sys.stderr)
        return 2
    try:
        manager = Manager(Path(root), Path(unit_dir) if unit_dir else None, host_users=host_users,
                          user_map_file=user_map_file)
    except SimError as e:
        print(e, file=sys.stderr)
        return e.code
    if rest[:1] == ["__supervise"]:
        return supervise(manager, rest[1], rest[2])
    try:
        opts, positional = parse_args(rest)
        verb, names = (positional[0], positional[1:]) if positional else ("list-units", [])
        jobs = {"start": manager.start, "stop": manager.stop, "restart": manager.restart}
        if verb in jobs or verb == "try-restart":
            if not names:
                raise SimError("Too few arguments.")
            code = EXIT_OK
            for name in names:
                if verb == "try-restart":
                    if manager.view(parse_unit_name(name).name)["active_state"] == "active":
                        code = max(code, manager.restart(name))
                else:
                    code = max(code, jobs[verb](name))
            return code
        if verb == "is-active":
            return cmd_is(manager, opts, names, ("active", "reloading"), EXIT_NOT_ACTIVE)
        if verb == "is-failed":
            return cmd_is(manager, opts, names, ("failed",), EXIT_FAILURE)
        if verb == "show":
            return cmd_show(manager, opts, names)
        if verb == "status":
            return cmd_status(manager, opts, names)
        if verb == "cat":
            return cmd_cat(manager, names)
        if verb == "list-units":
            return cmd_list_units(manager, opts, names)
        if verb == "daemon-reload":
            manager.daemon_reload()
            return EXIT_OK
        if verb in ("enable", "disable"):
            return cmd_enable(manager, opts, names, verb == "enable")
        if verb == "is-enabled":
            enabled = False
            for raw in names:
                name = parse_unit_name(raw).name
                if manager.load(name) is None:
                    raise SimError(f"Failed to get unit file state for {name}: No such file or directory")
                state = "enabled" if manager.read_state(name).get("enabled") else "disabled"
                enabled = enabled or state == "enabled"
                if not opts.quiet:
                    print(state)
            return EXIT_OK if enabled else EXIT_FAILURE
        if verb == "reset-failed":
            return cmd_reset_failed(manager, names)
        raise SimError(f"Unknown command verb '{verb}'.")
    except SimError as e:
        print(e, file=sys.stderr)
        return e.code


def main() -> None:
    sys.exit(run(sys.argv[1:]))


# --------------------------------------------------------------------------- for tests and the demo

def install_systemctl(root: Path, unit_dir: Path, *, host_users: bool = False,
                      user_map_file: Path | None = None) -> Path:
    """Write ``<root>/bin/systemctl``, a wrapper that needs no environment; return its path.

    `host_users`: let User= name the machine's real accounts; `user_map_file`: the world's
    own accounts (see the module docstring)."""
    root, unit_dir = Path(root).resolve(), Path(unit_dir).resolve()
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    unit_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bindir / "systemctl"
    command = " ".join(shlex.quote(str(x)) for x in (sys.executable, HERE, "--root", root, "--unit-dir", unit_dir,
                                                      *(["--host-users"] if host_users else []),
                                                      *(["--user-map-file", user_map_file] if user_map_file else [])))
    wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def stop_all(root: Path, unit_dir: Path | None = None) -> list[str]:
    """Stop every unit that still has a process (test teardown); returns the units stopped."""
    manager = Manager(Path(root), unit_dir)
    stopped = []
    for name in manager.known_units():
        st = manager.read_state(name)
        if st.get("active_state", "inactive") not in INACTIVE or proc_alive(st.get("supervisor_pid"), st.get("supervisor_start")):
            with manager.job_lock(name):
                manager._stop_locked(name)
            stopped.append(name)
    return stopped


if __name__ == "__main__":
    main()
