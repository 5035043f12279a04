"""Notifications through apprise (Slack, Matrix, ntfy, e-mail, a JSON webhook ...).

The EventLog hands every outcome line to `Notifier.event`; the events named in
`notify_events` are sent, each in its own daemon thread, to every URL of `notify_urls`.
Sending never fails a run nor slows it by more than `notify_timeout`: `finish` waits at
most until each send's deadline, and logs a send that failed or did not finish in time as
`NOTIFY FAILED` (a sent one as `NOTIFIED`); the exit code never changes.

FROZEN is sent only when this invocation froze the tracker after a failure (a canary
failure, a rollback, a recovered interrupted run): the FROZEN that every held run and an
operator's own `freeze` print is not news.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .notifyurls import load_apprise, private_url, sendable, url_problems

FREEZING_FAILURES = {"CANARY FAILED", "ROLLED BACK", "ROLLBACK FAILED", "RECOVERED"}
# Fields that carry versions, in the order a title prefers them.
_VERSION_FIELDS = ("version", "to", "target", "candidate")


def compose(event: str, fields: dict, *, context: dict, run_dir: Path | None, host: str) -> tuple[str, str]:
    """A short title and a body: what happened, where, which run and versions, and where
    the full report is."""
    version = next((str(fields[k]) for k in _VERSION_FIELDS if fields.get(k)),
                   context.get("version") or context.get("to"))
    title = f"t3-autoupdate on {host}: {event}" + (f" {version}" if version else "")
    lines = [f"{event} on {host}"]
    run_id = context.get("run") or (run_dir.name if run_dir else None)
    if run_id:
        lines.append(f"run: {run_id}")
    if context.get("from") and context.get("to"):
        lines.append(f"update: {context['from']} -> {context['to']}")
    lines += [f"{key}: {value}" for key, value in fields.items() if value is not None]
    if run_dir is not None:
        lines.append(f"run directory: {run_dir} (summary.json, events.log, junit reports)")
    return title, "\n".join(lines)


@dataclass
class Send:
    event: str
    url: str
    deadline: float
    thread: threading.Thread | None = None
    outcome: dict = field(default_factory=dict)  # "ok": bool, "error": text


def _deliver(url: str, title: str, body: str, outcome: dict) -> None:
    try:
        apprise = load_apprise()
        sender = apprise.Apprise()
        sender.add(url)
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            ok = sender.notify(title=title, body=body)
        said = [ln for ln in captured.getvalue().splitlines() if ln.strip()]
        outcome["error"] = said[-1] if said else "the receiver did not accept it"
        outcome["ok"] = bool(ok)
    except Exception as exc:  # noqa: BLE001 - a notifier must never raise into a run
        outcome["error"], outcome["ok"] = f"{type(exc).__name__}: {exc}", False


class Notifier:
    def __init__(self, urls: tuple[str, ...], events: tuple[str, ...], timeout: float, *, host: str | None = None):
        self.urls, self.events, self.timeout = tuple(urls), set(events), timeout
        self.host = host or socket.gethostname()
        self.context: dict[str, str] = {}
        self.failure_seen = False
        self.sends: list[Send] = []
        if self.urls:
            load_apprise()  # import now (seconds on a busy host), not inside a send's deadline

    def event(self, event: str, fields: dict, *, run_dir: Path | None) -> None:
        if event == "UPDATE START":
            self.context.update({"run": fields.get("run"), "from": fields.get("installed"), "to": fields.get("target")})
        if fields.get("version"):  # names the build in a later line without one (FROZEN)
            self.context["version"] = str(fields["version"])
        self.failure_seen |= event in FREEZING_FAILURES
        if event not in self.events or (event == "FROZEN" and not self.failure_seen):
            return
        title, body = compose(event, fields, context=self.context, run_dir=run_dir, host=self.host)
        for url in self.urls:
            send = Send(event, url, time.monotonic() + self.timeout)
            send.thread = threading.Thread(target=_deliver, args=(url, title, body, send.outcome),
                                           name=f"notify {event}", daemon=True)
            send.thread.start()
            self.sends.append(send)

    def finish(self, events) -> None:
        """Wait for every send until its deadline, then log each outcome on `events`. A send
        still running is abandoned (a daemon thread: it ends with the process)."""
        sends, self.sends = self.sends, []
        for send in sends:
            send.thread.join(max(0.0, send.deadline - time.monotonic()))
            target = private_url(send.url)
            if send.thread.is_alive():
                events("NOTIFY FAILED", about=send.event, url=target,
                       reason=f"no answer within {self.timeout:g}s (notify_timeout)")
            elif send.outcome.get("ok"):
                events("NOTIFIED", about=send.event, url=target)
            else:
                events("NOTIFY FAILED", about=send.event, url=target, reason=send.outcome.get("error", "?"))


def attach_notifier(cfg, events) -> Notifier | None:
    """Attach a notifier to `events` when the config names URLs; returns it (None if not)."""
    if not cfg.notify_urls:
        return None
    for problem in url_problems(cfg):  # `config check` exits 2 on these; a run goes on without them
        events("NOTIFY FAILED", reason=problem)
    usable = [u for u in cfg.notify_urls if sendable(u)]
    events.notifier = Notifier(tuple(usable), cfg.notify_events, cfg.notify_timeout)
    return events.notifier
