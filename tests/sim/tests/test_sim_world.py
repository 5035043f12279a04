"""The simulated deployment as a whole: what every later test stands on."""
import os
import sqlite3

import pytest

from runner.units import serve_unit_name
from tests.sim import builds, dbgen
from tests.sim.world import World, wait_until


@pytest.fixture(scope="module")
def world(world_template, tmp_path_factory):
    """One world as built, shared by this module's tests that only look at it (and log in);
    a test that changes its world asks for its own (make_world)."""
    world = World(tmp_path_factory.mktemp("fresh") / "world", template=world_template)
    try:
        yield world.build()
    finally:
        world.stop()


def test_every_user_serves_the_installed_build_and_pairs_through_the_dispatch(world):
    for user in world.users:
        assert world.server_version(user.sso) == "0.0.24"
        prober = world.prober(user.sso, interval=0.05).start()
        wait_until(lambda: len(prober.report().attempts) >= 2, 20, "two login attempts")
        report = prober.stop()
        assert report.ok, report.summary()


def test_each_user_runs_their_own_release_link(world):
    for user in world.users:
        link = world.active_dir / user.os_user
        assert os.readlink(link) == str(world.releases_dir / "0.0.24")
        pid = world.systemctl_run("show", "-p", "MainPID", "--value", serve_unit_name(user.os_user)).stdout.strip()
        exe_args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        assert any(str(link).encode() in a for a in exe_args), exe_args


def _uids_of(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a process, from the process table."""
    status = open(f"/proc/{pid}/status").read()
    return [int(x) for x in next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]]


def test_each_user_is_a_real_unprivileged_uid_owning_their_home_and_serving_as_it(world):
    """As on a host: the home tree is the user's, and their server runs as them (not root)."""
    uids = {world.uid_of(u.os_user) for u in world.users}
    assert len(uids) == len(world.users) and 0 not in uids and os.geteuid() not in uids
    for user in world.users:
        uid, home = world.uid_of(user.os_user), world.home_root / user.os_user
        st = os.lstat(home)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, uid, 0o750)
        assert (os.lstat(home / ".t3").st_uid, os.lstat(home / ".t3").st_mode & 0o777) == (uid, 0o700)
        for path in world.userdata(user.os_user).iterdir():
            assert os.lstat(path).st_uid == uid, path
        pid = int(world.systemctl_run("show", "-p", "MainPID", "--value", serve_unit_name(user.os_user)).stdout)
        assert _uids_of(pid) == [uid] * 4, f"{user.os_user}'s server runs as {_uids_of(pid)}, not {uid}"


def test_users_have_populated_history(world):
    for user in world.users:
        with sqlite3.connect(world.database(user.os_user)) as conn:
            assert conn.execute("select count(*) from projection_thread_messages").fetchone()[0] > 0
            assert conn.execute("select max(migration_id) from effect_sql_migrations").fetchone()[0] == 30


def test_list_units_shows_every_running_instance(world):
    out = world.systemctl_run("list-units", "--type=service", "--state=running", "--no-legend", "--plain",
                              "t3-serve@*").stdout
    assert sorted(line.split()[0] for line in out.splitlines() if line.strip()) == sorted(
        serve_unit_name(u.os_user) for u in world.users)


def test_a_mixed_host_v2_users_and_one_v1_user_left_on_a_pre_v2_build(make_world):
    """A deferred user is still on the older build's link and V1 data while the others went V2."""
    v46, v28 = builds.V2_GOOD_VERSIONS["good-v2-0.0.46"], builds.GOOD_VERSIONS["good-0.0.28"]
    world = make_world(installed=v46, user_versions={"emo": v28}, db_options={"wizard": {"in_flight": True}})
    assert (world.state_dir / "last-good").read_text().strip() == v46
    for user in world.users:
        version = v28 if user.os_user == "emo" else v46
        assert world.version_of(user.os_user) == version
        assert os.readlink(world.active_dir / user.os_user) == str(world.releases_dir / version)
        assert world.server_version(user.sso) == version
        names = sorted(p.name for p in world.userdata(user.os_user).glob("*.sqlite"))
        if user.os_user == "emo":
            assert names == ["state.sqlite"] and world.live_database("emo") == world.database("emo")
            assert dbgen.schema_level(world.database("emo")) == 33
        else:
            assert names == ["state.sqlite", "statev2.sqlite"]
            assert world.live_database(user.os_user).name == "statev2.sqlite"
            assert dbgen.schema_level(world.live_database(user.os_user)) == 60
        prober = world.prober(user.sso, interval=0.05).start()
        wait_until(lambda: len(prober.report().attempts) >= 2, 20, "two login attempts")
        report = prober.stop()
        assert report.ok, report.summary()
    with sqlite3.connect(world.live_database("wizard")) as conn:
        assert conn.execute("SELECT status FROM orchestration_v2_projection_runs WHERE thread_id = 'v2-thread-000000'"
                            " ORDER BY ordinal DESC LIMIT 1").fetchone() == ("running",)


def _real_accounts(count: int) -> list[str]:
    """Accounts of this machine (not root) with names the user map accepts."""
    import pwd

    from runner.usermap import OS_USER_RE

    return sorted(e.pw_name for e in pwd.getpwall() if e.pw_uid != 0 and OS_USER_RE.fullmatch(e.pw_name))[:count]


def test_a_world_whose_users_are_named_like_real_accounts_never_runs_as_them(make_world):
    """On the real host the world's users (wizard, emo, ancamilea) are real accounts. Here the
    same situation is made with this machine's own accounts (daemon, nobody, ...): the world
    must come up and serve, every process running as the world's own uid for that name, never
    as those accounts."""
    import pwd

    from tests.sim.world import SimUser

    names = _real_accounts(3)
    if not names:
        pytest.skip("this machine has no account but root")
    users = tuple(SimUser(sso, name) for sso, name in zip(("vbarzin", "emil.barzin", "ancaelena98"), names))
    world = make_world(users=users)
    for user in world.users:
        assert world.server_version(user.sso) == "0.0.24"
        pid = world.systemctl_run("show", "-p", "MainPID", "--value", serve_unit_name(user.os_user)).stdout.strip()
        status = open(f"/proc/{pid}/status").read()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        real = pwd.getpwnam(user.os_user).pw_uid
        assert int(uid) == world.uid_of(user.os_user) != real, f"{user.os_user}'s server runs as uid {uid}"


def test_a_readiness_wait_fails_on_a_unit_that_died_not_at_the_deadline(make_world):
    """wait_instance_ready asks the unit too, not only the server: a server that crashes at
    start fails the wait as a dead unit (its log in the error), not as a timeout."""
    world = make_world()
    crashing = builds.BAD_VERSIONS["crash-at-start"]
    world.install_release(crashing)
    world.point_user("emo", crashing)
    world.systemctl_run("restart", serve_unit_name("emo"), ok_codes=range(256))
    with pytest.raises(RuntimeError, match="is not active"):
        world.wait_instance_ready("emil.barzin", timeout=120)
