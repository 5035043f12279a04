"""Benchmark of the pre-bump backup (a script, not a test): `backup_user_databases` on a
small database (a simulated user's) and on a ~1 GB one, beside a bare `VACUUM INTO` and a
plain file copy of the same database, each while a concurrent writer (the serve) commits
rows: seconds, MB/s and the longest stall the writer saw. Target (issue 12): the backup,
still verified, <= 2x a bare VACUUM INTO. Then the steps a backup is made of, and the
restore (keep aside + restore), timed once on the large database.

    python3 bench/bench_backup.py [--quick] [--size-mb 1000] [--repeat 5] [--dir /var/tmp] [--keep-files]

Like production, the databases belong to a user (a bare uid) and every copy runs as that
user; the writer is a separate process in WAL mode. Operations are interleaved, so load on
the machine hits them alike. Scratch goes to /var/tmp by default: on disk, never a tmpfs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runner import proc  # noqa: E402
from runner.backups import restore, take  # noqa: E402
from tests.sim import dbgen  # noqa: E402

VERSION = "0.0.25-nightly.20260608.497"
OWNER = proc.UserIds(64298, 64298, "bench")  # the database's owner: a bare uid, as a simulated user
TARGET_RATIO = 2.0
# The writer runs as the owner: a Python it can execute (this venv's may live under root's home).
WRITER_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

# The serve: commits one small row at a time until stdin closes, then prints its figures.
WRITER = r"""
import json, sqlite3, sys, threading, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=WAL")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
commits, worst, n = 0, 0.0, 0
print("ready", flush=True)
while not stop.is_set():
    started = time.monotonic()
    db.execute("INSERT INTO projection_thread_messages (message_id, thread_id, role, text, created_at)"
               " VALUES (?, 'thread-000000', 'user', 'x', 'y')", (f"bench-{time.monotonic_ns()}",))
    worst = max(worst, time.monotonic() - started)
    commits += 1
    time.sleep(0.002)
print(json.dumps({"commits": commits, "worst": worst}), flush=True)
"""


def as_owner(argv: list[str]) -> None:
    proc.run(argv, as_user=OWNER, cwd="/", timeout=3600)


class Writer:
    """A concurrent writer for the span of a `with` block; `.worst` is its longest commit."""

    def __init__(self, db: Path):
        self.db, self.worst, self.commits = db, 0.0, 0

    def __enter__(self):
        self.child = subprocess.Popen([WRITER_PYTHON, "-c", WRITER, str(self.db)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, user=OWNER.uid, group=OWNER.gid)
        if self.child.stdout.readline().strip() != "ready":
            raise SystemExit("the writer did not start")
        return self

    def __exit__(self, *exc):
        out, _ = self.child.communicate("", timeout=60)
        figures = json.loads(out.strip().splitlines()[-1])
        self.worst, self.commits = figures["worst"], figures["commits"]


def make_owned_tree(scratch: Path, size_mb: float | None) -> tuple[Path, Path]:
    """(userdata dir, database) of a user home under scratch, every part owned by OWNER."""
    home = scratch / "home" / "bench"
    userdata = home / ".t3" / "userdata"
    userdata.mkdir(parents=True)
    db = userdata / "state.sqlite"
    started = time.monotonic()
    if size_mb:
        facts = dbgen.make_database(db, 30, threads=50, messages_per_thread=20, target_bytes=int(size_mb * 1e6))
    else:  # a simulated user's, as the world makes them
        facts = dbgen.make_database(db, 30, threads=4, messages_per_thread=12)
    print(f"  generated {facts['bytes'] / 1e6:.1f} MB ({facts['counts']['projection_thread_messages']} messages)"
          f" in {time.monotonic() - started:.1f} s", flush=True)
    for dirpath, dirs, files in os.walk(home):
        for name in [".", *dirs, *files]:
            os.chown(os.path.join(dirpath, name), OWNER.uid, OWNER.gid)
    for d in (scratch, scratch / "home"):  # the trusted parents: root's, not group/other-writable
        d.chmod(0o755)
    return userdata, db


def measure(ops: dict, repeat: int, db: Path) -> dict[str, list[tuple[float, float]]]:
    """Each op `repeat` times, interleaved, with a writer running: (seconds, worst stall)."""
    results = {name: [] for name in ops}
    for _ in range(repeat):
        for name, op in ops.items():
            with Writer(db) as writer:
                started = time.monotonic()
                op()
                seconds = time.monotonic() - started
            results[name].append((seconds, writer.worst))
    return results


def compare(label: str, scratch: Path, size_mb: float | None, repeat: int) -> dict:
    print(f"{label}:", flush=True)
    userdata, db = make_owned_tree(scratch, size_mb)
    backups, work = scratch / "backups", scratch / "work"
    work.mkdir()
    os.chown(work, OWNER.uid, OWNER.gid)
    counter = iter(range(10**6))

    def vacuum_into():
        dest = work / f"vacuum-{next(counter)}.sqlite"
        as_owner(["sqlite3", "-bail", "-init", "/dev/null", str(db), ".timeout 5000", f"VACUUM INTO '{dest}'"])
        dest.unlink()

    def file_copy():
        dest = work / f"copy-{next(counter)}.sqlite"
        as_owner(["cp", "--", str(db), str(dest)])
        dest.unlink()

    def backup():  # (a name already taken this second moves the next one a second on)
        take.backup_user_databases("bench", userdata, backups, VERSION, keep=1)

    size = db.stat().st_size / 1e6
    ops = {"bare VACUUM INTO": vacuum_into, "file copy (cp)": file_copy, "backup_user_databases": backup}
    vacuum_into(), backup()  # warm-up: page cache
    results = measure(ops, repeat, db)
    with Writer(db) as idle:  # the writer alone, for its own stalls
        time.sleep(min(2.0, statistics.median(s for s, _ in results["backup_user_databases"])))
    print(f"  {'operation':<26} {'median s':>9} {'MB/s':>8} {'x VACUUM':>9} {'worst writer stall s':>21}")
    floor = statistics.median(s for s, _ in results["bare VACUUM INTO"])
    for name, values in results.items():
        secs = statistics.median(s for s, _ in values)
        print(f"  {name:<26} {secs:>9.3f} {size / secs:>8.1f} {secs / floor:>9.2f} {max(w for _, w in values):>21.3f}")
    print(f"  {'(writer alone)':<26} {'':>9} {'':>8} {'':>9} {idle.worst:>21.3f}")
    ratio = statistics.median(s for s, _ in results["backup_user_databases"]) / floor
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"  backup / bare VACUUM INTO = {ratio:.2f} (target <= {TARGET_RATIO:g}): {verdict}\n", flush=True)
    return {"userdata": userdata, "db": db, "backups": backups, "work": work, "mb": size}


def steps(setup: dict) -> None:
    """The steps of one backup and of a restore, each once (the large database)."""
    db, work, mb = setup["db"], setup["work"], setup["mb"]
    copy = work / "steps.sqlite"

    def sqlite(*args: str) -> str:
        return proc.run(["sqlite3", "-bail", "-init", "/dev/null", *args], as_user=OWNER, cwd="/",
                        timeout=3600).stdout

    rows = []

    def timed(name, fn):
        started = time.monotonic()
        result = fn()
        rows.append((name, time.monotonic() - started))
        return result

    timed("VACUUM INTO (online copy)", lambda: sqlite(str(db), ".timeout 5000", f"VACUUM INTO '{copy}'"))
    timed("PRAGMA integrity_check", lambda: sqlite("-readonly", str(copy), "PRAGMA integrity_check"))
    timed("PRAGMA quick_check", lambda: sqlite("-readonly", str(copy), "PRAGMA quick_check"))
    timed("sha256 (root, by descriptor)", lambda: hashlib.file_digest(open(copy, "rb"), "sha256"))
    timed("dd copy + fsync (a restore's copy)", lambda: as_owner(
        ["dd", f"if={copy}", f"of={work / 'dd.sqlite'}", "bs=4M", "conv=excl,fsync", "status=none"]))
    record = timed("backup_user_databases (no writer)", lambda: take.backup_user_databases(
        "bench", setup["userdata"], setup["backups"], VERSION, keep=1))[0]
    timed("restore_user_database (keep aside + restore)", lambda: restore.restore_user_database(
        record, setup["userdata"], setup["backups"], failed_version="0.0.26-nightly.20260701.600"))
    print(f"steps on the {mb:.0f} MB database, once each:")
    print(f"  {'step':<46} {'seconds':>8} {'MB/s':>8}")
    for name, secs in rows:
        print(f"  {name:<46} {secs:8.2f} {mb / secs:8.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 100 MB large database, 3 repeats")
    ap.add_argument("--size-mb", type=float, default=None, help="the large database (default 1000)")
    ap.add_argument("--repeat", type=int, default=None, help="repeats of each operation (default 5)")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--keep-files", action="store_true")
    opts = ap.parse_args(argv)
    size_mb = opts.size_mb or (100 if opts.quick else 1000)
    repeat = opts.repeat or (3 if opts.quick else 5)
    print(f"sqlite3 {proc.run(['sqlite3', '-version']).stdout.split()[0]}; as uid {OWNER.uid}; "
          f"{repeat} interleaved repeats, a writer committing throughout\n")
    scratches = []
    try:
        for label, size in (("small database (a simulated user's)", None), (f"~{size_mb:g} MB database", size_mb)):
            scratch = Path(tempfile.mkdtemp(prefix="t3-bench-backup-", dir=opts.dir))
            scratches.append(scratch)
            setup = compare(label, scratch, size, repeat if size else repeat * 3)
        steps(setup)
    finally:
        for scratch in scratches:
            if opts.keep_files:
                print(f"kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
