"""Benchmark of a run with nothing to do (a script, not a test): `t3-autoupdate` on the
simulated world whose nightly tag points at the installed build (HOLD code=not-newer),
beside `npm view` alone (the same command the run makes: a fresh empty cache), measured
alternately so load on the machine hits both alike. Target (issue 12): the run's median
<= npm view's median + 0.2 s. Also prints where the run's own start-up goes (`python -X
importtime`, the heaviest imports) and what one short command costs through runner.proc.

    python3 bench/bench_noop.py [--runs 10] [--quick]
"""
from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.worldrun import bench_world  # noqa: E402
from runner import proc  # noqa: E402
from runner.resolve import npm_view_argv  # noqa: E402

TARGET_EXCESS = 0.2


CPU: dict[str, list[float]] = {}  # command -> CPU seconds of each run (it and its children)


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds; the CPU seconds (user + system, the command and everything it waited
    for, from the children's rusage: hardly moved by load) go to CPU under argv[0]'s name."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(Path(argv[0]).name, []).append(cpu)
    return seconds, done


def npm_view_alone(world, env: dict) -> float:
    with tempfile.TemporaryDirectory(dir=world.scratch) as cache:
        seconds, done = timed(npm_view_argv("npm", "t3", "nightly", Path(cache) / "cache"), env, world.root)
    if done.returncode != 0:
        raise SystemExit(f"npm view failed: {done.stderr[-400:]}")
    return seconds


def noop_run(world, env: dict) -> float:
    seconds, done = timed([world.tracker_bin], env, world.root)
    if done.returncode != 0 or "HOLD" not in done.stderr:
        raise SystemExit(f"the no-op run did not HOLD: exit {done.returncode} {done.stderr[-400:]}")
    return seconds


def heaviest_imports(world, env: dict, top: int = 12) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the no-op run's heaviest top-level imports."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner.entry"], env=env, cwd=world.root,
                          capture_output=True, text=True, timeout=120)
    found = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 3:  # the run's own imports and their direct children
            found.append((int(match.group(1)), match.group(2) + match.group(3)))
    return sorted(found, reverse=True)[:top]


def command_overhead(repeat: int = 20) -> tuple[float, float]:
    """Median seconds of `true` through runner.proc.run and through subprocess directly."""
    through, direct = [], []
    for _ in range(repeat):
        started = time.monotonic()
        proc.run(["true"])
        through.append(time.monotonic() - started)
        started = time.monotonic()
        subprocess.run(["true"])
        direct.append(time.monotonic() - started)
    return statistics.median(through), statistics.median(direct)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs of each (default 10, --quick 4)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    runs = args.runs or (4 if args.quick else 10)
    with bench_world("noop") as world:
        env = world.runner_env()
        noop_run(world, env)  # warm-up: page cache, bytecode
        npm_view_alone(world, env)
        CPU.clear()
        times = {"npm view alone": [], "t3-autoupdate (HOLD not-newer)": []}
        for _ in range(runs):
            times["npm view alone"].append(npm_view_alone(world, env))
            times["t3-autoupdate (HOLD not-newer)"].append(noop_run(world, env))
        imports = heaviest_imports(world, env)
    through, direct = command_overhead()
    print(f"a run with nothing to do, {runs} runs each, alternately")
    print(f"{'command':<34} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:<34} {statistics.median(values):>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    view, run = (statistics.median(v) for v in times.values())
    verdict = "met" if run - view <= TARGET_EXCESS else "NOT met"
    print(f"run - npm view (medians): {run - view:+.3f} s (target <= +{TARGET_EXCESS:.3f} s): {verdict}")
    view_cpu, run_cpu = statistics.median(CPU["npm"]), statistics.median(CPU[Path(world.tracker_bin).name])
    print(f"CPU (user+system, with children), medians: npm view {view_cpu:.3f} s, the run {run_cpu:.3f} s,"
          f" difference {run_cpu - view_cpu:+.3f} s")
    print(f"\none short command (`true`): runner.proc.run {through * 1000:.1f} ms, subprocess {direct * 1000:.1f} ms")
    print("\nheaviest imports of the run's start-up (python -X importtime, cumulative):")
    for micros, module in imports:
        print(f"  {micros / 1000:8.1f} ms  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
