"""runner.backups: online, verified, per-user backups and whole-file restores, as root, safely."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import stat
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import proc
from runner.backups.trees import BackupError
from runner.backups import catalogue, restore, take, trees
from tests.sim import dbgen
from tests.sim.dbgen import query

VERSION = "0.0.25-nightly.20260608.497"
FAILED = "0.0.26-nightly.20260701.600"
T0 = datetime(2026, 6, 20, 4, 0, 0, tzinfo=timezone.utc)


# --- helpers ------------------------------------------------------------------------------

def _mkdirs(path: Path, mode: int = 0o755) -> Path:
    """mkdir -p with an explicit mode (the tree checks must not depend on the umask)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        p.mkdir()
        p.chmod(mode)
    return missing[0] if missing else path


@pytest.fixture
def t(tmp_path):
    """alice's t3 home under <tmp>/home, her state.sqlite populated, backups under <tmp>/backups."""
    ud = _mkdirs(tmp_path / "home" / "alice" / ".t3" / "userdata")
    dbgen.make_database(ud / "state.sqlite", 30, threads=3, messages_per_thread=4)
    return SimpleNamespace(tmp=tmp_path, ud=ud, db=ud / "state.sqlite", backups=tmp_path / "backups",
                           bdir=tmp_path / "backups" / "alice")


def _backup(t, **kw):
    kw.setdefault("sqlite3", "/usr/bin/sqlite3")
    return take.backup_user_databases(kw.pop("user", "alice"), kw.pop("ud", t.ud), t.backups,
                                        kw.pop("version", VERSION), **kw)


def _restore(t, record, **kw):
    kw.setdefault("sqlite3", "/usr/bin/sqlite3")
    return restore.restore_user_database(record, t.ud, t.backups, failed_version=kw.pop("failed", FAILED), **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    """name -> sha256 (or link target / kind) of every entry: "byte-for-byte unchanged"."""
    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_symlink():
            out[p.name] = "-> " + os.readlink(p)
        elif p.is_file():
            out[p.name] = sha(p)
        else:
            out[p.name] = "dir"
    return out


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def integrity(path: Path) -> str:
    return query(path, "PRAGMA integrity_check")[0][0]


def add_thread(conn, thread_id: str) -> None:
    conn.execute("INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at)"
                 " VALUES (?, 'project-x', 'added', '2026-06-20T04:00:00Z', '2026-06-20T04:00:00Z')", (thread_id,))


def add_message(conn, message_id: str, thread_id: str = "thread-000000") -> None:
    conn.execute("INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text, created_at)"
                 " VALUES (?, ?, 'turn-x', 'user', 'hello', '2026-06-20T04:00:00Z')", (message_id, thread_id))


def temporaries(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.exists() for p in d.iterdir() if p.name.startswith(".t3-autoupdate-")]


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --- online backups -----------------------------------------------------------------------

def test_backup_is_online_and_includes_rows_only_in_the_wal(t):
    serve = sqlite3.connect(t.db, isolation_level=None)  # the running serve
    serve.execute("PRAGMA wal_autocheckpoint = 0")
    add_thread(serve, "thread-in-wal")  # committed, but only in the WAL
    wal = t.db.with_name("state.sqlite-wal")
    assert b"thread-in-wal" in wal.read_bytes() and b"thread-in-wal" not in t.db.read_bytes()
    writer = sqlite3.connect(t.db, isolation_level=None)  # a write transaction stays open throughout
    writer.execute("BEGIN IMMEDIATE")
    add_thread(writer, "thread-uncommitted")
    try:
        [record] = _backup(t)
        assert integrity(record.path) == "ok"
        ids = {r[0] for r in query(record.path, "SELECT thread_id FROM projection_threads")}
        assert "thread-in-wal" in ids and "thread-uncommitted" not in ids
        assert record.precious_counts["projection_threads"] == 4
        writer.execute("COMMIT")  # the serve was never blocked
    finally:
        writer.close()
        serve.close()
    assert sha(record.path) == record.sha256 and record.bytes == record.path.stat().st_size


def test_backup_while_the_serve_keeps_committing(t):
    stop, committed, errors = threading.Event(), [], []

    def serve():
        conn = sqlite3.connect(t.db, isolation_level=None, timeout=10)
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            while not stop.is_set():
                add_message(conn, f"msg-live-{len(committed):06d}")
                committed.append(1)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        wait_until(lambda: committed or errors, what="the first commit")
        before = len(committed)
        [record] = _backup(t)
        during = len(committed) - before
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert during > 0, "the serve should have kept committing during the backup"
    assert integrity(record.path) == "ok"
    live_rows = query(record.path, "SELECT count(*) FROM projection_thread_messages WHERE message_id LIKE 'msg-live-%'")
    assert before <= live_rows[0][0] <= before + during


def test_every_database_is_found_and_backed_up_but_never_side_files(t):
    dbgen.make_database(t.ud / "statev2.sqlite", 33, threads=2, messages_per_thread=3)
    (t.ud / "settings.json").write_text("{}")
    (t.ud / "environment-id").write_text("env-1")
    (t.ud / "notes.sqlite").write_text("not a database, despite the name")
    _mkdirs(t.ud / "secrets")
    (t.ud / "copy.sqlite-wal").write_bytes(t.db.read_bytes())  # SQLite magic, but a side-file name
    open_conns = [sqlite3.connect(t.ud / n) for n in ("state.sqlite", "statev2.sqlite")]
    for conn in open_conns:  # the serve has both open: -wal and -shm exist
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        add_message(conn, "msg-open")
        conn.commit()
    try:
        assert (t.ud / "state.sqlite-wal").exists() and (t.ud / "statev2.sqlite-shm").exists()
        assert trees.find_user_databases(t.ud) == ["state.sqlite", "statev2.sqlite"]
        records = _backup(t, now=T0)
    finally:
        for conn in open_conns:
            conn.close()
    assert [(r.db_name, r.path.name) for r in records] == [
        ("state.sqlite", f"state-prebump-{VERSION}-20260620T040000Z.sqlite"),
        ("statev2.sqlite", f"statev2-prebump-{VERSION}-20260620T040000Z.sqlite")]
    for r in records:
        assert dbgen.precious_fingerprint(r.path) == dbgen.precious_fingerprint(t.ud / r.db_name)
        assert r.taken_at == T0 and r.os_user == "alice" and r.version == VERSION
    assert sorted(p.name for p in t.bdir.iterdir() if not p.name.startswith(".")) == sorted(r.path.name for r in records)


def test_modes_temporaries_and_pruning(t):
    made = []
    for i in range(5):
        made += _backup(t, now=T0 + timedelta(days=i), keep=3)
        assert not temporaries(t.bdir, t.ud)
    files = sorted(p.name for p in t.bdir.iterdir() if not p.name.startswith("."))
    assert files == sorted(r.path.name for r in made[-3:])  # the newest three
    manifests = sorted(p.name for p in t.bdir.iterdir() if p.name.endswith(".json"))
    assert manifests == sorted(f".{name}.json" for name in files)
    assert stat.S_IMODE(t.bdir.stat().st_mode) == 0o700
    assert stat.S_IMODE(t.backups.stat().st_mode) == 0o711
    for p in t.bdir.iterdir():
        assert stat.S_IMODE(p.lstat().st_mode) == 0o600 and p.is_file() and not p.is_symlink()
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") == made[-1]
    # One made with an older clock is never pruned: it is the one just made.
    [older] = _backup(t, now=T0 - timedelta(days=30), keep=1)
    assert older.path.exists() and made[-1].path.exists() and not made[-2].path.exists()


def test_latest_backup_filters_by_version_and_refuses_to_guess(t):
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") is None
    [first] = _backup(t, now=T0)
    [second] = _backup(t, now=T0 + timedelta(hours=1), version="0.0.25-nightly.20260609.498")
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") == second
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite", version=VERSION) == first
    assert catalogue.latest_backup(t.backups, "alice", "statev2.sqlite") is None
    (t.bdir / f".{second.path.name}.json").unlink()
    with pytest.raises(BackupError, match="no manifest"):
        catalogue.latest_backup(t.backups, "alice", "state.sqlite")


# --- symlinks: refused, never followed ----------------------------------------------------

def test_symlinked_database_is_refused_and_its_target_never_touched(t):
    [record] = _backup(t, now=T0)
    outside_dir = _mkdirs(t.tmp / "outside")
    outside = outside_dir / "root-owned.sqlite"
    dbgen.make_database(outside, 30, threads=1, messages_per_thread=1)
    before, backups_before = snapshot(outside_dir), snapshot(t.bdir)
    t.db.unlink()
    t.db.symlink_to(outside)
    with pytest.raises(BackupError, match=rf"refusing symlink {t.db}"):
        trees.find_user_databases(t.ud)
    with pytest.raises(BackupError, match=r"alice: .*refusing symlink .*state\.sqlite"):
        _backup(t, now=T0 + timedelta(hours=1))
    with pytest.raises(BackupError, match=r"alice: .*refusing symlink .*state\.sqlite"):
        _restore(t, record)
    assert snapshot(outside_dir) == before  # byte for byte, and no -wal/-shm appeared next to it
    assert snapshot(t.bdir) == backups_before and os.readlink(t.db) == str(outside)


@pytest.mark.parametrize("link", ["home", ".t3", "userdata"])
def test_symlinked_user_directory_is_refused(t, link):
    target = {"home": t.ud.parent.parent, ".t3": t.ud.parent, "userdata": t.ud}[link]
    moved = t.tmp / "elsewhere"
    target.rename(moved)
    target.symlink_to(moved)
    before = snapshot(moved)
    for call in (lambda: trees.find_user_databases(t.ud), lambda: _backup(t)):
        with pytest.raises(BackupError, match=rf"refusing symlink {target}"):
            call()
    assert snapshot(moved) == before and not t.bdir.exists()


def test_symlinked_backup_dir_is_refused(t):
    _mkdirs(t.backups)
    elsewhere = _mkdirs(t.tmp / "elsewhere")
    t.bdir.symlink_to(elsewhere)
    with pytest.raises(BackupError, match=rf"refusing symlink {t.bdir}"):
        _backup(t)
    with pytest.raises(BackupError, match=rf"refusing symlink {t.bdir}"):
        catalogue.latest_backup(t.backups, "alice", "state.sqlite")
    assert list(elsewhere.iterdir()) == []


def test_special_file_named_like_a_database_is_refused_without_blocking(t):
    os.mkfifo(t.ud / "statev2.sqlite")
    with pytest.raises(BackupError, match=r"refusing fifo .*statev2\.sqlite"):
        trees.find_user_databases(t.ud)


# --- failures leave nothing behind --------------------------------------------------------

def _fake_sqlite3(t, body: str) -> str:
    script = t.tmp / "bin" / "sqlite3"
    _mkdirs(script.parent)
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_failed_copy_is_removed_and_named(t):
    # The copy is written completely, then the command fails: the partial result must go.
    fake = _fake_sqlite3(t, '/usr/bin/sqlite3 "$@" || exit $?\ncase "$*" in *"VACUUM INTO"*) exit 3;; esac')
    with pytest.raises(BackupError, match=rf"alice: backup of {t.db} .*exit code 3"):
        _backup(t, sqlite3=fake)
    assert list(t.bdir.iterdir()) == []


def test_copy_failing_integrity_check_is_refused_and_removed(t):
    fake = _fake_sqlite3(t, """case "$*" in
  *integrity_check*) echo '[{"integrity_check":"*** in database main ***"},{"integrity_check":"Page 7: btree bad"}]'
                     /usr/bin/sqlite3 "$@" | tail -n +2;;  # the real answers after the first
  *) exec /usr/bin/sqlite3 "$@";;
esac""")
    with pytest.raises(BackupError, match=r"alice: .*failed verification: integrity_check: .*btree bad"):
        _backup(t, sqlite3=fake)
    assert list(t.bdir.iterdir()) == []


def test_copy_whose_tables_differ_from_the_source_is_refused_and_removed(t):
    # The copy and the source's table list come from one process, the check and the counts
    # from another: a copy that lacks a projection table the source has is not a backup.
    fake = _fake_sqlite3(t, """case "$*" in
  *integrity_check*) echo '[{"integrity_check":"ok"}]'; echo '[{"names":"[\\"projection_threads\\"]"}]'
                     echo '[{"i":0,"n":4}]';;
  *) exec /usr/bin/sqlite3 "$@";;
esac""")
    with pytest.raises(BackupError, match=r"failed verification: the copy's projection tables \['projection_threads'\]"
                                          r" are not the source's \[.*'projection_thread_messages'"):
        _backup(t, sqlite3=fake)
    assert list(t.bdir.iterdir()) == []


@pytest.mark.parametrize("answer", ["[]", '[{"integrity_check":"ok"}]\n[{"other":1}]', "[{}]\n[]\n[]"])
def test_unexpected_check_output_is_a_backup_error_not_a_crash(t, answer):
    fake = _fake_sqlite3(t, f"""case "$*" in
  *integrity_check*) printf '%s\\n' '{answer}';;
  *) exec /usr/bin/sqlite3 "$@";;
esac""")
    with pytest.raises(BackupError, match=r"alice: .*failed verification: check failed: unexpected output"):
        _backup(t, sqlite3=fake)
    assert list(t.bdir.iterdir()) == []


def test_not_enough_free_space_stops_before_copying(t):
    with pytest.raises(BackupError, match=r"not enough free space in .*alice: need \d+ bytes .* only 1000 bytes free"):
        _backup(t, free_bytes=lambda _path: 1000)
    assert list(t.bdir.iterdir()) == []
    with pytest.raises(BackupError, match=r"need \d+ bytes .*x margin 1e\+12\), only \d+ bytes free"):
        take.check_free_space(t.tmp, 10**6, margin=1e12)
    assert take.check_free_space(t.tmp, 1) > 0


# --- restores -----------------------------------------------------------------------------

MIGRATE = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint = 0")
conn.execute("ALTER TABLE projection_threads ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
ins = "INSERT INTO projection_threads (thread_id, project_id, title, created_at, updated_at) VALUES (?, 'p', 'new', 'x', 'y')"
conn.execute(ins, ("thread-new-1",)); conn.execute(ins, ("thread-new-2",))
msg = "INSERT INTO projection_thread_messages (message_id, thread_id, role, text, created_at) VALUES (?, 'thread-new-1', 'user', 'hi', 'x')"
for i in range(3):
    conn.execute(msg, (f"msg-new-{i}",))
conn.execute("DELETE FROM projection_thread_messages WHERE message_id = 'msg-000000-000000'")
os._exit(0)  # killed: the new rows live only in the WAL, with -wal and -shm left behind
"""


def test_restore_brings_back_the_backup_and_keeps_the_replaced_database(t):
    original = dump(t.db)
    [record] = _backup(t, now=T0)
    proc.run([sys.executable, "-c", MIGRATE, str(t.db)])
    assert t.db.with_name("state.sqlite-wal").exists() and t.db.with_name("state.sqlite-shm").exists()

    report = _restore(t, record, now=T0 + timedelta(hours=2))

    assert sorted(p.name for p in t.ud.iterdir()) == ["state.sqlite"]  # stale -wal/-shm gone, no temporaries
    assert sha(t.db) == record.sha256 == report.restored_sha256
    assert stat.S_IMODE(t.db.stat().st_mode) == 0o600
    assert integrity(t.db) == "ok" and dump(t.db) == original
    kept = report.kept_aside
    assert kept == t.bdir / f"state-rolledback-{FAILED}-20260620T060000Z.sqlite"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and integrity(kept) == "ok"
    assert {r[0] for r in query(kept, "SELECT thread_id FROM projection_threads WHERE pinned = 0")} >= {
        "thread-new-1", "thread-new-2"}  # migrated schema and the rows that were only in the WAL
    assert query(kept, "SELECT count(*) FROM projection_thread_messages WHERE message_id = 'msg-000000-000000'") == [(0,)]
    assert report.rows_since_backup["projection_threads"] == 2
    assert report.rows_since_backup["projection_thread_messages"] == 2  # 3 added, 1 deleted
    assert report.rows_since_backup["projection_thread_sessions"] == 0
    assert not temporaries(t.bdir, t.ud)
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") == record  # the kept-aside copy is not a pre-bump backup


def test_kept_aside_copies_follow_retention_newest_kept(t):
    """Each restore keeps the replaced database aside; with keep=2 only the two newest copies
    of it stay (the one just made always), so repeated rollbacks cannot fill the disk."""
    [record] = _backup(t, now=T0)
    for hour in (1, 2, 3):
        _restore(t, record, now=T0 + timedelta(hours=hour), keep=2)
    kept = sorted(p.name for p in t.bdir.glob(f"state-rolledback-{FAILED}-*.sqlite"))
    assert kept == [f"state-rolledback-{FAILED}-20260620T060000Z.sqlite",
                    f"state-rolledback-{FAILED}-20260620T070000Z.sqlite"], kept
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") == record  # pre-bump restore points untouched
    _restore(t, record, now=T0 + timedelta(hours=4))  # no keep: nothing pruned
    assert len(list(t.bdir.glob(f"state-rolledback-{FAILED}-*.sqlite"))) == 3


def test_restore_only_from_the_users_own_backup_dir(t):
    [record] = _backup(t, now=T0)
    stray = _mkdirs(t.tmp / "stray") / record.path.name
    stray.write_bytes(record.path.read_bytes())
    live = snapshot(t.ud)
    with pytest.raises(BackupError, match=r"alice: .* is not in .*backups/alice"):
        _restore(t, dataclasses.replace(record, path=stray))
    assert snapshot(t.ud) == live


def test_corrupted_backup_is_refused_and_the_live_database_left_untouched(t):
    [record] = _backup(t, now=T0)
    data = bytearray(record.path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    record.path.write_bytes(bytes(data))
    live, backups_before = snapshot(t.ud), snapshot(t.bdir)
    with pytest.raises(BackupError, match=r"alice: .*does not match its record .*refusing to restore"):
        _restore(t, record)
    assert snapshot(t.ud) == live and snapshot(t.bdir) == backups_before


def test_restore_stops_before_anything_when_space_is_short(t):
    [record] = _backup(t, now=T0)
    live, backups_before = snapshot(t.ud), snapshot(t.bdir)
    with pytest.raises(BackupError, match="not enough free space"):
        _restore(t, record, free_bytes=lambda _path: 10)
    assert snapshot(t.ud) == live and snapshot(t.bdir) == backups_before


def test_database_created_by_the_failed_build_is_set_aside(t):
    [record] = _backup(t, now=T0)
    dbgen.make_database(t.ud / "statev2.sqlite", 33, threads=1, messages_per_thread=2)
    (t.ud / "statev2.sqlite-shm").write_bytes(b"stale")
    kept = restore.set_aside_database("alice", t.ud, t.backups, "statev2.sqlite", failed_version=FAILED,
                                     sqlite3="/usr/bin/sqlite3", now=T0)
    assert kept.name == f"statev2-rolledback-{FAILED}-20260620T040000Z.sqlite" and integrity(kept) == "ok"
    assert sorted(p.name for p in t.ud.iterdir()) == ["state.sqlite"]
    assert restore.set_aside_database("alice", t.ud, t.backups, "statev2.sqlite", failed_version=FAILED) is None
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") == record


# --- running as the owner -----------------------------------------------------------------

def _other_search(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o001)


@pytest.mark.skipif(os.geteuid() != 0, reason="copying as another uid needs root")
def test_copy_runs_as_the_home_owner(tmp_path, tmp_path_factory):
    nobody = 65534
    home = _mkdirs(tmp_path / "home") / "nobody"
    ud = home / ".t3" / "userdata"
    _mkdirs(ud, 0o700)
    db = ud / "state.sqlite"
    dbgen.make_database(db, 30, threads=2, messages_per_thread=2)
    for p in (home, home / ".t3", ud, db):
        os.chown(p, nobody, nobody)
    db.chmod(0o600)
    t = SimpleNamespace(tmp=tmp_path, ud=ud, backups=tmp_path / "backups", bdir=tmp_path / "backups" / "nobody")

    # uid 65534 must be able to reach the tree by path. pytest's own temp root
    # (/tmp/pytest-of-root, 0700) usually forbids that; open what is ours to open.
    base = tmp_path_factory.getbasetemp()
    reachable = all(_other_search(p) for p in base.parents)
    if reachable:
        for p in [base, *[a for a in tmp_path.parents if base in a.parents], tmp_path]:
            p.chmod(p.stat().st_mode | 0o011)

    if reachable:
        [record] = _backup(t, user="nobody", ud=ud)
        for p in (record.path, t.bdir / f".{record.path.name}.json"):
            st = p.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody, nobody, 0o600)
        assert integrity(record.path) == "ok"
        report = restore.restore_user_database(record, ud, t.backups, failed_version=FAILED, sqlite3="/usr/bin/sqlite3")
        for p in (db, report.kept_aside):
            st = p.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody, nobody, 0o600)
        assert sha(db) == record.sha256
    else:
        # The child really is uid 65534: it cannot get past the 0700 temp root that root could.
        with pytest.raises(BackupError, match=r"ran as uid 65534.*unable to open database"):
            _backup(t, user="nobody", ud=ud)
        assert list(t.bdir.iterdir()) == []
    st = t.bdir.stat()  # root made the backup dir the owner's, 0700, before any copy
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody, nobody, 0o700)
    if not reachable:  # control: the same tree owned by root backs up fine
        for p in (home, home / ".t3", ud, db):
            os.chown(p, 0, 0)
        t.backups = tmp_path / "backups-control"
        [record] = _backup(t, user="nobody", ud=ud)
        assert record.path.stat().st_uid == 0 and integrity(record.path) == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="copying as another uid needs root")
def test_backup_root_users_cannot_search_is_reported_before_copying(t):
    for p in (t.ud.parent.parent, t.ud.parent, t.ud, t.db):
        os.chown(p, 65534, 65534)
    _mkdirs(t.backups, 0o700)
    with pytest.raises(BackupError, match=r"backups must be searchable \(e\.g\. mode 0711\): the copies run as uid 65534"):
        _backup(t)
    assert not t.bdir.exists()


# --- backup sets: which build the user ran, every backup of every database ------------------

def test_the_manifest_records_the_build_the_user_ran(t):
    [record] = _backup(t, serving="0.0.24", now=T0)
    assert record.serving_version == "0.0.24"
    assert catalogue.latest_backup(t.backups, "alice", "state.sqlite") == record  # read back from the manifest
    assert '"serving_version": "0.0.24"' in (t.bdir / f".{record.path.name}.json").read_text()
    with pytest.raises(BackupError, match="invalid serving version"):
        _backup(t, serving="0.0.24; rm -rf /", now=T0 + timedelta(hours=1))


def test_prebump_backups_lists_every_set_and_refuses_an_incomplete_one(t):
    assert catalogue.prebump_backups(t.backups, "alice") == []
    first = _backup(t, serving="0.0.24", now=T0)
    v2 = t.ud / "statev2.sqlite"
    dbgen.make_database(v2, 33, threads=2)  # a V2 user: both files, one set
    second = _backup(t, version=FAILED, serving=VERSION, now=T0 + timedelta(hours=1))
    assert [r.db_name for r in second] == ["state.sqlite", "statev2.sqlite"]
    _restore(t, second[0])  # leaves a rolledback copy: not a pre-bump backup
    listed = catalogue.prebump_backups(t.backups, "alice")
    assert listed == first + second
    assert {(r.version, r.serving_version) for r in listed} == {(VERSION, "0.0.24"), (FAILED, VERSION)}
    # A member whose manifest is gone would make the set look smaller: refuse, never guess.
    manifest = t.bdir / f".{second[1].path.name}.json"
    text = manifest.read_text()
    manifest.unlink()
    with pytest.raises(BackupError, match="has no manifest: refusing to guess"):
        catalogue.prebump_backups(t.backups, "alice")
    manifest.write_text(text.replace('"db_name": "statev2.sqlite"', '"db_name": "state.sqlite"'))
    with pytest.raises(BackupError, match="is unusable"):
        catalogue.prebump_backups(t.backups, "alice")


# --- one user's hostile or broken files, as that user's own uid (issue 10 item 4) ---------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running the copy as another uid needs root")


@pytest.fixture
def owned(t):
    """alice's home tree belongs to a real unprivileged uid of her own, as on a host."""
    from tests.sim.world import unused_ids

    uid = unused_ids(1)[0]
    for p in (t.ud.parent.parent, t.ud.parent, t.ud, t.db):
        os.chown(p, uid, uid)
    t.ud.parent.parent.chmod(0o750)
    t.ud.parent.chmod(0o700)
    _mkdirs(t.backups, 0o711)
    t.uid = uid
    return t


def _sparse_database(path: Path, size: int, *, claimed_pages: int | None, source: Path) -> None:
    """A file that starts like `source`'s database (its 100-byte header, page size 4096), with
    the in-header page count set to `claimed_pages` (valid) or left as it is, then extended
    sparsely to `size` bytes (nothing is written past the real pages)."""
    data = bytearray(source.read_bytes())
    if claimed_pages is not None:
        data[28:32] = claimed_pages.to_bytes(4, "big")
        data[92:96] = data[24:28]  # version-valid-for = change counter: the count is valid
    path.write_bytes(bytes(data))
    os.truncate(path, size)


TWO_TB = 2 * 1024 ** 4


def test_database_bytes_is_page_count_times_page_size_not_the_file_size():
    header = bytearray(100)
    header[:16] = trees.SQLITE_MAGIC
    header[16:18] = (4096).to_bytes(2, "big")
    header[28:32] = (10).to_bytes(4, "big")
    header[24:28] = header[92:96] = (7).to_bytes(4, "big")
    assert take.database_bytes(bytes(header), TWO_TB) == 10 * 4096  # a sparse tail is not copied
    header[92:96] = (6).to_bytes(4, "big")  # in-header count not valid: SQLite goes by the file size
    assert take.database_bytes(bytes(header), 5 * 4096 + 1) == 6 * 4096
    header[16:18] = (1).to_bytes(2, "big")  # 1 means 65536
    assert take.database_bytes(bytes(header), 65536) == 65536
    header[16:18] = (1000).to_bytes(2, "big")  # not a power of two: not a database header
    assert take.database_bytes(bytes(header), 12345) == 12345


@needs_root
def test_a_2tb_sparse_file_claiming_2tb_of_pages_is_too_big_for_free_space(owned):
    t = owned
    big = t.ud / "huge.db"
    _sparse_database(big, TWO_TB, claimed_pages=TWO_TB // 4096, source=t.db)
    os.chown(big, t.uid, t.uid)
    with pytest.raises(BackupError, match=r"alice: .*not enough free space .*need \d{13,} bytes"):
        _backup(t)
    assert list(t.bdir.iterdir()) == []  # stopped before any copy


@needs_root
def test_a_2tb_sparse_tail_past_the_last_page_is_not_counted_and_backs_up(owned):
    """st_size says 2 TB; the header says a few pages: the copy needs only those (and gets them)."""
    t = owned
    pages = len(t.db.read_bytes()) // 4096
    os.truncate(t.db, TWO_TB)
    records = _backup(t)
    [record] = records
    assert record.bytes < 10 ** 7 and integrity(record.path) == "ok"
    assert record.path.stat().st_uid == t.uid and pages > 0


@needs_root
@pytest.mark.parametrize("problem", ["symlink-to-etc-passwd", "fifo", "unreadable"])
def test_a_users_bad_file_fails_that_users_backup_naming_it_without_harm(owned, problem):
    """Real files in a user-owned home; the copy runs as the user's uid. Each is a BackupError
    naming the user and the file (the tracker defers that user), never a hang or a follow."""
    t = owned
    target = t.ud / "notes.db"
    if problem == "symlink-to-etc-passwd":
        passwd = sha(Path("/etc/passwd"))
        target.symlink_to("/etc/passwd")
        expect = r"refusing symlink .*notes\.db"
    elif problem == "fifo":
        os.mkfifo(target)
        expect = r"refusing fifo .*notes\.db"
    else:
        dbgen.make_database(target, 30, threads=1, messages_per_thread=1)
        target.chmod(0)
        expect = rf"ran as uid {t.uid}.*notes\.db"
    os.chown(target, t.uid, t.uid, follow_symlinks=False)
    started = time.monotonic()
    with pytest.raises(BackupError, match=rf"alice: .*{expect}"):
        _backup(t)
    assert time.monotonic() - started < 60
    if problem == "symlink-to-etc-passwd":
        assert sha(Path("/etc/passwd")) == passwd
    assert temporaries(t.bdir) == []


@needs_root
def test_a_backup_runs_only_the_owners_two_sqlite3_and_root_finishes_it_by_descriptor(owned, monkeypatch):
    """The copy and its check are the owner's (a real unprivileged uid); the manifest and the
    rename are root's, through the backup dir (two process start-ups per database fewer:
    most of a small backup's time). What they leave is the owner's, 0600."""
    t = owned
    runs, real = [], proc.run

    def spy(argv, **kw):
        runs.append((os.path.basename(argv[0]), kw.get("as_user")))
        return real(argv, **kw)

    monkeypatch.setattr(proc, "run", spy)
    [record] = _backup(t)
    assert [(name, user.uid) for name, user in runs] == [("sqlite3", t.uid), ("sqlite3", t.uid)]
    manifest = t.bdir / f".{record.path.name}.json"
    for p in (record.path, manifest):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (t.uid, t.uid, 0o600, 1)
    assert catalogue.prebump_backups(t.backups, "alice")[0].sha256 == record.sha256 == sha(record.path)


def test_root_never_writes_a_manifest_through_a_planted_symlink(tmp_path):
    bdir_path = _mkdirs(tmp_path / "backups" / "alice", 0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (bdir_path / ".x.sqlite.json").symlink_to(victim)
    fd = os.open(bdir_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            trees.create_file_at(trees.OpenDir(fd, bdir_path), ".x.sqlite.json", b"{}\n", proc.UserIds(0, 0, "root"))
    finally:
        os.close(fd)
    assert victim.read_text() == "precious\n" and (bdir_path / ".x.sqlite.json").is_symlink()
