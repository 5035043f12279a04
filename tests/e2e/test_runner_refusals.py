"""End to end: every way a tracker run refuses to move, on the simulated deployment.

Each refusal is checked on the FINAL state: every user's link and running serverVersion,
last-good, the operators' link, the freeze file, the quarantine dir, the releases dir,
every user's precious rows and database integrity, the instances' main PIDs (nobody
restarted), the exit code and the greppable event line on stderr.

Most tests share one world (building one costs seconds): they change nothing persistent,
or put back what they changed (tags, publish times, tarballs, freeze file, quarantine).
The pin tests move users, so they build worlds of their own.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone

import pytest

from tests.runner_checks import (assert_history_kept, assert_logs_in, assert_user_on, events, fingerprints,
                                 link_version, main_pids, summary_of)
from tests.sim import builds
from tests.sim.world import World

V24 = "0.0.24"
V25 = builds.GOOD_VERSIONS["good-0.0.25"]  # 0.0.25-nightly.20260608.497, schema 32
V26 = builds.GOOD_VERSIONS["good-0.0.26"]  # stable 0.0.26, schema 32
V28 = builds.GOOD_VERSIONS["good-0.0.28"]  # 0.0.28-nightly.20260616.571, schema 33
LIE = builds.BAD_VERSIONS["version-lie"]
# Older than the installed stable 0.0.24 under npm precedence, "newer" under `sort -V`.
OLDER_NIGHTLY = "0.0.24-nightly.20260601.490"


# --------------------------------------------------------------------------- helpers

def state_of(world) -> dict:
    """Everything a refused run must leave exactly as it was (besides PIDs and rows)."""
    quarantine = world.state_dir / "quarantine"
    deferred = world.state_dir / "deferred"
    return {
        "links": {u.os_user: link_version(world, u.os_user) for u in world.users},
        "last_good": (world.state_dir / "last-good").read_text().strip(),
        "bin_link": os.readlink(world.bin_link),
        "releases": sorted(p.name for p in world.releases_dir.iterdir()),
        "quarantine": sorted(p.name for p in quarantine.iterdir()) if quarantine.exists() else [],
        "deferred": sorted(p.name for p in deferred.iterdir()) if deferred.exists() else [],
        "freeze": world.freeze_file.read_bytes() if world.freeze_file.exists() else None,
        "journal": (world.state_dir / "journal").exists(),
    }


class Before:
    """The world before a run: state, PIDs, precious rows."""

    def __init__(self, world):
        self.world = world
        self.state = state_of(world)
        self.pids = main_pids(world)
        self.rows = fingerprints(world)

    def assert_unchanged(self, version: str) -> None:
        world = self.world
        assert state_of(world) == self.state
        assert main_pids(world) == self.pids, "an instance was restarted"
        for user in world.users:
            assert_user_on(world, user.sso, version)  # link, serverVersion, integrity_check ok
        assert_history_kept(world, self.rows)


def event_line(done, prefix: str) -> str:
    lines = events(done)
    found = [line for line in lines if line.startswith(prefix)]
    assert found, f"no {prefix!r} event; events: {lines}\nstderr: {done.stderr[-2000:]}"
    return found[-1]


def assert_holds(world, code: str, candidate: str, **env) -> str:
    """A tracker run that holds: exit 0, a HOLD event with `code` and `candidate`, and nothing
    changed (everyone still on 0.0.24); returns the HOLD line."""
    before = Before(world)
    done = world.run_tracker(**env)
    assert done.exit_code == 0, done.stderr
    line = event_line(done, "HOLD ")
    assert f"code={code}" in line and f"candidate={candidate}" in line
    assert not any(e.startswith("UPDATE START") for e in events(done))
    before.assert_unchanged(V24)
    return line


def publish_time(world, version: str) -> datetime:
    text = world.registry.packument()["time"][version]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def shared_world(world_template, tmp_path_factory):
    world = World(tmp_path_factory.mktemp("refusals") / "world", template=world_template)
    try:
        world.build()
        extra = builds.build_tarball(OLDER_NIGHTLY, "good-0.0.24", world.root / "extra-tarballs")
        world.registry.publish(extra, published_at=datetime(2026, 6, 1, 3, 0, tzinfo=timezone.utc))
        yield world
    finally:
        world.stop()


@pytest.fixture
def shared(shared_world):
    """The shared world, checked clean before each test and put back after it."""
    world = shared_world
    assert state_of(world)["links"] == {u.os_user: V24 for u in world.users}
    assert not world.freeze_file.exists()
    yield world
    world.registry.start()  # a no-op unless the test stopped it (same port on restart)
    world.registry.set_unreachable(False)
    world.registry.set_tag("nightly", V24)
    world.freeze_file.unlink(missing_ok=True)
    shutil.rmtree(world.state_dir / "quarantine", ignore_errors=True)


# --------------------------------------------------------------------------- decisions that hold

def test_already_current_holds_and_changes_nothing(shared):
    assert_holds(shared, "already-current", V24)


def test_tag_moved_backward_holds_not_newer(shared):
    # 0.0.24-nightly.* precedes the stable 0.0.24 under npm semver (GNU `sort -V` says the opposite).
    shared.registry.set_tag("nightly", OLDER_NIGHTLY)
    assert_holds(shared, "not-newer", OLDER_NIGHTLY)


def test_stable_version_on_the_nightly_tag_holds_not_on_track(shared):
    # 0.0.26 is newer than 0.0.24 but is a stable release: a nightly tracker does not take it.
    shared.registry.set_tag("nightly", V26)
    assert_holds(shared, "not-on-track", V26)


def test_build_younger_than_min_age_holds_too_young(shared):
    original = publish_time(shared, V28)
    shared.registry.set_tag("nightly", V28)
    shared.registry.set_time(V28, datetime.now(timezone.utc))
    try:
        assert "min_age 21600s" in assert_holds(shared, "too-young", V28, T3_MIN_AGE="6h")
    finally:
        shared.registry.set_time(V28, original)


# --------------------------------------------------------------------------- freeze

def test_bare_touched_freeze_file_holds_even_a_pin_and_unfreeze_resumes(shared):
    shared.freeze_file.touch()
    shared.registry.set_tag("nightly", V28)  # a good, newer nightly: only the freeze holds it
    before = Before(shared)
    done = shared.run_tracker()
    assert done.exit_code == 0, done.stderr
    assert event_line(done, "FROZEN ").startswith('FROZEN reason="(no reason given: bare freeze file)"')
    pinned = shared.run_tracker(T3_PIN=V28)  # a freeze holds a pin too
    assert pinned.exit_code == 0, pinned.stderr
    assert event_line(pinned, "FROZEN ")
    before.assert_unchanged(V24)
    assert shared.freeze_file.read_bytes() == b""  # the run never rewrites the operator's file

    unfrozen = shared.run_tracker("unfreeze")
    assert unfrozen.exit_code == 0, unfrozen.stderr
    assert event_line(unfrozen, "UNFROZEN ")
    assert not shared.freeze_file.exists()
    # Resumed: the run passes the freeze gate and decides on the nightly again (a huge minimum
    # age keeps it from moving, so this shared world stays on 0.0.24).
    before = Before(shared)
    resumed = shared.run_tracker(T3_MIN_AGE="3650d")
    assert resumed.exit_code == 0, resumed.stderr
    assert not any(e.startswith("FROZEN") for e in events(resumed))
    line = event_line(resumed, "HOLD ")
    assert "code=too-young" in line and f"candidate={V28}" in line
    before.assert_unchanged(V24)


# --------------------------------------------------------------------------- failures before any user is touched

def test_registry_unreachable_fails_resolve_despite_warm_npm_caches(shared):
    shared.registry.set_tag("nightly", V28)
    # Warm every cache npm could fall back on: the world's npm cache (the runner's inherited
    # npm_config_cache) holds the packument and V28's tarball, and an earlier run resolved V28.
    for argv in (["npm", "view", "t3@nightly", "version"], ["npm", "cache", "add", f"t3@{V28}"]):
        from runner import proc
        proc.run(argv, env=shared.npm_env(), cwd=shared.root, timeout=120)
    earlier = shared.run_tracker(T3_MIN_AGE="3650d")
    assert earlier.exit_code == 0 and "code=too-young" in event_line(earlier, "HOLD "), earlier.stderr
    before = Before(shared)
    for outage in ("503", "stopped"):
        if outage == "503":
            shared.registry.set_unreachable(True)
        else:
            shared.registry.set_unreachable(False)
            shared.registry.stop()  # connection refused
        done = shared.run_tracker()
        assert done.exit_code == 1, (outage, done.stderr)
        line = event_line(done, "RESOLVE FAILED ")
        assert "track=nightly" in line, line
        assert not any(e.startswith(("UPDATE START", "HOLD", "BACKED UP")) for e in events(done)), outage
        before.assert_unchanged(V24)


def test_tampered_tarball_fails_stage_and_installs_nothing(shared):
    tarball = shared.registry.tarball_path(V25)
    original = tarball.read_bytes()
    shared.registry.tamper(V25)
    shared.registry.set_tag("nightly", V25)
    try:
        before = Before(shared)
        done = shared.run_tracker()
        assert done.exit_code == 1, done.stderr
        line = event_line(done, "STAGE FAILED ")
        assert f"version={V25}" in line and "fetch" in line and "EINTEGRITY" in line, line
        before.assert_unchanged(V24)  # releases dir: still only 0.0.24, no .staging-* left
        assert summary_of(shared)["result"] == "stage-failed"
        assert not any(e.startswith(("HEALTH-CHECK", "CANARY")) for e in events(done))
    finally:
        tarball.write_bytes(original)


def test_wrong_version_is_caught_at_stage(shared):
    shared.registry.set_tag("nightly", LIE)
    before = Before(shared)
    done = shared.run_tracker()
    assert done.exit_code == 1, done.stderr
    line = event_line(done, "STAGE FAILED ")
    assert f"t3 --version reports {V28}, expected {LIE}" in line, line
    # A build that lies about its version lies every night: it is quarantined (not downloaded
    # and backed up for again), the release is not kept, nobody was touched.
    quarantined = json.loads((shared.state_dir / "quarantine" / f"{LIE}.json").read_text())
    assert "reports" in quarantined["reason"]
    (shared.state_dir / "quarantine" / f"{LIE}.json").unlink()
    before.assert_unchanged(V24)
    assert not (shared.releases_dir / LIE).exists()
    assert not any(e.startswith(("HEALTH-CHECK", "CANARY")) for e in events(done))


# --------------------------------------------------------------------------- freeze by command, pins up and down

@pytest.mark.timeout(900)
def test_freeze_command_then_pin_up_through_the_gates_then_a_pin_down_holds(make_world):
    world = make_world()
    world.registry.set_tag("nightly", V25)  # newer and on track: only the freeze holds it

    frozen = world.run_tracker("freeze", "--reason", "waiting for the 0.0.28 release notes")
    assert frozen.exit_code == 0, frozen.stderr
    assert event_line(frozen, "FROZEN ").startswith('FROZEN reason="waiting for the 0.0.28 release notes"')
    record = json.loads(world.freeze_file.read_text())
    assert record["reason"] == "waiting for the 0.0.28 release notes" and record["by"] and record["at"]
    before = Before(world)
    held = world.run_tracker()
    assert held.exit_code == 0, held.stderr
    assert event_line(held, "FROZEN ").startswith('FROZEN reason="waiting for the 0.0.28 release notes"')
    before.assert_unchanged(V24)

    assert world.run_tracker("unfreeze").exit_code == 0
    assert not world.freeze_file.exists()

    # Pinned up: the pin wins over the nightly tag (which says 0.0.25-nightly), through every gate.
    rows = fingerprints(world)
    up = world.run_tracker(T3_PIN=V28)
    assert up.exit_code == 0, up.stderr
    assert f"reason=\"pinned to {V28} (up from {V24})\"" in event_line(up, "UPDATE START ")
    assert event_line(up, "update complete ").startswith(f"update complete version={V28}")
    for user in world.users:
        assert_user_on(world, user.sso, V28)
    assert_history_kept(world, rows)
    assert (world.state_dir / "last-good").read_text().strip() == V28
    assert summary_of(world)["decision"] == "pinned"

    # The pin is lifted and the tag still points at the older 0.0.25 nightly: nothing moves back.
    before = Before(world)
    unpinned = world.run_tracker()
    assert unpinned.exit_code == 0, unpinned.stderr
    assert "code=not-newer" in event_line(unpinned, "HOLD ")
    before.assert_unchanged(V28)

    # Pinned DOWN to 0.0.26 while every database is at 0.0.28's schema: an older build on data a
    # newer one migrated fails at query time (0.0.24: `no column named role`), and a pre-V2 build
    # ignores statev2.sqlite, so going down is a restore (`rollback --to`), never an install. The
    # run holds, says so, and quarantines or removes nothing: the way back stays installed.
    for pin in (V26, V24):
        before = Before(world)
        down = world.run_tracker(T3_PIN=pin)
        assert down.exit_code == 0, down.stderr
        line = event_line(down, "HOLD ")
        assert "code=pinned-down" in line and f"rollback --to {pin}" in line, line
        before.assert_unchanged(V28)  # releases included: 0.0.24 (the way back) stays installed
        assert not (world.state_dir / "quarantine").exists() or not list((world.state_dir / "quarantine").iterdir())


@pytest.mark.timeout(900)
def test_a_pin_down_never_deletes_the_release_a_deferred_user_runs(make_world):
    # emo has a turn in flight: the bump to 0.0.28 defers emo, who keeps running 0.0.24.
    world = make_world(db_options={"wizard": {"threads": 8}, "emo": {"in_flight": True}})
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    assert_user_on(world, "emil.barzin", V24)
    assert_user_on(world, "vbarzin", V28)
    # The operator pins back to 0.0.24: a hold that points at `rollback --to`, nothing touched.
    before = Before(world)
    held = world.run_tracker(T3_PIN=V24)
    assert held.exit_code == 0, held.stderr
    assert "code=pinned-down" in event_line(held, "HOLD ")
    assert main_pids(world) == before.pids
    # emo's link still leads to a whole release: emo's serve and mints keep working.
    assert (world.releases_dir / V24 / "bin" / "t3").exists()
    assert state_of(world) == before.state  # links, last-good, deferral, no quarantine...
    assert_user_on(world, "emil.barzin", V24)
    assert_user_on(world, "vbarzin", V28)
    assert_user_on(world, "ancaelena98", V28)
    for user in world.users:
        assert_logs_in(world, user.sso)
    assert_history_kept(world, before.rows)
