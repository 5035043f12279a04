"""runner.phases.health: which backups seed the health gate, and that the gate reads the
option the runner writes (the two sides of `--seed-db`)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from gates.seeds import parse_seed_option
from runner.backups.catalogue import BackupRecord
from runner.phases.health import health_seeds, seed_option


def record(user: str, db_name: str) -> BackupRecord:
    stem = db_name.split(".")[0]
    return BackupRecord(user, db_name, Path(f"/b/{user}/{stem}-prebump-1.0.0-20260101T000000Z.sqlite"), "1.0.0",
                        datetime(2026, 1, 1, tzinfo=timezone.utc), 4096, "0" * 64, {})


RECORDS = {
    "wizard": [record("wizard", "state.sqlite")],
    "emo": [record("emo", "state.sqlite"), record("emo", "statev2.sqlite"), record("emo", "notes.db")],
    "fresh": [record("fresh", "statev2.sqlite")],
    "nobody": [],
    "other": [record("other", "notes.db")],
}


def test_every_user_with_a_live_database_is_a_seed_of_their_own():
    seeds = {user: [r.path for r in records] for user, records in health_seeds(RECORDS).items()}
    assert seeds == {
        "wizard": [Path("/b/wizard/state-prebump-1.0.0-20260101T000000Z.sqlite")],
        # the live statev2.sqlite first, then the state.sqlite frozen beside it
        "emo": [Path("/b/emo/statev2-prebump-1.0.0-20260101T000000Z.sqlite"),
                Path("/b/emo/state-prebump-1.0.0-20260101T000000Z.sqlite")],
        "fresh": [Path("/b/fresh/statev2-prebump-1.0.0-20260101T000000Z.sqlite")],
    }


def test_the_gate_reads_the_option_the_runner_writes():
    seeds = {user: [r.path for r in records] for user, records in health_seeds(RECORDS).items()}
    parsed = parse_seed_option(seed_option(seeds))
    assert [(s.case, s.user, list(s.files)) for s in parsed] == [
        (f"populated-{user}", user, seeds[user]) for user in sorted(seeds)]


def test_plain_paths_still_work_for_people():
    assert [(s.case, s.user) for s in parse_seed_option("/tmp/a.sqlite")] == [("populated-copy", None)]
    assert [s.case for s in parse_seed_option("/tmp/a.sqlite,/tmp/b.sqlite")] == [
        "populated-copy-1", "populated-copy-2"]


def test_a_bad_user_entry_is_refused():
    with pytest.raises(ValueError, match="not an OS user name"):
        parse_seed_option("Emo=/tmp/a.sqlite")


def test_recovery_removes_a_killed_runs_health_scratch_and_nothing_else(tmp_path):
    """What a health gate killed with its run leaves (its private scratch, never exited) is
    found by the run id below the scratch root; another run's scratch and a symlink are not."""
    import os
    from types import SimpleNamespace

    from runner.phases.health import health_purpose
    from runner.proc import UserIds
    from runner.scratch import private_scratch, remove_leftovers

    cfg = SimpleNamespace(tmpdir=tmp_path / "scratch", gate_user="64123")
    killed = private_scratch(cfg, health_purpose("20260101T000000Z-42"), UserIds(64123, 64123))
    root_dir, gate_dir = killed.__enter__()  # the run dies here: no __exit__, nothing removed
    (gate_dir / "copy.sqlite").write_bytes(b"a user's data")
    other = private_scratch(cfg, health_purpose("20260101T000000Z-43"), UserIds(64123, 64123))
    other_root, _ = other.__enter__()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    os.symlink(outside, cfg.tmpdir / "health-20260101t000000z-42-abcdefgh")
    assert remove_leftovers(cfg, health_purpose("20260101T000000Z-42")) == [root_dir]
    assert not root_dir.exists() and other_root.is_dir() and (outside / "keep").is_file()
    assert (cfg.tmpdir / "health-20260101t000000z-42-abcdefgh").is_symlink()
    other.__exit__(None, None, None)
