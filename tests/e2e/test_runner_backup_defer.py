"""issue 10 item 4: one user's backup problem defers that user, never the whole run.

Real files in user-owned homes of the simulated world (each user a real uid); the
tracker's copies run as those uids."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.runner_checks import assert_user_on, events, in_full, link_version, summary_of
from tests.sim import builds

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
TWO_TB = 2 * 1024 ** 4


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_users_bad_files_defer_that_user_and_everyone_else_moves_on(world):
    passwd = _sha(Path("/etc/passwd"))
    # wizard: a symlink named notes.db to /etc/passwd (root must neither follow nor copy it).
    notes = world.userdata("wizard") / "notes.db"
    notes.symlink_to("/etc/passwd")
    # emo: a 2 TB sparse file that starts like a database and claims 2 TB of pages.
    huge = world.userdata("emo") / "huge.db"
    header = bytearray(world.database("emo").read_bytes()[:100])
    header[28:32] = (TWO_TB // 4096).to_bytes(4, "big")
    header[92:96] = header[24:28]
    huge.write_bytes(bytes(header))
    os.truncate(huge, TWO_TB)
    world.give_to_user("wizard", notes)
    world.give_to_user("emo", huge)

    world.registry.set_tag("nightly", V28)
    done = world.run_tracker()
    assert done.exit_code == 0, done.stderr
    lines = events(done)
    deferred = {line.split()[1]: in_full(line) for line in lines if line.startswith("DEFERRED ")}
    assert sorted(deferred) == ["user=emo", "user=wizard"], lines
    assert "backup failed" in deferred["user=wizard"] and "refusing symlink" in deferred["user=wizard"]
    assert "notes.db" in deferred["user=wizard"]
    assert "backup failed" in deferred["user=emo"] and "not enough free space" in deferred["user=emo"]
    assert not any(line.startswith("BACKUP FAILED") for line in lines)
    assert any(line.startswith("update complete version=" + V28) for line in lines)
    # The others were backed up (as themselves) and moved; the deferred two stay where they were.
    assert_user_on(world, "ancaelena98", V28)
    for os_user in ("wizard", "emo"):
        assert link_version(world, os_user) == V24
        assert (world.state_dir / "deferred" / os_user).exists()
    [copy] = (world.backup_dest / "ancamilea").glob(f"state-prebump-{V28}-*.sqlite")
    assert copy.stat().st_uid == world.uid_of("ancamilea")
    assert not list((world.backup_dest / "wizard").glob("*-prebump-*"))  # no half backup either
    summary = summary_of(world)
    assert summary["result"] == "updated"
    assert summary["per_user"]["ancamilea"] == "updated"
    assert summary["per_user"]["wizard"].startswith("deferred: backup failed")
    assert summary["per_user"]["emo"].startswith("deferred: backup failed")
    assert _sha(Path("/etc/passwd")) == passwd and notes.is_symlink()


def test_nobody_backed_up_stops_the_run_with_nothing_installed(world):
    """Staging runs beside the backups (tracker.back_up_while_staging): when every user's backup
    fails, the release it staged meanwhile is removed again, so nothing is installed."""
    for user in world.users:
        notes = world.userdata(user.os_user) / "notes.db"
        notes.symlink_to("/etc/passwd")
        world.give_to_user(user.os_user, notes)
    world.registry.set_tag("nightly", V28)
    done = world.run_tracker()
    assert done.exit_code == 1, done.stderr
    lines = events(done)
    assert any(line.startswith("BACKUP FAILED") for line in lines), lines
    assert not any(line.startswith(("STAGE FAILED", "HEALTH-CHECK", "RESTARTED")) for line in lines), lines
    assert not (world.releases_dir / V28).exists()
    assert not list(world.releases_dir.glob(".staging-*"))
    assert not (world.state_dir / "journal").exists()
    for user in world.users:
        assert link_version(world, user.os_user) == V24
    assert summary_of(world)["result"] == "backup-failed"
