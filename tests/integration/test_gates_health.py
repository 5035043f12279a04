"""The health gate against every simulated build: good ones pass, each bad one is
caught by the check that should catch it, with the cause in plain words."""
from __future__ import annotations

import pytest

from runner.gaterun import run_gate
from runner.phases.health import PYTEST_OPTIONS
from tests.sim import builds, dbgen
from tests.sim.world import GATE_UID

SEED_LEVEL = 30  # what a 0.0.24 fleet's databases are at


@pytest.fixture(scope="module")
def seed_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "state.sqlite"
    dbgen.make_database(path, SEED_LEVEL, threads=4, messages_per_thread=15)
    return path


def health(tmp_path, version, seed_db, *, host="0.0.0.0", ready_timeout=5, **extra):
    t3_bin = builds.install_layout(version, builds.profile_for(version), tmp_path / "release")
    options = {**PYTEST_OPTIONS, "--t3-bin": t3_bin, "--seed-db": seed_db, "--scratch": tmp_path / "scratch", "--gate-user": GATE_UID,
               "--serve-host": host, "--smoke-port": 0, "--ready-timeout": ready_timeout,
               "--cookie-name": "t3_session", **extra}
    (tmp_path / "scratch").mkdir()
    return run_gate("health", run_dir=tmp_path / "run", options={k: str(v) for k, v in options.items()})


@pytest.mark.parametrize("version", list(builds.GOOD_VERSIONS.values()))
def test_good_build_passes_the_health_gate(tmp_path, seed_db, version):
    result = health(tmp_path, version, seed_db)
    assert result.passed, result.reason()
    assert result.tests >= 10 and result.report.is_file()
    assert result.summary.startswith("T3-GATE PASS")


def test_the_auth_note_reads_the_tables_as_the_migration_left_them(tmp_path, seed_db):
    """The gate's own pairing (before the database checks) refills the auth tables; the note
    about a migration that empties them is read at readiness, before that pairing."""
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.28"], seed_db)
    assert result.passed, result.reason()
    notes = [line for line in result.log.read_text().splitlines() if line.startswith("T3-GATE NOTE auth tables")]
    assert notes == ["T3-GATE NOTE auth tables reset by the migration (auth_sessions 2 -> 0, auth_pairing_links 2 -> 0)"
                     ": this bump logs every browser out"], notes


# profile -> (failing test, words the failure must contain)
CAUGHT_BY = {
    "migration-fails-populated": ("populated-copy", 'Migration "33_'),
    "migration-drops-rows": ("test_precious_history_kept", "projection_thread_messages lost"),
    "endpoint-renamed": ("test_pairing_handshake", "no pairing endpoint"),
    "cookie-renamed": ("test_pairing_handshake", "the dispatch expects 't3_session'"),
    "pairing-no-cookie": ("test_pairing_handshake", "200 from /api/auth/browser-session but no Set-Cookie"),
    "never-ready": ("test_server_becomes_ready", "did not become ready within 2s"),
    "version-lie": ("test_binary_reports_the_candidate_version", "`t3 --version` reports 0.0.28-nightly.20260616.571"),
    "crash-at-start": ("test_server_becomes_ready", "exited with code 1 before becoming ready"),
}


# Bad builds whose failure depends on data the seed may not have: the canary's job.
SEED_DEPENDENT = {"migration-fails-archived"}


@pytest.mark.parametrize("profile", sorted(CAUGHT_BY))
def test_bad_build_fails_the_health_gate_naming_the_cause(tmp_path, seed_db, profile):
    result = health(tmp_path, builds.BAD_VERSIONS[profile], seed_db, ready_timeout=2)
    assert not result.passed
    assert result.summary.startswith("T3-GATE FAIL")
    test_name, cause = CAUGHT_BY[profile]
    matching = [p for p in result.problems if test_name in p]
    assert matching, result.problems
    assert any(cause in p for p in matching), matching


def test_every_bad_profile_has_an_expected_cause():
    assert set(CAUGHT_BY) | SEED_DEPENDENT == set(builds.BAD_VERSIONS)


def test_data_dependent_migration_failure_is_caught_only_by_a_seed_that_has_the_data(tmp_path, seed_db):
    version = builds.BAD_VERSIONS["migration-fails-archived"]
    assert health(tmp_path / "plain", version, seed_db).passed
    archived = tmp_path / "archived.sqlite"
    dbgen.make_database(archived, SEED_LEVEL, threads=4, archived_threads=1)
    result = health(tmp_path / "with-archived", version, archived)
    assert not result.passed
    assert any('Migration "33_' in p for p in result.problems), result.problems


def test_migration_that_fails_only_on_populated_data_passes_on_an_empty_database(tmp_path, seed_db):
    result = health(tmp_path, builds.BAD_VERSIONS["migration-fails-populated"], seed_db)
    assert not any("fresh-empty" in p for p in result.problems), result.problems


def test_loopback_trap_cannot_recur(tmp_path, seed_db):
    """0.0.28 names its cookie after port and path on a loopback host; bound like production it passes."""
    good = builds.GOOD_VERSIONS["good-0.0.28"]
    assert health(tmp_path / "prod", good, seed_db).passed
    trapped = health(tmp_path / "loop", good, seed_db, host="127.0.0.1")
    assert not trapped.passed
    assert any("t3_session_" in p and "dispatch expects" in p for p in trapped.problems), trapped.problems


def test_missing_binary_is_a_failure(tmp_path, seed_db):
    (tmp_path / "scratch").mkdir()
    result = run_gate("health", run_dir=tmp_path / "run", options={
        "--t3-bin": str(tmp_path / "nope" / "t3"), "--seed-db": str(seed_db), "--scratch": str(tmp_path / "scratch"),
        "--gate-user": GATE_UID,
        "--serve-host": "0.0.0.0", "--smoke-port": "0", "--ready-timeout": "2", "--cookie-name": "t3_session"})
    assert not result.passed and result.errors + result.failures > 0
    assert any("not found" in p for p in result.problems), result.problems


def test_broken_seed_fixture_is_a_failure(tmp_path):
    bogus = tmp_path / "not-a-database.sqlite"
    bogus.write_text("this is not sqlite")
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.24"], bogus)
    assert not result.passed and result.errors > 0


def test_empty_seed_is_refused(tmp_path):
    empty = tmp_path / "empty.sqlite"
    dbgen.make_database(empty, SEED_LEVEL, threads=0)
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.24"], empty)
    assert not result.passed
    assert any("holds no history" in p for p in result.problems), result.problems


def test_no_collected_tests_is_a_failure(tmp_path, seed_db):
    t3_bin = builds.install_layout("0.0.24", "good-0.0.24", tmp_path / "release")
    result = run_gate("health", run_dir=tmp_path / "run", keyword="no_such_test",
                      options={"--t3-bin": str(t3_bin), "--seed-db": str(seed_db)})
    assert not result.passed and result.tests == 0
    assert result.exit_code != 0


def test_one_populated_case_per_seed_given(tmp_path, seed_db):
    """The runner passes one seed per schema level its users are at; each is migrated and checked."""
    newer = tmp_path / "level-32.sqlite"
    dbgen.make_database(newer, 32, threads=3)
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.28"], f"{seed_db},{newer}")
    assert result.passed, result.reason()
    import xml.etree.ElementTree as ET
    names = {case.get("name") for case in ET.parse(result.report).getroot().iter("testcase")}
    assert {"test_precious_history_kept[populated-copy-1]", "test_precious_history_kept[populated-copy-2]",
            "test_precious_history_kept[fresh-empty]"} <= names


def test_an_old_build_on_a_newer_seed_is_refused(tmp_path):
    """0.0.24 cannot write a database migrated past it (no column named role): refused."""
    newer = tmp_path / "level-32.sqlite"
    dbgen.make_database(newer, 32, threads=3)
    result = health(tmp_path, "0.0.24", newer)
    assert not result.passed
    assert any("no column named role" in p for p in result.problems), result.problems


def test_truncated_junit_messages_are_read_from_the_full_report(tmp_path):
    """pytest 9.2 truncates the junit message attribute; the cause must still be named."""
    from runner.gaterun import read_junit

    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite tests="1" failures="1" errors="0" skipped="0">'
        '<testcase name="test_x"><failure message="GateFailure: long...&#10;[truncated; full report in element text]">'
        'def test_x():\nE   runner.t3client.GateFailure: `t3 auth pairing create` failed (exit code 1):\n'
        'E   Error: table auth_pairing_links has no column named role\n</failure></testcase></testsuite></testsuites>')
    totals, problems = read_junit(report)
    assert totals["failures"] == 1
    assert problems == ["test_x: runner.t3client.GateFailure: `t3 auth pairing create` failed (exit code 1): "
                        "Error: table auth_pairing_links has no column named role"]


# ---------------------------------------------------------------- every user's own database

def case_names(result) -> set[str]:
    import xml.etree.ElementTree as ET
    return {case.get("name") for case in ET.parse(result.report).getroot().iter("testcase")}


@pytest.fixture(scope="module")
def archived_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("archived") / "state.sqlite"
    dbgen.make_database(path, SEED_LEVEL, threads=4, archived_threads=1)
    return path


def test_every_user_is_a_case_of_their_own(tmp_path, seed_db, archived_db):
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.28"], f"wizard={seed_db},emo={archived_db}")
    assert result.passed, result.reason()
    names = case_names(result)
    for case in ("populated-wizard", "populated-emo", "fresh-empty"):
        assert f"test_precious_history_kept[{case}]" in names, names
    assert not any("populated-copy" in n for n in names), names


def test_a_migration_failing_on_one_user_data_names_that_user(tmp_path, seed_db, archived_db):
    """The build the canary used to catch (after moving other users): caught here, on emo's data."""
    result = health(tmp_path, builds.BAD_VERSIONS["migration-fails-archived"],
                    f"wizard={seed_db},emo={archived_db}")
    assert not result.passed
    assert result.problems and all("[populated-emo]" in p for p in result.problems), result.problems
    assert any('Migration "33_' in p for p in result.problems), result.problems


def test_one_user_case_selected_by_keyword(tmp_path, seed_db, archived_db):
    t3_bin = builds.install_layout("0.0.28-nightly.20260616.571", "good-0.0.28", tmp_path / "release")
    (tmp_path / "scratch").mkdir()
    result = run_gate("health", run_dir=tmp_path / "run", keyword="emo", options={
        "--t3-bin": str(t3_bin), "--seed-db": f"wizard={seed_db},emo={archived_db}",
        "--scratch": str(tmp_path / "scratch"), "--gate-user": GATE_UID, "--serve-host": "0.0.0.0", "--smoke-port": "0",
        "--ready-timeout": "5", "--cookie-name": "t3_session"})
    assert result.passed, result.reason()
    names = case_names(result)
    assert names and all("[populated-emo]" in n for n in names), names


def test_two_databases_of_one_layout_for_one_user_are_refused(tmp_path, seed_db, archived_db):
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.28"], f"emo={seed_db},emo={archived_db}")
    assert not result.passed
    assert any("[populated-emo]" in p and "gives two state.sqlite databases" in p for p in result.problems), \
        result.problems


def test_a_missing_user_seed_fails_that_user_only(tmp_path, seed_db):
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.28"], f"wizard={seed_db},emo={tmp_path / 'gone.sqlite'}")
    assert not result.passed
    assert result.problems and all("[populated-emo]" in p and "does not exist" in p for p in result.problems), \
        result.problems


def v2_seed(tmp_path, v1_seed):
    """A V2 user's backups, made by hand: the frozen state.sqlite and a statev2.sqlite that
    holds the V1 tables plus V2 history (what a V2 build's import leaves)."""
    import shutil
    import sqlite3
    from contextlib import closing

    frozen = tmp_path / "state-prebump.sqlite"
    live = tmp_path / "statev2-prebump.sqlite"
    shutil.copy(v1_seed, frozen)
    shutil.copy(v1_seed, live)
    with closing(sqlite3.connect(live)) as conn:
        conn.executescript(
            "CREATE TABLE orchestration_v2_projection_threads (thread_id TEXT PRIMARY KEY, project_id TEXT,"
            " title TEXT, created_at TEXT, payload_json TEXT);"
            "INSERT INTO orchestration_v2_projection_threads VALUES ('v2', 'p', 'new', '2026-06-01T00:00:00Z', '{}');")
    return live, frozen


def test_a_pre_v2_build_on_a_v2_user_seed_fails(tmp_path, seed_db):
    """A pre-V2 build ignores statev2.sqlite and serves (and migrates) the frozen state.sqlite:
    the user's V2 history would vanish from view. Caught: the file beside statev2 changed."""
    live, frozen = v2_seed(tmp_path, seed_db)
    result = health(tmp_path, builds.GOOD_VERSIONS["good-0.0.28"], f"emo={live},emo={frozen}")
    assert not result.passed
    assert any("test_v1_database_left_as_it_was_beside_statev2[populated-emo]" in p
               and "state.sqlite changed after the import to statev2.sqlite" in p for p in result.problems), \
        result.problems
