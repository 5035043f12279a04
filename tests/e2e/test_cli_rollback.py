"""`t3-autoupdate rollback` (the runbook's manual rollback) and the CLI's exit 3 on a bug,
through the real CLI on the simulated world."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from runner import proc
from tests.cli_checks import snapshot, tree
from tests.runner_checks import (assert_history_kept, assert_logs_in, assert_user_on, events, fingerprints,
                                 in_full, integrity, link_version)
from tests.sim import builds

V24 = "0.0.24"
V25 = builds.GOOD_VERSIONS["good-0.0.25"]
V26 = builds.GOOD_VERSIONS["good-0.0.26"]
V28 = builds.GOOD_VERSIONS["good-0.0.28"]


def test_manual_rollback_after_a_good_bump_restores_everyone_to_the_pre_bump_state(world):
    before = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    for user in world.users:
        assert_user_on(world, user.sso, V28)
        assert_logs_in(world, user.sso)  # rows written on 0.0.28 after the backup

    # Everyone is on last-good already: a bare `rollback` has nothing to go back to, and says
    # how to name the build, instead of reporting a rollback that moved nobody.
    on_28 = snapshot(world)
    bare = world.run_tracker("rollback")
    assert bare.exit_code == 1, bare.stderr
    assert "--to" in bare.stderr and V24 in bare.stderr
    assert not any(e.startswith("ROLLED BACK") for e in events(bare))
    assert snapshot(world) == on_28

    done = world.run_tracker("rollback", "--to", V24)
    assert done.exit_code == 0, done.stderr
    lines = events(done)
    frozen = [i for i, e in enumerate(lines) if e.startswith("FROZEN ")]
    restored = [i for i, e in enumerate(lines) if e.startswith("RESTORED ")]
    assert frozen and len(restored) == len(world.users) and frozen[0] < min(restored), lines  # freeze FIRST
    assert any(e.startswith(f"ROLLED BACK to={V24}") for e in lines), lines
    freeze = json.loads(world.freeze_file.read_text())
    assert freeze["reason"] == f"manual rollback to {V24}"
    for user in world.users:
        assert_user_on(world, user.sso, V24)
        aside = list((world.backup_dest / user.os_user).glob(f"state-rolledback-{V28}-*.sqlite"))
        assert len(aside) == 1 and integrity(aside[0]) == "ok"  # the 0.0.28 database, rows since kept
        assert any(e.startswith(f"RESTORED user={user.os_user}") and "rows_since_backup=" in e for e in lines)
    assert_history_kept(world, before)
    assert fingerprints(world) == before
    assert (world.state_dir / "last-good").read_text().strip() == V24
    assert os.readlink(world.bin_link) == str(world.releases_dir / V24 / "bin" / "t3")
    for user in world.users:
        assert_logs_in(world, user.sso)

    held = world.run_tracker()  # the freeze holds the fleet on 0.0.24 although 0.0.28 is still nightly
    assert held.exit_code == 0 and any(e.startswith("FROZEN reason=") for e in events(held))
    assert link_version(world, "wizard") == V24


def test_rollback_never_moves_a_user_it_has_no_pre_bump_backup_for(world):
    """emo was moved to 0.0.26 by hand (no tracker run, so no pre-bump backup of 0.0.26): rolling
    emo back would run 0.0.24 on a database 0.0.26 migrated, or start emo on an empty one."""
    world.install_release(V26)
    world.point_user("emo", V26)
    world.systemctl_run("restart", "t3-serve@emo.service")
    world.wait_instance_ready("emil.barzin")
    assert world.server_version("emil.barzin") == V26
    before, backups = fingerprints(world), tree(world.backup_dest)
    done = world.run_tracker("rollback")  # to last-good, 0.0.24
    assert done.exit_code == 1, done.stderr
    assert any(e.startswith("ROLLBACK FAILED") and "emo" in e and "no pre-bump backup" in e for e in events(done))
    assert not any(e.startswith("ROLLED BACK") for e in events(done))
    assert_user_on(world, "emil.barzin", V26)  # left as it was, serving its own migrated database
    assert fingerprints(world) == before and tree(world.backup_dest) == backups
    assert_logs_in(world, "emil.barzin")
    assert world.freeze_file.exists()  # frozen all the same: a person has to look


def test_an_unreadable_dispatch_map_at_start_is_exit_2_naming_it_and_nobody_moved(world):
    """Validated at start like the user map (it used to crash with exit 3 in the canary)."""
    world.registry.set_tag("nightly", V28)
    good_map = world.dispatch_map.read_text()
    world.dispatch_map.write_text("{ this is not json")  # e.g. a half-written edit by hand
    pids = snapshot(world)["pids"]
    done = world.run_tracker()
    assert done.exit_code == 2, done.stderr
    assert f"{world.dispatch_map}: not valid JSON" in done.stderr, done.stderr
    assert not [e for e in events(done) if e.startswith(("CRASHED", "UPDATE START", "BACKED UP"))], done.stderr
    assert not list((world.state_dir / "runs").glob("crash-*.txt"))
    assert not (world.state_dir / "journal").exists()
    for user in world.users:
        assert link_version(world, user.os_user) == V24
        assert world.server_version(user.sso) == V24
    assert snapshot(world)["pids"] == pids

    world.dispatch_map.write_text(good_map)
    status = json.loads(world.run_tracker("status", "--json").stdout)
    assert status["unfinished_run"] is None
    for user in world.users:
        assert_logs_in(world, user.sso)


def test_rollback_leaves_a_deferred_user_behind_the_target_untouched(make_world):
    """emo was busy during the bump, so stays on 0.0.24 with a deferral marker: a bare `rollback`
    (to last-good 0.0.28) must not "roll back" emo forward with no backup; `--to 0.0.24` moves the
    others back and leaves emo, already there, alone."""
    world = make_world(db_options={"emo": {"in_flight": True}})
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    assert link_version(world, "emo") == V24 and (world.state_dir / "deferred" / "emo").exists()
    emo_before, emo_pid = fingerprints(world)["emo"], snapshot(world)["pids"]["emo"]

    bare = world.run_tracker("rollback")
    assert bare.exit_code == 1, bare.stderr
    assert "nothing to roll back" in bare.stderr and not world.freeze_file.exists()
    assert not [e for e in events(bare) if e.startswith(("SET ASIDE", "RESTORED", "ROLLED BACK"))]

    done = world.run_tracker("rollback", "--to", V24)
    assert done.exit_code == 0, done.stderr
    assert any(e.startswith(f"ROLLED BACK to={V24}") and "emo" not in e for e in events(done)), done.stderr
    assert not any("user=emo" in e for e in events(done))
    for user in world.users:
        assert_user_on(world, user.sso, V24)
    assert fingerprints(world)["emo"] == emo_before and snapshot(world)["pids"]["emo"] == emo_pid
    assert not list((world.backup_dest / "emo").glob("state-rolledback-*"))


@pytest.mark.timeout(900)  # two bumps, then two rollbacks
def test_rollback_to_a_release_whose_installed_tree_is_gone_reinstalls_it_offline(world):
    """The kept tarball is the way back: with the registry down, `rollback --to 0.0.25` rebuilds
    0.0.25's missing install from it, checked against the sha512 recorded at pack time (a
    changed tarball is refused before anyone is stopped)."""
    for version in (V25, V28):
        world.registry.set_tag("nightly", version)
        bumped = world.run_tracker()
        assert bumped.exit_code == 0, bumped.stderr
    release = world.releases_dir / V25
    record = json.loads((release / "release.json").read_text())
    tarball = release / record["tarball"]
    shutil.rmtree(release / "lib")  # the installed package is gone; bin/t3 dangles
    world.registry.stop()

    good = tarball.read_bytes()
    tarball.write_bytes(good + b"\0")
    before = snapshot(world)
    refused = world.run_tracker("rollback", "--to", V25)
    assert refused.exit_code == 1, refused.stderr
    failed = [e for e in events(refused) if e.startswith("ROLLBACK FAILED")]
    assert failed and all("does not match its recorded sha512" in in_full(e) for e in failed), events(refused)
    assert snapshot(world)["pids"] == before["pids"] and not (release / "lib").exists()
    for user in world.users:
        assert_user_on(world, user.sso, V28)

    tarball.write_bytes(good)
    done = world.run_tracker("rollback", "--to", V25)
    assert done.exit_code == 0, done.stderr
    assert any(e.startswith(f"ROLLED BACK to={V25}") for e in events(done)), done.stderr
    assert proc.run([str(release / "bin" / "t3"), "--version"], timeout=30).stdout.strip() == f"t3 v{V25}"
    assert json.loads((release / "release.json").read_text())["sha512"] == record["sha512"]
    for user in world.users:
        assert_user_on(world, user.sso, V25)
        assert_logs_in(world, user.sso)


def test_one_users_unusable_link_stops_nobody_elses_rollback(world):
    """A file where emo's release link should be is emo's problem: the others are restored, the
    rollback is partial (last-good and the operators' link stay), never a crash before anyone
    was restored."""
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    link = world.active_dir / "emo"
    link.unlink()
    link.write_text("not a link\n")

    done = world.run_tracker("rollback", "--to", V24)
    assert done.exit_code == 1, done.stderr
    lines = events(done)
    assert any(e.startswith("ROLLBACK FAILED user=emo") and "not a release link" in e for e in lines), lines
    assert any(e.startswith(f"ROLLBACK PARTIAL to={V24}") and "emo" in e for e in lines), lines
    for sso in ("vbarzin", "ancaelena98"):
        assert_user_on(world, sso, V24)
        assert_logs_in(world, sso)
    assert (world.state_dir / "last-good").read_text().strip() == V28
    assert os.readlink(world.bin_link) == str(world.releases_dir / V28 / "bin" / "t3")
    assert world.freeze_file.exists()
    status = world.run_tracker("status")  # says so, instead of crashing on the link
    assert status.exit_code == 0, status.stderr
    assert "emo: link=(none)" in status.stdout and "RELEASE LINK UNUSABLE" in status.stdout, status.stdout
