"""The health gate on orchestration V2 builds (statev2.sqlite): a good V2 build passes on a
fresh base dir, on a V1 user's data (its first import) and on a V2 user's data (a V2 -> V2
migration); each bad V2 build fails, naming what was checked and whose data showed it."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from runner.gaterun import run_gate
from tests.sim import builds, dbgen
from tests.sim.world import GATE_UID


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> str:
    """--seed-db for two users: v1user's state.sqlite, v2user's statev2.sqlite and the
    state.sqlite frozen beside it (the runner passes exactly these backups)."""
    root = tmp_path_factory.mktemp("seeds")
    dbgen.make_database(root / "v1user" / "userdata" / "state.sqlite", 33, threads=4, messages_per_thread=12)
    v2 = root / "v2user" / "userdata"
    dbgen.make_v2_user(v2, 60, threads=3, messages_per_thread=10, v2_threads=3, runs_per_thread=4)
    return f"v1user={root / 'v1user' / 'userdata' / 'state.sqlite'},v2user={v2 / 'statev2.sqlite'},v2user={v2 / 'state.sqlite'}"


def health(tmp_path, version, seed_option, *, ready_timeout=10):
    t3_bin = builds.install_layout(version, builds.profile_for(version), tmp_path / "release")
    (tmp_path / "scratch").mkdir()
    return run_gate("health", run_dir=tmp_path / "run", options={
        "--t3-bin": str(t3_bin), "--seed-db": seed_option, "--scratch": str(tmp_path / "scratch"),
        "--gate-user": GATE_UID,
        "--serve-host": "0.0.0.0", "--smoke-port": "0", "--ready-timeout": str(ready_timeout),
        "--cookie-name": "t3_session"})


@pytest.mark.parametrize("version", list(builds.V2_GOOD_VERSIONS.values()))
def test_good_v2_build_passes_fresh_v1_and_v2_data(tmp_path, seeds, version):
    result = health(tmp_path, version, seeds)
    assert result.passed, result.reason()
    names = {case.get("name") for case in ET.parse(result.report).getroot().iter("testcase")}
    for case in ("fresh-empty", "populated-v1user", "populated-v2user"):
        for check in ("test_migrations_applied_cleanly", "test_precious_history_kept",
                      "test_v1_database_left_as_it_was_beside_statev2"):
            assert f"{check}[{case}]" in names, names


# profile -> (the user whose case must fail, the failing check, words its failure must contain)
CAUGHT_BY = {
    "v2-import-loses-history": ("v1user", "test_precious_history_kept",
                                "V1 -> V2 import lost 16 of 48 projection_thread_messages rows"),
    "v2-migration-drops-rows": ("v2user", "test_precious_history_kept", "orchestration_v2_projection_messages lost"),
    "v2-migration-fails-populated": ("v2user", "test_server_becomes_ready", 'Migration "62_OrchestrationV2ThreadPins"'),
    "v2-writes-state-sqlite": ("v2user", "test_v1_database_left_as_it_was_beside_statev2",
                               "state.sqlite changed after the import to statev2.sqlite"),
}


def test_every_bad_v2_profile_has_an_expected_cause():
    assert set(CAUGHT_BY) == set(builds.V2_BAD_VERSIONS)


@pytest.mark.parametrize("profile", sorted(CAUGHT_BY))
def test_bad_v2_build_fails_naming_what_was_checked(tmp_path, seeds, profile):
    result = health(tmp_path, builds.V2_BAD_VERSIONS[profile], seeds)
    assert not result.passed
    assert result.summary.startswith("T3-GATE FAIL")
    user, check, cause = CAUGHT_BY[profile]
    matching = [p for p in result.problems if p.startswith(check) and f"[populated-{user}]:" in p]
    assert matching and any(cause in p for p in matching), result.problems
    assert not any("[fresh-empty]" in p for p in result.problems), result.problems
