"""`status` in plain words in every state (runner/status.py format_status): sentences, never a
dict or a Python repr (the data itself is `status --json`)."""
from __future__ import annotations

import re

import pytest

from runner.status import format_status

V24, V25, V26 = "0.0.24", "0.0.25-nightly.20260608.497", "0.0.26"
ON_LINK = {"link": V25, "serving": V25, "stale": False, "off_link": None, "deferred": None, "off_last_good": False}


def status(users=None, **top):
    return {"last_good": V25, "previous_good": V24, "frozen": None, "quarantined": [], "unfinished_run": None,
            "users": users or {"wizard": dict(ON_LINK)}, **top}


def user(**changes):
    return {**ON_LINK, **changes}


JOURNAL = {"run_id": "20261130T040001Z-77", "version": V26, "from_version": V25, "phase": "canary", "release": None,
           "backups": {"emo": {"state.sqlite": "/var/backups/t3-state/emo/x"}}, "moving": ["emo", "wizard"],
           "passed": ["emo"], "rollback_failed": []}
STATES = {
    "healthy": status(),
    "deferred": status({"emo": user(link=V24, serving=V24, off_last_good=True, deferred={
        "os_user": "emo", "version": V25, "reason": "turn in flight", "at": "2026-11-30T04:10:00Z",
        "since": "2026-11-28T04:10:00Z"})}),
    "deferred by the old tracker": status({"emo": user(deferred={"version": V24, "reason": "busy: claude child",
                                                                 "legacy": True})}),
    "deferral marker corrupt": status({"emo": user(deferred={"error": "corrupt marker: Expecting value"})}),
    "frozen": status(frozen={"reason": "canary failed for emo", "by": "t3-autoupdate", "at": "2026-11-30T04:12:00Z"}),
    "partial rollback": status({"emo": user(link=V26, serving=V26, off_last_good=True),
                                "wizard": user(link=V24, serving=V24, off_last_good=True)},
                               frozen={"reason": f"partial manual rollback to {V24}: emo on {V26}", "by": "ops", "at": ""}),
    "off-link users": status({"emo": user(off_link="running '/usr/bin/t3 serve', not /var/lib/t3-autoupdate/active/emo/bin/t3"),
                              "wizard": user(off_link="unknown: systemctl show failed (exit 1)")}),
    "stale and down": status({"emo": user(link=V26, serving=V25, stale=True), "wizard": user(link=None, serving=None)}),
    "unfinished run": status(unfinished_run=dict(JOURNAL)),
    "rollback failed": status(unfinished_run={**JOURNAL, "rollback_failed": ["wizard"]}),
    "journal unreadable": status(unfinished_run={"error": "journal: not valid JSON"}),
}
REPR = re.compile(r"[{}]|\bNone\b|\bTrue\b|\bFalse\b|': |\[\]|\[\{")


@pytest.mark.parametrize("state", list(STATES))
def test_status_reads_as_sentences(state):
    text = format_status(STATES[state])
    assert not REPR.search(text), text


def test_what_each_state_says():
    said = {state: format_status(data) for state, data in STATES.items()}
    assert "  emo: link=0.0.24 serving=0.0.24  [deferred: since 2026-11-28T04:10:00Z, owes a restart onto " \
           f"{V25} (turn in flight)]" in said["deferred"]
    assert f"[deferred: owes a restart onto {V24} (busy: claude child)]" in said["deferred by the old tracker"]
    assert "its marker cannot be read (corrupt marker: Expecting value); it still owes a restart" in said[
        "deferral marker corrupt"]
    assert ("frozen: yes: canary failed for emo (by t3-autoupdate at 2026-11-30T04:12:00Z); "
            "t3-autoupdate unfreeze resumes tracking") in said["frozen"]
    assert f"wizard: link={V24} serving={V24}  [not on last-good {V25}]" in said["partial rollback"]
    assert "[NOT ON LINK: running '/usr/bin/t3 serve'" in said["off-link users"]
    assert "wizard: link=0.0.25-nightly.20260608.497 serving=0.0.25-nightly.20260608.497  [which binary its " \
           "server runs is unknown (systemctl show failed (exit 1))]" in said["off-link users"]
    assert "wizard: link=(none) serving=down" in said["stale and down"] and "STALE" in said["stale and down"]
    assert (f"unfinished run 20261130T040001Z-77: {V25} -> {V26}, stopped in its canary phase; moved so far: emo, "
            "wizard (the next command finishes or undoes it; now: t3-autoupdate recover)") in said["unfinished run"]
    assert f"ROLLBACK FAILED, still on {V26}: wizard (the next run retries)" in said["rollback failed"]
    assert "its journal cannot be read (journal: not valid JSON)" in said["journal unreadable"]
    assert said["healthy"].splitlines() == [f"last-good: {V25} (previous: {V24})", "frozen: no", "quarantined: none",
                                            f"  wizard: link={V25} serving={V25}"]
