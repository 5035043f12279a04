"""Benchmark of the failure paths (a script, not a test): whole real tracker runs on the
simulated world (3 users on 0.0.24) for a build that crashes at start, one that never
becomes ready, and a good one that needs `--slow-delay` seconds to become ready. Each run
is printed with its phase marks, the commands that took the time, and its floor.

    python3 bench/bench_failures.py [--quick] [--ready-timeout 30] [--slow-delay 8]
                                    [--cases crash,never-ready,slow-good] [--commands]

Floors (issue 12): a server that exits is a verdict at once, so the crash run costs the run
up to the health gate plus the gate itself with no waiting; a never-ready build costs ONE
ready timeout in the health phase (the populated and empty cases run at once); the slow
good build costs the run up to the gate, one server's readiness (the delay) in the gate, and
then each user's restart and readiness in the canary. The original bash tracker's figures
(issue 12, same simulated builds) are printed beside ours.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.worldrun import bench_world, print_run, publish_variant, run_tracker, slow_profile  # noqa: E402
from tests.sim import builds  # noqa: E402

#: The original bash tracker on the same simulated builds (issue 12's table), seconds.
ORIGINAL = {"crash": 32.9, "never-ready": 31.6, "slow-good": 37.4}
SLOW_VERSION = "0.0.30-nightly.20260701.800"  # newer than every catalogue V1 build
MARKS = [("update start", "UPDATE START"), ("backups done (last BACKED UP)", "BACKED UP", True),
         ("health verdict", "HEALTH-CHECK"), ("first user restarted", "RESTARTED"), ("end", "update complete")]


def phase_marks(run) -> dict[str, float | None]:
    return {"start": run.at("UPDATE START"), "backed_up": run.at("BACKED UP", last=True),
            "health": run.at("HEALTH-CHECK")}


def print_commands(run, least: float = 0.05) -> None:
    print("    commands the run waited for (start s, seconds):")
    for start, took, what in run.commands:
        if took >= least:
            print(f"      {start:6.2f} {took:6.2f}  {what}")


def failure_case(name: str, version: str, ready_timeout: float, show_commands: bool) -> dict:
    with bench_world(name) as world:
        world.registry.set_tag("nightly", version)
        run = run_tracker(world, T3_READY_TIMEOUT=f"{ready_timeout:g}")
        marks = phase_marks(run)
        health = run.at("HEALTH-CHECK")
        gate = next((took for _, took, what in run.commands if "test_health.py" in what), None)
        print_run(f"{name} ({version}), ready timeout {ready_timeout:g} s", run, MARKS[:3])
        print(f"    {run.line('HEALTH-CHECK')[:150]}")
        if show_commands:
            print_commands(run)
        return {"case": name, "seconds": run.seconds, "cpu": run.cpu, "exit": run.exit_code, "gate": gate,
                "before_gate": (health - gate) if health is not None and gate is not None else None, **marks}


def slow_good_case(delay: float, show_commands: bool) -> dict:
    with bench_world("slow-good") as world:
        publish_variant(world, SLOW_VERSION, slow_profile("good-0.0.28", delay))
        run = run_tracker(world, T3_READY_TIMEOUT=str(max(30, 4 * delay)))
        restarts = [t for t, line in run.lines if line.startswith("RESTARTED")]
        print_run(f"slow-good ({SLOW_VERSION}, ready after {delay:g} s)", run, MARKS)
        if show_commands:
            print_commands(run)
        gate = next((took for _, took, what in run.commands if "test_health.py" in what), None)
        return {"case": "slow-good", "seconds": run.seconds, "cpu": run.cpu, "exit": run.exit_code, "gate": gate,
                "restarts": restarts, **phase_marks(run)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ready timeout 10 s, slow delay 3 s")
    parser.add_argument("--ready-timeout", type=float, default=None, help="for the never-ready run (default 30)")
    parser.add_argument("--slow-delay", type=float, default=None, help="the slow good build's delay (default 8)")
    parser.add_argument("--cases", default="crash,never-ready,slow-good")
    parser.add_argument("--commands", action="store_true", help="list the commands each run waited for")
    args = parser.parse_args(argv)
    ready_timeout = args.ready_timeout or (10.0 if args.quick else 30.0)
    delay = args.slow_delay or (3.0 if args.quick else 8.0)
    cases = args.cases.split(",")
    results = []
    print("failure paths: whole tracker runs on the simulated world (3 users, 0.0.24)")
    if "crash" in cases:
        # A 120 s ready timeout: a gate that polled a dead server would show it at once.
        results.append(failure_case("crash", builds.BAD_VERSIONS["crash-at-start"], 120.0, args.commands))
    if "never-ready" in cases:
        results.append(failure_case("never-ready", builds.BAD_VERSIONS["never-ready"], ready_timeout, args.commands))
    if "slow-good" in cases:
        results.append(slow_good_case(delay, args.commands))

    print(f"\n{'run':<12} {'exit':>4} {'whole s':>8} {'CPU s':>6} {'gate s':>7} {'floor of the gate':<36} {'original s':>10}")
    for r in results:
        gate = "-" if r["gate"] is None else f"{r['gate']:.2f}"
        if r["case"] == "crash":
            floor = "no wait: a dead server is a verdict"
        elif r["case"] == "never-ready":
            floor = f"one ready timeout: {ready_timeout:g} s"
        else:
            floor = f"one server's readiness: {delay:g} s"
        original = ORIGINAL[r["case"]] if (r["case"] != "never-ready" or ready_timeout == 30) and (
            r["case"] != "slow-good" or delay == 8) else None
        print(f"{r['case']:<12} {r['exit']:>4} {r['seconds']:>8.2f} {r['cpu']:>6.2f} {gate:>7} {floor:<36} "
              f"{'-' if original is None else original:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
