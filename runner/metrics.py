"""Counters for alerting, as a node_exporter textfile (`<state_dir>/metrics.prom`),
and the repeated-rejection alarm.

A gate that fails the same way day after day on different builds is itself
suspect (the loopback trap pinned the fleet for 17 days while reporting
"correctly rolled back"), so consecutive rejections are counted and reported
loudly from the third on.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .state import atomic_json, atomic_write, iso, utc_now

_COUNTER = re.compile(r'^t3_autoupdate_events_total\{event="([^"]+)"\} (\d+)$')
REPEATED_AFTER = 3


def event_name(line: str) -> str:
    words = []
    for word in line.split():
        if "=" in word:
            break
        words.append(word)
    return " ".join(words)


def read_counters(path: Path) -> dict[str, int]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    counts = {}
    for line in text.splitlines():
        match = _COUNTER.match(line)
        if match:
            counts[match.group(1)] = int(match.group(2))
    return counts


def record_run(state_dir: Path, *, command: str, exit_code: int, lines: list[str], frozen: bool,
               last_good: str | None, now=None) -> None:
    path = Path(state_dir) / "metrics.prom"
    counts = read_counters(path)
    for line in lines:
        name = event_name(line)
        counts[name] = counts.get(name, 0) + 1
    out = ["# HELP t3_autoupdate_events_total Outcome lines logged by t3-autoupdate, by event.",
           "# TYPE t3_autoupdate_events_total counter"]
    out += [f't3_autoupdate_events_total{{event="{name}"}} {n}' for name, n in sorted(counts.items())]
    moment = now or utc_now()
    out += ["# TYPE t3_autoupdate_last_run_timestamp_seconds gauge",
            f't3_autoupdate_last_run_timestamp_seconds{{command="{command}"}} {moment.timestamp():.0f}',
            "# TYPE t3_autoupdate_last_exit_code gauge",
            f't3_autoupdate_last_exit_code{{command="{command}"}} {exit_code}',
            "# TYPE t3_autoupdate_frozen gauge", f"t3_autoupdate_frozen {int(frozen)}"]
    if last_good:
        out += ["# TYPE t3_autoupdate_last_good_info gauge", f't3_autoupdate_last_good_info{{version="{last_good}"}} 1']
    atomic_write(path, "\n".join(out) + "\n")


def note_rejection(state_dir: Path, *, version: str, gate: str, reason: str) -> dict:
    """Record one more consecutive rejection; returns the streak {count, same_cause, versions}."""
    path = Path(state_dir) / "rejections.json"
    try:
        streak = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        streak = []
    streak.append({"version": version, "gate": gate, "cause": reason.split(":", 1)[0], "at": iso(utc_now())})
    atomic_json(path, streak)
    causes = {entry["cause"] for entry in streak}
    return {"count": len(streak), "same_cause": len(causes) == 1, "versions": [e["version"] for e in streak]}


def clear_rejections(state_dir: Path) -> None:
    try:
        (Path(state_dir) / "rejections.json").unlink()
    except FileNotFoundError:
        pass
