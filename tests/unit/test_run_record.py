"""The run record (runner/journal.py): one record per run, saved as the journal and written as
summary.json; history reads the summary it makes, and a journal left by an older tracker
(fewer fields) is still recovered."""
from __future__ import annotations

import json

import pytest

from runner.history import describe_run
from runner.journal import JournalError, RunRecord, load_journal

RUN_ID = "20261130T040000Z-7"


def written(tmp_path, record: RunRecord) -> dict:
    run_dir = tmp_path / "runs" / record.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(record.summary(finished_at="2026-11-30T04:02:05Z")))
    return describe_run(run_dir)


def test_an_updated_run_summary_as_history_reads_it(tmp_path):
    record = RunRecord(run_id=RUN_ID, version="0.0.28", from_version="0.0.24", decision="newer",
                       moving=["emo", "wizard"], passed=["emo", "wizard"], deferred={"ana": "turn in flight"},
                       health_report="/r/junit-health.xml", canary_reports=["/r/a.xml", "/r/b.xml"], result="updated")
    summary = record.summary(finished_at="2026-11-30T04:02:05Z")
    assert (summary["from"], summary["to"], summary["decision"], summary["moved"]) == (
        "0.0.24", "0.0.28", "newer", ["emo", "wizard"])
    assert summary["per_user"] == {"emo": "updated", "wizard": "updated", "ana": "deferred: turn in flight"}
    row = written(tmp_path, record)
    assert (row["result"], row["moved"], row["deferred"], row["rolled_back"], row["duration_s"]) == (
        "updated", 2, 1, 0, 125)
    assert row["report"] == str(tmp_path / "runs" / RUN_ID)


def test_a_rolled_back_run_points_at_the_failing_canary_report(tmp_path):
    record = RunRecord(run_id=RUN_ID, version="0.0.28", from_version="0.0.24", moving=["emo", "wizard"],
                       passed=["emo"], failed_user="wizard", failure="canary gate failed: x",
                       canary_reports=["/r/emo.xml", "/r/wizard.xml"], rolled_back=["emo", "wizard"],
                       result="rolled-back", reason="canary failed for wizard")
    assert record.per_user() == {"emo": "rolled back", "wizard": "rolled back"}
    row = written(tmp_path, record)
    assert (row["result"], row["rolled_back"], row["report"], row["reason"]) == (
        "rolled-back", 2, "/r/wizard.xml", "canary failed for wizard")


def test_a_failed_rollback_names_who_is_still_on_the_new_build():
    record = RunRecord(run_id=RUN_ID, version="0.0.28", from_version="0.0.24", moving=["emo", "wizard"],
                       rolled_back=["emo", "wizard"], rollback_failed=["wizard"], result="rollback-failed")
    assert record.per_user() == {"emo": "rolled back", "wizard": "rollback failed"}


def test_the_journal_is_the_record_and_an_older_trackers_journal_still_loads(tmp_path):
    path = tmp_path / "journal.json"
    record = RunRecord(run_id=RUN_ID, version="0.0.28", from_version="0.0.24", backups={"emo": {"state.sqlite": "/b"}})
    record.enter(path, "canary")
    assert load_journal(path) == record
    # What the tracker wrote before the run record (no decision, deferred, reports, result...).
    path.write_text(json.dumps({"run_id": RUN_ID, "version": "0.0.28", "from_version": "0.0.24", "phase": "canary",
                                "release": "/r/0.0.28", "backups": {}, "moving": ["emo"], "passed": [],
                                "rollback_failed": [], "rolling_back": []}))
    assert load_journal(path).moving == ["emo"]
    path.write_text(json.dumps({"run_id": RUN_ID, "version": "0.0.28", "from_version": None, "surprise": 1}))
    with pytest.raises(JournalError, match="unexpected fields"):
        load_journal(path)
