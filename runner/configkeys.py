"""The configuration's keys: `KEYS` (key -> converter, default) and the converters.

A converter turns a raw value (a string from the environment or a default, or a TOML
value) into the typed value; a ValueError's message is the problem, without key or source
(`runner.config.load_config` adds where the value came from). Every key's environment
name is `T3_<KEY>`.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from .notifyurls import DEFAULT_EVENTS, notify_events, notify_urls
from .usermap import OS_USER_RE
from .versions import TRACKS, VersionError, validate_version

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PROGRAM_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")
PACKAGE_RE = re.compile(r"(?:@[a-z0-9~][a-z0-9._~-]*/)?[a-z0-9~][a-z0-9._~-]*")
_COOKIE_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def parse_duration(text: str) -> float:
    """Seconds in `90m`, `6h`, `2d`, `30s` or plain seconds (`3600`, `1.5`); else ValueError."""
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{_show(text)} is not a duration like 90m, 6h, 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw or _CONTROL_RE.search(raw):
        raise ValueError(f"expected a non-empty string without control characters, got {_show(raw)}")
    return raw


def absolute_path(raw: Any) -> Path:
    text = _text(raw)
    if not text.startswith("/"):
        tilde = "'~' is not expanded; " if text.startswith("~") else ""
        raise ValueError(f"{_show(text)}: {tilde}must be an absolute path")
    if ".." in text.split("/"):
        raise ValueError(f"{_show(text)}: must not contain '..'")
    return Path(text)


def _program(raw: Any) -> str:
    text = _text(raw)
    if "/" in text:
        return str(absolute_path(text))
    if not _PROGRAM_RE.fullmatch(text):
        raise ValueError(f"{_show(text)} is neither a bare program name nor an absolute path")
    return text


def _bool(raw: Any) -> bool:
    word = raw.strip().lower() if isinstance(raw, str) else raw
    for value, spellings in ((True, ("1", "true", "yes")), (False, ("0", "false", "no"))):
        if word is value or word in spellings:
            return value
    raise ValueError(f"{_show(raw)} is not a boolean (1/0, true/false, yes/no)")


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def convert(raw: Any) -> int:
        if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,18}", raw.strip()):
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"{_show(raw)} is not a whole number")
        if raw < low or (high is not None and raw > high):
            raise ValueError(f"{raw} is out of range {low}..{'' if high is None else high}")
        return raw
    return convert


def _seconds(allow_zero: bool) -> Callable[[Any], float]:
    def convert(raw: Any) -> float:
        number = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        value = float(raw) if number and math.isfinite(raw) else parse_duration(raw)
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{_show(raw)} must be {'at least' if allow_zero else 'more than'} zero")
        return value
    return convert


def _choice(*allowed: str) -> Callable[[Any], str]:
    def convert(raw: Any) -> str:
        if raw not in allowed:
            raise ValueError(f"{_show(raw)} is not one of {', '.join(allowed)}")
        return raw
    return convert


def _matching(pattern: re.Pattern, what: str) -> Callable[[Any], str]:
    def convert(raw: Any) -> str:
        if not pattern.fullmatch(_text(raw)) or len(raw) > 214:
            raise ValueError(f"{_show(raw)} is not a valid {what}")
        return raw
    return convert


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """No default; an empty string (e.g. `T3_PIN=`) clears a value set in the file."""
    return lambda raw: None if raw is None or raw == "" else convert(raw)


def _version(raw: Any) -> str:
    try:
        return validate_version(raw)
    except VersionError as exc:
        raise ValueError(f"{_show(raw)} is not a valid version: {exc.reason}") from None


def _url(raw: Any) -> str:
    from urllib.parse import urlsplit  # here, not at the top: the mint's start-up skips it

    parts = urlsplit(_text(raw))
    try:  # .port raises ValueError on a malformed port
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0 \
            and not (parts.username or parts.query or parts.fragment)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{_show(raw)} is not an http URL like http://127.0.0.1:3780")
    return raw.rstrip("/")


def _host(raw: Any) -> str:
    import ipaddress  # here, not at the top: the mint's start-up skips it

    try:
        return str(ipaddress.ip_address(_text(raw)))
    except ValueError:
        return _matching(_HOSTNAME_RE, "IP address or host name")(raw)


def _gate_user(raw: Any) -> str:
    """An OS user name, or a numeric uid (a user with no passwd entry); never root."""
    text = raw if isinstance(raw, str) else _show(raw)
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 10:
        if not 0 < int(raw) < 2**32 - 1:
            raise ValueError(f"{_show(raw)}: uid must be 1..4294967294 (never root)")
        return raw
    if not isinstance(raw, str) or not OS_USER_RE.fullmatch(raw) or raw == "root":
        raise ValueError(f"{text} is neither an OS user name (not root) nor a numeric uid")
    return raw


# key -> (converter, default). A default of None on a path key is derived from state_dir.
KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "track": (_choice(*TRACKS), "nightly"),
    "pin": (_optional(_version), None),
    "dry_run": (_bool, False),
    "smoke_port": (_integer(0, 65535), 0),
    "freeze_file": (absolute_path, "/etc/t3-autoupdate.freeze"),
    "state_dir": (absolute_path, "/var/lib/t3-autoupdate"),
    "tmpdir": (absolute_path, None),
    "gate_user": (_gate_user, "t3-gate"),
    "useradd": (_program, "useradd"),
    "releases_dir": (absolute_path, None),
    "active_dir": (absolute_path, None),
    "backup_dest": (absolute_path, "/var/backups/t3-state"),
    "home_root": (absolute_path, "/home"),
    "bin_link": (absolute_path, "/usr/local/bin/t3"),
    "user_map": (absolute_path, "/etc/ttyd-user-map"),
    "dispatch": (_url, "http://127.0.0.1:3780"),
    "dispatch_map": (absolute_path, "/etc/t3-dispatch/dispatch.json"),
    "mint_helper": (absolute_path, "/usr/local/bin/t3-mint"),  # the path the dispatch's sudoers rule allows
    "serve_host": (_host, "0.0.0.0"),
    "package": (_matching(PACKAGE_RE, "npm package name"), "t3"),
    "cookie_name": (_matching(_COOKIE_RE, "cookie name"), "t3_session"),
    "npm": (_program, "npm"),
    "systemctl": (_program, "systemctl"),
    "sqlite3": (_program, "sqlite3"),
    "min_age": (_optional(_seconds(allow_zero=True)), None),
    "ready_timeout": (_seconds(allow_zero=False), 30),
    "backup_timeout": (_seconds(allow_zero=False), 1800),
    "gate_timeout": (_seconds(allow_zero=False), 900),
    "busy_quiet": (_seconds(allow_zero=True), 120),
    "keep_backups": (_integer(1), 3),
    "keep_daily_backups": (_integer(1), 6),  # copies of the daily backup job, per database
    # Notifications (runner/notifyurls.py; sent by runner/notify.py): URLs, which events, how long a send may take.
    "notify_urls": (notify_urls, ""),
    "notify_events": (notify_events, ",".join(DEFAULT_EVENTS)),
    "notify_timeout": (_seconds(allow_zero=False), 10),
    "notify_deferral_after": (_seconds(allow_zero=False), "3d"),  # LONG DEFERRAL (runner/longdefer.py)
}
DERIVED = {"releases_dir": "releases", "active_dir": "active", "tmpdir": "scratch"}
ENV_NAMES = {f"T3_{key.upper()}": key for key in KEYS}
