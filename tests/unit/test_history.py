"""`t3-autoupdate history` on hand-made run directories: the edge cases (no summary, corrupt
or partial summaries, other entries under runs/, limits). Real summaries written by real runs
are read in tests/e2e/test_ops_e2e.py."""
from __future__ import annotations

import json
from pathlib import Path

from runner import cli
from runner.history import format_history, read_history


def make_run(runs: Path, run_id: str, summary=None, events: str | None = None) -> Path:
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    if events is not None:
        (run_dir / "events.log").write_text(events)
    return run_dir


def test_one_line_per_run_newest_first(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "20261128T040000Z-11", {
        "run_id": "20261128T040000Z-11", "finished_at": "2026-11-28T04:01:12Z", "from": "0.0.24", "to": "0.0.25",
        "result": "updated", "moved": ["emo", "wizard"], "deferred": {"ana": "turn in flight"}})
    rolled = make_run(runs, "20261129T040000Z-12", {
        "finished_at": "2026-11-29T04:00:40Z", "from": "0.0.25", "to": "0.0.26", "result": "rolled-back",
        "moved": ["emo"], "rolled_back": ["emo"], "canary_reports": ["/s/runs/x/junit-canary-emo.xml"],
        "reason": "canary failed for emo"})
    runs.joinpath("crash-20261129T050000Z-13.txt").write_text("Traceback")  # not a run directory
    make_run(runs, "verify-20261129T060000Z-14", {"result": "x"})               # not a tracker run
    rows = read_history(runs)
    assert [r["run_id"] for r in rows] == [rolled.name, "20261128T040000Z-11"]
    assert rows[0]["report"] == "/s/runs/x/junit-canary-emo.xml" and rows[0]["rolled_back"] == 1
    assert (rows[1]["duration_s"], rows[1]["moved"], rows[1]["deferred"]) == (72, 2, 1)
    lines = format_history(rows).splitlines()
    assert lines[1] == ("2026-11-28T04:00:00Z  0.0.24 -> 0.0.25  updated       1m12s  "
                        f"moved 2, deferred 1, rolled back 0  {runs / '20261128T040000Z-11'}")
    assert lines[0].startswith("2026-11-29T04:00:00Z  0.0.25 -> 0.0.26  rolled-back     40s  ")  # columns line up
    assert "rolled-back" in lines[0] and "40s" in lines[0] and "rolled back 1" in lines[0]


def test_a_run_without_a_summary_is_listed_with_its_versions(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "20261130T040000Z-7", events='UPDATE START run=20261130T040000Z-7 installed=0.0.24 '
                                                 'target=0.0.25 reason="newer on nightly"\nBACKED UP user=emo\n')
    [row] = read_history(runs)
    assert (row["from"], row["to"], row["duration_s"]) == ("0.0.24", "0.0.25", None)
    assert row["result"].startswith("no summary (killed, crashed or still running")
    assert "0.0.24 -> 0.0.25" in format_history([row]) and "      ?  moved 0" in format_history([row])


def test_corrupt_partial_and_odd_summaries_are_clear_lines(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "20261130T010000Z-1", '{"result": "upd')                 # cut short by a full disk
    make_run(runs, "20261130T020000Z-2", "[1, 2]")                         # valid JSON, wrong shape
    make_run(runs, "20261130T030000Z-3", {"finished_at": "yesterday"})     # no result, odd time
    make_run(runs, "20261130T040000Z-4")                                   # nothing at all
    rows = {r["run_id"][-1]: r for r in read_history(runs)}
    assert rows["1"]["result"].startswith("unreadable summary.json (Unterminated string")
    assert rows["2"]["result"] == "unreadable summary.json (expected a JSON object, got list)"
    assert rows["3"]["result"] == "unknown (summary has no result)" and rows["3"]["duration_s"] is None
    assert rows["4"]["result"].startswith("no summary") and rows["4"]["from"] is None
    text = format_history(list(rows.values()))
    assert len(text.splitlines()) == 4 and "? -> ?" in text


def test_limits_and_no_runs(tmp_path):
    runs = tmp_path / "runs"
    assert read_history(runs) == [] and format_history([]) == "no runs yet"
    for day in range(1, 6):
        make_run(runs, f"202611{day:02d}T040000Z-{day}", {"result": "updated"})
    assert [r["run_id"][:8] for r in read_history(runs, limit=2)] == ["20261105", "20261104"]
    assert len(read_history(runs, limit=0)) == 5


def test_history_command(site, capsys):  # noqa: F811
    make_run(site / "state" / "runs", "20261130T040000Z-9", {"from": "0.0.24", "to": "0.0.25", "result": "updated",
                                                             "finished_at": "2026-11-30T04:00:05Z"})
    assert cli.main(["history"]) == 0
    assert "0.0.24 -> 0.0.25" in capsys.readouterr().out
    assert cli.main(["history", "--json", "-n", "5"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["result"], row["duration_s"]) == ("updated", 5)
