"""The run journal: what phase a run is in and what it has touched, written
atomically before each phase, so a run killed at any point can be finished or
undone by the next one (docs/architecture.md phase 0)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .state import atomic_json

PHASES = ("backup", "stage", "health", "canary", "commit")


@dataclass
class Journal:
    run_id: str
    version: str
    from_version: str | None
    phase: str = "backup"
    release: str | None = None
    backups: dict[str, dict[str, str]] = field(default_factory=dict)  # os_user -> {database: backup path}
    moving: list[str] = field(default_factory=list)  # links switched (or about to be) in this run
    passed: list[str] = field(default_factory=list)  # users whose canary passed
    # Users a rollback could not put back: the journal is kept for them (status shows it, the
    # next command's recovery retries), so the record of who was moved is never lost.
    rollback_failed: list[str] = field(default_factory=list)
    # Users whose rollback started (relink, then restore): undone again by recovery whatever
    # their link says, since a kill after the relink and before the restore leaves the old
    # build's link on a migrated database, which looks like a user moved back by hand.
    rolling_back: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        atomic_json(path, asdict(self))

    def enter(self, path: Path, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.phase = phase
        self.save(path)


class JournalError(ValueError):
    pass


def load_journal(path: Path) -> Journal | None:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JournalError(f"{path}: unreadable journal ({exc}); inspect it and remove it by hand") from None
    try:
        journal = Journal(**data)
    except TypeError as exc:
        raise JournalError(f"{path}: journal has unexpected fields ({exc})") from None
    if journal.phase not in PHASES:
        raise JournalError(f"{path}: unknown phase {journal.phase!r}")
    return journal


def clear_journal(path: Path) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
