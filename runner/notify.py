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
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_EVENTS = ("FROZEN", "ROLLED BACK", "ROLLBACK FAILED", "REPEATED REJECTIONS", "HEALTH-CHECK FAILED")
# Every event that may be asked for (notify_events is validated against this).
NOTIFIABLE = DEFAULT_EVENTS + ("update complete", "DEFERRED", "CANARY FAILED", "BACKUP FAILED", "STAGE FAILED",
                               "RESOLVE FAILED", "RECOVERED", "CRASHED", "LONG DEFERRAL")
FREEZING_FAILURES = {"CANARY FAILED", "ROLLED BACK", "ROLLBACK FAILED", "RECOVERED"}
_URL_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\x00-\x20\x7f]+")
# Fields that carry versions, in the order a title prefers them.
_VERSION_FIELDS = ("version", "to", "target", "candidate")


def _apprise():
    import apprise  # imported only when a URL is configured: mint and status never pay for it

    return apprise


def notify_urls(raw: Any) -> tuple[str, ...]:
    """Config converter: a TOML list of apprise URLs, or one string of URLs separated by
    spaces or commas (the environment's form). Only their shape is checked here (importing
    apprise costs seconds, and every `mint` loads the config); `url_problems` asks apprise."""
    if isinstance(raw, str):
        items = [u for u in re.split(r"[\s,]+", raw) if u]
    elif isinstance(raw, list) and all(isinstance(u, str) for u in raw):
        items = list(raw)
    else:
        raise ValueError(f"expected a list of apprise URLs, got {raw!r}")
    for url in items:
        if not _URL_SHAPE.fullmatch(url):
            raise ValueError(f"{_masked(url)!r} is not an apprise URL like json://host:port/path or ntfy://topic")
    return tuple(items)


def url_problems(cfg) -> list[str]:
    """One line per configured URL that apprise cannot send to, naming the key and its source."""
    where = "T3_NOTIFY_URLS (environment)" if cfg.sources.get("notify_urls") == "environment" \
        else f"{cfg.config_file}: notify_urls"
    return [f"{where}: {_masked(url)!r} is not a URL apprise can send to (unknown service or missing parts)"
            for url in cfg.notify_urls if _apprise().Apprise.instantiate(url, suppress_exceptions=True) is None]


def _masked(url: str) -> str:
    return url.split("://", 1)[0] + "://..." if "://" in url else url[:40]


def notify_events(raw: Any) -> tuple[str, ...]:
    """Config converter: event names (a TOML list, or a comma-separated string)."""
    if isinstance(raw, str):
        items = [e.strip() for e in raw.split(",") if e.strip()]
    elif isinstance(raw, (list, tuple)) and all(isinstance(e, str) for e in raw):
        items = list(raw)
    else:
        raise ValueError(f"expected a list of event names, got {raw!r}")
    unknown = [e for e in items if e not in NOTIFIABLE]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r}; one of: {', '.join(NOTIFIABLE)}")
    return tuple(items)


def private_url(url: str) -> str:
    """The URL with its secrets (tokens, passwords) masked and apprise's defaults (the query)
    left out, for config check and logs."""
    plugin = _apprise().Apprise.instantiate(url, suppress_exceptions=True)
    return plugin.url(privacy=True).split("?", 1)[0] if plugin is not None else _masked(url)


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
        apprise = _apprise()
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
            _apprise()  # import now (seconds on a busy host), not inside a send's deadline

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
    usable = [u for u in cfg.notify_urls if _apprise().Apprise.instantiate(u, suppress_exceptions=True) is not None]
    events.notifier = Notifier(tuple(usable), cfg.notify_events, cfg.notify_timeout)
    return events.notifier
