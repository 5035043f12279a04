"""The simulated t3 learns orchestration V2 (statev2.sqlite), proven on real processes.

Each test runs the package's real `bin/t3` (npm's layout) on real SQLite files: the
one-way import on first start (by the server or by the pairing CLI), a fresh base dir,
V2 history written by the server, a pre-V2 build ignoring statev2.sqlite, a V2 -> V2
migration, and each bad V2 build misbehaving exactly as its profile says.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest
import semver

from runner.versions import is_newer, is_nightly, validate_version
from tests.sim import builds, dbgen
from tests.sim.dbgen import query
from tests.sim.proc import ServeExited, mint_credential, pairing_create
from tests.sim.t3pkg import t3sim

V46, V47 = "good-v2-0.0.46", "good-v2-0.0.47"
V1_MIGRATIONS = [m.label for m in t3sim.MIGRATIONS]


def v1(home):
    return home / "userdata" / "state.sqlite"


def v2(home):
    return home / "userdata" / "statev2.sqlite"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def migration_labels(path):
    return [f"{i}_{n}" for i, n in query(path, "SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1")]


def v2_labels(level):
    return [m.label for m in t3sim.V2_MIGRATIONS if m.id <= level]


def userdata_files(home):
    return sorted(p.name for p in (home / "userdata").iterdir() if p.suffix.startswith(".sqlite")
                  or ".sqlite" in p.name)


def pair(http, installed, profile, home, server):
    """Mint with the build's CLI, exchange at its server: (cookie name, cookie header)."""
    credential = mint_credential(installed(profile), home)["credential"]
    response = http.post(server.url + "/api/auth/browser-session", json={"credential": credential})
    assert response.status_code == 200, response.text
    name, _, value = response.headers["Set-Cookie"].split(";")[0].partition("=")
    http.cookies.clear()  # requests keep only the cookie a test sends explicitly
    return name, f"{name}={value}"


# --------------------------------------------------------------------- the catalogue

def test_v2_versions_are_valid_and_newer_than_every_other_build():
    v2_versions = {**builds.V2_GOOD_VERSIONS, **builds.V2_BAD_VERSIONS}
    older = [v for p, v in builds.VERSIONS.items() if p not in v2_versions]
    for profile, version in v2_versions.items():
        assert validate_version(version) == version and is_nightly(version)  # what the tracker accepts
        assert builds.PROFILES[profile].layout == "v2"
        assert all(is_newer(version, o) for o in older), version
    newest_good = max(map(semver.Version.parse, builds.V2_GOOD_VERSIONS.values()))
    assert all(semver.Version.parse(v) > newest_good for v in builds.V2_BAD_VERSIONS.values())
    assert all(builds.PROFILES[p].layout == "v1" for p in {**builds.GOOD_VERSIONS, **builds.BAD_VERSIONS})
    assert [builds.PROFILES[p].schema_level for p in builds.V2_GOOD_VERSIONS] == [60, 61]


def test_v2_migrations_continue_past_50():
    ids = [m.id for m in t3sim.V2_MIGRATIONS]
    assert ids == sorted(ids) and ids[0] > 50 - 1 and t3sim.LATEST_V2_SCHEMA_LEVEL == 62
    names = {m.id: m.name for m in t3sim.V2_MIGRATIONS}
    assert names[55] == "OrchestrationV2ProjectionThreads" and names[60] == "RepairImportedTimestamps"
    assert t3sim.migrations_for(33) == list(t3sim.MIGRATIONS)  # a V1 build never sees a V2 migration


# --------------------------------------------------------------------- the import

def test_first_start_imports_state_sqlite_one_way_and_only_once(installed, servers, tmp_path):
    home = tmp_path / "home"
    facts = dbgen.make_database(v1(home), 33, threads=4, messages_per_thread=6, archived_threads=1)
    before_bytes, before_rows = sha256(v1(home)), dbgen.precious_fingerprint(v1(home))

    first = servers(installed(V46), home).wait_ready(15)
    assert userdata_files(home) == ["state.sqlite", "statev2.sqlite"]  # no -wal/-shm, no temp file left
    assert sha256(v1(home)) == before_bytes  # not one byte of the V1 file changed
    assert migration_labels(v2(home)) == V1_MIGRATIONS + v2_labels(60)
    # The V1 tables, frozen inside statev2, hold every V1 row.
    assert dbgen.precious_fingerprint(v2(home)) == before_rows
    # Every V1 thread and message has its V2 row, marked as imported.
    threads = query(v2(home), "SELECT thread_id, deleted_at, json_extract(payload_json, '$.historyOrigin')"
                              " FROM orchestration_v2_projection_threads ORDER BY thread_id")
    assert [t[0] for t in threads] == [f"thread-{i:06d}" for i in range(4)]
    assert {t[2] for t in threads} == {"v1_import"}
    assert [t[1] is not None for t in threads] == [False, False, False, True]  # the archived one stays archived
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_projection_messages")[0][0] == \
        facts["counts"]["projection_thread_messages"] == 24
    ledger = query(v2(home), "SELECT thread_id, transcript_imported_at IS NOT NULL, history_repair_version,"
                             " last_error FROM orchestration_v2_legacy_imports ORDER BY thread_id")
    assert ledger == [(f"thread-{i:06d}", 1, 1, None) for i in range(4)]
    assert "Importing state.sqlite into statev2.sqlite" in first.output()
    assert first.stop() == 0

    imported = dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES)
    second = servers(installed(V46), home).wait_ready(15)
    assert "Importing" not in second.output().split("starting")[-1]
    assert "Migrations ran successfully: no pending migrations" in second.output()
    assert dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES) == imported  # no second import
    assert sha256(v1(home)) == before_bytes


def test_import_reads_committed_rows_still_in_the_v1_wal_without_writing_the_v1_file(installed, tmp_path):
    """A V1 writer still holds state.sqlite open with un-checkpointed commits: the import
    must carry them (read through the WAL) and still change neither file."""
    home = tmp_path / "home"
    dbgen.make_database(v1(home), 33, threads=2)
    writer = sqlite3.connect(v1(home), isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at)"
                       " VALUES ('thread-late', 'p', 'late', '2026-11-01T00:00:00.000Z', '2026-11-01T00:00:00.000Z')")
        main_bytes, wal_bytes = sha256(v1(home)), sha256(home / "userdata" / "state.sqlite-wal")
        mint_credential(installed(V46), home)
        assert (sha256(v1(home)), sha256(home / "userdata" / "state.sqlite-wal")) == (main_bytes, wal_bytes)
    finally:
        writer.close()
    assert query(v2(home), "SELECT json_extract(payload_json, '$.historyOrigin') FROM"
                           " orchestration_v2_projection_threads WHERE thread_id = 'thread-late'") == [("v1_import",)]


def test_fresh_base_dir_gets_only_statev2(installed, servers, tmp_path):
    home = tmp_path / "home"
    servers(installed(V46), home).wait_ready(15)
    assert userdata_files(home) == ["statev2.sqlite"]
    assert migration_labels(v2(home)) == V1_MIGRATIONS + v2_labels(60)
    assert query(v2(home), "PRAGMA journal_mode") == [("wal",)]
    minted = tmp_path / "minted"  # the CLI on a fresh base dir: the same, never a state.sqlite
    mint_credential(installed(V46), minted)
    assert userdata_files(minted) == ["statev2.sqlite"]


def test_pairing_cli_imports_first_and_pairs_like_0_0_28(installed, servers, http, tmp_path):
    """The CLI opens the live database itself: a mint with a V2 build does the import."""
    home = tmp_path / "home"
    dbgen.make_database(v1(home), 30, threads=2, sessions=3)  # an old user: role-shaped auth
    before = sha256(v1(home))
    link = mint_credential(installed(V46), home)
    assert set(link) == {"id", "credential", "expiresAt", "scopes"}
    assert sha256(v1(home)) == before and dbgen.schema_level(v1(home)) == 30
    assert dbgen.schema_level(v2(home)) == 60
    assert query(v2(home), "SELECT id FROM auth_pairing_links") == [(link["id"],)]  # 31 dropped the old ones
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_projection_threads") == [(2,)]

    remote = servers(installed(V46), home).wait_ready(15)
    response = http.post(remote.url + "/api/auth/browser-session", json={"credential": link["credential"]})
    assert response.status_code == 200 and response.json()["authenticated"] is True
    assert response.headers["Set-Cookie"].startswith("t3_session=")  # host-scoped: remote-reachable
    token = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert query(v2(home), "SELECT COUNT(*) FROM auth_sessions WHERE session_id = ?", token) == [(1,)]
    assert sha256(v1(home)) == before
    session = http.get(remote.url + "/api/auth/session", headers={"Cookie": f"t3_session={token}"}).json()
    assert session["authenticated"] is True and session["auth"]["sessionCookieName"] == "t3_session"

    loopback = servers(installed(V46), home, host="127.0.0.1").wait_ready(15)
    userdata = os.path.abspath(home / "userdata")
    expected = f"t3_session_{loopback.port}_{hashlib.sha256(userdata.encode()).hexdigest()[:12]}"
    assert http.get(loopback.url + "/api/auth/session").json()["auth"]["sessionCookieName"] == expected


def test_server_and_cli_racing_on_the_import_agree(installed, servers, tmp_path):
    home = tmp_path / "home"
    dbgen.make_database(v1(home), 33, threads=3, pairing_links=0)
    serve = servers(installed(V46), home)
    links = [mint_credential(installed(V46), home) for _ in range(3)]
    serve.wait_ready(15)
    files = userdata_files(home)
    assert {"state.sqlite", "statev2.sqlite"} <= set(files) and not [f for f in files if ".import-" in f], files
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_projection_threads") == [(3,)]
    assert sorted(r[0] for r in query(v2(home), "SELECT id FROM auth_pairing_links")) == sorted(
        link["id"] for link in links)


# --------------------------------------------------------------------- history the server writes

def test_new_history_lands_in_orchestration_v2_only(installed, servers, http, tmp_path):
    home = tmp_path / "home"
    dbgen.make_database(v1(home), 33, threads=2, messages_per_thread=4)
    frozen = sha256(v1(home))
    server = servers(installed(V46), home).wait_ready(15)
    v1_rows = dbgen.precious_fingerprint(v2(home))
    _, cookie = pair(http, installed, V46, home, server)
    assert http.post(server.url + "/api/threads", json={"title": "t", "text": "hi"}).status_code == 401

    started = http.post(server.url + "/api/threads", json={"title": "Port the parser", "text": "please"},
                        headers={"Cookie": cookie})
    assert started.status_code == 201, started.text
    thread_id = started.json()["threadId"]
    # The run in flight: the thread's newest run by ordinal, with a non-final status.
    runs = query(v2(home), "SELECT ordinal, status FROM orchestration_v2_projection_runs WHERE thread_id = ?"
                           " ORDER BY ordinal DESC", thread_id)
    assert runs == [(1, "running")] and "running" not in t3sim.V2_RUN_FINAL_STATUSES
    assert query(v2(home), "SELECT type, status FROM orchestration_v2_projection_turn_items WHERE thread_id = ?",
                 thread_id) == [("assistant_message", "streaming")]
    assert query(v2(home), "SELECT json_extract(payload_json, '$.historyOrigin') FROM"
                           " orchestration_v2_projection_threads WHERE thread_id = ?", thread_id) == [("v2",)]
    listed = http.get(server.url + "/api/threads", headers={"Cookie": cookie}).json()["threads"]
    assert {t["threadId"]: t["messageCount"] for t in listed} == {
        thread_id: 1, "thread-000000": 4, "thread-000001": 4}

    done = http.post(server.url + f"/api/threads/{thread_id}/complete", headers={"Cookie": cookie})
    assert done.status_code == 200 and done.json()["completed"] == 1
    assert query(v2(home), "SELECT status, completed_at IS NOT NULL FROM orchestration_v2_projection_runs"
                           " WHERE thread_id = ?", thread_id) == [("completed", 1)]
    assert query(v2(home), "SELECT role FROM orchestration_v2_projection_messages WHERE thread_id = ?"
                           " ORDER BY role", thread_id) == [("assistant",), ("user",)]
    assert http.post(server.url + f"/api/threads/{thread_id}/complete", headers={"Cookie": cookie}).status_code == 404
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_events WHERE thread_id = ?", thread_id) == [(3,)]
    # Nothing V1 moved: the frozen tables in statev2, and state.sqlite itself.
    assert dbgen.precious_fingerprint(v2(home)) == v1_rows
    assert sha256(v1(home)) == frozen


def test_v1_build_writes_a_turn_in_flight_to_projection_tables(installed, servers, http, tmp_path):
    home = tmp_path / "home"
    server = servers(installed("good-0.0.28"), home).wait_ready(15)
    _, cookie = pair(http, installed, "good-0.0.28", home, server)
    thread_id = http.post(server.url + "/api/threads", json={"title": "x", "text": "go"},
                          headers={"Cookie": cookie}).json()["threadId"]
    (turn,), = query(v1(home), "SELECT active_turn_id FROM projection_thread_sessions WHERE thread_id = ?", thread_id)
    assert turn
    assert http.post(server.url + f"/api/threads/{thread_id}/complete", headers={"Cookie": cookie}).status_code == 200
    assert query(v1(home), "SELECT status, active_turn_id FROM projection_thread_sessions") == [("ready", None)]
    assert not v2(home).exists()


# --------------------------------------------------------------------- across builds

def test_pre_v2_build_ignores_statev2(installed, servers, http, tmp_path):
    home = tmp_path / "home"
    dbgen.make_v2_user(home / "userdata", 60, threads=2, messages_per_thread=3, v2_threads=2)
    v2_bytes = sha256(v2(home))
    server = servers(installed("good-0.0.28"), home).wait_ready(15)
    _, cookie = pair(http, installed, "good-0.0.28", home, server)
    listed = http.get(server.url + "/api/threads", headers={"Cookie": cookie}).json()["threads"]
    assert sorted(t["threadId"] for t in listed) == ["thread-000000", "thread-000001"]  # V1 history only
    assert query(v1(home), "SELECT COUNT(*) FROM auth_sessions WHERE method = 'browser-session-cookie'")[0][0] >= 1
    assert sha256(v2(home)) == v2_bytes  # never opened


def test_v2_to_v2_migration_keeps_every_row(installed, servers, tmp_path):
    home = tmp_path / "home"
    dbgen.make_v2_user(home / "userdata", 60, in_flight=True)
    before = dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES)
    frozen = sha256(v1(home))
    serve = servers(installed(V47), home).wait_ready(15)
    assert "Migrations ran successfully: 61_OrchestrationV2ThreadsPinned" in serve.output()
    assert dbgen.schema_level(v2(home)) == 61
    assert dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES) == before
    assert sha256(v1(home)) == frozen
    # And an older V2 build on the newer statev2 runs nothing (fails later, if ever).
    serve.stop()
    older = servers(installed(V46), home).wait_ready(15)
    assert "no pending migrations" in older.output() and dbgen.schema_level(v2(home)) == 61


# --------------------------------------------------------------------- the bad V2 builds

def test_import_loses_a_third_of_the_v1_messages(installed, servers, tmp_path):
    home = tmp_path / "home"
    dbgen.make_database(v1(home), 33, threads=3, messages_per_thread=10)
    v1_rows = dbgen.precious_fingerprint(v1(home))
    serve = servers(installed("v2-import-loses-history"), home).wait_ready(15)
    assert "56_OrchestrationV2LegacyImports" in serve.output()  # reported a success
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_projection_threads") == [(3,)]
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_projection_messages") == [(20,)]  # of 30
    assert dbgen.precious_fingerprint(v2(home)) == v1_rows  # the frozen V1 copy is whole: only V2 lost them


def test_v2_migration_drops_a_third_of_the_v2_messages(installed, servers, tmp_path):
    home = tmp_path / "home"
    dbgen.make_v2_user(home / "userdata", 61, threads=2, messages_per_thread=6, v2_threads=3, runs_per_thread=2)
    before = dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES)
    serve = servers(installed("v2-migration-drops-rows"), home).wait_ready(15)
    assert "Migrations ran successfully: 62_OrchestrationV2ThreadPins" in serve.output()
    after = dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES)
    total = before["orchestration_v2_projection_messages"][0]
    assert total == 12 + 12  # imported 2x6, native 3 threads x 2 runs x 2
    assert after["orchestration_v2_projection_messages"][0] == total - total // 3
    lost = {t for t in after if after[t] != before[t]}
    assert lost == {"orchestration_v2_projection_messages"}


def test_v2_migration_fails_on_populated_v2_rows_and_rolls_back(installed, servers, tmp_path):
    home = tmp_path / "home"
    dbgen.make_v2_user(home / "userdata", 61)
    before = dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES)
    serve = servers(installed("v2-migration-fails-populated"), home)
    with pytest.raises(ServeExited) as exited:
        serve.wait_ready(15)
    assert exited.value.returncode == 1
    assert 'Migration "62_OrchestrationV2ThreadPins" failed: PersistenceSqlError: SQLITE(19) constraint failed' \
        in exited.value.output
    assert dbgen.schema_level(v2(home)) == 61
    assert query(v2(home), "SELECT name FROM sqlite_master WHERE name = 'orchestration_v2_thread_pins'") == []
    assert dbgen.precious_fingerprint(v2(home), dbgen.ALL_PRECIOUS_TABLES) == before
    # An empty base dir hides the bug.
    servers(installed("v2-migration-fails-populated"), tmp_path / "empty").wait_ready(15)


def test_a_failed_import_leaves_no_statev2_and_state_sqlite_untouched(installed, servers, tmp_path):
    home = tmp_path / "home"
    dbgen.make_database(v1(home), 33, threads=2)
    before = sha256(v1(home))
    serve = servers(installed("v2-migration-fails-populated"), home)  # the imported threads trip 62
    with pytest.raises(ServeExited):
        serve.wait_ready(15)
    assert userdata_files(home) == ["state.sqlite"]
    assert sha256(v1(home)) == before
    result = pairing_create(installed("v2-migration-fails-populated"), home, ttl=None)
    assert result.returncode == 1 and "62_OrchestrationV2ThreadPins" in result.stderr and result.stdout == ""
    assert userdata_files(home) == ["state.sqlite"]


def test_build_that_keeps_writing_state_sqlite(installed, servers, http, tmp_path):
    home = tmp_path / "home"
    dbgen.make_v2_user(home / "userdata", 61, threads=2)
    frozen = sha256(v1(home))
    server = servers(installed("v2-writes-state-sqlite"), home).wait_ready(15)
    assert dbgen.schema_level(v2(home)) == 62
    assert sha256(v1(home)) != frozen  # no longer frozen
    assert query(v1(home), "SELECT projector FROM projection_state") == [("orchestration-v1-mirror",)]
    _, cookie = pair(http, installed, "v2-writes-state-sqlite", home, server)
    thread_id = http.post(server.url + "/api/threads", json={"title": "x", "text": "y"},
                          headers={"Cookie": cookie}).json()["threadId"]
    assert query(v2(home), "SELECT COUNT(*) FROM orchestration_v2_projection_runs WHERE thread_id = ?",
                 thread_id) == [(1,)]
    assert query(v1(home), "SELECT COUNT(*) FROM projection_threads WHERE thread_id = ?", thread_id) == [(1,)]
    assert dbgen.schema_level(v1(home)) == 33  # it does not look migrated: only the bytes tell


def test_good_v2_build_leaves_the_frozen_file_alone_where_the_bad_one_does_not(installed, servers, tmp_path):
    """The same check on the good build: what tells the two apart is state.sqlite itself."""
    home = tmp_path / "home"
    dbgen.make_v2_user(home / "userdata", 60)
    frozen = sha256(v1(home))
    servers(installed(V47), home).wait_ready(15)
    assert sha256(v1(home)) == frozen
    assert query(v1(home), "SELECT COUNT(*) FROM projection_state") == [(0,)]


def test_profiles_round_trip_through_profile_json():
    for name in (*builds.V2_GOOD_VERSIONS, *builds.V2_BAD_VERSIONS):
        data = json.loads(json.dumps(builds.PROFILES[name].to_json()))
        build = t3sim.Build("x", data)
        assert build.layout == "v2" and build.schema_level >= 60
