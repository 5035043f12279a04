"""Crash safety end to end: the real tracker SIGKILLed at every phase boundary (and in the
middle of a user's move, and in the middle of a canary rollback), then run again on the
simulated deployment. The rerun must recover (`RECOVERED run=... phase=... action=...`)
and leave one consistent state: everyone on the new build, or everyone on 0.0.24 with
their databases as they were; every precious row kept, every database sound, every user
able to log in, no journal, no staging or health scratch left, no process of the killed
run left behind, and every database a rollback replaced kept aside.

No fixed sleeps: every wait polls (50 ms) with a deadline. Where a window is too short to
poll for, the runner is made to block deterministically at that point: a stand-in program
(`systemctl`, `npm`, `sqlite3`, named through the runner's own T3_* config) that stops at
a chosen call until signalled, or a FIFO where the runner writes its next temporary file.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runner.backups import catalogue, restore, take
from runner.units import serve_unit_name
from tests.e2e.killable import (PHASE_DEADLINE, POLL, RUN_TIMEOUT, Tracker, _processes, assert_no_leftovers,
                                read_journal, wait_for_journal)
from tests.runner_checks import (archives_a_thread_when_stopped, assert_history_kept, assert_logs_in, assert_user_on,
                                 events, fingerprints, link_version)
from tests.sim import builds, dbgen
from tests.sim.world import wait_until

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
BAD_ARCHIVED = builds.BAD_VERSIONS["migration-fails-archived"]
pytestmark = pytest.mark.timeout(600)




# ---------------------------------------------------------------- deterministic stops

STOP_AT = '''#!{python}
"""Stand-in for {real}: the {nth}th call starting with {want!r} stops until SIGUSR1."""
import os, signal, sys
args = sys.argv[1:]
if args[:{n_want}] == {want!r}:
    with open({count!r}, "a") as f:
        f.write(".")
    if os.path.getsize({count!r}) == {nth}:
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})
        with open({marker!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename({marker!r} + ".tmp", {marker!r})
        signal.sigwait({{signal.SIGUSR1}})
os.execv({real!r}, [{real!r}, *args])
'''


HELD: list["StopAt"] = []


@pytest.fixture(autouse=True)
def _no_stopped_stand_in_outlives_its_test():
    """A stopped stand-in runs as the user or gate user, in a session of its own: killing the
    tracker's process group does not reach it, so a test that ends before `release()` ends it."""
    yield
    while HELD:
        stand_in = HELD.pop()
        if stand_in.marker.exists() and not stand_in.released:
            try:
                os.kill(int(stand_in.marker.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


class StopAt:
    """A program stand-in that stops at one chosen call (until `release()` or death)."""

    def __init__(self, world, name: str, real: str, want: list[str], nth: int = 1):
        d = world.root / "stops"
        d.mkdir(exist_ok=True)
        # The stand-in runs as whoever the runner runs that program as (npm: the gate user;
        # sqlite3: the user whose database it copies), so it must be able to run and to leave
        # its marker here: a system python (root's own is under 0700 /root), a sticky 1777 dir.
        d.chmod(0o1777)
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        self.path = d / name
        self.marker = d / f"{name}.stopped"
        self.path.write_text(STOP_AT.format(python=python, real=real, want=want, n_want=len(want), nth=nth,
                                            count=str(d / f"{name}.count"), marker=str(self.marker)))
        self.path.chmod(0o755)
        self.released = False
        HELD.append(self)

    def wait_stopped(self, tracker: Tracker, timeout: float = PHASE_DEADLINE) -> int:
        def stopped():
            tracker.check_alive(f"{self.path.name} stopped")
            return self.marker.exists()

        wait_until(stopped, timeout, f"{self.path.name} to be reached", interval=POLL)
        return int(self.marker.read_text())

    def release(self) -> None:
        os.kill(int(self.marker.read_text()), signal.SIGUSR1)
        self.released = True  # it goes on as the real program: never killed at teardown


def throwaway_servers(world) -> dict[int, str]:
    return {pid: cmd for pid, (_, cmd) in _processes().items()
            if " serve " in cmd and str(world.scratch) + os.sep in cmd}


# ---------------------------------------------------------------- the final state

def recovered_line(done_stderr: str) -> str:
    lines = [e for e in (line.split("t3-autoupdate: ", 1)[1] for line in done_stderr.splitlines()
                         if line.startswith("t3-autoupdate: ")) if e.startswith("RECOVERED ")]
    assert len(lines) == 1, done_stderr
    return lines[0]


def rerun(world):
    return world.run_tracker(timeout=RUN_TIMEOUT)


def assert_consistent(world, before: dict, *, on: str) -> None:
    """Everyone on `on` (links, serving, last-good, operators' link), history and integrity
    kept, everyone logs in, no journal, no staging or health scratch, no stray release."""
    others = {V24, V28} - {on}
    for user in world.users:
        assert_user_on(world, user.sso, on)
    assert_history_kept(world, before)
    for user in world.users:
        assert_logs_in(world, user.sso)
    assert (world.state_dir / "last-good").read_text().strip() == on
    assert os.readlink(world.bin_link) == str(world.releases_dir / on / "bin" / "t3")
    assert not (world.state_dir / "journal").exists()
    assert not list(world.releases_dir.glob(".staging-*"))
    for purpose in ("health", "stage", "rollback"):  # a killed run's private scratch is removed too
        assert not list(world.scratch.glob(f"{purpose}-*")), list(world.scratch.iterdir())
    for version in others - {V24}:  # 0.0.24 stays installed as the rollback target
        assert not (world.releases_dir / version).exists()


def kept_aside(world, os_user: str, version: str) -> list[Path]:
    return sorted((world.backup_dest / os_user).glob(f"state-rolledback-{version}-*.sqlite"))


# ---------------------------------------------------------------- 1. SIGKILL at each phase

@pytest.mark.parametrize("phase", ["backup", "stage", "health"])
def test_killed_before_the_canary_then_rerun_completes_the_bump(world, phase):
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    tracker = Tracker(world, "killed")
    journal = wait_for_journal(world, tracker, lambda j: j["phase"] == phase, f"journal phase {phase}")
    if phase == "health":  # kill while the throwaway server of the health gate is up
        wait_until(lambda: tracker.check_alive("a throwaway server") or throwaway_servers(world), PHASE_DEADLINE,
                   "the health gate's throwaway server", interval=POLL)
        assert read_journal(world)["phase"] == "health"
    tracker.kill()
    assert_no_leftovers(world, tracker)
    for user in world.users:  # nothing a user runs was touched
        assert link_version(world, user.os_user) == V24 and world.server_version(user.sso) == V24

    done = rerun(world)
    assert done.exit_code == 0, done.stderr
    line = recovered_line(done.stderr)
    assert line == f"RECOVERED run={journal['run_id']} phase={phase} action=\"discarded stage\"", line
    assert any(e.startswith(f"update complete version={V28}") for e in events(done)), done.stderr
    assert_consistent(world, before, on=V28)


def test_killed_mid_backup_after_one_user_was_backed_up(world):
    """Stopped at the copy of emo's database (`sqlite3 ... VACUUM INTO`), ancamilea's backup
    complete, then killed: the rerun must back everyone up again (in the same second too),
    leave no temporary copy behind, and complete the bump."""
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    source = os.path.realpath(world.database("emo"))
    # The copy's command line (runner/backups/tools.py `vacuum_into`): JSON out, the source first.
    stop = StopAt(world, "sqlite3", "/usr/bin/sqlite3", ["-bail", "-nofollow", "-init", "/dev/null", "-json", source])
    tracker = Tracker(world, "killed", T3_SQLITE3=str(stop.path))
    stop.wait_stopped(tracker)
    journal = read_journal(world)
    assert journal["phase"] == "backup", journal
    # Staging runs beside the backups: let it finish, so recovery must remove a staged release
    # the journal (still "backup") never named.
    wait_until(lambda: (world.releases_dir / V28 / "bin" / "t3").exists(), PHASE_DEADLINE,
               "the candidate staged beside the backups", interval=POLL)
    killed_backup = list((world.backup_dest / "ancamilea").glob(f"state-prebump-{V28}-*.sqlite"))
    assert len(killed_backup) == 1 and not list((world.backup_dest / "emo").glob("state-prebump-*"))
    tracker.kill()
    assert_no_leftovers(world, tracker)

    done = rerun(world)
    assert done.exit_code == 0, done.stderr
    assert recovered_line(done.stderr) == f"RECOVERED run={journal['run_id']} phase=backup action=\"discarded stage\""
    assert any(e.startswith(f"update complete version={V28}") for e in events(done)), done.stderr
    for user in world.users:
        assert len(list((world.backup_dest / user.os_user).glob(f"state-prebump-{V28}-*.sqlite"))) == (
            2 if user.os_user == "ancamilea" else 1)
        assert not list((world.backup_dest / user.os_user).glob(".t3-autoupdate-tmp-*"))
    assert_consistent(world, before, on=V28)


def test_killed_in_the_canary_after_a_user_moved_rolls_back_then_completes(world):
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    tracker = Tracker(world, "killed")
    journal = wait_for_journal(world, tracker, lambda j: j["phase"] == "canary" and j["moving"],
                               "a user moving in the canary")
    first = journal["moving"][0]
    sso = next(u.sso for u in world.users if u.os_user == first)
    # Moved for real: the link switched and the server answers on the new build (database migrated).
    wait_until(lambda: tracker.check_alive(f"{first} on {V28}") or world.server_version(sso) == V28,
               PHASE_DEADLINE, f"{first} serving {V28}", interval=POLL)
    tracker.kill()
    assert_no_leftovers(world, tracker)
    moving = read_journal(world)["moving"]
    assert read_journal(world)["phase"] == "canary" and first in moving

    done = rerun(world)
    assert done.exit_code == 0, done.stderr
    line = recovered_line(done.stderr)
    assert line == (f"RECOVERED run={journal['run_id']} phase=canary action=\"rolled back {','.join(moving)}\""), line
    lines = events(done)
    for os_user in moving:  # restored from the pre-bump backup, the replaced database kept aside
        assert any(e.startswith(f"RESTORED user={os_user} ") for e in lines), lines
        assert kept_aside(world, os_user, V28), os_user
    assert any(e.startswith(f"update complete version={V28}") for e in lines), done.stderr
    assert_consistent(world, before, on=V28)


def test_killed_mid_move_link_switched_server_not_restarted(world):
    """Between `point_user` and `start` of the second user: emo's link already points at the
    new release while emo's server is stopped. Hit deterministically by a `systemctl`
    stand-in that stops at `start t3-serve@emo.service`."""
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    stop = StopAt(world, "systemctl", str(world.systemctl), ["start", serve_unit_name("emo")])
    tracker = Tracker(world, "killed", T3_SYSTEMCTL=str(stop.path))
    stop.wait_stopped(tracker)
    journal = read_journal(world)
    assert journal["phase"] == "canary" and journal["moving"] == ["ancamilea", "emo"], journal
    assert journal["passed"] == ["ancamilea"], journal
    assert link_version(world, "emo") == V28  # the link moved, the server was not started again
    assert world.systemctl_run("is-active", serve_unit_name("emo"), ok_codes=range(256)).exit_code != 0
    tracker.kill()
    assert_no_leftovers(world, tracker)

    done = rerun(world)
    assert done.exit_code == 0, done.stderr
    moving = journal["moving"]
    line = recovered_line(done.stderr)
    assert line == f"RECOVERED run={journal['run_id']} phase=canary action=\"rolled back {','.join(moving)}\"", line
    for os_user in moving:
        assert kept_aside(world, os_user, V28), os_user
    assert any(e.startswith(f"update complete version={V28}") for e in events(done)), done.stderr
    assert_consistent(world, before, on=V28)


def test_killed_mid_move_the_units_stop_post_recovery_brings_the_user_back_at_once(world):
    """The tracker unit's ExecStopPost (`t3-autoupdate recover`) runs as soon as the killed
    run is gone: emo, stopped for the move, serves again within moments (on last-good, with
    the pre-bump databases), instead of staying down until the next night's run."""
    from runner.units import load_template

    assert "\nExecStopPost=@BIN@ recover\n" in load_template("t3-autoupdate.service")
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    stop = StopAt(world, "systemctl", str(world.systemctl), ["start", serve_unit_name("emo")])
    tracker = Tracker(world, "killed", T3_SYSTEMCTL=str(stop.path))
    stop.wait_stopped(tracker)
    journal = read_journal(world)
    assert world.systemctl_run("is-active", serve_unit_name("emo"), ok_codes=range(256)).exit_code != 0
    tracker.kill()
    assert_no_leftovers(world, tracker)

    done = world.run_tracker("recover", timeout=RUN_TIMEOUT)
    assert done.exit_code == 0, done.stderr
    assert recovered_line(done.stderr) == (
        f"RECOVERED run={journal['run_id']} phase=canary action=\"rolled back {','.join(journal['moving'])}\"")
    assert world.systemctl_run("is-active", serve_unit_name("emo"), ok_codes=range(256)).exit_code == 0
    assert_consistent(world, before, on=V24)
    again = world.run_tracker("recover", timeout=RUN_TIMEOUT)  # after a normal end: nothing to do
    assert again.exit_code == 0 and "RECOVERED" not in again.stderr, again.stderr


def test_killed_while_committing_is_finished_by_the_rerun(world):
    """The commit window is a few milliseconds, so the runner is made to block in it: its
    first write there, `last-good` (temp `.last-good.tmp-<pid>`), meets a FIFO, and an
    O_WRONLY open of a FIFO waits for a reader."""
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    tracker = Tracker(world, "killed")
    fifo = world.state_dir / f".last-good.tmp-{tracker.pid}"
    os.mkfifo(fifo)
    try:
        journal = wait_for_journal(world, tracker, lambda j: j["phase"] == "commit", "journal phase commit")
        assert sorted(journal["passed"]) == sorted(u.os_user for u in world.users)
        tracker.check_alive("the kill")
        tracker.kill()
    finally:
        fifo.unlink()
    assert_no_leftovers(world, tracker)
    assert (world.state_dir / "last-good").read_text().strip() == V24  # the commit had not happened

    done = rerun(world)
    assert done.exit_code == 0, done.stderr
    assert recovered_line(done.stderr) == f"RECOVERED run={journal['run_id']} phase=commit action=finished"
    assert not any(e.startswith("UPDATE START") for e in events(done))  # nothing left to do
    assert_consistent(world, before, on=V28)


# ---------------------------------------------------------------- 4. killed mid-rollback

def test_killed_mid_rollback_of_a_failed_canary_rerun_restores_everyone(make_world):
    """migration-fails-archived passes the health gate (nobody had archived threads at the
    backups), is moved onto ancamilea, then fails emo's canary (he archived one as his server
    stopped). The rollback restores emo
    first, then ancamilea; the tracker is killed after emo's database was restored but
    before emo was restarted (the second `systemctl start` of emo) and before ancamilea
    was touched. The rerun must finish the undo: everyone on 0.0.24 with the pre-bump
    databases, the build quarantined and the tracker frozen (never retried)."""
    world = make_world(db_options={"wizard": {"threads": 8}})
    before = fingerprints(world)
    world.registry.set_tag("nightly", BAD_ARCHIVED)
    stop = StopAt(world, "systemctl", str(archives_a_thread_when_stopped(world, "emo")),
                  ["start", serve_unit_name("emo")], nth=2)
    tracker = Tracker(world, "killed", T3_SYSTEMCTL=str(stop.path))
    stop.wait_stopped(tracker)
    journal = read_journal(world)
    assert journal["phase"] == "canary" and journal["moving"] == ["ancamilea", "emo"], journal
    killed_events = tracker.stderr
    assert "CANARY FAILED user=emo" in killed_events and "RESTORED user=emo" in killed_events, killed_events
    assert "RESTORED user=ancamilea" not in killed_events
    tracker.kill()
    assert_no_leftovers(world, tracker)

    done = rerun(world)
    lines = events(done)
    line = recovered_line(done.stderr)
    assert line == f"RECOVERED run={journal['run_id']} phase=canary action=\"rolled back ancamilea,emo\"", line
    assert not any(e.startswith("UPDATE START") for e in lines), done.stderr  # a failed build is never retried
    assert any(e.startswith("FROZEN") for e in lines), done.stderr
    assert done.exit_code == 0, done.stderr
    assert fingerprints(world) == before
    assert_consistent(world, before, on=V24)
    for os_user in ("ancamilea", "emo"):
        assert kept_aside(world, os_user, BAD_ARCHIVED), os_user
    assert not kept_aside(world, "wizard", BAD_ARCHIVED)
    assert (world.state_dir / "quarantine" / f"{BAD_ARCHIVED}.json").exists()
    assert "canary failed for emo" in json.loads(world.freeze_file.read_text())["reason"]


# ---------------------------------------------------------------- 2. two runs at once

def _snapshot(world) -> dict:
    def tree(root: Path) -> dict:
        return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
                for p in sorted(root.rglob("*")) if not p.is_dir() or p.is_symlink()} if root.exists() else {}

    journal = world.state_dir / "journal"
    return {"runs": sorted(p.name for p in (world.state_dir / "runs").iterdir()),
            "backups": tree(world.backup_dest), "releases": sorted(p.name for p in world.releases_dir.iterdir()),
            "journal": (journal.read_bytes(), journal.stat().st_mtime_ns),
            "lock": (world.state_dir / "lock").read_bytes(),
            "links": {u.os_user: link_version(world, u.os_user) for u in world.users},
            "freeze": world.freeze_file.exists(), "quarantine": sorted((world.state_dir).glob("quarantine/*"))}


def test_a_second_run_while_one_holds_the_lock_exits_at_once_without_side_effects(world):
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    npm = StopAt(world, "npm", proc_which("npm"), ["install"])  # the first run waits at its stage
    first = Tracker(world, "first", T3_NPM=str(npm.path))
    npm.wait_stopped(first)
    # Staging runs beside the backups: once they are done the journal says "stage", and nothing
    # of the first run moves any more while npm is held.
    wait_for_journal(world, first, lambda j: j["phase"] == "stage", "the first run's backups to finish")
    snapshot = _snapshot(world)
    started = time.monotonic()
    second = world.run_tracker(timeout=60)
    seconds = time.monotonic() - started
    assert second.exit_code == 1, second.stderr
    lines = events(second)
    assert lines and lines[0].startswith("LOCKED reason=") and f"pid={first.pid}" in lines[0], second.stderr
    assert len(lines) == 1, lines
    assert _snapshot(world) == snapshot  # no run dir, no backup, journal and lock file untouched
    assert seconds < 15, f"the second run took {seconds:.1f}s to give up"
    print(f"second run gave up after {seconds:.2f}s: {lines[0]}")
    npm.release()
    assert first.wait() == 0, first.stderr
    assert f"t3-autoupdate: update complete version={V28}" in first.stderr, first.stderr
    assert_consistent(world, before, on=V28)


def proc_which(program: str) -> str:
    import shutil

    found = shutil.which(program)
    assert found, f"{program} not on PATH"
    return found


# ---------------------------------------------------------------- a rerun within the same second

def _alice(tmp_path: Path) -> tuple[Path, Path]:
    ud = tmp_path / "home" / "alice" / ".t3" / "userdata"
    for d in (tmp_path / "home", tmp_path / "home" / "alice", ud.parent, ud):
        d.mkdir(mode=0o755)
    dbgen.make_database(ud / "state.sqlite", 30, threads=2, messages_per_thread=3)
    return ud, tmp_path / "backups"


T0 = datetime(2026, 6, 20, 4, 0, 0, tzinfo=timezone.utc)


def test_a_rerun_backing_up_in_the_second_of_a_killed_runs_backup_still_backs_up(tmp_path):
    """A run killed after backing up some users, rerun at once, backs the same version up
    again, possibly within the same second: its backup must not fail over the name, and
    must be the newest (the one the rerun's journal records and a restore checks)."""
    ud, backups = _alice(tmp_path)
    [killed] = take.backup_user_databases("alice", ud, backups, V28, sqlite3="/usr/bin/sqlite3", now=T0)
    [rerun_] = take.backup_user_databases("alice", ud, backups, V28, sqlite3="/usr/bin/sqlite3", now=T0)
    assert rerun_.path != killed.path and killed.path.is_file() and rerun_.path.is_file()
    assert catalogue.latest_backup(backups, "alice", "state.sqlite", version=V28).path == rerun_.path


def test_two_restores_in_the_same_second_keep_both_replaced_databases(tmp_path):
    """A rerun that recovers a run killed mid-rollback can restore the same user's database
    within the second the killed run already kept one aside: both copies are kept, and
    the restore must not fail over the name (that left the user's server stopped)."""
    ud, backups = _alice(tmp_path)
    db = ud / "state.sqlite"
    original = dbgen.precious_fingerprint(db)
    [record] = take.backup_user_databases("alice", ud, backups, V24, sqlite3="/usr/bin/sqlite3", now=T0)
    at = datetime(2026, 6, 20, 5, 0, 0, tzinfo=timezone.utc)
    first = restore.restore_user_database(record, ud, backups, failed_version=V28, sqlite3="/usr/bin/sqlite3", now=at)
    second = restore.restore_user_database(record, ud, backups, failed_version=V28, sqlite3="/usr/bin/sqlite3",
                                          now=at)
    assert first.kept_aside != second.kept_aside and first.kept_aside.is_file() and second.kept_aside.is_file()
    assert dbgen.precious_fingerprint(db) == original
    assert sorted(p.name for p in (backups / "alice").glob(f"state-rolledback-{V28}-*.sqlite")) == sorted(
        [first.kept_aside.name, second.kept_aside.name])
