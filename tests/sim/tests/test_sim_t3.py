"""The simulated t3 builds: tarballs, the CLI, migrations and server lifecycle.

Every behaviour is proven by running the package's real `bin/t3` (installed in
npm's layout, bin as a symlink) as a subprocess against a real SQLite file.
HTTP behaviour is in test_sim_t3_http.py, the database generator in
test_sim_t3_dbgen.py.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import tarfile
import time
from datetime import datetime, timedelta, timezone

import pytest
import semver

from tests.sim import builds, dbgen
from tests.sim.proc import ServeExited, ServeNotReady, mint_credential, pairing_create, run_t3
from tests.sim.t3pkg import t3sim

CREDENTIAL_RE = re.compile(r"^[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]{12}$")


def db_path(home):
    return home / "userdata" / "state.sqlite"


def populated(home, level, **kwargs):
    return dbgen.make_database(db_path(home), level, **kwargs)


def migration_names(path):
    return [f"{i}_{n}" for i, n in dbgen.query(path, "SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1")]


def has_table(path, table):
    return dbgen.query(path, "SELECT 1 FROM sqlite_master WHERE name = ?", table) != []


# --------------------------------------------------------------------- tarballs

def test_tarball_is_an_npm_package(tmp_path):
    tgz = builds.build_tarball("0.0.26", "good-0.0.26", tmp_path)
    assert tgz.name == "t3-0.0.26.tgz"
    with tarfile.open(tgz, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"package/package.json", "package/profile.json", "package/bin/t3",
                                "package/lib/t3sim.py", "package/lib/t3serve.py",
                                *(f"package/lib/__pycache__/{pyc}" for pyc in builds.compiled_payload())}
        assert all(m.isfile() and m.uid == 0 and not m.name.startswith("/") for m in members.values())
        assert members["package/bin/t3"].mode == 0o755
        manifest = json.load(tar.extractfile("package/package.json"))
        profile = json.load(tar.extractfile("package/profile.json"))
        assert tar.extractfile("package/bin/t3").read().startswith(b"#!/usr/bin/env python3\n")
    assert manifest["name"] == "t3" and manifest["version"] == "0.0.26"
    assert manifest["bin"] == {"t3": "bin/t3"}
    assert profile == builds.PROFILES["good-0.0.26"].to_json()


def test_tarball_bytes_are_reproducible(tmp_path):
    first = builds.build_tarball("0.0.24", "good-0.0.24", tmp_path / "a").read_bytes()
    second = builds.build_tarball("0.0.24", "good-0.0.24", tmp_path / "b").read_bytes()
    assert first == second
    assert first[4:8] == b"\0\0\0\0"  # gzip header MTIME: none, or the bytes would vary


def test_catalogue_is_consistent():
    assert [v for v, _ in builds.CATALOGUE] == list(builds.VERSIONS.values())
    assert {p for _, p in builds.CATALOGUE} == set(builds.PROFILES)
    for version, name in builds.CATALOGUE:
        assert builds.profile_for(version).name == name
    with pytest.raises(KeyError):
        builds.profile_for("9.9.9")
    # Every bad build is a nightly newer than every good one (the tracker would try it).
    newest_good = max(map(semver.Version.parse, builds.GOOD_VERSIONS.values()))
    for version in builds.BAD_VERSIONS.values():
        assert semver.Version.parse(version) > newest_good
        assert "-nightly." in version


# --------------------------------------------------------------------- --version

@pytest.mark.parametrize("version,profile", builds.CATALOGUE, ids=[p for _, p in builds.CATALOGUE])
def test_version_reports_package_version(installed, version, profile):
    result = run_t3(installed(profile), "--version")
    assert result.returncode == 0, result.stderr
    if profile == "version-lie":
        assert result.stdout == "t3 v0.0.28-nightly.20260616.571\n"
    else:
        assert result.stdout == f"t3 v{version}\n"


# --------------------------------------------------------------------- migrations on serve

@pytest.mark.parametrize("profile,level", [
    ("good-0.0.24", 30), ("good-0.0.25", 32), ("good-0.0.28", 33),
    ("migration-fails-populated", 33),  # an empty database hides the bug
    ("migration-drops-rows", 33),
])
def test_serve_creates_and_migrates_an_empty_home(installed, servers, tmp_path, profile, level):
    home = tmp_path / "home"
    serve = servers(installed(profile), home)
    serve.wait_ready(15)
    names = migration_names(db_path(home))
    assert names == [m.label for m in t3sim.MIGRATIONS[:level]]
    conn = sqlite3.connect(db_path(home))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    userdata = home / "userdata"
    assert (userdata / "settings.json").is_file() and (userdata / "secrets").is_dir()
    assert re.fullmatch(r"[0-9a-f]{32}", (userdata / "environment-id").read_text())
    assert "Listening on http://0.0.0.0:" in serve.output()


def test_environment_id_is_stable_across_restarts(installed, servers, tmp_path):
    home = tmp_path / "home"
    first = servers(installed("good-0.0.28"), home)
    first.wait_ready(15)
    env_id = (home / "userdata" / "environment-id").read_text()
    assert first.stop() == 0
    servers(installed("good-0.0.28"), home).wait_ready(15)
    assert (home / "userdata" / "environment-id").read_text() == env_id


def test_good_migration_keeps_every_precious_row(installed, servers, tmp_path):
    home = tmp_path / "home"
    populated(home, 32, threads=4, in_flight=True)
    before = dbgen.precious_fingerprint(db_path(home))
    servers(installed("good-0.0.28"), home).wait_ready(15)
    assert dbgen.schema_level(db_path(home)) == 33
    assert dbgen.precious_fingerprint(db_path(home)) == before


def test_migration_fails_on_populated_database_and_rolls_back(installed, servers, tmp_path):
    home = tmp_path / "home"
    populated(home, 32)
    before = dbgen.precious_fingerprint(db_path(home))
    serve = servers(installed("migration-fails-populated"), home)
    with pytest.raises(ServeExited) as exited:
        serve.wait_ready(15)
    assert exited.value.returncode == 1
    # A newer build: only the SQLite code, not SQLite's own text, reaches the log.
    assert 'Migration "33_ThreadPinned" failed: PersistenceSqlError: SQLITE(19) constraint failed' \
        in exited.value.output
    assert "NOT NULL" not in exited.value.output
    # One transaction: nothing of migration 33 survived, not even its first statement.
    assert dbgen.schema_level(db_path(home)) == 32
    assert not has_table(db_path(home), "projection_thread_pins")
    assert dbgen.precious_fingerprint(db_path(home)) == before


def test_migration_drops_a_third_of_messages_and_reports_success(installed, servers, tmp_path):
    home = tmp_path / "home"
    populated(home, 32, threads=3, messages_per_thread=10)
    before = dbgen.precious_fingerprint(db_path(home))
    serve = servers(installed("migration-drops-rows"), home)
    serve.wait_ready(15)
    assert "Migrations ran successfully: 33_ThreadPinned" in serve.output()
    after = dbgen.precious_fingerprint(db_path(home))
    assert dbgen.schema_level(db_path(home)) == 33
    assert after["projection_thread_messages"][0] == 20  # 30 - every third
    assert after["projection_threads"] == before["projection_threads"]
    assert after["projection_thread_sessions"] == before["projection_thread_sessions"]


def test_older_binary_on_newer_database_starts_and_changes_nothing(installed, servers, tmp_path):
    home = tmp_path / "home"
    populated(home, 32)
    serve = servers(installed("good-0.0.24"), home)
    serve.wait_ready(15)
    assert "Migrations ran successfully: no pending migrations" in serve.output()
    assert dbgen.schema_level(db_path(home)) == 32


# --------------------------------------------------------------------- the pairing CLI

def test_pairing_create_migrates_the_database_itself(installed, tmp_path):
    """The 2026-06-09 trap: minting with a new binary migrates a user's database."""
    home = tmp_path / "home"
    facts = populated(home, 30, sessions=3, pairing_links=2)
    assert facts["counts"]["auth_sessions"] == 3
    before = dbgen.precious_fingerprint(db_path(home))
    result = pairing_create(installed("good-0.0.25"), home)
    assert result.returncode == 0, result.stderr
    assert dbgen.schema_level(db_path(home)) == 32
    counts = dbgen.table_counts(db_path(home))
    assert counts["auth_sessions"] == 0  # migration 31 logged every browser out
    assert counts["auth_pairing_links"] == 1  # only the one just minted
    assert dbgen.precious_fingerprint(db_path(home)) == before
    assert "31_AuthAuthorizationScopes, 32_AuthPairingLinksProofKey" in result.stderr

    assert result.stdout.count("\n") > 4  # pretty-printed, multi-line
    link = json.loads(result.stdout)
    assert set(link) == {"id", "credential", "expiresAt", "scopes"}
    assert CREDENTIAL_RE.match(link["credential"])
    assert link["scopes"] == ["owner"]
    assert link["expiresAt"].endswith("Z")
    expires = datetime.fromisoformat(link["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - datetime.now(timezone.utc) <= timedelta(minutes=5)


def test_pairing_create_role_shape_up_to_0_0_24(installed, tmp_path):
    home = tmp_path / "home"
    link = mint_credential(installed("good-0.0.24"), home, ttl="90s")
    assert set(link) == {"id", "credential", "expiresAt", "role"}
    assert link["role"] == "owner" and CREDENTIAL_RE.match(link["credential"])
    assert dbgen.schema_level(db_path(home)) == 30


def test_older_binary_mint_fails_at_query_time_on_newer_database(installed, tmp_path):
    home = tmp_path / "home"
    populated(home, 32)
    result = pairing_create(installed("good-0.0.24"), home, ttl=None)
    assert result.returncode == 1
    assert "table auth_pairing_links has no column named role" in result.stderr
    assert result.stdout == ""
    assert dbgen.schema_level(db_path(home)) == 32


def test_pairing_and_session_list_and_revoke(installed, tmp_path):
    home = tmp_path / "home"
    bin_t3 = installed("good-0.0.26")
    link = mint_credential(bin_t3, home)
    listed = json.loads(run_t3(bin_t3, "auth", "pairing", "list", "--base-dir", home, "--json").stdout)
    assert [entry["id"] for entry in listed] == [link["id"]]
    assert run_t3(bin_t3, "auth", "pairing", "revoke", link["id"], "--base-dir", home).returncode == 0
    assert run_t3(bin_t3, "auth", "pairing", "revoke", link["id"], "--base-dir", home).returncode == 1
    sessions = json.loads(run_t3(bin_t3, "auth", "session", "list", "--base-dir", home, "--json").stdout)
    assert sessions == []


def test_bad_ttl_is_a_clear_error(installed, tmp_path):
    result = pairing_create(installed("good-0.0.26"), tmp_path, ttl="soon")
    assert result.returncode == 1 and "invalid duration" in result.stderr


# --------------------------------------------------------------------- start-up failures

def test_never_ready_stays_alive_without_listening(installed, servers, tmp_path):
    home = tmp_path / "home"
    serve = servers(installed("never-ready"), home)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # poll for a bounded time: alive, never answering
        assert serve.alive(), serve.output()
        assert not serve.answers_http()
        time.sleep(0.05)
    with pytest.raises(ServeNotReady):  # what a gate sees: alive, silent, out of time
        serve.wait_ready(0.3)
    # It did its migrations, then hung.
    assert dbgen.schema_level(db_path(home)) == 33
    assert "Listening" not in serve.output()
    assert serve.stop(timeout=3) == 0  # SIGTERM still ends it promptly


def test_a_ready_delay_holds_the_listen_back_and_sigterm_still_ends_it(tmp_path, servers):
    slow = dataclasses.replace(builds.PROFILES["good-0.0.28"], name="slow-good", ready_delay=1.0)
    bin_t3 = builds.install_layout(builds.VERSIONS["good-0.0.28"], slow, tmp_path / "slow")
    serve = servers(bin_t3, tmp_path / "home")
    started = time.monotonic()
    serve.wait_ready(15)
    assert time.monotonic() - started >= 1.0  # migrated, worked a second, then listened
    assert dbgen.schema_level(db_path(tmp_path / "home")) == 33
    early = servers(bin_t3, tmp_path / "home2")
    deadline = time.monotonic() + 10
    while not db_path(tmp_path / "home2").exists():  # its signal handlers are in place once it migrates
        assert time.monotonic() < deadline and early.alive(), early.output()
        time.sleep(0.05)
    assert not early.answers_http()
    assert early.stop(timeout=3) == 0  # a SIGTERM while still starting up ends it at once


def test_crash_at_start_exits_nonzero_at_once(installed, servers, tmp_path):
    home = tmp_path / "home"
    serve = servers(installed("crash-at-start"), home)
    started = time.monotonic()
    with pytest.raises(ServeExited) as exited:
        serve.wait_ready(15)
    assert time.monotonic() - started < 5
    assert exited.value.returncode == 1
    assert "Error: t3 failed to start" in exited.value.output
    assert not db_path(home).exists()  # it never got to migrating


def test_sigterm_stops_a_serving_server_promptly(installed, servers, tmp_path):
    serve = servers(installed("good-0.0.28"), tmp_path / "home")
    serve.wait_ready(15)
    started = time.monotonic()
    assert serve.stop(timeout=3) == 0
    assert time.monotonic() - started < 2
    assert "Shutting down" in serve.output()


# --------------------------------------------------------------------- t3sim in-process

def test_migrations_are_numbered_1_to_33_with_unique_names():
    assert [m.id for m in t3sim.MIGRATIONS] == list(range(1, 34))
    assert len({m.name for m in t3sim.MIGRATIONS}) == 33
    assert t3sim.MIGRATIONS[30].name == "AuthAuthorizationScopes"
    # A variant ships under the id and name of the migration it replaces, as a regression would.
    names = {m.id: m.name for m in t3sim.MIGRATIONS + t3sim.V2_MIGRATIONS}
    for variant in t3sim.MIGRATION_VARIANTS.values():
        assert variant.name == names[variant.id]


def test_run_migrations_is_one_transaction(tmp_path):
    conn = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    t3sim.run_migrations(conn, 30)
    conn.execute("INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at)"
                 " VALUES ('t', 'p', 'title', 'x', 'x')")
    with pytest.raises(t3sim.MigrationError, match=r'^Migration "33_ThreadPinned" failed: NOT NULL constraint'):
        t3sim.run_migrations(conn, 33, {"33": "fails-populated"})
    # 31 and 32 ran before 33 failed, and were rolled back with it.
    assert t3sim.recorded_schema_level(conn) == 30
    assert "role" in [r[1] for r in conn.execute("PRAGMA table_info(auth_sessions)")]


@pytest.mark.parametrize("host,reachable", [
    ("0.0.0.0", True), ("::", True), ("192.0.2.7", True), ("example.org", True),
    ("127.0.0.1", False), ("127.0.1.1", False), ("::1", False), ("localhost", False), (None, False),
])
def test_remote_reachable_hosts(host, reachable):
    assert t3sim.is_remote_reachable(host) is reachable


def test_ttl_parsing():
    assert t3sim.parse_ttl("5m") == timedelta(minutes=5)
    assert t3sim.parse_ttl("30") == timedelta(seconds=30)
    assert t3sim.parse_ttl("2h") == timedelta(hours=2)
    for bad in ("", "m", "-1m", "0s", "5 minutes"):
        with pytest.raises(ValueError):
            t3sim.parse_ttl(bad)
