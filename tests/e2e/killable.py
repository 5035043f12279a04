"""A real `t3-autoupdate` run we can kill: its own process group, output to files, and a
poll of its journal (50 ms, with a deadline) to catch it at a phase boundary."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.sim.world import wait_until

POLL = 0.05
PHASE_DEADLINE = 180.0
RUN_TIMEOUT = 300.0


STARTED: list["Tracker"] = []


class Tracker:
    """A real `t3-autoupdate` process in its own process group, output to files."""

    def __init__(self, world, name: str, *args: str, **env: str):
        self.world = world
        self.out = world.root / f"tracker-{name}.out"
        self.err = world.root / f"tracker-{name}.err"
        self.started = time.monotonic()
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "runner.cli", *args], env=world.runner_env(**env),
                                          cwd=world.root, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          start_new_session=True)
        self.pid = self.pid_group = self.popen.pid
        STARTED.append(self)

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise AssertionError(f"the tracker exited ({self.popen.returncode}) before {what}:\n{self.stderr}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the runner and every child in its group."""
        os.killpg(self.pid_group, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        code = self.popen.wait(timeout=timeout)
        self.seconds = time.monotonic() - self.started
        return code


def read_journal(world) -> dict | None:
    try:
        return json.loads((world.state_dir / "journal").read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_for_journal(world, tracker: Tracker, predicate, what: str, timeout: float = PHASE_DEADLINE) -> dict:
    """Poll the journal every 50 ms until `predicate(journal)`; the tracker must still be running."""
    def seen():
        tracker.check_alive(what)
        journal = read_journal(world)
        return journal if journal is not None and predicate(journal) else None

    return wait_until(seen, timeout, what, interval=POLL)


# ---------------------------------------------------------------- processes of a run

def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (process group, command line) of every live (non-zombie) process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if fields[0] == b"Z":
            continue
        found[int(entry)] = (int(fields[2]), cmdline)
    return found


def run_leftovers(world, tracker: Tracker) -> dict[int, str]:
    """Processes a tracker run started that are still alive: anything in its process group,
    and anything working in its scratch, run or staging directories (throwaway servers
    run in sessions of their own)."""
    needles = (str(world.scratch) + os.sep, str(world.state_dir / "runs") + os.sep,
               str(world.releases_dir / ".staging-"))
    return {pid: cmd for pid, (group, cmd) in _processes().items()
            if pid != os.getpid() and (group == tracker.pid_group or any(n in cmd for n in needles))}


def assert_no_leftovers(world, tracker: Tracker) -> None:
    """The killed run's children must die with it (a moment for the kernel to deliver)."""
    try:
        wait_until(lambda: not run_leftovers(world, tracker), 15, "the killed run's processes to go", interval=POLL)
    except TimeoutError:
        left = run_leftovers(world, tracker)
        for pid in left:  # do not leak them into other tests
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"processes of the killed run outlived it: {left}") from None
