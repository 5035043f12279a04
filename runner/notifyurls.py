"""The notification settings, as the config reads them: apprise URLs (their shape; `url_problems`
asks apprise itself) and event names, and URLs shown with their secrets masked.

Light on purpose: the config, and so every login's `mint`, loads this module; the sending
(threads, sockets) is `runner.notify`, loaded only by the commands that notify, and apprise
(seconds to import) only when a URL is configured and asked about.
"""
from __future__ import annotations

import re
from typing import Any

DEFAULT_EVENTS = ("FROZEN", "ROLLED BACK", "ROLLBACK FAILED", "REPEATED REJECTIONS", "HEALTH-CHECK FAILED")
# Every event that may be asked for (notify_events is validated against this).
NOTIFIABLE = DEFAULT_EVENTS + ("update complete", "DEFERRED", "CANARY FAILED", "BACKUP FAILED", "STAGE FAILED",
                               "RESOLVE FAILED", "RECOVERED", "CRASHED", "LONG DEFERRAL")
_URL_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\x00-\x20\x7f]+")


def load_apprise():
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
            for url in cfg.notify_urls if not sendable(url)]


def sendable(url: str) -> bool:
    """apprise knows the service and the URL has every part it needs."""
    return load_apprise().Apprise.instantiate(url, suppress_exceptions=True) is not None


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
    plugin = load_apprise().Apprise.instantiate(url, suppress_exceptions=True)
    return plugin.url(privacy=True).split("?", 1)[0] if plugin is not None else _masked(url)
