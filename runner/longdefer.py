"""LONG DEFERRAL: a user deferred for longer than `notify_deferral_after` (default 3 days).

A deferred user runs a stale server and owes a restart (their deferral marker's `since` is
the first deferral of the streak). One busy user deferred night after night is what the
seed tracker never told anyone (a user ran a stale server for days). So after each `run`
and `drain-deferred`, every user whose streak is older than the limit gets one
`LONG DEFERRAL` outcome line (sent on like any event chosen in `notify_events`), once per
streak: `long-deferrals.json` in the state dir records the `since` already told about. A
user who was moved (no marker) drops out of that record, so their next streak is told again.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .activate import deferred_users
from .state import atomic_json, utc_now

RECORD = "long-deferrals.json"


def _since(marker: dict) -> datetime | None:
    try:
        return datetime.strptime(str(marker.get("since")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None  # the old tracker's one-line markers carry no time: nothing to measure


def _told(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # lost or corrupt: telling again is better than never
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _days(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d{rest // 3600}h" if days else f"{rest // 3600}h{rest % 3600 // 60:02d}m"


def report_long_deferrals(cfg, events, *, now: datetime | None = None) -> list[str]:
    """Log LONG DEFERRAL for each user deferred longer than the limit, once per streak;
    returns those users."""
    now = now or utc_now()
    path = cfg.state_dir / RECORD
    told, still, reported = _told(path), {}, []
    for os_user, marker in sorted(deferred_users(cfg.deferred_dir).items()):
        since = _since(marker)
        if since is None:
            continue
        if told.get(os_user) == marker["since"]:
            still[os_user] = marker["since"]
            continue
        waited = (now - since).total_seconds()
        if waited >= cfg.notify_deferral_after:
            events("LONG DEFERRAL", user=os_user, deferred_for=_days(waited), since=marker["since"],
                   version=marker.get("version"), reason=marker.get("reason"),
                   fix="a turn in flight or recent activity at every window: ask the user, or "
                       "t3-autoupdate drain-deferred when they are idle")
            still[os_user] = marker["since"]
            reported.append(os_user)
    if still != told:
        atomic_json(path, still)
    return reported
