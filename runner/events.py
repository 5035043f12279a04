"""Stable, greppable outcome lines for alerting: `EVENT key=value ...` on stderr.

Alert rules match the first word (FROZEN, HEALTH-CHECK FAILED, ROLLED BACK,
ROLLBACK FAILED, DEFERRED, update complete, ...); fields are key=value with
values quoted when they contain spaces. A run also keeps these lines in its
run directory, and counts them in a Prometheus textfile (metrics.prom).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger("t3-autoupdate")
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+=-]+$")


def format_event(event: str, **fields) -> str:
    parts = [event]
    for key, value in fields.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        parts.append(f"{key}={text if _BARE.match(text) else json.dumps(text)}")
    return " ".join(parts)


class EventLog:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lines: list[str] = []
        self.files: list[Path] = []

    def __call__(self, event: str, **fields) -> str:
        line = format_event(event, **fields)
        self.lines.append(line)
        print(f"t3-autoupdate: {line}", file=self.stream, flush=True)
        for path in self.files:
            with open(path, "a") as out:
                out.write(line + "\n")
        log.info(line)
        return line

    def also_to(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for line in self.lines:
            with open(path, "a") as out:
                out.write(line + "\n")
        self.files.append(path)
