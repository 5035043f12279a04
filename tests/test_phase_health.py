"""runner.phases.health: which backups seed the health gate, and that the gate reads the
option the runner writes (the two sides of `--seed-db`)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from gates.seeds import parse_seed_option
from runner.backup import BackupRecord
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
    seeds = health_seeds(RECORDS)
    assert seeds == {
        "wizard": [Path("/b/wizard/state-prebump-1.0.0-20260101T000000Z.sqlite")],
        # the live statev2.sqlite first, then the state.sqlite frozen beside it
        "emo": [Path("/b/emo/statev2-prebump-1.0.0-20260101T000000Z.sqlite"),
                Path("/b/emo/state-prebump-1.0.0-20260101T000000Z.sqlite")],
        "fresh": [Path("/b/fresh/statev2-prebump-1.0.0-20260101T000000Z.sqlite")],
    }


def test_the_gate_reads_the_option_the_runner_writes():
    seeds = health_seeds(RECORDS)
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
