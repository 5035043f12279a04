"""One run, one record: what a bump decided, touched and found, phase by phase.

The record is written atomically as the run journal before each phase (and before each
user's link moves), so a run killed at any point can be finished or undone by the next one
(docs/architecture.md phase 0); the phases write their results into it, and when the run
ends its `summary.json` (read by `history`, the Ansible playbook and `history --json`) is
made from it. Nothing else holds who moved and what failed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .state import atomic_json

PHASES = ("backup", "stage", "health", "canary", "commit")


@dataclass
class RunRecord:
    run_id: str
    version: str  # the build this run installs
    from_version: str | None  # last-good when it started: the way back
    decision: str = ""  # resolve.decide's code
    phase: str = "backup"
    release: str | None = None
    backups: dict[str, dict[str, str]] = field(default_factory=dict)  # os_user -> {database: backup path}
    # OS user -> why their data was not proven (backup failed, health seed refused): deferred unmoved.
    unproven: dict[str, str] = field(default_factory=dict)
    health_report: str | None = None
    moving: list[str] = field(default_factory=list)  # links switched (or about to be) in this run
    passed: list[str] = field(default_factory=list)  # users whose canary passed
    deferred: dict[str, str] = field(default_factory=dict)  # os_user -> why not moved now
    canary_reports: list[str] = field(default_factory=list)
    failed_user: str | None = None  # the first (and last) user whose canary failed
    failure: str = ""
    # Users whose rollback started (relink, then restore): undone again by recovery whatever
    # their link says, since a kill after the relink and before the restore leaves the old
    # build's link on a migrated database, which looks like a user moved back by hand.
    rolling_back: list[str] = field(default_factory=list)
    # Users a rollback could not put back: the journal is kept for them (status shows it, the
    # next command's recovery retries), so the record of who was moved is never lost.
    rollback_failed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)  # every user this run's rollback took back
    set_aside: dict[str, list[str]] = field(default_factory=dict)  # os_user -> databases kept aside
    result: str | None = None  # how the run ended: updated, rolled-back, health-check-failed, ...
    reason: str | None = None

    def save(self, path: Path) -> None:
        atomic_json(path, asdict(self))

    def enter(self, path: Path, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.phase = phase
        self.save(path)

    def per_user(self) -> dict[str, str]:
        """OS user -> where this run left them, in words."""
        where = {u: f"deferred: {r}" for u, r in self.deferred.items()}
        for os_user in self.moving:
            where[os_user] = ("rollback failed" if os_user in self.rollback_failed
                              else "rolled back" if os_user in self.rolled_back else "updated")
        return where

    def summary(self, finished_at: str) -> dict:
        """The run's `summary.json`: the field names `history` and the Ansible playbook read."""
        return {"run_id": self.run_id, "finished_at": finished_at, "from": self.from_version, "to": self.version,
                "decision": self.decision, "result": self.result, "reason": self.reason,
                "backups": self.backups, "health_report": self.health_report, "moved": self.passed,
                "deferred": self.deferred, "canary_reports": self.canary_reports, "rolled_back": self.rolled_back,
                "rollback_failed": self.rollback_failed, "set_aside": self.set_aside, "per_user": self.per_user()}


class RunStopped(Exception):
    """A phase ended the run as handled (exit 1): `result` and `reason` go into the record."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result, self.reason = result, reason


class JournalError(ValueError):
    pass


def load_journal(path: Path) -> RunRecord | None:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JournalError(f"{path}: unreadable journal ({exc}); inspect it and remove it by hand") from None
    try:
        record = RunRecord(**data)
    except TypeError as exc:
        raise JournalError(f"{path}: journal has unexpected fields ({exc})") from None
    if record.phase not in PHASES:
        raise JournalError(f"{path}: unknown phase {record.phase!r}")
    return record


def clear_journal(path: Path) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
