"""End to end: every bad build the health gate exists for is stopped there, by a real tracker run.

One profile per bad nightly in builds.BAD_VERSIONS, except `migration-fails-archived` (it
fails only on data with archived threads, which this world's users do not have; with one
user who has some, it is caught here on that user's own seed: the last test)
and `version-lie` (caught earlier, at staging: test_runner_refusals). For each: exit 1, a
`HEALTH-CHECK FAILED` line naming the cause, the build quarantined with its junit report
(the file exists), its release directory removed, no instance restarted, every user still on
0.0.24 with every precious row and logging in, and the next run does not retry it.

The profiles share one world: a health-gate failure touches no user, and each profile is a
different version, so their quarantine records do not interfere. The bad orchestration V2
builds (builds.V2_BAD_VERSIONS) run the same way on a mixed host: two users on V2, one still
on V1, each seeding their own case.
"""
from __future__ import annotations

import json
import os
import re
from xml.etree import ElementTree

import pytest

from tests.runner_checks import (assert_history_kept, assert_logs_in, assert_user_on, events, fingerprints,
                                 in_full, link_version, main_pids, summary_of)
from tests.sim import builds, dbgen
from tests.sim.world import World

V24 = "0.0.24"
NOT_HEALTH = {"migration-fails-archived", "version-lie"}
HEALTH_PROFILES = [name for name in builds.BAD_VERSIONS if name not in NOT_HEALTH]

# What the HEALTH-CHECK FAILED line must say, per profile: the cause, in plain words.
CAUSES = {
    "migration-fails-populated": 'Migration "33_ThreadPinned" failed',
    "migration-drops-rows": "projection_thread_messages lost",
    "endpoint-renamed": "no pairing endpoint",
    "cookie-renamed": "the dispatch expects 't3_session'",
    "pairing-no-cookie": "but no Set-Cookie",
    "never-ready": "did not become ready within 8s (process still running)",
    "crash-at-start": "exited with code 1 before becoming ready",
}
EXITS_AT_START = {"migration-fails-populated", "crash-at-start"}
# A server that never listens is judged at the ready timeout; 8 s (not the default 30) keeps
# the suite short and is still far above a good build's start-up here. A server that exits is
# judged at once: with a 120 s ready timeout, a gate that polled a dead server would take
# longer than that, however loaded the machine (a bound on a deadline, not a speed figure).
EXITS_READY_TIMEOUT = 120
ENV = {"never-ready": {"T3_READY_TIMEOUT": "8"},
       **{p: {"T3_READY_TIMEOUT": str(EXITS_READY_TIMEOUT)} for p in EXITS_AT_START}}


def field(line: str, key: str) -> str:
    """One key=value field of an event line (values with spaces are JSON strings)."""
    match = re.search(rf' {key}=("(?:[^"\\]|\\.)*"|\S+)', line)
    assert match, f"no {key}= in {line}"
    value = match.group(1)
    return json.loads(value) if value.startswith('"') else value


def test_every_health_profile_has_a_cause():
    assert sorted(CAUSES) == sorted(HEALTH_PROFILES)


@pytest.fixture(scope="module")
def health_world(world_template, tmp_path_factory):
    world = World(tmp_path_factory.mktemp("health-e2e") / "world", template=world_template)
    try:
        yield world.build()
    finally:
        world.stop()


@pytest.mark.parametrize("profile", HEALTH_PROFILES)
def test_bad_build_is_stopped_by_the_health_gate(health_world, profile):
    world = health_world
    bad = builds.BAD_VERSIONS[profile]
    quarantine = world.state_dir / "quarantine"
    before, pids = fingerprints(world), main_pids(world)
    releases = sorted(p.name for p in world.releases_dir.iterdir())
    world.registry.set_tag("nightly", bad)
    try:
        done = world.run_tracker(**ENV.get(profile, {}))
        lines = events(done)
        assert done.exit_code == 1, done.stderr
        failed = [e for e in lines if e.startswith("HEALTH-CHECK FAILED ")]
        assert len(failed) == 1, lines
        assert field(failed[0], "version") == bad and CAUSES[profile] in field(failed[0], "reason"), failed[0]
        assert not any(e.startswith(("CANARY", "update complete", "ROLLED BACK")) for e in lines), lines

        # Quarantined, with a junit report that exists and is the one the event names.
        record = json.loads((quarantine / f"{bad}.json").read_text())
        assert CAUSES[profile] in record["reason"]
        assert os.path.isfile(record["report"]) and record["report"].endswith(".xml")
        assert field(failed[0], "report") == record["report"]
        if profile in EXITS_AT_START:
            # A server that exited is a verdict at once: the whole gate (a throwaway server per case)
            # ends before the ready timeout it would cost to keep polling a dead one.
            suite = ElementTree.parse(record["report"]).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            assert float(suite.get("time")) < EXITS_READY_TIMEOUT, suite.get("time")
        listed = world.run_tracker("quarantine")
        assert listed.exit_code == 0, listed.stderr
        row = next(r.split("\t") for r in listed.stdout.splitlines() if r.startswith(bad + "\t"))
        assert row[3] == record["report"], row  # the operators' listing shows where the report is

        # Nothing a user runs was touched.
        assert not (world.releases_dir / bad).exists()
        assert sorted(p.name for p in world.releases_dir.iterdir()) == releases
        assert main_pids(world) == pids, "an instance was restarted"
        for user in world.users:
            assert_user_on(world, user.sso, V24)
            assert_logs_in(world, user.sso)
        assert_history_kept(world, before)
        assert (world.state_dir / "last-good").read_text().strip() == V24
        assert os.readlink(world.bin_link) == str(world.releases_dir / V24 / "bin" / "t3")
        assert not world.freeze_file.exists()  # a health failure needs no freeze: nobody moved
        assert not (world.state_dir / "journal").exists()
        assert summary_of(world)["result"] == "health-check-failed"

        # Never retried: the next run holds, touching nothing.
        again = world.run_tracker()
        assert again.exit_code == 0, again.stderr
        assert any(e.startswith("HOLD ") and "code=quarantined" in e and f"candidate={bad}" in e
                   for e in events(again)), events(again)
        assert not any(e.startswith(("UPDATE START", "BACKED UP")) for e in events(again))
        assert main_pids(world) == pids
        assert {link_version(world, u.os_user) for u in world.users} == {V24}
    finally:
        world.registry.set_tag("nightly", V24)


def test_a_migration_failing_on_one_user_data_is_caught_before_anyone_restarts(make_world):
    """Every user's own database seeds the health gate: emo's archived thread breaks the
    build's migration, and that is found before any user is moved (the canary used to find it
    after moving ancamilea, and had to roll her back)."""
    world = make_world(db_options={"wizard": {"threads": 8}, "emo": {"archived_threads": 1}})
    bad = builds.BAD_VERSIONS["migration-fails-archived"]
    before, pids = fingerprints(world), main_pids(world)
    world.registry.set_tag("nightly", bad)
    done = world.run_tracker()
    lines = events(done)
    assert done.exit_code == 1, done.stderr
    failed = [e for e in lines if e.startswith("HEALTH-CHECK FAILED ")]
    assert len(failed) == 1, lines
    reason = field(failed[0], "reason")
    assert "[populated-emo]" in reason and 'Migration "33_' in reason, reason
    assert "populated-wizard" not in reason and "populated-ancamilea" not in reason, reason
    assert not any(e.startswith(("CANARY", "ROLLED BACK", "RESTORED")) for e in lines), lines
    assert main_pids(world) == pids, "an instance was restarted"
    assert_history_kept(world, before)
    for user in world.users:
        assert_user_on(world, user.sso, V24)
    assert (world.state_dir / "quarantine" / f"{bad}.json").exists()
    assert not world.freeze_file.exists()
    report = ElementTree.parse(json.loads((world.state_dir / "quarantine" / f"{bad}.json").read_text())["report"])
    cases = {c.get("name") for c in report.getroot().iter("testcase")}
    for case in ("populated-wizard", "populated-emo", "populated-ancamilea", "fresh-empty"):
        assert f"test_precious_history_kept[{case}]" in cases, cases


# ---------------------------------------------------------------- orchestration V2 hosts

V46 = builds.V2_GOOD_VERSIONS["good-v2-0.0.46"]
V2_CAUSES = {
    "v2-import-loses-history": "V1 -> V2 import lost",  # only a user still on V1 imports: ancamilea
    "v2-migration-drops-rows": "orchestration_v2_projection_messages lost",
    "v2-migration-fails-populated": 'Migration "62_OrchestrationV2ThreadPins" failed',
    "v2-writes-state-sqlite": "state.sqlite changed after the import to statev2.sqlite",
}


@pytest.fixture(scope="module")
def mixed_v2_world(world_template, tmp_path_factory):
    """Two users already on V2 (0.0.46: statev2.sqlite beside a frozen state.sqlite) and one,
    deferred before, still on 0.0.24 (V1): every bad V2 nightly meets both layouts."""
    world = World(tmp_path_factory.mktemp("health-v2-e2e") / "world", installed=V46,
                  user_versions={"ancamilea": V24}, template=world_template)
    try:
        yield world.build()
    finally:
        world.stop()


@pytest.mark.parametrize("profile", sorted(V2_CAUSES))
def test_bad_v2_build_is_stopped_by_the_health_gate(mixed_v2_world, profile):
    world = mixed_v2_world
    bad = builds.V2_BAD_VERSIONS[profile]
    before = {u.os_user: dbgen.precious_fingerprint(world.live_database(u.os_user)) for u in world.users}
    pids = main_pids(world)
    world.registry.set_tag("nightly", bad)
    try:
        done = world.run_tracker()
        lines = events(done)
        assert done.exit_code == 1, done.stderr
        failed = [e for e in lines if e.startswith("HEALTH-CHECK FAILED ")]
        assert len(failed) == 1, lines
        reason = field(failed[0], "reason")
        # The line keeps the first failed check; every check is in its details file.
        assert V2_CAUSES[profile] in in_full(failed[0]), failed[0]
        if profile == "v2-import-loses-history":
            assert "[populated-ancamilea]" in reason, reason
        assert not any(e.startswith(("CANARY", "update complete", "ROLLED BACK")) for e in lines), lines
        assert main_pids(world) == pids, "an instance was restarted"
        assert {u.os_user: dbgen.precious_fingerprint(world.live_database(u.os_user)) for u in world.users} == before
        assert link_version(world, "ancamilea") == V24 and link_version(world, "wizard") == V46
        assert (world.state_dir / "quarantine" / f"{bad}.json").exists()
    finally:
        world.registry.set_tag("nightly", V46)
