"""Benchmark of the health gate (a script, not a test): how long the gate takes on a good
build as the seed database grows and as the number of users (one throwaway server each,
run together) grows, and what a build that never becomes ready costs. Prints one table.

    python3 bench/bench_gates.py [--sizes-mb 1,50,200] [--users 1,3] [--never-ready-timeout 5]
                                 [--dir /var/tmp/...]

Every user's case seeds from a copy of the same generated database (the gate copies each
seed into its own base dir, as it does for real users). Scratch goes to /var/tmp by
default: on disk, never a tmpfs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.gaterun import run_gate  # noqa: E402
from runner.phases.health import PYTEST_OPTIONS  # noqa: E402
from tests.sim import builds, dbgen  # noqa: E402
from tests.sim.world import GATE_UID  # noqa: E402


def gate(t3_bin: Path, seeds: str, work: Path, label: str, ready_timeout: float):
    scratch = work / f"scratch-{label}"
    scratch.mkdir()
    started = time.monotonic()
    # Every option the tracker passes is given (the gate user as a bare uid, as the simulated
    # world's): a missing one falls back to the host's config, which a bench must not read.
    result = run_gate("health", run_dir=work / f"run-{label}", options={
        **PYTEST_OPTIONS, "--gate-user": GATE_UID, "--t3-bin": str(t3_bin), "--seed-db": seeds, "--scratch": str(scratch),
        "--serve-host": "0.0.0.0", "--smoke-port": "0", "--ready-timeout": str(ready_timeout),
        "--cookie-name": "t3_session"}, timeout=3600)
    return time.monotonic() - started, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="1,50,200")
    parser.add_argument("--users", default="1,3", help="numbers of users (servers) per gate run")
    parser.add_argument("--never-ready-timeout", type=float, default=5.0,
                        help="ready timeout for the never-ready rows (0: skip them)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--version", default=builds.GOOD_VERSIONS["good-0.0.28"])
    args = parser.parse_args(argv)
    user_counts = [int(n) for n in args.users.split(",")]
    work = Path(tempfile.mkdtemp(prefix="t3-bench-gates-", dir=args.dir))
    work.chmod(0o711)  # the gate runs the build as the gate user: it must reach the release
    try:
        t3_bin = builds.install_layout(args.version, builds.profile_for(args.version), work / "release")
        never = builds.BAD_VERSIONS["never-ready"]
        never_bin = builds.install_layout(never, "never-ready", work / "release-never")
        print(f"health gate on {args.version}, scratch {work}")
        broken = False
        print(f"{'build':>11} {'seed MB':>8} {'users':>6} {'make s':>7} {'gate s':>8} {'tests':>6} verdict")
        for size in (int(s) for s in args.sizes_mb.split(",")):
            seed = work / f"seed-{size}.sqlite"
            started = time.monotonic()
            dbgen.make_database(seed, 30, threads=20, target_bytes=size * 1024 * 1024)
            made = time.monotonic() - started
            runs = [("good", t3_bin, 120.0)]
            if args.never_ready_timeout:
                runs.append(("never-ready", never_bin, args.never_ready_timeout))
            for build, binary, ready_timeout in runs:
                for users in user_counts:
                    seeds = ",".join(f"user{i}={seed}" for i in range(users))
                    took, result = gate(binary, seeds, work, f"{build}-{size}-{users}", ready_timeout)
                    verdict = "PASS" if result.passed else "FAIL: " + result.reason()[:80]
                    print(f"{build:>11} {size:>8} {users:>6} {made:>7.1f} {took:>8.1f} {result.tests:>6} {verdict}")
                    # A good build that fails measured nothing: the benchmark itself failed.
                    broken = broken or (build == "good" and not result.passed)
            seed.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if broken:
        print("bench_gates: a good build failed the gate; its times measure a failure", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
