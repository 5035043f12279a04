"""`t3-autoupdate history`: one line per tracker run, from the run summaries.

Each run that got as far as choosing a build has a directory `runs/<run-id>` (the id is
its start time, `YYYYmmddTHHMMSSZ-<pid>`) with `events.log` and, once it ended,
`summary.json`. A run without a summary (killed, crashed, or still running) is listed as
such, with the versions from its `UPDATE START` line; a summary that cannot be read is
listed with the reason. Nothing here raises on a bad file: history is what an operator
reads when something already went wrong.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

RUN_ID_RE = re.compile(r"(\d{8}T\d{6}Z)-\d+")
_FIELD_RE = re.compile(r' (\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _when(text) -> datetime | None:
    for fmt in ("%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(str(text), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _count(value) -> int:
    return len(value) if isinstance(value, (list, dict)) else 0


def _start_fields(events_log: Path) -> dict:
    """The key=value fields of the run's UPDATE START line ({} if there is none)."""
    try:
        lines = events_log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if line.startswith("UPDATE START "):
            return {k: json.loads(v) if v.startswith('"') else v for k, v in _FIELD_RE.findall(line)}
    return {}


def _report(run_dir: Path, summary: dict) -> str:
    """The report to read first: the failing gate's junit report, else the run directory."""
    reports = summary.get("canary_reports")
    if summary.get("result") in ("rolled-back", "rollback-failed") and isinstance(reports, list) and reports:
        return str(reports[-1])
    if summary.get("result") == "health-check-failed" and summary.get("health_report"):
        return str(summary["health_report"])
    return str(run_dir)


def describe_run(run_dir: Path) -> dict:
    """One run as a dict (the `--json` form); `result` is always set."""
    started = _when(RUN_ID_RE.fullmatch(run_dir.name).group(1))
    row = {"run_id": run_dir.name, "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "finished_at": None,
           "from": None, "to": None, "result": None, "duration_s": None, "moved": 0, "deferred": 0,
           "rolled_back": 0, "report": str(run_dir), "reason": None}
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"expected a JSON object, got {type(summary).__name__}")
    except FileNotFoundError:
        start = _start_fields(run_dir / "events.log")
        row.update({"from": start.get("installed"), "to": start.get("target"),
                    "result": "no summary (killed, crashed or still running; see events.log)"})
        return row
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        row["result"] = f"unreadable summary.json ({str(exc).splitlines()[0][:120]})"
        return row
    finished = _when(summary.get("finished_at"))
    row.update({"finished_at": summary.get("finished_at"), "from": summary.get("from"), "to": summary.get("to"),
                "result": str(summary.get("result") or "unknown (summary has no result)"),
                "duration_s": round((finished - started).total_seconds()) if finished else None,
                "moved": _count(summary.get("moved")), "deferred": _count(summary.get("deferred")),
                "rolled_back": _count(summary.get("rolled_back")), "report": _report(run_dir, summary),
                "reason": summary.get("reason")})
    return row


def read_history(runs_dir: Path, *, limit: int = 20) -> list[dict]:
    """The last `limit` runs (0: all), newest first."""
    try:
        names = [p for p in Path(runs_dir).iterdir() if p.is_dir() and RUN_ID_RE.fullmatch(p.name)]
    except FileNotFoundError:
        return []
    names.sort(key=lambda p: p.name, reverse=True)
    return [describe_run(p) for p in (names[:limit] if limit > 0 else names)]


def _duration(seconds) -> str:
    if not isinstance(seconds, int):
        return "?"
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_history(runs: list[dict]) -> str:
    if not runs:
        return "no runs yet"
    versions = [f"{run['from'] or '?'} -> {run['to'] or '?'}" for run in runs]
    wide, result_wide = max(map(len, versions)), max(len(run["result"]) for run in runs)
    out = []
    for run, moved in zip(runs, versions):
        users = f"moved {run['moved']}, deferred {run['deferred']}, rolled back {run['rolled_back']}"
        out.append(f"{run['started_at']}  {moved:<{wide}}  {run['result']:<{result_wide}}  "
                   f"{_duration(run['duration_s']):>6}  {users}  {run['report']}")
    return "\n".join(out)
