"""The per-user lock between a move (exclusive) and mints (shared), with real processes.

Logins hold it shared while they mint; a move needs it exclusively. flock alone lets
overlapping mints starve the move forever; the lock must prefer the move: once it waits,
no new mint gets in, and the mints in flight finish.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner import userlock
from runner.userlock import UserLockTimeout, user_lock
from tests.runner_checks import MINT_HOLDING_THE_LOCK as READER
from tests.sim.world import PROJECT_ROOT, wait_until


def start_reader(state: Path, i: int, hold_max: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", READER, str(state), str(i), str(hold_max)], cwd=PROJECT_ROOT,
                            stdin=subprocess.DEVNULL)


def test_staggered_mints_cannot_starve_a_move(tmp_path):
    """Each mint holds the lock until the next one holds it too; a move asked for in the middle
    gets it once the mints in flight finish, and no mint holds it while the move does."""
    state, hold_max = tmp_path, 1.5
    readers: list[subprocess.Popen] = []
    stop = threading.Event()
    moved: dict = {}

    def chain():  # start mint i+1 as soon as mint i holds the lock, until the move is done
        i = 0
        readers.append(start_reader(state, i, hold_max))
        while not stop.is_set() and i < 200:
            if (state / f"in-{i}").exists():
                i += 1
                readers.append(start_reader(state, i, hold_max))
            stop.wait(0.02)

    driver = threading.Thread(target=chain)
    driver.start()
    try:
        wait_until(lambda: (state / "in-2").exists(), 30, "three mints in a row")
        asked = time.monotonic()
        try:
            with user_lock(state, "alice", exclusive=True, timeout=10):
                moved["after"] = time.monotonic() - asked
                inside = sorted(p.name for p in state.glob("in-*"))
                moved["holding"] = [n for n in inside if not (state / n.replace("in-", "out-")).exists()]
        except UserLockTimeout as exc:
            moved["timeout"] = str(exc)
    finally:
        stop.set()
        driver.join(30)
        for reader in readers:
            try:
                reader.wait(30)
            except subprocess.TimeoutExpired:
                reader.kill()
    assert "timeout" not in moved, f"the move was starved by overlapping mints: {moved['timeout']}"
    assert moved["holding"] == [], f"mints held the lock during the move: {moved['holding']}"
    assert all(r.returncode == 0 for r in readers)  # the mints held back by the move got in after it


def test_a_mint_waits_for_a_move_and_then_gets_in(tmp_path):
    entered = threading.Event()

    def mint():
        with user_lock(tmp_path, "alice", exclusive=False, timeout=10):
            entered.set()

    with user_lock(tmp_path, "alice", exclusive=True, timeout=1):
        waiter = threading.Thread(target=mint)
        waiter.start()
        assert not entered.wait(0.3)  # the move holds it: the mint waits
    waiter.join(10)
    assert entered.is_set()


def test_a_lock_held_past_the_timeout_raises_before_the_block_runs(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), "0", "60"], cwd=PROJECT_ROOT)
    try:
        wait_until(lambda: (tmp_path / "in-0").exists(), 30, "the holder")
        ran = []
        with pytest.raises(UserLockTimeout, match="alice"):
            with user_lock(tmp_path, "alice", exclusive=True, timeout=0.3):
                ran.append(True)
        assert not ran
        # The gate is free again: a mint (a second reader) is not held back by the failed move.
        with user_lock(tmp_path, "alice", exclusive=False, timeout=1):
            pass
    finally:
        holder.kill()
        holder.wait(10)


def test_an_uncontended_lock_never_sleeps(tmp_path, monkeypatch):
    class NoPause:
        def wait(self, timeout=None):
            raise AssertionError("slept on an uncontended lock")

    monkeypatch.setattr(userlock, "_PAUSE", NoPause())
    for exclusive in (False, True, False):
        with user_lock(tmp_path, "alice", exclusive=exclusive, timeout=1):
            pass
