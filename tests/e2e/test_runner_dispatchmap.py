"""The dispatch map is read once, when the run starts: a map broken in the middle of a run
(here while the health gate runs) cannot stop the rollback of a failed canary."""
from __future__ import annotations

import pytest

from tests.e2e.killable import Tracker, wait_for_journal
from tests.runner_checks import (
    assert_history_kept,
    assert_user_on,
    events,
    fingerprints,
)
from tests.sim import builds

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]

pytestmark = pytest.mark.timeout(600)


def test_a_map_broken_mid_run_does_not_stop_the_rollback(world):
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    tracker = Tracker(world, "run")
    wait_for_journal(world, tracker, lambda j: j["phase"] == "health", "the health gate")
    world.dispatch_map.write_text("[]")  # the canary gate, which reads it, now fails the first user
    code = tracker.wait()
    lines = events(tracker)
    assert code == 1, tracker.stderr
    assert not [e for e in lines if e.startswith(("CRASHED", "ROLLBACK FAILED"))], tracker.stderr
    failed = [e for e in lines if e.startswith("CANARY FAILED")]
    assert len(failed) == 1, tracker.stderr
    assert any(e.startswith(f"ROLLED BACK version={V28}") for e in lines), tracker.stderr
    assert not (world.state_dir / "journal").exists()
    for user in world.users:
        assert_user_on(world, user.sso, V24)
    assert_history_kept(world, before)
