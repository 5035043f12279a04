"""The users' `t3 serve` instances as systemd sees them: start, stop, ask.

Every systemctl command line is built by a pure `*_argv` function and run through
`proc.run`. The only units this module ever names are `t3-serve@<os_user>.service`,
built by `units.serve_unit_name` from a validated OS user: a unit name handed in is
taken apart, its user validated, and the name rebuilt (anything else is refused),
so nothing else ever reaches systemctl's command line.

systemctl runs with `TZ=UTC` (its answers do not depend on the host's zone); an answer
of any unexpected shape is an error (fail closed: a caller must not guess).

`wait_serving` is the readiness check: it polls the instance's
`/.well-known/t3/environment` every 50 ms until it answers 200 and returns the JSON;
the moment `is_alive()` says the unit died it raises (a dead unit is a verdict, never
something to keep polling), and no answer counts before `is_alive()` has said True.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Callable, Mapping

from . import proc
from .units import serve_unit_name
from .usermap import OS_USER_RE

__all__ = [
    "ServiceError", "NotServing", "Services", "unit_of", "user_of_unit",
    "start_argv", "stop_argv", "is_active_argv", "show_argv", "list_running_argv",
    "systemctl_env", "parse_main_pid", "parse_running_instances",
    "environment_url", "wait_serving", "POLL_INTERVAL", "process_start",
]

POLL_INTERVAL = 0.05
SERVE_PATTERN = "t3-serve@*"
_UNIT_RE = re.compile(r"t3-serve@(.*)\.service")
# systemctl is-active: 0 = active/reloading; 3 = not active (inactive, failed, activating, ...).
_IS_ACTIVE_CODES = (0, 3)


class ServiceError(RuntimeError):
    """systemctl answered something this module cannot trust (or a bad unit/user was named)."""


class NotServing(ServiceError):
    """An instance did not become ready: it died, answered nonsense, or timed out."""


# ------------------------------------------------------------------ names

def _check_user(os_user: str) -> str:
    if not isinstance(os_user, str) or not OS_USER_RE.fullmatch(os_user):
        raise ServiceError(f"invalid OS user name {os_user!r} (must match {OS_USER_RE.pattern})")
    return os_user


def unit_of(os_user: str) -> str:
    """`t3-serve@<os_user>.service` for a validated OS user."""
    return serve_unit_name(_check_user(os_user))


def user_of_unit(unit: str) -> str:
    """The OS user of a `t3-serve@<os_user>.service` name; ServiceError for anything else."""
    match = _UNIT_RE.fullmatch(unit) if isinstance(unit, str) else None
    if match is None:
        raise ServiceError(f"not a t3 serve unit: {unit!r} (expected t3-serve@<os_user>.service)")
    return _check_user(match.group(1))


def _unit(unit: str) -> str:
    return unit_of(user_of_unit(unit))


# ------------------------------------------------------------------ argv (pure)

def start_argv(systemctl: str, unit: str) -> list[str]:
    return [systemctl, "start", _unit(unit)]


def stop_argv(systemctl: str, unit: str) -> list[str]:
    return [systemctl, "stop", _unit(unit)]


def is_active_argv(systemctl: str, unit: str) -> list[str]:
    return [systemctl, "is-active", _unit(unit)]


def show_argv(systemctl: str, unit: str, prop: str) -> list[str]:
    if prop != "MainPID":
        raise ServiceError(f"property {prop!r} is not one this module reads")
    return [systemctl, "show", "-p", prop, "--value", _unit(unit)]


def liveness_argv(systemctl: str, unit: str) -> list[str]:
    return [systemctl, "show", "-p", "ActiveState", "-p", "MainPID", _unit(unit)]


def list_running_argv(systemctl: str) -> list[str]:
    return [systemctl, "list-units", "--type=service", "--state=running", "--no-legend", "--plain",
            SERVE_PATTERN]


def systemctl_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with `TZ=UTC` (timestamps in UTC) and no pager."""
    env = dict(os.environ if base is None else base)
    env.update(TZ="UTC", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
    return env


# ------------------------------------------------------------------ parsers (pure)

def parse_main_pid(text: str) -> int | None:
    """`show -p MainPID --value` output: a pid, or None for 0 (no main process)."""
    value = text.strip()
    if not re.fullmatch(r"[0-9]{1,10}", value):
        raise ServiceError(f"unparseable MainPID {text!r}")
    return int(value) or None


def parse_liveness(text: str) -> tuple[str, int | None]:
    """`show -p ActiveState -p MainPID` output -> (ActiveState, main pid or None)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if "ActiveState" not in fields or "MainPID" not in fields:
        raise ServiceError(f"unparseable liveness {text!r}")
    return fields["ActiveState"].strip(), parse_main_pid(fields["MainPID"])


def parse_running_instances(text: str) -> list[str]:
    """OS users of the running `t3-serve@*` units in `list-units --plain --no-legend` output.

    Each non-blank line must be `t3-serve@<user>.service loaded active running <description>`
    with a valid user; any other line raises ServiceError (never silently skipped).
    """
    users = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 4 or fields[1:4] != ["loaded", "active", "running"]:
            raise ServiceError(f"unparseable list-units line {line!r}")
        users.add(user_of_unit(fields[0]))
    return sorted(users)


# ------------------------------------------------------------------ the service manager

class Services:
    """The systemd units of the users' serve instances, through one systemctl program."""

    def __init__(self, systemctl: str, *, timeout: float = 120.0, run=proc.run):
        if not systemctl:
            raise ValueError("Services: no systemctl program")
        self.systemctl = str(systemctl)
        self.timeout = timeout
        self._run = run

    def _call(self, argv: list[str], ok_codes=(0,)) -> proc.Completed:
        return self._run(argv, env=systemctl_env(), timeout=self.timeout, ok_codes=ok_codes)

    def start(self, unit: str) -> None:
        self._call(start_argv(self.systemctl, unit))

    def stop(self, unit: str) -> None:
        self._call(stop_argv(self.systemctl, unit))

    def is_active(self, unit: str) -> bool:
        done = self._call(is_active_argv(self.systemctl, unit), ok_codes=_IS_ACTIVE_CODES)
        return done.exit_code == 0

    def main_pid(self, unit: str) -> int | None:
        return parse_main_pid(self._call(show_argv(self.systemctl, unit, "MainPID")).stdout)

    def running_instances(self) -> list[str]:
        return parse_running_instances(self._call(list_running_argv(self.systemctl)).stdout)

    def recent_log(self, unit: str, lines: int = 5) -> str:
        """The unit's last log lines (`systemctl status -n N`), for a failure message; never raises."""
        try:
            done = self._call([self.systemctl, "status", _unit(unit), "-n", str(lines), "--no-pager"],
                              ok_codes=range(256))
        except proc.CommandError as exc:
            return f"(no status: {exc.reason})"
        return " | ".join(line.strip() for line in done.stdout.strip().splitlines()[-lines:])

    def liveness(self, unit: str) -> Callable[[], bool]:
        """An `is_alive` for `wait_serving`: the unit is active with the main process it has now.

        systemctl is asked once, here (ActiveState and MainPID in one call); each poll then only
        reads that process's `/proc/<pid>/stat` (running, not a zombie, same start time, so a
        reused pid is not mistaken for it). A systemctl call per poll cost a process start each
        (seconds on a loaded host), and readiness is polled every 50 ms while the user's mints
        wait on their lock, so a slow poll lengthened the restart window. A unit that went
        inactive, failed, is waiting to auto-restart, or came back with a different main
        process (Restart=on-failure) has lost that process: dead. Without a readable /proc,
        every poll asks systemctl as before.
        """
        unit = _unit(unit)
        state, pid = parse_liveness(self._call(liveness_argv(self.systemctl, unit)).stdout)
        if pid is None or state not in ("active", "reloading"):
            return lambda: False
        started = process_start(pid)
        if started is None and os.path.isdir("/proc/self"):
            return lambda: False  # gone between systemctl's answer and this read

        def is_alive() -> bool:
            if started is not None:
                return process_start(pid) == started
            state_now = parse_liveness(self._call(liveness_argv(self.systemctl, unit)).stdout)
            return state_now == ("active", pid) or state_now == ("reloading", pid)

        return is_alive

    def liveness_ahead(self, unit: str) -> Callable[[], bool | None]:
        """`liveness(unit)`, asked in a thread from now on, so that readiness polls start at once
        instead of after a systemctl process (the instance's own start-up runs meanwhile, and the
        user's outage is that long). Its `is_alive()` is None until systemctl has answered (then
        `wait_serving` keeps polling but accepts no answer), then what `liveness`'s would say;
        if asking raised, every call raises that."""
        answer: dict = {}

        def ask() -> None:
            try:
                answer["is_alive"] = self.liveness(unit)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, on its thread
                answer["error"] = exc

        asking = threading.Thread(target=ask, name="liveness", daemon=True)  # bounded: systemctl's timeout
        asking.start()

        def is_alive() -> bool | None:
            if asking.is_alive():
                return None
            if "error" in answer:
                raise answer["error"]
            return answer["is_alive"]()

        return is_alive


def process_start(pid: int) -> int | None:
    """The start time (clock ticks after boot) of process `pid` while it runs; None when it
    does not exist, is a zombie, or /proc cannot tell. With the pid it names one process."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as stat:
            raw = stat.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces and ")"
    if len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


# ------------------------------------------------------------------ readiness

def environment_url(port: int) -> str:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"invalid port {port!r}")
    return f"http://127.0.0.1:{port}/.well-known/t3/environment"


def wait_serving(port: int, timeout: float, *, is_alive: Callable[[], bool | None],
                 interval: float = POLL_INTERVAL) -> dict:
    """Poll the instance on `port` until `/.well-known/t3/environment` answers 200; return its JSON.

    Before every attempt `is_alive()` is asked: False raises NotServing at once; None (not
    known yet: `Services.liveness_ahead`) polls on, but a 200 is returned only from an
    attempt `is_alive()` said True before. A 200 that is not a JSON object raises at once
    too. Connection errors and other statuses are polled through until `timeout` seconds
    pass (then NotServing).
    """
    import requests  # here: a run with nothing to do builds Services but never waits (~0.1 s of start-up)

    url = environment_url(port)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with requests.Session() as session:
        session.trust_env = False  # loopback: never through a proxy from the environment
        while True:
            alive = is_alive()
            if alive is not None and not alive:
                raise NotServing(f"the instance on port {port} died while waiting for it to serve ({last})")
            remaining = deadline - time.monotonic()
            try:
                response = session.get(url, timeout=max(0.05, min(2.0, remaining)))
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        data = None
                    if not isinstance(data, dict):
                        raise NotServing(f"{url} answered 200 without a JSON object: {response.text[:200]!r}")
                    if alive:
                        return data
                    last = "HTTP 200 before the unit was known to be alive"
                else:
                    last = f"HTTP {response.status_code}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotServing(f"the instance on port {port} did not serve within {timeout:g}s ({last})")
            time.sleep(min(interval, remaining))
