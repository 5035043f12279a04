"""Every benchmark, one after the other (issue 12's figures, each beside its floor).

    python3 -m bench                 # the full figures (long: a ~1 GB database, 30 s timeouts)
    python3 -m bench --quick         # smaller databases, shorter timeouts, fewer repeats
    python3 -m bench --only backup,noop
    python3 -m bench --list

Each benchmark is its own script under bench/, run as a process of its own (`python
bench/<script>.py [its options]`), its output passed through as it comes. A script that is
absent (another branch adds it) is skipped with a line saying so. Results are printed,
never asserted: the exit code is 1 only when a benchmark itself failed to run. Run as root
on a machine with npm (the simulated world's users are bare uids); scratch goes to /var/tmp.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

#: name -> (script, options of a full run, options of a quick run)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "bump": ("bench_bump.py", [], ["--users", "3", "--delays", "0"]),
    "failures": ("bench_failures.py", [], ["--quick"]),
    "backup": ("bench_backup.py", [], ["--quick"]),
    "noop": ("bench_noop.py", [], ["--quick"]),
    "login": ("bench_login.py", ["--logins", "20"], ["--logins", "6"]),
    "gates": ("bench_gates.py", [], ["--sizes-mb", "1,50", "--users", "1,3"]),
    "activity": ("bench_activity.py", [], ["--size-mb", "50", "--repeat", "1"]),
    "unit-security": ("unit_security.py", [], []),
}


def run_one(name: str, quick: bool) -> int:
    script, full, fast = BENCHMARKS[name]
    path = BENCH_DIR / script
    print(f"\n=== {name}: bench/{script} {' '.join(fast if quick else full)}".rstrip(), flush=True)
    if not path.is_file():
        print(f"(skipped: bench/{script} is not in this checkout)", flush=True)
        return 0
    started = time.monotonic()
    code = subprocess.call([sys.executable, str(path), *(fast if quick else full)], cwd=BENCH_DIR.parent)
    print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller and fewer: minutes, not an hour")
    parser.add_argument("--only", default=None, help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="name each benchmark and its script")
    args = parser.parse_args(argv)
    if args.list:
        for name, (script, full, fast) in BENCHMARKS.items():
            present = "" if (BENCH_DIR / script).is_file() else "  (absent)"
            print(f"{name:<14} bench/{script}{present}")
        return 0
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)} (--list names them)")
    failed = [name for name in chosen if run_one(name, args.quick) != 0]
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} benchmarks ran" + (f"; failed: {', '.join(failed)}"
                                                                          if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
