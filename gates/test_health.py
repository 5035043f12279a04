"""Health gate: the build under test, on a copy of real data, in a throwaway server.

It proves the feature, never liveness alone (GET / -> 200 passed a build that
broke every login): the forward migration keeps every precious row, the
database is sound, and a browser can pair and hold a session.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gates import dbfacts
from runner import proc
from runner.versions import VersionError, parse_t3_version_output
from gates.t3client import GateFailure, mint_credential, package_version_of
from gates.throwaway import ThrowawayServer, copy_database

MIGRATION_FAILED = re.compile(r'Migration "\d+_[^"]*" failed')


def _seed_database(gate, given: str | None) -> Path:
    if given is not None:
        seed = Path(given)
        if not seed.is_file():
            raise GateFailure(f"seed database {seed} does not exist")
        return seed
    backups = gate.path("--backup-dest")
    users = sorted(set(gate.users().values()))
    seed_user = gate.get("--seed-user") or (users[0] if users else None)
    candidates = sorted((backups / str(seed_user)).glob("state-prebump-*.sqlite")) if seed_user else []
    if not candidates:
        raise GateFailure(f"no seed database: no pre-bump backup of {seed_user} under {backups}; pass --seed-db")
    return max(candidates, key=lambda p: p.stat().st_mtime)


class Candidate:
    """A started throwaway server plus what its database looked like before it ran."""

    def __init__(self, server: ThrowawayServer, seeded: bool):
        self.server = server
        self.seeded = seeded
        self.level_before = dbfacts.migration_level(server.db) if seeded else 0
        self.precious_before = dbfacts.precious_fingerprint(server.db) if seeded else {}
        self.auth_before = dbfacts.auth_row_counts(server.db) if seeded else {}


def health_cases(seed_option: str | None) -> list[tuple[str, str | None]]:
    """(case id, seed path) per populated seed given (one per schema level the fleet is at),
    then a fresh empty database. Without --seed-db the seed is found when the case runs."""
    seeds = [s for s in (seed_option or "").split(",") if s] or [None]
    cases = [("populated-copy" if len(seeds) == 1 else f"populated-copy-{i + 1}", seed) for i, seed in enumerate(seeds)]
    return cases + [("fresh-empty", None)]


def pytest_generate_tests(metafunc):
    if "health_case" in metafunc.fixturenames:
        cases = health_cases(metafunc.config.getoption("seed_db"))
        metafunc.parametrize("health_case", cases, ids=[c[0] for c in cases], scope="module")


@pytest.fixture(scope="module")
def candidate(health_case, gate, scratch_root):
    """The build under test serving a copy of a populated database, or an empty one."""
    t3_bin = str(gate.get("--t3-bin"))
    if not Path(t3_bin).exists():
        raise GateFailure(f"t3 binary under test not found: {t3_bin}")
    case, given_seed = health_case
    server = ThrowawayServer(
        t3_bin, scratch_root / case,
        host=str(gate.get("--serve-host")), port=int(gate.get("--smoke-port") or 0),
        ready_timeout=float(gate.get("--ready-timeout")),
    )
    seeded = case != "fresh-empty"
    if seeded:
        seed = _seed_database(gate, given_seed)
        copy_database(seed, server.db)
        if not any(count for count, _ in dbfacts.precious_fingerprint(server.db).values()):
            raise GateFailure(f"seed database {seed} holds no history; the gate needs a populated copy")
    state = Candidate(server, seeded)
    server.start()
    try:
        server.wait_ready()
        yield state
    finally:
        server.stop()


def test_server_becomes_ready_bound_like_production(candidate, gate):
    assert candidate.server.host == str(gate.get("--serve-host"))
    assert candidate.server.ready_seconds is not None


def test_migrations_applied_cleanly(candidate):
    level = dbfacts.migration_level(candidate.server.db)
    assert level >= candidate.level_before, (
        f"effect_sql_migrations went backwards: {candidate.level_before} -> {level}")
    failed = MIGRATION_FAILED.findall(candidate.server.log_text())
    assert not failed, f"server log reports {', '.join(failed)}"


def test_database_integrity_ok(candidate):
    problems = dbfacts.integrity_problems(candidate.server.db)
    assert not problems, "database is damaged after migration: " + "; ".join(problems[:5])


def test_precious_history_kept(candidate, gate_notes):
    after = dbfacts.precious_fingerprint(candidate.server.db)
    losses = dbfacts.describe_losses(candidate.precious_before, after)
    assert not losses, "; ".join(losses)
    auth_after = dbfacts.auth_row_counts(candidate.server.db)
    reset = [f"{t} {n} -> {auth_after.get(t, 0)}" for t, n in candidate.auth_before.items()
             if n and not auth_after.get(t, 0)]
    if reset:
        gate_notes.append("auth tables reset by the migration (" + ", ".join(reset)
                          + "): this bump logs every browser out")


def test_binary_reports_the_candidate_version(gate):
    t3_bin = str(gate.get("--t3-bin"))
    expected = gate.get("--expect-version") or package_version_of(t3_bin)
    try:
        reported = parse_t3_version_output(proc.run([t3_bin, "--version"], timeout=30).stdout)
    except (proc.CommandError, VersionError) as exc:
        raise GateFailure(f"`t3 --version` is unusable: {exc}") from None
    assert reported == expected, f"`t3 --version` reports {reported}, the package is {expected}"


def test_server_reports_the_candidate_version(candidate, gate):
    expected = gate.get("--expect-version") or package_version_of(str(gate.get("--t3-bin")))
    actual = candidate.server.instance.server_version()
    assert actual == expected, f"serverVersion is {actual}, expected {expected}"


def test_pairing_handshake_gives_a_working_session_cookie(candidate, gate):
    server = candidate.server
    expected_name = str(gate.get("--cookie-name"))
    credential = mint_credential(str(gate.get("--t3-bin")), server.base_dir)
    exchange = server.instance.exchange(credential)
    assert exchange.status != 404, "no pairing endpoint: " + " and ".join(
        f"{e} answered 404" for e in ("/api/auth/browser-session", "/api/auth/bootstrap"))
    assert exchange.status == 200, f"{exchange.endpoint} answered {exchange.status}: {exchange.body[:200]}"
    assert exchange.cookies, f"200 from {exchange.endpoint} but no Set-Cookie"
    announced = server.instance.session_cookie_name()
    names = [name for name, _ in exchange.cookies]
    assert announced in names, f"Set-Cookie names {names}, but auth.sessionCookieName is {announced!r}"
    assert announced == expected_name, (
        f"session cookie is named {announced!r}, the dispatch expects {expected_name!r}: every browser would re-pair")
    value = dict(exchange.cookies)[announced]
    session = server.instance.session({announced: value})
    assert session.get("authenticated") is True, "the new session cookie is not accepted by /api/auth/session"
