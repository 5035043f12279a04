"""Readable outcome lines: a long or multi-line field is cut to its first clause in the line,
and the whole event goes to a details file named in the line (runner/events.py)."""
from __future__ import annotations

import io

import pytest

from runner.events import REASON_CAP, EventLog, first_clause

GATE_REASON = "; ".join([
    "test_populated_db_migrates[wizard]: Migration \"33_ThreadPinned\" failed: SQLITE_CONSTRAINT: NOT NULL "
    "constraint failed: projection_threads.pinned_at",
    "test_empty_db_starts: server exited with code 1 before becoming ready",
    "test_pairing_sets_cookie: no pairing endpoint (404 on /api/auth/pair)",
])
LOG_EXCERPT = ("t3-serve@alice exited with code 1; last log lines:\n"
               + "\n".join(f"Nov 30 04:00:{i:02d} t3[4242]: fiber {i} failed: Error: boom at x.js:{i}" for i in range(40)))


def run_log(tmp_path):
    log = EventLog(stream=io.StringIO())
    log.also_to(tmp_path / "run" / "events.log")
    return log


def fields_of(line: str) -> dict[str, str]:
    import json
    import re
    return {k: json.loads(v) if v.startswith('"') else v
            for k, v in re.findall(r' (\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


def test_a_short_reason_stays_inline(tmp_path):
    log = run_log(tmp_path)
    line = log("HOLD", code="quarantined", reason="0.0.25 is quarantined")
    assert line == 'HOLD code=quarantined reason="0.0.25 is quarantined"'
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["events.log"]


def test_a_long_gate_reason_keeps_its_first_check_and_names_the_full_text(tmp_path):
    log = run_log(tmp_path)
    line = log("HEALTH-CHECK FAILED", version="0.0.25", reason=GATE_REASON, report="/r/junit-health.xml")
    fields = fields_of(line)
    assert fields["reason"] == GATE_REASON.split("; ")[0] + " ..."
    assert fields["details"] == str(tmp_path / "run" / "health-check-failed-1.txt")
    assert fields["version"] == "0.0.25" and fields["report"] == "/r/junit-health.xml"
    details = (tmp_path / "run" / "health-check-failed-1.txt").read_text()
    assert details.startswith("HEALTH-CHECK FAILED\n") and GATE_REASON in details and "/r/junit-health.xml" in details
    assert (tmp_path / "run" / "events.log").read_text().splitlines() == [line]  # the log holds the short line


def test_a_log_excerpt_is_cut_to_its_first_line(tmp_path):
    log = run_log(tmp_path)
    first = log("CANARY FAILED", user="alice", version="0.0.25", reason=LOG_EXCERPT)
    second = log("CANARY FAILED", user="bob", version="0.0.25", reason=LOG_EXCERPT)
    assert fields_of(first)["reason"] == ("t3-serve@alice exited with code 1; last log lines: ... "
                                          "Nov 30 04:00:39 t3[4242]: fiber 39 failed: Error: boom at x.js:39")
    assert "fiber 38" not in first
    assert fields_of(first)["details"].endswith("/canary-failed-1.txt")
    assert fields_of(second)["details"].endswith("/canary-failed-2.txt")  # never overwrites
    assert "fiber 39 failed" in (tmp_path / "run" / "canary-failed-1.txt").read_text()


def test_a_gate_log_excerpt_keeps_its_verdict(tmp_path):
    """The gates append a server's last log lines as `; log: a | b | c`: the line keeps the
    check, what happened, and the excerpt's last error (the cause), not the excerpt."""
    tail = " | ".join([f"2026-11-30T04:00:0{i}Z INFO starting fiber {i}" for i in range(6)]
                      + ['Error: MigrationError: Migration "33_ThreadPinned" failed: NOT NULL constraint failed'])
    reason = (f'test_server_becomes_ready_bound_like_production[populated-copy]: failed on setup with '
              f'"runner.t3client.GateFailure: t3 serve exited with code 1 before becoming ready; log: {tail}"; '
              f'test_server_becomes_ready_bound_like_production[empty]: failed on setup with "other"')
    short = fields_of(run_log(tmp_path)("HEALTH-CHECK FAILED", version="0.0.25", reason=reason))["reason"]
    assert len(short) <= REASON_CAP
    assert short == ("test_server_becomes_ready_bound_like_production[populated-copy]: failed on setup with "
                     "t3 serve exited with code 1 before becoming ready ... Error: MigrationError: "
                     'Migration "33_ThreadPinned" failed: NOT NULL constraint failed'), short
    assert 'Migration "33_ThreadPinned" failed' in short and "fiber" not in short and "[empty]" not in short


def test_two_logs_sharing_a_directory_never_overwrite_each_other(tmp_path):
    one, two = EventLog(stream=io.StringIO()), EventLog(stream=io.StringIO())
    one.details_dir = two.details_dir = tmp_path / "runs"
    a = fields_of(one("LOCKED", reason=LOG_EXCERPT))["details"]
    b = fields_of(two("LOCKED", reason=LOG_EXCERPT))["details"]
    assert a != b and open(a).read() == open(b).read()


def test_without_a_directory_the_text_stays_inline():
    log = EventLog(stream=io.StringIO())
    line = log("CRASHED", error=GATE_REASON)
    assert fields_of(line)["error"] == GATE_REASON and "details" not in fields_of(line)


def test_an_unwritable_directory_keeps_the_text_inline(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = EventLog(stream=io.StringIO())
    log.details_dir = blocker / "runs"  # cannot be created: a file is in the way
    assert fields_of(log("CRASHED", error=GATE_REASON))["error"] == GATE_REASON


@pytest.mark.parametrize("text", [
    GATE_REASON, LOG_EXCERPT, "x" * 500, "word " * 100, "a: " + "b, " * 100,
    "canary failed for alice on 0.0.25-nightly.20261130.1: " + "z" * 300,
])
def test_first_clause_is_within_the_cap_and_marks_the_cut(text):
    short = first_clause(text)
    assert 0 < len(short) <= REASON_CAP and " ..." in short
    assert short.split(" ...")[0] in text.splitlines()[0]


def test_first_clause_keeps_a_short_single_line_whole():
    assert first_clause("the gate collected no tests") == "the gate collected no tests"
