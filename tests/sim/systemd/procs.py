"""Processes as /proc shows them: a unit's main process named by pid and start time, its
session standing in for the unit's cgroup, signals to the session as KillMode= says, and the
exit status as systemd words it."""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from .common import CLD_DUMPED, CLD_EXITED, SIGKILL_WAIT, poll_until


class ProcStat:
    """A process's /proc/<pid>/stat fields that the stand-in uses (a plain class: see cli.Options).
    `start`: clock ticks since boot; with the pid, it names one process for good."""

    __slots__ = ("state", "pgrp", "session", "start")

    def __init__(self, state: str, pgrp: int, session: int, start: int) -> None:
        self.state, self.pgrp, self.session, self.start = state, pgrp, session, start


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


def status_text(code: int, status: int) -> str:
    if code == CLD_EXITED:
        return f"code=exited, status={status}/" + ("SUCCESS" if status == 0 else {1: "FAILURE", 2: "INVALIDARGUMENT", 200: "CHDIR", 203: "EXEC", 217: "USER"}.get(status, str(status)))
    try:
        name = signal.Signals(status).name[3:]
    except ValueError:
        name = str(status)
    return f"code={'dumped' if code == CLD_DUMPED else 'killed'}, status={status}/{name}"


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
