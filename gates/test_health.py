"""Health gate: the build under test, on copies of real data, in throwaway servers.

It proves the feature, never liveness alone (GET / -> 200 passed a build that
broke every login): the forward migration keeps every precious row, the
database is sound, and a browser can pair and hold a session.

One case per seed (every user's own live database: `populated-<user>`) and one on an
empty base dir (`fresh-empty`), each on its own server, started together (gates/seeds.py,
gates/throwaway.py). Every database check reads the file the build actually opened after
start (statev2.sqlite once it exists, else state.sqlite); a V1 seed the build imported into
statev2.sqlite must arrive there whole, and the state.sqlite left behind must stay as it was.

Nothing waits on one process at a time: `t3 --version` runs from the gate's start, and each
case's mint (`t3 auth pairing create`) from the moment its server is ready, beside the other
cases' checks (each on its own base dir); a case's pairing check takes that credential right
after its readiness and uid checks, so its database checks still read a database nothing else
is writing.

Every process of the candidate (the servers, the gate's mint, `t3 --version`) runs as the gate
user (`--gate-user`), never root: root places each case's seed copies in a directory of its
own, removes every session and pairing credential from them, and only then hands the base
dir over to the gate user; a server whose uid in the process table is not the gate's fails.
"""
from __future__ import annotations

import os
import re
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import dbfacts, proc
from runner.gateuser import GateUserError, gate_ids
from runner.livedb import V1_NAME, V2_NAME
from runner.versions import VersionError, parse_t3_version_output
from gates.seeds import (FRESH_CASE, Seed, backed_up_files, default_seeds, parse_seed_option, place_seed,
                         scrub_credentials)
from runner.t3client import GateFailure, mint_credential, package_version_of
from gates.throwaway import ServerPool, ThrowawayServer

MIGRATION_FAILED = re.compile(r'Migration "\d+_[^"]*" failed')
DEFAULT_PARALLEL = 4
PAIRING_CHECK = "test_pairing_handshake_gives_a_working_session_cookie"


class Candidate:
    """A started throwaway server plus what its databases looked like before it ran."""

    def __init__(self, case: str, server: ThrowawayServer, live_before: Path | None, auth_before: dict[str, int]):
        self.case, self.server = case, server
        self.live_name_before = live_before.name if live_before else None
        self.level_before = dbfacts.migration_level(live_before) if live_before else 0
        self.precious_before = dbfacts.precious_fingerprint(live_before) if live_before else {}
        self.auth_before = auth_before  # the seed's auth rows before they were scrubbed
        v1 = server.userdata / V1_NAME
        self.v1_content_before = dbfacts.content_fingerprint(v1) if v1.is_file() else None
        self.credential: Future | None = None  # the case's mint, started once its server is ready
        self.auth_at_ready: dict[str, int] | None = None  # auth rows as the migration left them

    def take_auth_counts(self) -> None:
        """The auth tables' rows once the server is ready, before the gate's own mint and
        exchange add any: what the auth note compares with the seed's."""
        try:
            self.auth_at_ready = dbfacts.auth_row_counts(self.server.live_db())
        except Exception:  # noqa: BLE001 - only a note depends on it; the database checks name the problem
            self.auth_at_ready = None

    def imported(self) -> bool:
        """Whether this start carried a V1 database into statev2.sqlite."""
        return self.live_name_before == V1_NAME and self.server.live_db().name == V2_NAME

    def where(self) -> str:
        """Which file a message is about, when it is not plain V1 (whose messages stay as they were)."""
        after = self.server.live_db().name
        if self.imported():
            return f" ({V1_NAME} imported into {V2_NAME})"
        return f" in {after}" if after != V1_NAME else ""


def health_cases(config) -> list[Seed | None]:
    """The fresh empty base dir first (it starts in the first batch, whatever the number of
    users), then one populated case per seed."""
    option = config.getoption("seed_db")
    if option:
        try:
            seeds = parse_seed_option(option)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    else:
        gate = config._t3_gate
        chosen = gate.get("--seed-user")
        seeds = default_seeds([chosen] if chosen else sorted(set(gate.users().values())))
    return [None] + seeds


def pytest_generate_tests(metafunc):
    if "health_case" in metafunc.fixturenames:
        cases = health_cases(metafunc.config)
        metafunc.parametrize("health_case", cases, ids=[c.case if c else FRESH_CASE for c in cases],
                             scope="module")


def prepare_gate_runner(gate_user: str, scratch_root: Path) -> SimpleNamespace:
    """As whom, with what, and where every candidate process runs: the gate user, a minimal
    environment, a home of its own (0700) in this gate's scratch, which the gate user may
    traverse (root:<gate gid> 0710) but not change."""
    __tracebackhide__ = True
    try:
        user = gate_ids(SimpleNamespace(gate_user=str(gate_user)))
    except GateUserError as exc:
        raise GateFailure(f"no gate user to run the candidate as: {exc}") from None
    os.chown(scratch_root, os.geteuid(), user.gid, follow_symlinks=False)
    os.chmod(scratch_root, 0o710)
    home = scratch_root / "home"
    os.mkdir(home, 0o700)
    os.chown(home, user.uid, user.gid, follow_symlinks=False)
    return SimpleNamespace(user=user, home=home, env=proc.child_env({"HOME": str(home)}))


@pytest.fixture(scope="session")
def gate_runner(gate, scratch_root):
    return prepare_gate_runner(gate.get("--gate-user"), scratch_root)


def hand_over(case_dir: Path, base_dir: Path, user: proc.UserIds) -> None:
    """Give the base dir root prepared (nobody else could write in it yet) to the gate user:
    its dirs 0700, files 0600, by descriptor and no-follow; the case dir stays root's, 0710."""
    for _dirpath, _dirs, files, dfd in os.fwalk(base_dir, follow_symlinks=False):
        os.fchown(dfd, user.uid, user.gid)
        os.fchmod(dfd, 0o700)
        for name in files:
            if not stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                raise GateFailure(f"{base_dir}: {name} is not a regular file")
            os.chown(name, user.uid, user.gid, dir_fd=dfd, follow_symlinks=False)
            os.chmod(name, 0o600, dir_fd=dfd)
    os.chown(case_dir, os.geteuid(), user.gid, follow_symlinks=False)
    os.chmod(case_dir, 0o710)


def _launch(gate, scratch_root: Path, runner, t3_bin: str, seed: Seed | None, port: int) -> Candidate:
    case_dir = scratch_root / (seed.case if seed else FRESH_CASE)
    os.mkdir(case_dir, 0o700)  # root's until the seeds are placed and scrubbed
    server = ThrowawayServer(t3_bin, case_dir, host=str(gate.get("--serve-host")), port=port,
                             ready_timeout=float(gate.get("--ready-timeout")),
                             as_user=runner.user, env=runner.env, cwd=runner.home)
    server.userdata.mkdir(parents=True)
    live_before, auth_before = None, {}
    if seed is not None:
        files = seed.files or backed_up_files(gate.path("--backup-dest"), seed.user)
        live_before = place_seed(seed, files, server.userdata)
        auth_before = dbfacts.auth_row_counts(live_before)
        for db in sorted(server.userdata.glob("*.sqlite")):
            scrub_credentials(db)
    candidate = Candidate(case_dir.name, server, live_before, auth_before)
    hand_over(case_dir, server.base_dir, runner.user)
    server.start()
    return candidate


def parallel(gate) -> int:
    return int(gate.get("--health-parallel") or DEFAULT_PARALLEL)


@pytest.fixture(scope="session")
def background(gate):
    """The gate's candidate commands that run beside its checks (`t3 --version`, the cases'
    mints): each waits for its own process in a thread that lives until the gate ends (a
    child dies with the thread that started it), and each has its own timeout."""
    with ThreadPoolExecutor(max_workers=parallel(gate) + 1, thread_name_prefix="gate-bg") as pool:
        yield pool


def reported_version(t3_bin: str, runner) -> str:
    __tracebackhide__ = True
    try:
        return parse_t3_version_output(proc.run([t3_bin, "--version"], timeout=30, as_user=runner.user,
                                                env=runner.env, cwd=runner.home).stdout)
    except (proc.CommandError, VersionError) as exc:
        raise GateFailure(f"`t3 --version` is unusable: {exc}") from None


@pytest.fixture(scope="session")
def version_answer(gate, gate_runner, background) -> Future:
    """`t3 --version` of the build under test, started with the first case's servers."""
    return background.submit(reported_version, str(gate.get("--t3-bin")), gate_runner)


@pytest.fixture(scope="session")
def server_pool(request, gate, scratch_root, gate_runner, background, version_answer):
    """Every selected case's server, started ahead of its checks, in the order pytest runs them;
    each case's mint starts as soon as its server is ready."""
    t3_bin = str(gate.get("--t3-bin"))
    if not Path(t3_bin).exists():
        raise GateFailure(f"t3 binary under test not found: {t3_bin}")
    order, paired = [], []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "health_case" in params and params["health_case"] not in order:
            order.append(params["health_case"])
        if "health_case" in params and item.originalname == PAIRING_CHECK:
            paired.append(params["health_case"].case if params["health_case"] else FRESH_CASE)

    def start_mint(candidate: Candidate) -> None:
        candidate.take_auth_counts()  # before the mint: the note reads the migration's work only
        # Only for a case whose pairing check runs (it waits for the mint before the case's
        # database checks): with `-k` leaving it out, nothing writes beside those checks.
        if candidate.case in paired:
            candidate.credential = background.submit(
                mint_credential, t3_bin, candidate.server.base_dir, env=gate_runner.env, as_user=gate_runner.user,
                cwd=gate_runner.home)

    pool = ServerPool(order, lambda seed, port: _launch(gate, scratch_root, gate_runner, t3_bin, seed, port),
                      bound=parallel(gate), first_port=int(gate.get("--smoke-port") or 0), on_ready=start_mint)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def candidate(health_case, server_pool):
    """The build under test serving a copy of one user's database, or an empty base dir."""
    try:
        yield server_pool.get(health_case)
    finally:
        server_pool.release(health_case)


def test_server_becomes_ready_bound_like_production(candidate, gate):
    assert candidate.server.host == str(gate.get("--serve-host"))
    assert candidate.server.ready_seconds is not None


def test_server_runs_as_the_gate_user(candidate, gate_runner):
    """From the process table: a host where the drop did not happen fails here, so candidate
    code never runs as root unnoticed."""
    uid = candidate.server.pid_uid()
    assert uid == gate_runner.user.uid, (
        f"the throwaway server runs as uid {uid}, not the gate user's {gate_runner.user.uid}")


def test_pairing_handshake_gives_a_working_session_cookie(candidate, gate):
    """Before the database checks: the case's mint (started when its server became ready)
    has finished and the exchange has written its session when they read the database."""
    server = candidate.server
    expected_name = str(gate.get("--cookie-name"))
    if candidate.credential is None:
        raise GateFailure("no mint was started for this case")
    credential = candidate.credential.result()  # bounded: mint_credential's own timeout
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


def test_migrations_applied_cleanly(candidate):
    level = dbfacts.migration_level(candidate.server.live_db())
    assert level >= candidate.level_before, (
        f"effect_sql_migrations went backwards: {candidate.level_before} -> {level}{candidate.where()}")
    failed = MIGRATION_FAILED.findall(candidate.server.log_text())
    assert not failed, f"server log reports {', '.join(failed)}"


def test_database_integrity_ok(candidate):
    problems = dbfacts.integrity_problems(candidate.server.live_db())
    assert not problems, (f"database is damaged after migration{candidate.where()}: "
                          + "; ".join(problems[:5]))


def test_precious_history_kept(candidate, gate_notes):
    live = candidate.server.live_db()
    after = dbfacts.precious_fingerprint(live)
    imported = candidate.imported()
    losses = dbfacts.describe_losses(candidate.precious_before, after, across_import=imported)
    if imported:  # the V2 tables (what a V2 build shows) must hold every V1 thread and message
        losses += dbfacts.import_losses(candidate.server.userdata / V1_NAME, live)
    assert not losses, "; ".join(losses)
    auth_after = candidate.auth_at_ready or {}  # before the gate's own pairing refilled any
    reset = [f"{t} {n} -> {auth_after.get(t, 0)}" for t, n in candidate.auth_before.items()
             if n and not auth_after.get(t, 0) and candidate.auth_at_ready is not None]
    if reset:
        gate_notes.append("auth tables reset by the migration (" + ", ".join(reset)
                          + "): this bump logs every browser out")


def test_binary_reports_the_candidate_version(gate, version_answer):
    t3_bin = str(gate.get("--t3-bin"))
    expected = gate.get("--expect-version") or package_version_of(t3_bin)
    reported = version_answer.result()  # bounded: reported_version's own timeout
    assert reported == expected, f"`t3 --version` reports {reported}, the package is {expected}"


def test_server_reports_the_candidate_version(candidate, gate):
    expected = gate.get("--expect-version") or package_version_of(str(gate.get("--t3-bin")))
    actual = candidate.server.instance.server_version()
    assert actual == expected, f"serverVersion is {actual}, expected {expected}"


def test_v1_database_left_as_it_was_beside_statev2(candidate):
    """A V2 build opens only statev2.sqlite: the state.sqlite beside it stays frozen at the
    import (a pre-V2 build, after a rollback, serves exactly that file). Checked last, so the
    server has run the pairing too."""
    if candidate.server.live_db().name != V2_NAME:
        return  # the build serves state.sqlite itself: its changes are the migration checked above
    v1 = candidate.server.userdata / V1_NAME
    if candidate.v1_content_before is None:
        assert not v1.exists(), f"{V1_NAME} appeared beside {V2_NAME} on a base dir that had none"
        return
    assert v1.is_file(), f"{V1_NAME} disappeared after the import to {V2_NAME}"
    assert dbfacts.content_fingerprint(v1) == candidate.v1_content_before, (
        f"{V1_NAME} changed after the import to {V2_NAME}")
