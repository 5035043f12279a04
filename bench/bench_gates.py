"""Benchmark of the health gate (a script, not a test): how long the gate takes on a
good build as the seed database grows. Prints one table.

    python3 bench/bench_gates.py [--sizes-mb 1,50,200] [--dir /var/tmp/...]

Scratch goes to /var/tmp by default: on disk, never a tmpfs.
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
from tests.sim import builds, dbgen  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="1,50,200")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--version", default=builds.GOOD_VERSIONS["good-0.0.28"])
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="t3-bench-gates-", dir=args.dir))
    try:
        t3_bin = builds.install_layout(args.version, builds.profile_for(args.version), work / "release")
        print(f"health gate on {args.version}, scratch {work}")
        print(f"{'seed MB':>8} {'make s':>8} {'gate s':>8} {'tests':>6} verdict")
        for size in (int(s) for s in args.sizes_mb.split(",")):
            seed = work / f"seed-{size}.sqlite"
            started = time.monotonic()
            dbgen.make_database(seed, 30, threads=20, target_bytes=size * 1024 * 1024)
            made = time.monotonic() - started
            scratch = work / f"scratch-{size}"
            scratch.mkdir()
            started = time.monotonic()
            result = run_gate("health", run_dir=work / f"run-{size}", options={
                "--t3-bin": str(t3_bin), "--seed-db": str(seed), "--scratch": str(scratch),
                "--serve-host": "0.0.0.0", "--smoke-port": "0", "--ready-timeout": "120",
                "--cookie-name": "t3_session"}, timeout=3600)
            took = time.monotonic() - started
            print(f"{size:>8} {made:>8.1f} {took:>8.1f} {result.tests:>6} {'PASS' if result.passed else 'FAIL: ' + result.reason()}")
            seed.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
