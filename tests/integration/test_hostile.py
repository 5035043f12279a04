"""Hostile users and hostile builds against the real code paths (issue 8): each attack runs
(as a real unprivileged uid where it is a user's) and must fail safely.

Needs root (the tracker's own situation): dropping to the gate uid is the point."""
from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import proc
from runner.backups import restore, take, trees
from runner.config import ConfigError, load_config
from runner.staging.checks import StageError
from runner.staging.flow import stage_release
from tests.sim import builds
from tests.sim.registry import NpmRegistry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need root to drop to other uids")

GATE_UID = 64123  # no passwd entry needed (config gate_user accepts a numeric uid)
V24 = builds.VERSIONS["good-0.0.24"]


@pytest.fixture
def host(tmp_path):
    """A registry, a state dir with private scratch, and a drop box anyone may write (so an
    escaped script's marker would show, whatever uid it ran as)."""
    reg = NpmRegistry(tmp_path / "reg").start()
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    state = tmp_path / "state"
    cfg = SimpleNamespace(npm="npm", package="t3", gate_user=str(GATE_UID), tmpdir=state / "scratch",
                          releases_dir=state / "releases", state_dir=state)
    env = {**os.environ, **reg.npm_env(tmp_path / "npm-cache")}
    yield SimpleNamespace(reg=reg, drop=drop, cfg=cfg, env=env, root=tmp_path)
    reg.stop()


def _publish(host, **hostile) -> str:
    return host.reg.publish(builds.build_tarball(V24, "good-0.0.24", host.root / "tgz", **hostile), tags=["nightly"])


def _spy_runs(monkeypatch) -> list:
    seen = []
    real = proc.run

    def spy(argv, **kw):
        seen.append((tuple(argv), kw.get("as_user"), dict(kw.get("env") or {})))
        return real(argv, **kw)
    monkeypatch.setattr(proc, "run", spy)
    return seen


def _owned_by_root_and_not_writable_by_others(top: Path) -> list[str]:
    bad = []
    for dirpath, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_uid != 0 or (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022):
                bad.append(f"{name}: uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):o}")
    return bad


def stage_for(*args, **kw):  # imported late: each test fails on its own where the feature is missing
    from runner.staging.flow import stage_for as real

    return real(*args, **kw)


def test_a_postinstall_script_never_runs_and_the_candidate_runs_as_the_gate_user(host, monkeypatch):
    marker = host.drop / "postinstall-ran"
    _publish(host, scripts={name: f"id -u > {marker}-{name}" for name in
                            ("preinstall", "install", "postinstall", "prepare", "prepack")})
    seen = _spy_runs(monkeypatch)
    release = stage_for(host.cfg, V24, env=host.env)
    assert sorted(p.name for p in host.drop.iterdir()) == []  # no lifecycle script ran, as anyone
    npm_and_t3 = [(argv[1] if argv[0] == "npm" else "t3 --version", user) for argv, user, _ in seen]
    assert npm_and_t3 and all(user is not None and user.uid == GATE_UID for _, user in npm_and_t3), npm_and_t3
    assert [what for what, _ in npm_and_t3] == ["install", "t3 --version", "t3 --version"]
    assert all("--ignore-scripts" in argv for argv, _, _ in seen if argv[0] == "npm")
    st = os.lstat(release.prefix)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    assert _owned_by_root_and_not_writable_by_others(release.prefix) == []
    assert list(Path(host.cfg.tmpdir).iterdir()) == []  # the private scratch is gone


def test_a_secret_in_roots_environment_never_reaches_npm_or_the_candidate(host, monkeypatch):
    monkeypatch.setenv("NPM_TOKEN", "npm_root_secret")
    _publish(host)
    seen = _spy_runs(monkeypatch)
    stage_for(host.cfg, V24, env={**host.env, "NPM_TOKEN": "npm_root_secret", "AWS_SECRET_ACCESS_KEY": "k"})
    assert len(seen) == 3  # npm install, then t3 --version staged and released
    for argv, _user, env in seen:
        assert "npm_root_secret" not in json.dumps(env) and "AWS_SECRET_ACCESS_KEY" not in env, argv
        assert env["HOME"].startswith(str(host.cfg.tmpdir)), env
    assert seen[0][2]["npm_config_registry"] == host.reg.url  # the registry alone is passed through


def test_the_gate_user_cannot_list_or_reach_roots_scratch(host):
    from runner.scratch import private_scratch

    with private_scratch(host.cfg, "stage", proc.UserIds(GATE_UID, GATE_UID)) as (root_dir, gate_dir):
        (root_dir / "seed.sqlite").write_bytes(b"root's copy")
        os.chmod(root_dir / "seed.sqlite", 0o600)
        as_gate = dict(as_user=proc.UserIds(GATE_UID, GATE_UID), cwd="/", ok_codes=range(256))
        assert proc.run(["ls", str(root_dir)], **as_gate).exit_code != 0       # not listable
        assert proc.run(["cat", str(root_dir / "seed.sqlite")], **as_gate).exit_code != 0
        assert proc.run(["touch", str(root_dir / "planted")], **as_gate).exit_code != 0
        assert proc.run(["touch", str(gate_dir / "mine")], **as_gate).exit_code == 0
        other = proc.UserIds(GATE_UID + 1, GATE_UID + 1)  # any other local user: nothing at all
        assert proc.run(["ls", str(gate_dir)], as_user=other, cwd="/", ok_codes=range(256)).exit_code != 0
        assert stat.S_IMODE(os.lstat(host.cfg.tmpdir).st_mode) == 0o710
    assert not root_dir.exists()


def _with_duplicate_package_json(tarball: Path, smuggled: dict) -> bytes:
    """The published tarball plus a second package/package.json (extraction keeps the last)."""
    import gzip

    raw = io.BytesIO(gzip.decompress(tarball.read_bytes()))
    out = io.BytesIO()
    with tarfile.open(fileobj=raw) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member))
        data = (json.dumps(smuggled) + "\n").encode()
        info = tarfile.TarInfo("package/package.json")
        info.size, info.mode = len(data), 0o644
        dst.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


def test_a_duplicate_tarball_entry_is_refused_before_install(host):
    marker = host.drop / "smuggled"
    clean = builds.build_tarball(V24, "good-0.0.24", host.root / "tgz")
    smuggled = {**json.loads(builds.package_files(V24, "good-0.0.24")["package.json"][0]),
                "scripts": {"postinstall": f"id -u > {marker}"}}
    host.reg.publish_bytes(_with_duplicate_package_json(clean, smuggled), tags=["nightly"])
    with pytest.raises(StageError) as info:
        stage_release("npm", "t3", V24, host.cfg.releases_dir, env=host.env)  # even as root
    assert info.value.step == "tarball" and "duplicate entry 'package/package.json'" in info.value.detail
    assert not marker.exists() and not (host.cfg.releases_dir / V24).exists()


def test_a_sparse_huge_backup_is_refused_by_size_without_hashing(tmp_path, monkeypatch):
    from tests.sim import dbgen

    ud = tmp_path / "home" / "alice" / ".t3" / "userdata"
    ud.mkdir(parents=True)
    dbgen.make_database(ud / "state.sqlite", 30, threads=1)
    [record] = take.backup_user_databases("alice", ud, tmp_path / "backups", V24, sqlite3="/usr/bin/sqlite3")
    os.truncate(record.path, 4 * 2**40)  # 4 TiB, sparse: hashing it would take hours
    hashed = []
    monkeypatch.setattr(restore, "sha256_fd", lambda fd: hashed.append(fd) or "x")
    with pytest.raises(trees.BackupError, match="does not match its record"):
        restore.restore_user_database(record, ud, tmp_path / "backups", failed_version="0.0.25",
                                     sqlite3="/usr/bin/sqlite3")
    assert hashed == []


@pytest.mark.parametrize("key", ["T3_USER_MAP", "T3_DISPATCH_MAP"])
def test_a_map_a_user_can_write_is_a_config_error(tmp_path, key):
    path = tmp_path / "map"
    path.write_text("{}" if key == "T3_DISPATCH_MAP" else "vbarzin = wizard\n")
    attacker = proc.UserIds(GATE_UID + 7, GATE_UID + 7)
    os.chown(path, attacker.uid, attacker.gid)  # the attacker's own file, e.g. after a bad install
    proc.run(["chmod", "0644", str(path)], as_user=attacker, cwd="/")
    with pytest.raises(ConfigError) as info:
        load_config({key: str(path)})
    assert any(str(path) in e and "not owned by root" in e for e in info.value.errors)


def test_state_dirs_get_their_modes_and_a_run_writes_private_files(tmp_path, monkeypatch):
    from runner import cli

    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # as an older install left it: world-readable run ids and logs
    (state / "runs").mkdir(mode=0o755)
    user_map = tmp_path / "map"
    user_map.write_text("vbarzin = wizard\n")
    monkeypatch.delenv("T3_CONFIG", raising=False)
    for key, value in {"T3_STATE_DIR": str(state),
                       "T3_USER_MAP": str(user_map), "T3_FREEZE_FILE": str(tmp_path / "freeze")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("runner.config.DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    before = os.umask(0o022)
    os.umask(before)
    assert cli.main(["freeze", "--reason", "hostile test"]) == 0
    modes = {p: stat.S_IMODE(os.lstat(state / p).st_mode) for p in (".", "runs", "active", "releases", "scratch")}
    assert modes == {".": 0o711, "runs": 0o700, "active": 0o711, "releases": 0o755, "scratch": 0o710}
    assert stat.S_IMODE(os.lstat(tmp_path / "freeze").st_mode) == 0o600  # written under umask 0077
    assert os.umask(before) == before  # main() put the caller's umask back
    other = proc.UserIds(GATE_UID + 3, GATE_UID + 3)
    assert proc.run(["ls", str(state)], as_user=other, cwd="/", ok_codes=range(256)).exit_code != 0


# --- the health gate: scratch, seeds, credentials, the server's uid ------------------------

ATTACKER = proc.UserIds(GATE_UID + 11, GATE_UID + 11)  # a local user whose backups seed the gate
SEED_DEADLINE = 30.0  # a seed that is a FIFO must be a verdict long before this, never a hang


def _as_attacker(*argv: str) -> None:
    proc.run(list(argv), as_user=ATTACKER, cwd="/", timeout=30)


@pytest.fixture
def gated(tmp_path):
    """alice (the attacker's uid) with a populated database and this run's pre-bump backup of
    it in a directory she owns, a good build, and a context for the health phase."""
    from tests.sim import dbgen

    home = tmp_path / "home" / "alice"
    ud = home / ".t3" / "userdata"
    ud.mkdir(parents=True)
    dbgen.make_database(ud / "state.sqlite", 30, threads=2, messages_per_thread=4)
    for dirpath, dirs, files in os.walk(home):
        for name in [".", *files]:
            os.chown(os.path.join(dirpath, name), ATTACKER.uid, ATTACKER.gid)
    [record] = take.backup_user_databases("alice", ud, tmp_path / "backups", V24, sqlite3="/usr/bin/sqlite3")
    assert os.stat(record.path.parent).st_uid == ATTACKER.uid  # her dir: she can swap what is in it
    t3_bin = builds.install_layout(V24, "good-0.0.24", tmp_path / "release")
    state = tmp_path / "state"
    state.mkdir(mode=0o711)
    cfg = SimpleNamespace(tmpdir=state / "scratch", gate_user=str(GATE_UID), serve_host="0.0.0.0", smoke_port=0,
                          ready_timeout=20.0, cookie_name="t3_session", gate_timeout=120.0)
    run_id = "20260101T000000Z-4242"
    said = []
    ctx = SimpleNamespace(cfg=cfg, run_id=run_id, run_dir=state / "runs" / run_id, env=proc.child_env(),
                          events=lambda event, **fields: said.append((event, fields)))
    return SimpleNamespace(ctx=ctx, record=record, staged=SimpleNamespace(bin=t3_bin, version=V24), root=tmp_path,
                           said=said)


def _check_health_within_deadline(gated, records=None, gate=None):
    """check_health in a thread: a hang is a failure of this test, never a hang of the suite."""
    import threading

    from runner.phases.health import check_health

    out = {}
    records = {"alice": [gated.record]} if records is None else records
    worker = threading.Thread(target=lambda: out.update(v=check_health(gated.ctx, gated.staged, records, gate)),
                              daemon=True)
    worker.start()
    worker.join(SEED_DEADLINE)
    assert not worker.is_alive(), f"the health phase still runs after {SEED_DEADLINE:g}s: a hang"
    return out["v"]


def test_the_health_gate_passes_on_a_seed_left_alone(gated):
    """The baseline the seed attacks below are measured against."""
    verdict = _check_health_within_deadline(gated)
    assert verdict.passed, verdict.reason
    assert list(gated.ctx.cfg.tmpdir.iterdir()) == []  # the private scratch is gone


def test_a_fifo_as_a_seed_is_a_per_seed_failure_not_a_hang(gated):
    _as_attacker("rm", "-f", str(gated.record.path))
    _as_attacker("mkfifo", str(gated.record.path))
    verdict = _check_health_within_deadline(gated)
    assert not verdict.passed and verdict.report is None, verdict
    assert "alice" in verdict.reason and "fifo" in verdict.reason and str(gated.record.path) in verdict.reason


def test_a_symlink_as_a_seed_is_refused_not_followed(gated):
    from tests.sim import dbgen

    secret = gated.root / "roots-secret.sqlite"  # any SQLite file on the host the attacker cannot read
    dbgen.make_database(secret, 30, threads=3)
    secret.chmod(0o600)
    _as_attacker("rm", "-f", str(gated.record.path))
    _as_attacker("ln", "-s", str(secret), str(gated.record.path))
    verdict = _check_health_within_deadline(gated)
    assert not verdict.passed and verdict.report is None, verdict  # the gate never saw it
    assert "alice" in verdict.reason and "symlink" in verdict.reason, verdict.reason


@pytest.mark.parametrize("same_size", [False, True])
def test_a_seed_replaced_after_the_backup_is_a_sha256_mismatch(gated, same_size):
    from tests.sim import dbgen

    other = gated.root / "other.sqlite"
    dbgen.make_database(other, 30, threads=5)
    os.chmod(other, 0o644)
    _as_attacker("cp", str(other), str(gated.record.path))
    if same_size:  # the same length as the recorded backup: only the hash can tell
        _as_attacker("truncate", "-s", str(gated.record.bytes), str(gated.record.path))
    verdict = _check_health_within_deadline(gated)
    assert not verdict.passed and verdict.report is None, verdict
    assert "alice" in verdict.reason and "changed since the backup" in verdict.reason, verdict.reason
    if same_size:
        assert "sha256" in verdict.reason and gated.record.sha256 in verdict.reason


def test_one_users_replaced_seed_leaves_that_user_unproven_and_the_others_gated(gated):
    """alice swaps her backup after the run took it; bob's is left alone. The gate still runs
    on bob's data and passes; alice is reported unseeded (the run defers her), and nothing
    says the build failed (a user must not get good builds quarantined by tampering)."""
    from tests.sim import dbgen

    bob_ud = gated.root / "home" / "bob" / ".t3" / "userdata"
    bob_ud.mkdir(parents=True)
    dbgen.make_database(bob_ud / "state.sqlite", 30, threads=2, messages_per_thread=4)
    [bob] = take.backup_user_databases("bob", bob_ud, gated.root / "backups", V24, sqlite3="/usr/bin/sqlite3")
    _as_attacker("truncate", "-s", "0", str(gated.record.path))
    verdict = _check_health_within_deadline(gated, {"alice": [gated.record], "bob": [bob]})
    assert verdict.passed and verdict.report is not None, verdict.reason
    assert list(verdict.unseeded) == ["alice"] and "changed since the backup" in verdict.unseeded["alice"]
    assert [e for e, f in gated.said if e == "SEED REFUSED" and f["user"] == "alice"], gated.said


def test_when_no_seed_is_left_the_gate_did_not_judge_the_build(gated):
    _as_attacker("truncate", "-s", "0", str(gated.record.path))
    verdict = _check_health_within_deadline(gated)
    assert not verdict.passed and not verdict.build_judged, verdict  # the run quarantines nothing for it


def _health_gate_started_ahead(gated):
    """The health gate as a bump starts it, beside staging: held for its options."""
    from runner.phases.health import start_health_gate

    gate = start_health_gate(gated.ctx)
    deadline = time.monotonic() + SEED_DEADLINE
    while "T3-GATE HELD for options" not in (gate.log.read_text() if gate.log.exists() else ""):
        assert time.monotonic() < deadline and not gate.ended(), "the health gate never reached its hold"
        time.sleep(0.05)
    return gate


def test_a_health_gate_started_ahead_judges_the_seeds_copied_after_it_started(gated):
    gate = _health_gate_started_ahead(gated)
    verdict = _check_health_within_deadline(gated, gate=gate)
    assert verdict.passed, verdict.reason
    assert "test_database_integrity_ok[populated-alice]" in verdict.report.read_text()
    assert list(gated.ctx.cfg.tmpdir.iterdir()) == []  # the private scratch is gone


@pytest.mark.parametrize("records", ["no-seed", "seed-refused"])
def test_a_health_gate_started_ahead_is_ended_when_the_run_stops_before_its_go(gated, records):
    """No seed at all, or every seed refused: the verdict comes without the gate, which is
    ended then and there (not left held until the runner exits)."""
    if records == "seed-refused":
        _as_attacker("truncate", "-s", "0", str(gated.record.path))
    gate = _health_gate_started_ahead(gated)
    verdict = _check_health_within_deadline(gated, {} if records == "no-seed" else None, gate=gate)
    assert not verdict.passed and verdict.report is None, verdict
    assert gate.ended()
    assert not gate.junit.exists() or "populated-" not in gate.junit.read_text()  # it never collected a case


def test_a_user_precreating_the_old_scratch_path_gets_nothing_written_through_it(gated):
    """On a shared tmpdir (where the old `t3-health-<run id>` lived) a user pre-creates that
    path as a symlink to a directory of theirs: the health phase neither uses it nor writes
    through it (private scratch refuses a tmpdir others can write, and never reuses a path)."""
    shared = gated.root / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    gated.ctx.cfg.tmpdir = shared
    loot = gated.root / "loot"
    loot.mkdir()
    os.chown(loot, ATTACKER.uid, ATTACKER.gid)
    loot.chmod(0o777)
    _as_attacker("ln", "-s", str(loot), str(shared / f"t3-health-{gated.ctx.run_id}"))
    _as_attacker("mkdir", str(shared / f"health-{gated.ctx.run_id.lower()}"))
    planted = [loot, shared / f"health-{gated.ctx.run_id.lower()}"]
    before = [os.stat(p).st_mtime_ns for p in planted]
    verdict = _check_health_within_deadline(gated)
    # Nothing created there, not even for a while (a directory's mtime moves with every entry
    # made or removed: a gate that wrote through the link and cleaned up after itself shows).
    assert [os.stat(p).st_mtime_ns for p in planted] == before
    assert list(loot.iterdir()) == [] and list(planted[1].iterdir()) == []
    assert not verdict.passed and "writable by others" in verdict.reason, verdict.reason
    assert sorted(p.name for p in shared.iterdir()) == [f"health-{gated.ctx.run_id.lower()}",
                                                        f"t3-health-{gated.ctx.run_id}"]


def test_a_users_session_cookie_is_not_valid_against_the_throwaway_server_which_runs_as_the_gate_user(gated):
    """Through the gate's own launch: root copies, scrubs and hands over the seed; the server
    answers `authenticated: false` for the user's real cookie and runs as the gate uid."""
    import sqlite3
    import tempfile

    import requests

    from gates.seeds import Seed
    from gates.test_health import _launch, prepare_gate_runner
    from runner.phases.health import copy_seed

    with sqlite3.connect(f"file:{gated.record.path}?mode=ro", uri=True) as conn:  # her real, live session
        cookie = conn.execute("SELECT session_id FROM auth_sessions ORDER BY session_id").fetchone()[0]
    scratch = Path(tempfile.mkdtemp(dir=gated.root))
    seed = copy_seed(gated.record, scratch / "alice-0-state.sqlite")
    runner = prepare_gate_runner(str(GATE_UID), scratch)
    settings = {"--serve-host": "0.0.0.0", "--ready-timeout": "20"}
    gate = SimpleNamespace(get=settings.get, path=lambda option: None)
    candidate = _launch(gate, scratch, runner, str(gated.staged.bin), Seed("populated-alice", "alice", (seed,)), 0)
    try:
        candidate.server.wait_ready()
        assert candidate.server.pid_uid() == GATE_UID
        assert candidate.auth_before == {"auth_sessions": 2, "auth_pairing_links": 2}  # the NOTE's "before"
        placed = candidate.server.userdata / "state.sqlite"
        st = os.lstat(placed)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (GATE_UID, 0o600)
        answer = requests.get(f"{candidate.server.instance.base_url}/api/auth/session",
                              cookies={"t3_session": cookie}, timeout=10).json()
        assert answer["authenticated"] is False, answer
        with sqlite3.connect(f"file:{placed}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM auth_sessions").fetchone()[0]
        assert rows == 0
    finally:
        candidate.server.stop()
    with sqlite3.connect(f"file:{gated.record.path}?mode=ro", uri=True) as conn:  # her backup is untouched
        assert conn.execute("SELECT COUNT(*) FROM auth_sessions WHERE session_id = ?", (cookie,)).fetchone()[0] == 1


def test_a_health_gate_that_cannot_start_is_a_verdict_on_no_build_never_a_crash(gated, monkeypatch):
    """No fork or no interpreter when the bump starts its gate ahead: the run goes on without
    it; at its moment check_health tries again, and failing then judges no build."""
    from runner import gaterun
    from runner.phases.health import health_gate_ahead

    def cannot_start(argv, **_kw):
        raise proc.CommandError(tuple(argv), 126, reason="could not start: [Errno 11] Resource temporarily unavailable")

    monkeypatch.setattr(gaterun.proc, "spawn", cannot_start)
    with health_gate_ahead(gated.ctx) as gate:
        assert gate is None
        verdict = _check_health_within_deadline(gated, gate=gate)
    assert not verdict.passed and not verdict.build_judged, verdict
    assert "could not start" in verdict.reason and list(gated.ctx.cfg.tmpdir.iterdir()) == []
