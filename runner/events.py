"""Stable, greppable outcome lines for alerting: `EVENT key=value ...` on stderr.

Alert rules match the first word (FROZEN, HEALTH-CHECK FAILED, ROLLED BACK,
ROLLBACK FAILED, DEFERRED, update complete, ...); fields are key=value with
values quoted when they contain spaces. A run also keeps these lines in its
run directory, and counts them in a Prometheus textfile (metrics.prom).

A line stays readable: a field value longer than `REASON_CAP` characters or spanning
several lines (a gate's every failed check, a unit's log excerpt) is cut to its first
failed check, plus the last error line of its log excerpt (the cause), and the whole event, every field in full, is written to
`<details dir>/<event-slug>-<n>.txt`, named in the line as `details=<path>`. The details
dir is the run's directory once the run has one, else the state dir's runs/.
Every line also goes to the notifier, if one is attached (runner/notify.py): the one
place where outcomes are sent on, so no phase has to remember to.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

log = logging.getLogger("t3-autoupdate")
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+=-]+$")
REASON_CAP = 240
# A gate's reason lists failed checks as `test_name[param]: message; test_other: ...`.
_NEXT_CHECK = re.compile(r"; (?=test\w*(?:\[[^\]]*\])?: )")
# pytest's `failed on setup with "runner.t3client.GateFailure: ...`: the class path is noise.
_EXCEPTION_PATH = re.compile(r'"?\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*(?:Error|Failure|Exception): ')
_ERROR_WORDS = re.compile(r"error|fail|fatal|exception|panic|refused|denied|killed", re.I)
# Where a long text may be cut, best first: between failed checks, then inside one.
_CLAUSE_ENDS = ("; ", ". ", ": ", ", ", " (", " - ", " ")


def _text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def format_event(event: str, **fields) -> str:
    parts = [event]
    for key, value in fields.items():
        if value is None:
            continue
        text = _text(value)
        parts.append(f"{key}={text if _BARE.match(text) else json.dumps(text)}")
    return " ".join(parts)


def _cut(text: str, cap: int) -> str:
    """`text` within `cap` characters, cut at the last clause boundary; ` ...` marks a cut."""
    if len(text) <= cap:
        return text
    window = text[:cap - 4]
    for least in (cap * 2 // 3, cap // 3):  # a strong boundary near the cap, else any boundary
        for mark in _CLAUSE_ENDS:
            cut = window.rfind(mark)
            if cut >= least:
                return window[:cut].rstrip(" ;,:(-.") + " ..."
    return window + " ..."


def _excerpt_verdict(rest: str, more_lines: list[str]) -> str | None:
    """A log excerpt's verdict: its last line naming an error (a process logs why it gives up
    last). The excerpt follows `log: ` with lines joined by ` | ` (the gates' form), or is
    the text's further lines."""
    entries = rest[len("log: "):].split(" | ") if rest.startswith("log: ") else more_lines
    for entry in reversed(entries):
        entry = entry.strip().strip('"').strip()
        if _ERROR_WORDS.search(entry):
            return entry
    return None


def first_clause(text: str, cap: int = REASON_CAP) -> str:
    """The first failed check of `text` in one clause, plus its log excerpt's verdict if it
    has one, within `cap` characters; ` ...` marks that something was left out."""
    whole = text.strip()
    lines = whole.splitlines() or [""]
    line = lines[0].strip()
    problem = _NEXT_CHECK.split(line, 1)[0] if len(line) > cap else line
    if problem == whole and len(problem) <= cap:
        return problem
    clause, _, rest = problem.partition("; ")
    if not rest.startswith("log: "):
        clause = problem
    clause = _EXCEPTION_PATH.sub("", clause)
    verdict = _excerpt_verdict(rest, lines[1:])
    if not verdict or verdict in clause:
        short = _cut(clause, cap)
        return short if short.endswith(" ...") else short + " ..."
    clause = _cut(clause, max(cap * 2 // 3, cap - 5 - len(verdict)))
    clause = clause[:-4] if clause.endswith(" ...") else clause
    return clause + " ... " + _cut(verdict, cap - 5 - len(clause))


def needs_details(value) -> bool:
    """Free text too long for one line. A single token (a path, a version, a run id) is never
    cut, however long: a report's path must stay usable in the line."""
    return (isinstance(value, str) and not _BARE.match(value)
            and (len(value) > REASON_CAP or "\n" in value.strip()))


def event_slug(event: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", event.lower()).strip("-") or "event"


def write_details(directory: Path, event: str, fields: dict) -> Path:
    """`<directory>/<slug>-<n>.txt` with the event in full; `n` is the first free number, taken
    with O_EXCL so two runs sharing the directory never overwrite each other's details."""
    directory.mkdir(parents=True, exist_ok=True)
    body = event + "\n" + "".join(f"\n{key}:\n{_text(value)}\n" for key, value in fields.items() if value is not None)
    slug = event_slug(event)
    for n in range(1, 10000):
        path = directory / f"{slug}-{n}.txt"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            out.write(body)
        return path
    raise OSError(f"no free details file name for {slug} in {directory}")


class EventLog:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lines: list[str] = []
        self.files: list[Path] = []
        self.details_dir: Path | None = None   # where full texts go until a run dir exists
        self.run_dir: Path | None = None
        self.notifier = None                   # runner.notify.Notifier, attached by the CLI

    def __call__(self, event: str, **fields) -> str:
        shown = self._shorten(event, fields)
        line = format_event(event, **shown)
        self.lines.append(line)
        print(f"t3-autoupdate: {line}", file=self.stream, flush=True)
        for path in self.files:
            with open(path, "a") as out:
                out.write(line + "\n")
        log.info(line)
        if self.notifier is not None:
            self.notifier.event(event, shown, run_dir=self.run_dir)
        return line

    def _shorten(self, event: str, fields: dict) -> dict:
        long = [key for key, value in fields.items() if needs_details(value)]
        directory = self.run_dir or self.details_dir
        if not long or directory is None:
            return fields
        try:
            path = write_details(directory, event, fields)
        except OSError as exc:  # the line must still be logged: keep the text inline, say why
            log.warning("could not write details of %s: %s", event, exc)
            return fields
        return {**{k: first_clause(v) if k in long else v for k, v in fields.items()}, "details": str(path)}

    def also_to(self, path: Path) -> None:
        """Also append every line (those so far too) to `path`, a run's events.log; the run's
        directory becomes where full texts of long fields go."""
        path.parent.mkdir(parents=True, exist_ok=True)
        for line in self.lines:
            with open(path, "a") as out:
                out.write(line + "\n")
        self.files.append(path)
        self.run_dir = path.parent
