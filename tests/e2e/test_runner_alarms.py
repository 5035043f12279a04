"""Metrics for alerting, and the alarm for a gate that rejects build after build."""
from __future__ import annotations

from runner import metrics
from tests.runner_checks import events
from tests.sim import builds


def test_event_names_are_the_words_before_the_fields():
    assert metrics.event_name('HEALTH-CHECK FAILED version=1 reason="a b"') == "HEALTH-CHECK FAILED"
    assert metrics.event_name("update complete version=0.0.28") == "update complete"


def test_rejection_streak_counts_and_compares_causes(tmp_path):
    first = metrics.note_rejection(tmp_path, version="a", gate="health", reason="test_x[p]: boom")
    second = metrics.note_rejection(tmp_path, version="b", gate="health", reason="test_x[p]: bang")
    assert (first["count"], second["count"], second["same_cause"]) == (1, 2, True)
    third = metrics.note_rejection(tmp_path, version="c", gate="canary", reason="other: x")
    assert third == {"count": 3, "same_cause": False, "versions": ["a", "b", "c"]}
    metrics.clear_rejections(tmp_path)
    assert metrics.note_rejection(tmp_path, version="d", gate="health", reason="r")["count"] == 1


def test_third_rejection_in_a_row_is_reported_loudly_and_counted(world):
    bad = [builds.BAD_VERSIONS[p] for p in ("endpoint-renamed", "pairing-no-cookie", "cookie-renamed")]
    outcomes = []
    for version in bad:
        world.registry.set_tag("nightly", version)
        outcomes.append(world.run_tracker())
    assert [d.exit_code for d in outcomes] == [1, 1, 1]
    assert not any(e.startswith("REPEATED REJECTIONS") for d in outcomes[:2] for e in events(d))
    alarm = [e for e in events(outcomes[2]) if e.startswith("REPEATED REJECTIONS")]
    # all three fail the same check (the pairing handshake): the loopback trap's signature
    assert alarm and "count=3" in alarm[0] and "same_cause=True" in alarm[0]
    counters = metrics.read_counters(world.state_dir / "metrics.prom")
    assert counters["HEALTH-CHECK FAILED"] == 3 and counters["REPEATED REJECTIONS"] == 1
    text = (world.state_dir / "metrics.prom").read_text()
    assert 't3_autoupdate_last_exit_code{command="run"} 1' in text
    assert 't3_autoupdate_last_good_info{version="0.0.24"} 1' in text
    world.registry.set_tag("nightly", builds.GOOD_VERSIONS["good-0.0.25"])
    assert world.run_tracker().exit_code == 0
    assert not (world.state_dir / "rejections.json").exists()
