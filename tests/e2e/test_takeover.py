"""End to end: take over a replica of the original host by the README's "Taking over a host"
commands, then a first gated bump; users log in through the production-like dispatch
(no retry) the whole time."""
from __future__ import annotations

import os

import pytest

from runner.units import SERVE_DROPIN_PATH, TIMERS, serve_unit_name
from tests.runner_checks import (assert_failures_only_in_own_restart_windows, assert_history_kept, assert_user_on,
                                 events, fingerprints, link_version, main_pids, probing_logins, restart_windows)
from tests.sim import builds
from tests.sim.host import BASH_TRACKER_UNITS, LEGACY_DAILY, LEGACY_PREBUMP, OLD_JOBS, OriginalHost

pytestmark = pytest.mark.timeout(1500)  # a whole takeover and a bump, on a shared machine

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
CONTAINMENT = {"MemoryMax": str(24 * 1024 ** 3), "MemorySwapMax": "0", "MemoryHigh": "infinity",
               "OOMPolicy": "continue", "Restart": "on-failure"}


@pytest.fixture
def host(tmp_path, world_template):
    built = OriginalHost(tmp_path / "host", template=world_template)
    try:
        yield built.build()
    finally:
        built.stop()


def effective(host, os_user: str) -> dict[str, str]:
    keys = [*CONTAINMENT, "ExecStart", "EnvironmentFiles", "Environment"]
    out = host.systemctl_run("show", "-p", ",".join(keys), serve_unit_name(os_user)).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def assert_host_settings_kept(host) -> None:
    for user in host.users:
        props = effective(host, user.os_user)
        assert {k: props[k] for k in CONTAINMENT} == CONTAINMENT, (user.os_user, props)
        assert "claude-oauth.env (ignore_errors=yes)" in props["EnvironmentFiles"]
        assert f"HOME={host.home_root}/{user.os_user}" in props["Environment"]
        assert "NODE_ENV=production" in props["Environment"]


def step(host, *args: str):
    done = host.run_tracker(*args)
    assert done.exit_code == 0, f"{args}: {done.stderr}"
    return done


def test_takeover_of_the_original_host_by_the_readme_then_a_first_gated_bump(host):
    tracker = host.tracker_bin
    before = fingerprints(host)
    legacy = host.legacy_backups()
    host_unit = (host.unit_dir / "t3-serve@.service").read_bytes()
    old_pids = main_pids(host)
    runs = {}
    with probing_logins(host, interval=0.2) as before_logins:
        # README step 1: the config, checked.
        runs["config"] = step(host, "config", "check")
        # Step 2: adopt the running build; the bash tracker's state is taken over.
        runs["adopt"] = adopted = step(host, "adopt", V24)
        lines = events(adopted)
        assert any(e.startswith("LEGACY STATE last_good=0.0.24") and "emo(0.0.24)" in e for e in lines), lines
        points = [e for e in lines if e.startswith("RESTORE POINTS")]
        assert len(points) == len(host.users) and all(LEGACY_PREBUMP in e and "count=2" in e for e in points), points
        # Step 3: units. Step 4: the mint helper at the dispatch's path.
        runs["units"] = installed = step(host, "install-units", "--dest", str(host.unit_dir), "--serve-env-dir",
                                         str(host.serve_env_dir), "--bin", tracker)
        runs["mint"] = step(host, "install-mint", "--bin", tracker)
    assert_failures_only_in_own_restart_windows(host, before_logins, adopted)  # nobody was restarted...
    assert all(r.ok for k, r in before_logins.items() if k != "dispatch failures"), before_logins  # ...nobody failed
    assert main_pids(host) == old_pids
    # The host's unit is untouched; the drop-in changes ExecStart only; every setting survives.
    assert (host.unit_dir / "t3-serve@.service").read_bytes() == host_unit
    assert (host.unit_dir / SERVE_DROPIN_PATH).exists()
    cat = host.systemctl_run("cat", serve_unit_name("wizard")).stdout
    assert "MemoryMax=24G" in cat and "ExecStart=\n" in cat
    assert_host_settings_kept(host)
    for name in OLD_JOBS:
        assert host.systemctl_run("is-enabled", f"{name}.timer", ok_codes=range(256)).stdout.strip() == "disabled"
    for timer in TIMERS:
        assert host.systemctl_run("is-enabled", timer, ok_codes=range(256)).stdout.strip() == "enabled"
        assert host.systemctl_run("is-active", timer, ok_codes=range(256)).stdout.strip() != "active"
    assert sum(e.startswith("RETIRED") for e in events(installed)) == 2
    for suffix, text in BASH_TRACKER_UNITS.items():  # the bash tracker's units: replaced, kept aside
        assert (host.unit_dir / f"t3-autoupdate.{suffix}.pre-t3-autoupdate").read_text() == text
    assert (host.root / "usr" / "local" / "bin" / "t3-mint.pre-t3-autoupdate").read_text() == host.old_mint_helper()

    # Step 5: status names the users still on the old global binary.
    status = step(host, "status").stdout
    for user in host.users:
        assert f"{user.os_user}: link={V24}" in status and "NOT ON LINK" in status and str(host.global_t3) in status

    # Step 6: the drainer moves them (and clears the old tracker's marker) once idle.
    with probing_logins(host, interval=0.2) as drain_logins:
        runs["drain"] = drained = step(host, "drain-deferred")
    failed_in_drain = assert_failures_only_in_own_restart_windows(host, drain_logins, drained)
    assert sorted(restart_windows(drained)) == sorted(u.os_user for u in host.users)
    assert sum(e.startswith("DRAINED") for e in events(drained)) == len(host.users)
    assert not (host.state_dir / "deferred" / "emo").exists()
    assert "NOT ON LINK" not in step(host, "status").stdout
    assert_host_settings_kept(host)

    # The daily backup (what t3-autoupdate-backup.timer runs).
    runs["backup"] = backed = step(host, "backup")
    assert sum(e.startswith("BACKED UP") for e in events(backed)) == len(host.users)
    for user in host.users:
        assert len(list((host.backup_dest / user.os_user).glob(f"state-daily-{V24}-*.sqlite"))) == 1

    # The first gated bump (what t3-autoupdate.timer runs at 04:00).
    host.registry.set_tag("nightly", V28)
    with probing_logins(host, interval=0.2) as bump_logins:
        runs["bump"] = bumped = step(host, "run")
    failed_in_bump = assert_failures_only_in_own_restart_windows(host, bump_logins, bumped)
    assert any(e.startswith("update complete version=" + V28) for e in events(bumped))
    for user in host.users:
        assert_user_on(host, user.sso, V28)
        assert link_version(host, user.os_user) == V28
    assert_host_settings_kept(host)

    # Nothing lost: history, the old tracker's copies, the host's unit.
    assert_history_kept(host, before)
    assert host.legacy_backups() == legacy and len(legacy) == 2 * len(host.users)
    assert (host.unit_dir / "t3-serve@.service").read_bytes() == host_unit
    assert os.path.exists(host.global_t3)  # left in place: the operators remove it when they choose
    for name, counts in (("drain", failed_in_drain), ("bump", failed_in_bump)):
        print(f"{name}: failed logins per user {counts}; restart windows (ms) "
              f"{ {u: [round(1000 * (b - a)) for a, b in w] for u, w in restart_windows(runs[name]).items()} }")
    assert LEGACY_DAILY in next(iter(legacy)) or any(LEGACY_DAILY in k for k in legacy)
