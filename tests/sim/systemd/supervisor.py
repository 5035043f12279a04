"""A unit's supervisor (the program's verb ``__supervise``, in a session of its own): it runs
the unit's command(s) in a session each, as the unit's user, records every transition in the
unit's state, ends the session's leftovers as KillMode= says and applies Restart=."""
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess

from .common import CLD_DUMPED, CLD_EXITED, CLD_KILLED, CLEAN_SIGNALS, StartError, now, poll_until
from .manager import Manager, finalize, transition
from .procs import kill_leftovers, proc_stat, status_text
from .units import Command, Unit


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
