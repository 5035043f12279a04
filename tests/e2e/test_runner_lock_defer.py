"""A move that cannot get a user's lock (a login's mint holds it) defers that user: it is no
canary failure (no freeze, no quarantine of a good build, nobody rolled back)."""
from __future__ import annotations

import subprocess
import sys

from runner import proc
from tests.runner_checks import MINT_HOLDING_THE_LOCK as READER
from tests.runner_checks import assert_logs_in, assert_user_on, events, link_version
from tests.sim import builds
from tests.sim.world import PROJECT_ROOT, wait_until

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]

# The real CLI, with the move's lock wait shortened from a minute to a second.
SHORT_WAIT = "import sys, runner.phases.canary as r; r.MOVE_LOCK_WAIT = 1.0; from runner.cli import main; sys.exit(main())"


def test_a_move_that_cannot_get_the_lock_defers_the_user(world):
    world.registry.set_tag("nightly", V28)
    maintenance = world.state_dir / "maintenance"
    maintenance.mkdir(exist_ok=True)
    # A mint of emo's that does not finish (holds the lock shared until killed).
    holder = subprocess.Popen([sys.executable, "-c", READER.replace('"alice"', '"emo"'), str(world.state_dir),
                               "0", "600"], cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: (world.state_dir / "in-0").exists(), 30, "emo's mint to hold the lock")
        done = proc.run([sys.executable, "-c", SHORT_WAIT], env=world.runner_env(), cwd=world.root, timeout=600,
                        ok_codes=range(256))
    finally:
        holder.kill()
        holder.wait(10)
    lines = events(done)
    assert done.exit_code == 0, done.stderr
    deferred = [e for e in lines if e.startswith("DEFERRED user=emo")]
    assert len(deferred) == 1 and "lock" in deferred[0], done.stderr
    assert not [e for e in lines if e.startswith(("CANARY FAILED", "ROLLED BACK", "FROZEN", "RESTORED"))], done.stderr
    assert any(e.startswith(f"update complete version={V28}") for e in lines), done.stderr
    assert not world.freeze_file.exists()
    assert not (world.state_dir / "quarantine" / f"{V28}.json").exists()
    assert (world.state_dir / "deferred" / "emo").exists()
    assert link_version(world, "emo") == V24 and world.server_version("emil.barzin") == V24  # never stopped
    for sso in ("vbarzin", "ancaelena98"):
        assert_user_on(world, sso, V28)
    for user in world.users:
        assert_logs_in(world, user.sso)
