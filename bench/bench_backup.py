"""Benchmark of runner.backup on a populated database (a script, not a test).

    python3 bench/bench_backup.py [--size-mb 200] [--dir /var/tmp/...] [--writer] [--keep-files]

Builds `<dir>/home/bench/.t3/userdata/state.sqlite` (WAL mode, ~size MB, via the
simulation's database generator), then times each step a pre-bump backup and a restore
are made of, and the two public calls end to end. Prints one table: seconds and MB/s.
`--writer` keeps a connection committing rows during the end-to-end backup (the serve).
Scratch goes to /var/tmp by default: on disk, never a tmpfs.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import proc  # noqa: E402
from runner.backups import restore, take  # noqa: E402
from tests.sim import dbgen  # noqa: E402

VERSION = "0.0.25-nightly.20260608.497"


def timed(fn):
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def sqlite(*args: str) -> str:
    return proc.run([SQLITE3, "-bail", "-init", "/dev/null", *args], timeout=3600).stdout


def main() -> int:
    global SQLITE3
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: new one under /var/tmp)")
    ap.add_argument("--sqlite3", default=shutil.which("sqlite3") or "sqlite3")
    ap.add_argument("--writer", action="store_true", help="commit rows during the end-to-end backup")
    ap.add_argument("--keep-files", action="store_true")
    opts = ap.parse_args()
    SQLITE3 = opts.sqlite3
    scratch = opts.dir or Path(tempfile.mkdtemp(prefix="bench-backup-", dir="/var/tmp"))
    ud = scratch / "home" / "bench" / ".t3" / "userdata"
    ud.mkdir(parents=True, exist_ok=True)
    for d in (scratch, scratch / "home"):  # the trusted parent must not be group/other-writable
        d.chmod(0o755)
    db, backups, work = ud / "state.sqlite", scratch / "backups", scratch / "work"
    work.mkdir(exist_ok=True)
    rows = []
    try:
        if not db.exists():
            secs, facts = timed(lambda: dbgen.make_database(db, 30, threads=50, messages_per_thread=20,
                                                            target_bytes=int(opts.size_mb * 1e6)))
            print(f"generated {db} in {secs:.1f}s: {facts['bytes'] / 1e6:.1f} MB,"
                  f" {facts['counts']['projection_thread_messages']} messages", flush=True)
        size = db.stat().st_size
        mb = size / 1e6

        copy = work / "vacuum-into.sqlite"
        copy.unlink(missing_ok=True)
        secs, _ = timed(lambda: sqlite(str(db), ".timeout 5000", f"VACUUM INTO '{copy}'"))
        rows.append(("VACUUM INTO (online copy)", secs, mb))
        secs, out = timed(lambda: sqlite("-readonly", str(copy), "PRAGMA integrity_check"))
        assert out.strip() == "ok", out
        rows.append(("PRAGMA integrity_check", secs, mb))
        secs, out = timed(lambda: sqlite("-readonly", str(copy), "PRAGMA quick_check"))
        assert out.strip() == "ok", out
        rows.append(("PRAGMA quick_check", secs, mb))
        secs, _ = timed(lambda: hashlib.file_digest(open(copy, "rb"), "sha256").hexdigest())
        rows.append(("sha256", secs, mb))
        raw = work / "dd.sqlite"
        raw.unlink(missing_ok=True)
        secs, _ = timed(lambda: proc.run(["dd", f"if={copy}", f"of={raw}", "bs=4M", "conv=excl,fsync",
                                          "status=none"], timeout=3600))
        rows.append(("dd copy + fsync (restore copy)", secs, mb))

        stop, committed = threading.Event(), [0]

        def serve():
            conn = sqlite3.connect(db, isolation_level=None, timeout=10)
            while not stop.is_set():
                conn.execute("INSERT INTO projection_thread_messages (message_id, thread_id, role, text,"
                             " created_at) VALUES (?, 'thread-000000', 'user', 'x', 'y')",
                             (f"bench-{time.monotonic_ns()}",))
                committed[0] += 1
            conn.close()

        writer = threading.Thread(target=serve)
        if opts.writer:
            writer.start()
        try:
            secs, records = timed(lambda: take.backup_user_databases(
                "bench", ud, backups, VERSION, sqlite3=SQLITE3, keep=3))
        finally:
            stop.set()
            if opts.writer:
                writer.join()
        label = "backup_user_databases (end to end)" + (f", {committed[0]} commits meanwhile" if opts.writer else "")
        rows.append((label, secs, mb))
        secs, report = timed(lambda: restore.restore_user_database(
            records[0], ud, backups, failed_version="0.0.26-nightly.20260701.600", sqlite3=SQLITE3))
        rows.append(("restore_user_database (keep aside + restore)", secs, mb))
    finally:
        if not opts.keep_files:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"\ndatabase {mb:.1f} MB on {scratch} ({'kept' if opts.keep_files else 'removed'});"
          f" sqlite3 {sqlite('-version').split()[0]}")
    print(f"{'step':<58} {'seconds':>8} {'MB/s':>8}")
    for name, secs, size_mb in rows:
        print(f"{name:<58} {secs:8.2f} {size_mb / secs:8.1f}")
    return 0


SQLITE3 = "sqlite3"

if __name__ == "__main__":
    raise SystemExit(main())
