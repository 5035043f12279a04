"""Root working in trees users control, end to end: a user's `state.sqlite` that is a
symlink to a root-owned file outside their home must never make the tracker (root) read
or write through it, neither when backing up before a bump nor when restoring in a
manual rollback (docs/lessons.md: the root-run rollback `install`ed onto that path).

The outside file is watched three ways: its sha256, its mtime, and its atime (set older
than its mtime first, so on a relatime or strictatime mount any read would move it), and
no copy of its contents may appear anywhere the tracker writes.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sqlite3
from pathlib import Path

from runner.units import serve_unit_name
from tests.runner_checks import (assert_history_kept, assert_logs_in, assert_user_on, events, fingerprints,
                                 in_full, link_version)
from tests.sim import builds, dbgen

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
VICTIM = "emo"


class OutsideFile:
    """A root-owned SQLite database outside every home, with a marker nobody may copy."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "outside"
        self.dir.mkdir(mode=0o700)
        self.path = self.dir / "secret.sqlite"
        self.marker = f"ROOT-SECRET-{secrets.token_hex(8)}"
        with sqlite3.connect(self.path) as conn:
            conn.execute("CREATE TABLE secret (value TEXT)")
            conn.execute("INSERT INTO secret VALUES (?)", (self.marker,))
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        # atime well before mtime: under relatime the next read of the file moves it.
        os.utime(self.path, ns=(st.st_mtime_ns - 3600 * 10**9, st.st_mtime_ns))
        self.stat = os.stat(self.path)

    def assert_untouched(self, *searched: Path) -> None:
        st = os.stat(self.path)  # before reading it ourselves
        assert st.st_atime_ns == self.stat.st_atime_ns, "the outside file was read"
        assert st.st_mtime_ns == self.stat.st_mtime_ns, "the outside file was written"
        assert (st.st_uid, st.st_ino, st.st_size) == (self.stat.st_uid, self.stat.st_ino, self.stat.st_size)
        assert hashlib.sha256(self.path.read_bytes()).hexdigest() == self.sha256
        assert sorted(p.name for p in self.dir.iterdir()) == ["secret.sqlite"]  # no -wal/-journal made next to it
        marker = self.marker.encode()
        for root in searched:
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert marker not in path.read_bytes(), f"{path} holds a copy of the outside file"


def plant_symlink(world, os_user: str, target: Path, keep: Path) -> None:
    """Stop the user's server, move their real database (and side files) to `keep`, and put a
    symlink to `target` in its place, as a user could."""
    world.systemctl_run("stop", serve_unit_name(os_user))
    keep.mkdir(parents=True)
    db = world.database(os_user)
    for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
        if (db.parent / name).exists():
            shutil.move(db.parent / name, keep / name)
    db.symlink_to(target)


def test_backup_refuses_a_database_symlinked_outside_the_home(world, tmp_path):
    outside = OutsideFile(tmp_path)
    plant_symlink(world, VICTIM, outside.path, tmp_path / "emo-real")
    others = [u for u in world.users if u.os_user != VICTIM]
    before = {u.os_user: dbgen.precious_fingerprint(world.database(u.os_user)) for u in others}
    world.registry.set_tag("nightly", V28)

    done = world.run_tracker()

    # That user's problem is theirs: refused (never followed), deferred with the reason; the
    # others are backed up and moved.
    assert done.exit_code == 0, done.stderr
    lines = events(done)
    refused = [in_full(e) for e in lines if e.startswith(f"NOT BACKED UP user={VICTIM} ")]
    assert len(refused) == 1, done.stderr
    assert str(world.database(VICTIM)) in refused[0] and "symlink" in refused[0], refused
    assert any(e.startswith(f"DEFERRED user={VICTIM} ") for e in lines), lines
    outside.assert_untouched(world.backup_dest, world.state_dir, world.scratch)
    assert os.readlink(world.database(VICTIM)) == str(outside.path)  # left as the user made it
    assert link_version(world, VICTIM) == V24  # never moved without a backup
    for user in others:
        assert_user_on(world, user.sso, V28)
        assert_logs_in(world, user.sso)
    assert_history_kept(world, before)
    assert not list((world.backup_dest / VICTIM).glob("state-prebump-*"))


def test_manual_rollback_never_writes_through_a_database_symlink(world, tmp_path):
    pre_bump = fingerprints(world)
    world.registry.set_tag("nightly", V28)
    bumped = world.run_tracker()
    assert bumped.exit_code == 0, bumped.stderr
    for user in world.users:
        assert_user_on(world, user.sso, V28)

    outside = OutsideFile(tmp_path)
    plant_symlink(world, VICTIM, outside.path, tmp_path / "emo-real")
    done = world.run_tracker("rollback", "--to", V24)

    outside.assert_untouched(world.backup_dest, world.state_dir, world.scratch)
    db = world.database(VICTIM)
    lines = events(done)
    print("\n".join(lines))
    if db.is_symlink():  # refused loudly, never written through
        assert done.exit_code == 1, done.stderr
        refusal = [e for e in lines if e.startswith(f"ROLLBACK FAILED user={VICTIM} ")]
        assert refusal and str(db) in in_full(refusal[0]) and "symlink" in in_full(refusal[0]), done.stderr
        assert os.readlink(db) == str(outside.path)
        # refused before anything was touched: the user's link stays on the build they were on
        assert os.readlink(world.active_dir / VICTIM) == str(world.releases_dir / V28)
    else:  # or the symlink itself was replaced by the verified backup
        assert db.is_file()
        assert dbgen.precious_fingerprint(db) == pre_bump[VICTIM]
    others = [u for u in world.users if u.os_user != VICTIM]
    for user in others:  # everyone else rolled back, with their pre-bump databases
        assert_user_on(world, user.sso, V24)
        assert_logs_in(world, user.sso)
        assert list((world.backup_dest / user.os_user).glob(f"state-rolledback-{V28}-*.sqlite"))
    assert_history_kept(world, {u.os_user: pre_bump[u.os_user] for u in others})
    # Last-good (and the operators' link) move only once every user is on the target: a user
    # refused because of a symlink keeps the rollback partial, last-good where it was.
    assert (world.state_dir / "last-good").read_text().strip() == (V28 if db.is_symlink() else V24)
    assert world.freeze_file.exists()

