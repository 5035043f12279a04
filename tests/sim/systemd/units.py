"""Units: a unit name and its template, the unit file and drop-ins interpreted into a `Unit`
(specifiers applied, settings checked as systemd checks them), and the accounts User= may name."""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
from pathlib import Path

from .common import DEFAULT_RESTART_SEC, DEFAULT_TIMEOUT_STOP, SimError, UnitSettingError
from .syntax import ENV_NAME, parse_timespan, parse_unit_text, signal_number, split_words, unescape_unit_name

SUFFIXES = ("service", "timer", "socket", "target", "path", "mount", "slice", "scope")
_UNIT_NAME = re.compile(r"^([A-Za-z0-9:_.\\-]+?)(?:@([A-Za-z0-9:_.\\-]*))?\.(" + "|".join(SUFFIXES) + r")$")


class UnitName:
    """A parsed unit name (plain classes in this package: see cli.Options)."""

    def __init__(self, name: str, prefix: str, instance: str | None, suffix: str) -> None:
        self.name, self.prefix, self.instance, self.suffix = name, prefix, instance, suffix

    @property
    def template(self) -> str | None:
        return f"{self.prefix}@.{self.suffix}" if self.instance is not None else None


def parse_unit_name(text: str) -> UnitName:
    name = text if any(text.endswith("." + s) for s in SUFFIXES) else text + ".service"
    m = _UNIT_NAME.match(name)
    if not m or "/" in text:
        raise SimError(f'Invalid unit name "{text}".')
    return UnitName(name, m.group(1), m.group(2), m.group(3))


class Command:
    """One Exec*= line; `argv`: unexpanded words, argv[0] may differ from path ("@" prefix)."""

    def __init__(self, path: str, argv: list[str], ignore_failure: bool = False, expand: bool = True,
                 privileged: bool = False) -> None:
        self.path, self.argv = path, argv
        self.ignore_failure, self.expand, self.privileged = ignore_failure, expand, privileged


class Unit:
    """A loaded unit: its files and the settings the stand-in implements, at their defaults
    until a file sets them."""

    def __init__(self, uname: UnitName, fragments: list[tuple[str, str]], need_reload: bool,
                 bad_setting: str | None = None) -> None:
        self.uname, self.fragments, self.need_reload = uname, fragments, need_reload
        self.bad_setting = bad_setting  # why the unit cannot be used (LoadState=bad-setting)
        self.description = ""
        self.type = "simple"
        self.exec_start: list[Command] = []
        self.environment: list[tuple[str, str]] = []
        self.environment_files: list[tuple[str, bool]] = []
        self.working_directory: tuple[str, bool] | None = None
        self.user: str | None = None
        self.restart = "no"
        self.restart_sec = DEFAULT_RESTART_SEC
        self.timeout_stop: float | None = DEFAULT_TIMEOUT_STOP
        self.timeout_start: float | None = None
        self.kill_mode = "control-group"
        self.kill_signal = int(signal.SIGTERM)
        self.remain_after_exit = False
        self.start_limit_burst = 5
        self.start_limit_interval = 10.0
        self.install = False

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


class Account:
    """What User= resolves to: a passwd entry's fields (the machine's, or a world's own)."""

    __slots__ = ("pw_name", "pw_uid", "pw_gid", "pw_dir", "pw_shell", "groups")

    def __init__(self, pw_name: str, pw_uid: int, pw_gid: int, pw_dir: str, pw_shell: str = "/bin/sh",
                 groups: tuple[int, ...] = ()) -> None:
        self.pw_name, self.pw_uid, self.pw_gid, self.pw_dir = pw_name, pw_uid, pw_gid, pw_dir
        self.pw_shell, self.groups = pw_shell, groups


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
                if sep and ENV_NAME.match(name):
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


# ---- resource control as `show` reports it: the drop-ins applied, as `cat` shows them

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
