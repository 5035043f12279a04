"""Quarantine: a build that failed a gate is never retried until an operator clears it.

One record per build, `<quarantine_dir>/<version>.json` (written atomically):
`{"version", "reason", "report", "run_id", "when"}`. The file's presence is what counts:
a record that cannot be read or parsed still quarantines its version (fail closed), and
`read_quarantine` then says so instead of failing. Quarantining a version again replaces
its record (the latest failure is the one to read) and keeps the first `first_when`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from . import state, versions

__all__ = ["quarantine_build", "quarantined_versions", "clear_quarantine", "read_quarantine", "listing_lines"]

log = logging.getLogger("t3-autoupdate.quarantine")


def _record_path(quarantine_dir: Path, version: str) -> Path:
    return Path(quarantine_dir) / f"{versions.validate_version(version)}.json"


def quarantine_build(quarantine_dir: Path, version: str, *, reason: str, report_path: Path | str | None,
                     run_id: str) -> dict:
    """Record that `version` failed a gate; returns the record written."""
    path = _record_path(quarantine_dir, version)
    previous = read_quarantine(quarantine_dir, version) or {}
    when = state.iso(state.utc_now())
    record = {
        "version": version,
        "reason": str(reason),
        "report": None if report_path is None else str(report_path),
        "run_id": str(run_id),
        "when": when,
        "first_when": previous.get("first_when") or previous.get("when") or when,
    }
    state.atomic_json(path, record)
    log.warning("quarantine: %s quarantined (run %s): %s", version, run_id, reason)
    return record


def quarantined_versions(quarantine_dir: Path) -> set[str]:
    """Every quarantined version (records whose name is not `<valid version>.json` are ignored).

    A missing directory means none; any other error reading it propagates (fail closed)."""
    try:
        names = os.listdir(quarantine_dir)
    except FileNotFoundError:
        return set()
    found = set()
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        stem = name[: -len(".json")]
        try:
            found.add(versions.validate_version(stem))
        except versions.VersionError:
            log.warning("quarantine: ignoring %s (not <version>.json)", Path(quarantine_dir) / name)
    return found


def read_quarantine(quarantine_dir: Path, version: str) -> dict | None:
    """The record, None if the version is not quarantined, or a stand-in if it is unreadable."""
    path = _record_path(quarantine_dir, version)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"version": version, "reason": f"unreadable quarantine record {path}: {exc}",
                "report": None, "run_id": None, "when": None}
    if not isinstance(data, dict):
        return {"version": version, "reason": f"malformed quarantine record {path}",
                "report": None, "run_id": None, "when": None}
    return data


def clear_quarantine(quarantine_dir: Path, version: str) -> bool:
    """Remove the record (an operator's decision); False if it was not quarantined."""
    path = _record_path(quarantine_dir, version)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    state.fsync_dir(path.parent)
    log.warning("quarantine: %s cleared", version)
    return True


def listing_lines(quarantine_dir: Path) -> list[str]:
    """`version<TAB>when<TAB>reason<TAB>report` per quarantined build, oldest version first;
    `none` when nothing is quarantined (an empty output reads like a failure)."""
    lines = []
    for version in versions.sort_versions(quarantined_versions(quarantine_dir)):
        record = read_quarantine(quarantine_dir, version) or {}
        lines.append(f"{version}\t{record.get('when', '?')}\t{record.get('reason', '?')}\t{record.get('report') or '-'}")
    return lines or ["none"]
