"""What the world benchmarks share: a simulated world on disk (never a tmpfs), a build
published under a version of its own, and a real tracker run whose every outcome line and
every command it starts is timestamped (where the time goes), without changing the run.

A traced run is `python -m bench.worldrun <tracker args>`: the tracker's own `main` with
logging at DEBUG into a file (runner/proc.py logs each command it starts and how long it
took); the outcome lines are timestamped by the reader of its stderr.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.sim import builds  # noqa: E402
from tests.sim.world import World  # noqa: E402

#: Scratch for worlds: on disk (/var/tmp), as the runbook's scratch is.
SCRATCH = Path(os.environ.get("BENCH_DIR", "/var/tmp"))
TRACE_ENV = "BENCH_TRACE_FILE"  # the file a traced run writes its DEBUG log to


@contextmanager
def bench_world(prefix: str, **options):
    """A built World under a fresh directory of SCRATCH, stopped and removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"t3-bench-{prefix}-", dir=SCRATCH))
    work.chmod(0o755)  # the simulated users traverse it to their homes
    world = World(work / "world", **options)
    try:
        yield world.build()
    finally:
        world.stop()
        shutil.rmtree(work, ignore_errors=True)


def publish_variant(world: World, version: str, profile: builds.Profile, *, tag: str | None = "nightly") -> str:
    """Publish `profile` (a catalogue profile, or a copy made with dataclasses.replace) as
    `version`, a day old (past any minimum age), and point `tag` at it."""
    tarball = builds.build_tarball(version, profile, world.root / "bench-tarballs")
    world.registry.publish(tarball, published_at=datetime.now(timezone.utc) - timedelta(days=1))
    if tag:
        world.registry.set_tag(tag, version)
    return version


def slow_profile(name: str, ready_delay: float) -> builds.Profile:
    """A catalogue profile that needs `ready_delay` seconds after migrating before it listens."""
    return dataclasses.replace(builds.PROFILES[name], name=f"{name}-slow{ready_delay:g}", ready_delay=ready_delay)


@dataclasses.dataclass
class TimedRun:
    exit_code: int
    seconds: float
    lines: list[tuple[float, str]]  # (seconds since start, outcome line)
    commands: list[tuple[float, float, str]]  # (start, seconds, argv[0] and first word) from the trace
    cpu: float = 0.0  # CPU seconds (user + system) of the run and everything it waited for: hardly moved by load

    def at(self, prefix: str, last: bool = False) -> float | None:
        """When the first (or last) outcome line starting with `prefix` was printed."""
        hits = [t for t, line in self.lines if line.startswith(prefix)]
        return (hits[-1] if last else hits[0]) if hits else None

    def line(self, prefix: str) -> str:
        return next((line for _, line in self.lines if line.startswith(prefix)), "")


def run_tracker(world: World, *args: str, timeout: float = 900, trace: bool = True, **env: str) -> TimedRun:
    """One real tracker run against `world`, its outcome lines timestamped as they arrive."""
    trace_file = world.root / f"trace-{time.monotonic_ns()}.log"
    if trace:
        env[TRACE_ENV] = str(trace_file)
        argv = [sys.executable, "-m", "bench.worldrun", *args]
    else:
        argv = [world.tracker_bin, *args]
    run_env = world.runner_env(**env)
    run_env["PYTHONPATH"] = str(ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, wall_start = time.monotonic(), time.time()
    child = subprocess.Popen(argv, env=run_env, cwd=world.root, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = started + timeout
    for raw in child.stderr:  # ends when the tracker (and anything holding its stderr) is gone
        lines.append((time.monotonic() - started, raw.rstrip("\n").removeprefix("t3-autoupdate: ")))
        if time.monotonic() > deadline:
            child.kill()
            break
    code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    commands = read_trace(trace_file, wall_start) if trace and trace_file.exists() else []
    return TimedRun(code, seconds, lines, commands, cpu)


def read_trace(path: Path, wall_start: float) -> list[tuple[float, float, str]]:
    """(start, seconds, what) of every command the traced run waited for (proc.run's log),
    start in seconds since `wall_start` (the epoch time the run was started at)."""
    commands, started = [], []
    for line in path.read_text(errors="replace").splitlines():
        stamp, _, message = line.partition(" ")
        if message.startswith("run: "):
            started.append(message[len("run: "):])
        elif message.startswith("exit ") and " after " in message and started:
            took = float(message.split(" after ", 1)[1].split("s:", 1)[0])
            argv = started.pop().split()
            what = " ".join([Path(argv[0]).name, *[a for a in argv[1:] if "/" not in a][:3]])
            if any(a.endswith(".py") for a in argv):
                what += " " + Path(next(a for a in argv if a.endswith(".py"))).name
            commands.append((float(stamp) - wall_start - took, took, what[:70]))
    return commands


def print_run(title: str, run: TimedRun, marks: list[tuple]) -> None:
    """The run's total and its phase marks: (label, outcome line prefix[, the last such line])."""
    print(f"  {title}: exit {run.exit_code}, {run.seconds:.2f} s, CPU {run.cpu:.2f} s")
    for label, prefix, *last in marks:
        moment = run.at(prefix, last=bool(last and last[0]))
        print(f"    {label:<34} {'-' if moment is None else f'{moment:6.2f} s'}")


def traced_main() -> int:
    """The tracker's `main`, logging every command it runs into $BENCH_TRACE_FILE."""
    path = os.environ.get(TRACE_ENV)
    if path:
        class Stamped(logging.Formatter):
            def format(self, record):
                return f"{record.created:.3f} {record.getMessage()}"

        handler = logging.FileHandler(path)
        handler.setFormatter(Stamped())
        logging.getLogger("t3-autoupdate").addHandler(handler)
        logging.getLogger("t3-autoupdate").setLevel(logging.DEBUG)
    from runner.entry import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(traced_main())
