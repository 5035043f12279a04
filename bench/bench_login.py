"""Benchmark of login latency through the dispatch stand-in (a script, not a test): the
deployment's old mint helper (bash: validate the user, run the global t3's pairing)
against the project's (`install-mint`'s wrapper around `t3-autoupdate mint`). Target:
the project's median <= the old one's + 0.1 s. Prints one table.

    python3 bench/bench_login.py [--logins 20] [--dir /var/tmp]

A login is the dispatch's pairing answer (GET / without a cookie -> 302 with the session
cookie): mint (helper by path, sudo's environment) + exchange at the instance. The two
helpers are measured alternately, so machine load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from runner.install import mint_wrapper_text  # noqa: E402
from tests.sim import builds, dbgen  # noqa: E402
from tests.sim.dispatch import Dispatch  # noqa: E402
from tests.sim.proc import ServeProcess  # noqa: E402
from tests.sim.world import SCHEMA_OF  # noqa: E402

USER, SSO, VERSION = "wizard", "vbarzin", "0.0.24"
USER_UID = 64299  # the user's own uid (no passwd entry): both helpers run the mint as the user, as production


def old_helper(user_map: Path, global_t3: Path, home_root: Path) -> str:
    """The deployment's helper; `setpriv` to the user's uid stands in for `runuser -u <user>`."""
    return ("#!/bin/bash\nset -euo pipefail\n"
            'u="${1:-}"\n'
            f'grep -Eq "^[^#=]+=[[:space:]]*${{u}}[[:space:]]*$" "{user_map}" || exit 1\n'
            f'exec setpriv --reuid={USER_UID} --regid={USER_UID} --clear-groups -- '
            f'"{global_t3}" auth pairing create --base-dir "{home_root}/$u/.t3" --ttl 5m --json\n')


def login_seconds(dispatch: Dispatch) -> float:
    started = time.monotonic()
    response = requests.get(dispatch.url + "/", headers={"X-authentik-username": SSO, "Sec-Fetch-Dest": "document"},
                            allow_redirects=False, timeout=60)
    elapsed = time.monotonic() - started
    if response.status_code != 302 or "t3_session=" not in response.headers.get("Set-Cookie", ""):
        raise SystemExit(f"login failed: {response.status_code} {response.text[:200]!r} {dispatch.log[-1:]}")
    return elapsed


def mint_cpu_seconds(helper: Path) -> float:
    """CPU seconds (user + system) of one mint, the helper and everything it waited for,
    from wait4's rusage: unlike wall time, hardly moved by other load on the machine."""
    import os
    import subprocess

    from tests.sim.dispatch import SUDO_ENV

    child = subprocess.Popen([str(helper), USER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=SUDO_ENV, cwd="/")
    out = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or b'"credential"' not in out:
        raise SystemExit(f"{helper} failed: exit {child.returncode} {out[:200]!r}")
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="t3-bench-login-", dir=args.dir))
    work.chmod(0o711)  # the user's uid passes through to their home and release, lists nothing
    try:
        release = work / "var" / "lib" / "t3-autoupdate" / "releases" / VERSION
        t3_bin = builds.install_layout(VERSION, builds.profile_for(VERSION), release)
        active = work / "var" / "lib" / "t3-autoupdate" / "active"
        active.mkdir(parents=True)
        (active / USER).symlink_to(release)
        home_root = work / "home"
        dbgen.make_database(home_root / USER / ".t3" / "userdata" / "state.sqlite", SCHEMA_OF[VERSION])
        import os

        for dirpath, _, files in os.walk(home_root / USER):  # the home is the user's (the mint refuses root's)
            for name in [".", *files]:
                os.chown(os.path.join(dirpath, name), USER_UID, USER_UID)
        etc = work / "etc"
        etc.mkdir()
        user_map, dispatch_map, config = etc / "ttyd-user-map", etc / "dispatch.json", etc / "config.toml"
        user_map.write_text(f"{SSO}={USER}\n")
        config.write_text(f'state_dir = "{work / "var" / "lib" / "t3-autoupdate"}"\nhome_root = "{home_root}"\n'
                          f'user_map = "{user_map}"\ndispatch_map = "{dispatch_map}"\n'
                          f'backup_dest = "{work / "backups"}"\ntmpdir = "{work}"\n')
        helpers = {"old (bash, global t3)": work / "old-t3-mint", "project (t3-autoupdate mint)": work / "t3-mint"}
        helpers["old (bash, global t3)"].write_text(old_helper(user_map, t3_bin, home_root))
        tracker = Path(sys.executable).parent / "t3-autoupdate"
        helpers["project (t3-autoupdate mint)"].write_text(mint_wrapper_text(str(tracker), config))
        for helper in helpers.values():
            helper.chmod(0o755)
        times: dict[str, list[float]] = {name: [] for name in helpers}
        with ServeProcess(t3_bin, home_root / USER / ".t3", host="0.0.0.0") as serve:
            serve.wait_ready(timeout=30)
            dispatch_map.write_text(json.dumps({SSO: {"os_user": USER, "port": serve.port}}))
            dispatches = {name: Dispatch(dispatch_map, helper).start() for name, helper in helpers.items()}
            try:
                for name, d in dispatches.items():
                    login_seconds(d)  # warm-up: page cache, first imports
                for _ in range(args.logins):
                    for name, d in dispatches.items():
                        times[name].append(login_seconds(d))
            finally:
                for d in dispatches.values():
                    d.stop()
        print(f"login latency through the dispatch stand-in, {args.logins} logins each, {VERSION}")
        # The project's mint is one more Python start per login: the interpreter the tracker's
        # venv was made from is part of the figure (a distribution's PGO+LTO build starts ~30%
        # cheaper than a version manager's default build), so it is named.
        print(f"tracker: {tracker} (Python {sys.version.split()[0]}, venv made from {sys.base_prefix})")
        print(f"{'mint helper':<32} {'median s':>9} {'p90 s':>7} {'min s':>7}")
        for name, values in times.items():
            values.sort()
            print(f"{name:<32} {statistics.median(values):>9.3f} {values[int(0.9 * (len(values) - 1))]:>7.3f} "
                  f"{values[0]:>7.3f}")
        cpu: dict[str, list[float]] = {name: [] for name in helpers}
        for _ in range(args.logins):
            for name, helper in helpers.items():
                cpu[name].append(mint_cpu_seconds(helper))
        print(f"\n{'mint helper, run directly':<32} {'median CPU s':>13} {'min CPU s':>10}")
        for name, values in cpu.items():
            print(f"{name:<32} {statistics.median(values):>13.3f} {min(values):>10.3f}")
        old_cpu, new_cpu = (statistics.median(v) for v in cpu.values())
        print(f"difference of CPU medians: {new_cpu - old_cpu:+.3f} s\n")
        old, new = (statistics.median(v) for v in times.values())
        print(f"difference of medians: {new - old:+.3f} s (target <= +0.100 s): {'met' if new - old <= 0.1 else 'NOT met'}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
