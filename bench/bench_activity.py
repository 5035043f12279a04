"""Benchmark of the busy check (runner.activity.assess_user) on a populated database.

    python3 bench/bench_activity.py [--size-mb 200] [--dir /var/tmp/...] [--repeat 3]

Builds `<dir>/home/bench/.t3/userdata/state.sqlite` (~size MB, via the simulation's
database generator), then times the whole check a canary makes per user: the no-follow
listing, the shape query and the activity query (one scan of each activity table,
messages included). Prints seconds per run. Scratch goes to /var/tmp by default.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import activity  # noqa: E402
from tests.sim import dbgen  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-activity-", dir=args.dir))
    try:
        home = work / "home" / "bench"
        userdata = home / ".t3" / "userdata"
        started = time.monotonic()
        facts = dbgen.make_database(userdata / "state.sqlite", 33, threads=40, messages_per_thread=50,
                                    target_bytes=args.size_mb * 1_000_000)
        print(f"database: {facts['bytes'] / 1e6:.0f} MB, {facts['counts']['projection_thread_messages']} messages"
              f" (built in {time.monotonic() - started:.1f}s)")
        for i in range(args.repeat):
            started = time.monotonic()
            busy, reason = activity.assess_user(home, userdata, sqlite3=shutil.which("sqlite3") or "sqlite3",
                                                now=datetime.now(timezone.utc), quiet_seconds=120)
            print(f"run {i + 1}: {time.monotonic() - started:.2f}s  busy={busy} ({reason})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
