"""The demo: four real tracker runs on the built-in simulated world.

    ./dev demo [--out DIR]

Builds a deployment (three users on t3 0.0.24 with populated histories, a local
npm registry, the systemctl and dispatch stand-ins) and runs the real
`t3-autoupdate` against it, with a login prober per user throughout:

1. a good nightly bump (0.0.24 -> 0.0.25 nightly): every user moved and verified;
2. a bad nightly whose migration silently drops messages: stopped by the health
   gate, quarantined, nobody touched;
3. a nightly whose migration fails only on archived threads, which emo has none of at
   backup time but archives one as their server stops for the move (data newer than the
   backups the health gate was seeded from): passes the health gate, fails emo's canary;
   every moved user restored, tracker frozen;
4. the operator unfreezes, and the first orchestration V2 nightly (0.0.46) arrives: every
   user's `state.sqlite` is imported into `statev2.sqlite`, which is their live database
   from then on (the tracker backs up, gates and judges that file; `state.sqlite` stays, frozen).

Every run sends its outcomes (the default events, and `update complete`) through apprise to a
local JSON webhook (tests/webhook.py, on loopback); the demo prints each notification as it
arrived there.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tests.runner_checks import archives_a_thread_when_stopped, events, probing_logins, restart_windows
from tests.sim import builds
from tests.sim.world import PROJECT_ROOT, World
from tests.webhook import Webhook

SCENARIOS = [
    ("good nightly bump", builds.GOOD_VERSIONS["good-0.0.25"]),
    ("bad build: migration drops messages", builds.BAD_VERSIONS["migration-drops-rows"]),
    ("bad build: migration fails on archived threads (emo archives one as the move stops him)",
     builds.BAD_VERSIONS["migration-fails-archived"]),
    ("unfreeze, then the first orchestration V2 build: state.sqlite -> statev2.sqlite",
     builds.V2_GOOD_VERSIONS["good-v2-0.0.46"]),
]
UNFREEZE_BEFORE = {builds.V2_GOOD_VERSIONS["good-v2-0.0.46"]}
NOTIFY_EVENTS = "FROZEN,ROLLED BACK,ROLLBACK FAILED,REPEATED REJECTIONS,HEALTH-CHECK FAILED,update complete"
# Runs whose systemctl makes a user write as their server stops (see archives_a_thread_when_stopped).
ARCHIVES_WHEN_STOPPED = {builds.BAD_VERSIONS["migration-fails-archived"]: "emo"}


def print_notifications(received: list[dict], url: str, out) -> None:
    for message in received:
        print(f"  notification received at {url}:\n    title: {message['title']}", file=out)
        print("\n".join(f"    | {line}" for line in message["message"].splitlines()), file=out)


def run_scenario(world: World, title: str, version: str, out, hook: Webhook) -> int:
    print(f"\n=== {title}: nightly -> {version}", file=out)
    if version in UNFREEZE_BEFORE:
        print(f"  t3-autoupdate unfreeze: exit {world.run_tracker('unfreeze').exit_code}", file=out)
    world.registry.set_tag("nightly", version)
    started = time.monotonic()
    env = {"T3_NOTIFY_URLS": hook.url, "T3_NOTIFY_EVENTS": NOTIFY_EVENTS}
    already = len(hook.received)
    if version in ARCHIVES_WHEN_STOPPED:
        env["T3_SYSTEMCTL"] = str(archives_a_thread_when_stopped(world, ARCHIVES_WHEN_STOPPED[version]))
    with probing_logins(world) as logins:
        done = world.run_tracker(**env)
    dispatch_failures = logins.pop("dispatch failures")
    print(f"exit code {done.exit_code} after {time.monotonic() - started:.1f}s", file=out)
    for line in events(done):
        print(f"  {line}", file=out)
    print_notifications(hook.received[already:], hook.url, out)
    windows = restart_windows(done)
    for sso, report in logins.items():
        own = windows.get(world.user(sso).os_user, [])
        outside = len(report.failures_outside(own))
        print(f"  logins for {sso}: {len(report.attempts)} attempts, {len(report.failures)} failed "
              f"({len(report.failures) - outside} inside that user's own restart, {outside} outside: "
              "the dispatch does not retry)", file=out)
    if dispatch_failures:
        print(f"  dispatch failures: {dispatch_failures}", file=out)
    for user in world.users:
        live = world.live_database(user.os_user)
        print(f"  {user.os_user}: live database {live.name if live else 'none'}", file=out)
    return done.exit_code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="where to build the world (default: demo-out/<timestamp> in the project)")
    args = parser.parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = (args.out or PROJECT_ROOT / "demo-out" / stamp).resolve()
    out = sys.stdout
    print(f"building the simulated world in {root} ...", file=out)
    world = World(root, db_options={"wizard": {"threads": 8}})
    codes = []
    try:
        world.build()
        print("users: " + ", ".join(f"{u.sso}={u.os_user}" for u in world.users) + "; all on 0.0.24", file=out)
        with Webhook() as hook:
            print(f"notifications go to a local JSON webhook: {hook.url}", file=out)
            for title, version in SCENARIOS:
                codes.append(run_scenario(world, title, version, out, hook))
        status = world.run_tracker("status")
        print("\n=== t3-autoupdate status\n" + status.stdout, file=out)
        reports = sorted((world.state_dir / "runs").glob("*/junit-*.xml"))
        print("junit reports:", file=out)
        for report in reports:
            print(f"  {report}", file=out)
    finally:
        world.stop()
    expected = [0, 1, 1, 0]
    verdict = "as expected" if codes == expected else f"UNEXPECTED (wanted {expected})"
    print(f"\nexit codes {codes}: {verdict}. The world is kept in {root}.", file=out)
    return 0 if codes == expected else 1


if __name__ == "__main__":
    sys.exit(main())
