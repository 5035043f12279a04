"""Assertions about a simulated deployment after a tracker run, shared by the end-to-end tests."""
from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from runner.units import serve_unit_name
from tests.sim import dbgen


def fingerprints(world) -> dict[str, dict]:
    return {u.os_user: dbgen.precious_fingerprint(world.database(u.os_user)) for u in world.users}


def link_version(world, os_user: str) -> str:
    return Path(os.readlink(world.active_dir / os_user)).name


def main_pids(world) -> dict[str, str]:
    return {u.os_user: world.systemctl_run("show", "-p", "MainPID", "--value",
                                           serve_unit_name(u.os_user)).stdout.strip() for u in world.users}


def integrity(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def assert_user_on(world, sso: str, version: str) -> None:
    user = world.user(sso)
    assert link_version(world, user.os_user) == version
    assert world.server_version(sso) == version
    assert integrity(world.database(user.os_user)) == "ok"


def assert_history_kept(world, before: dict[str, dict]) -> None:
    after = fingerprints(world)
    for os_user, tables in before.items():
        for table, (count, digest) in tables.items():
            assert after[os_user][table] == (count, digest), f"{os_user}: {table} changed ({count} rows before)"


def assert_logs_in(world, sso: str) -> None:
    """One full login through the dispatch (the prober's, in this thread) succeeds. One: a
    started prober logs in again and again until stopped, and every login costs a mint."""
    step, detail = world.prober(sso).probe_once()
    assert step == "login", f"login for {sso} failed at step={step}: {detail}"


@contextmanager
def probing(world, start_prober):
    """`start_prober(sso)` for each user for the duration (a started prober with `.stop()`);
    yields a dict filled with their reports at exit."""
    probers: dict = {}
    reports: dict = {}
    try:
        for user in world.users:
            probers[user.sso] = start_prober(user.sso)
        yield reports
    finally:
        for sso, prober in probers.items():
            reports[sso] = prober.stop()


@contextmanager
def probing_logins(world, interval: float = 0.5):
    """A login prober per user (see `probing`); the dispatch's failed or forbidden lines too."""
    with probing(world, lambda sso: world.prober(sso, interval=interval).start()) as reports:
        yield reports
    # read after the probers stopped, so their last attempts' lines are in
    reports["dispatch failures"] = [line for line in world.dispatch.log if "failed" in line or "forbidden" in line]


@contextmanager
def probing_requests(world, interval: float = 0.02):
    """Per user, an open tab's request (valid cookie, proxied straight) every `interval` (see `probing`)."""
    from tests.sim.prober import RequestProber, session_cookie

    def start(sso: str):
        url = world.dispatch.url
        return RequestProber(url, sso, session_cookie(url, sso), interval=interval).start()
    with probing(world, start) as reports:
        yield reports


def assert_requests_fail_only_in_own_restart_windows(world, reports: dict, done) -> dict[str, str]:
    """Like the logins: a failed request must overlap that user's own restart. Returns, per
    SSO user, "<failed> of <sent>, failing for <first to last failure> ms" (the figure)."""
    windows = restart_windows(done)
    figures = {}
    for user in world.users:
        report = reports[user.sso]
        outside = report.failures_outside(windows.get(user.os_user, []))
        assert not outside, f"{user.sso}: requests failed outside its restart windows: {report.summary()}"
        span = (report.failures[-1].ended - report.failures[0].wall) * 1000 if report.failures else 0
        figures[user.sso] = f"{len(report.failures)} of {len(report.attempts)} failed over {span:.0f} ms"
    return figures


def restart_windows(done) -> dict[str, list[tuple[float, float]]]:
    """Per OS user, the wall-clock (stop issued, serving again) windows of the run's RESTARTED events."""
    windows: dict[str, list[tuple[float, float]]] = {}
    for line in events(done):
        if line.startswith("RESTARTED "):
            fields = dict(word.split("=", 1) for word in line.split()[1:])
            windows.setdefault(fields["user"], []).append((float(fields["stopped_at"]), float(fields["serving_at"])))
    return windows


def assert_failures_only_in_own_restart_windows(world, logins: dict, done) -> dict[str, int]:
    """The production dispatch does not retry, so a login overlapping that user's own restart
    may fail; any other failure is a bug. Returns the failed logins per SSO user (the figure)."""
    windows = restart_windows(done)
    failed = {}
    for user in world.users:
        report = logins[user.sso]
        outside = report.failures_outside(windows.get(user.os_user, []))
        assert not outside, f"{user.sso}: failed outside its restart windows {windows.get(user.os_user)}: " \
                            f"{report.summary()}"
        failed[user.sso] = len(report.failures)
    restarted = {u.sso for u in world.users if u.os_user in windows}
    for line in logins["dispatch failures"]:
        assert any(f" user={sso} " in line for sso in restarted), line
    return failed


def summary_of(world) -> dict:
    runs = sorted((world.state_dir / "runs").glob("*/summary.json"))
    assert runs, "no run summary written"
    return json.loads(runs[-1].read_text())


def events(done) -> list[str]:
    return [line.split("t3-autoupdate: ", 1)[1] for line in done.stderr.splitlines() if line.startswith("t3-autoupdate: ")]


ARCHIVE_ON_STOP = '''#!{python}
import sqlite3, subprocess, sys
code = subprocess.call([{real!r}, *sys.argv[1:]])
if sys.argv[1:2] == ["stop"] and {unit!r} in sys.argv[2:]:
    with sqlite3.connect({db!r}) as conn:
        conn.execute("UPDATE projection_threads SET deleted_at = updated_at"
                     " WHERE thread_id = (SELECT MAX(thread_id) FROM projection_threads)")
sys.exit(code)
'''


def archives_a_thread_when_stopped(world, os_user: str) -> Path:
    """A systemctl for the runner (T3_SYSTEMCTL) under which `os_user` archives a thread that
    their server writes as it stops: data newer than the pre-bump backup the health gate was
    seeded from, so a migration that fails only on archived threads meets it first at that
    user's canary restart (the one failure class the health gate cannot see)."""
    import sys

    path = world.root / f"systemctl-{os_user}-archives"
    path.write_text(ARCHIVE_ON_STOP.format(python=sys.executable, real=str(world.systemctl),
                                           unit=serve_unit_name(os_user), db=str(world.database(os_user))))
    path.chmod(0o755)
    return path


def in_full(line: str) -> str:
    """An outcome line with its details file (a long reason is cut in the line, whole there)."""
    import re

    match = re.search(r' details=("[^"]+"|\S+)', line)
    return line + ("\n" + Path(match.group(1).strip('"')).read_text() if match else "")


# A mint stand-in: holds the shared lock until the next mint is in (so mints always overlap:
# there is never a moment without a holder) or, at most, HOLD_MAX seconds.
MINT_HOLDING_THE_LOCK = """
import sys, threading, time
from pathlib import Path
from runner.userlock import user_lock
state, i, hold_max = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
with user_lock(state, "alice", exclusive=False, timeout=30):
    (state / f"in-{i}").write_text(str(time.monotonic()))
    deadline, pause = time.monotonic() + hold_max, threading.Event()
    while not (state / f"in-{i + 1}").exists() and time.monotonic() < deadline:
        pause.wait(0.02)
    (state / f"out-{i}").write_text(str(time.monotonic()))
"""

