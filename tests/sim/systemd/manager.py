"""The manager of one simulated machine: each unit's state on disk (atomic JSON under
ROOT/run/simctl/, its log beside it), the definition as loaded until daemon-reload, the state
as /proc corrects it, and the start/stop/restart jobs."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

from .common import (DEFAULT_TIMEOUT_STOP, EXIT_FAILURE, EXIT_NOT_LOADED, EXIT_OK, INACTIVE, SIGKILL_WAIT, START_WAIT,
                     SimError, StartError, UnitSettingError, atomic_write, new_id, now, poll_until, program_command)
from .execution import ExecSpec, exec_spec
from .procs import kill_leftovers, proc_alive, proc_stat, send, session_members
from .units import Command, Unit, UnitName, build_unit, parse_unit_name, read_user_map


class Manager:
    """One simulated machine's units: their state on disk, their definitions as loaded, their jobs."""

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
        invocation = new_id()

        def begin(s):
            transition(s, "activating", "start")
            s.update(invocation=invocation, main_pid=0, main_start=None, supervisor_pid=0, supervisor_start=None,
                     stop_requested=False, result="success", type=unit.type, kill_mode=unit.kill_mode,
                     kill_signal=unit.kill_signal, timeout_stop=unit.timeout_stop, start_times=recent + [t],
                     remain_after_exit=unit.remain_after_exit)
        self.update_state(name, begin)
        import subprocess  # here: only start jobs need it, and every call of the program pays its imports

        log_fd = os.open(self.log_path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            supervisor = subprocess.Popen(
                [*program_command(self.root, self.unit_dir, host_users=self.host_users,
                                  user_map_file=self.user_map_file), "__supervise", name, invocation],
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
        """``cmd`` as this machine would run it, User= resolved against its accounts."""
        return exec_spec(unit, cmd, host_users=self.host_users, user_map=self.user_map)


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
