"""Phase 2, resolve: what does the tracked dist-tag point at, and should this run move to it?

`resolve_target` asks the registry; `decide` is the pure policy on top of its answer.

Freshness (measured against the simulated registry, see tests/sim/registry.py): on a network
error npm falls back to its cached packument and prints the stale answer with exit 0, and it
has no "online only" switch. So every resolve runs `npm view` with a FRESH, EMPTY cache
created for that one call (`--cache <scratch>/npm-view-XXXX/cache`, removed afterwards), plus
`--prefer-online`, `--fetch-retries=0` and a fetch timeout: an outage is then an error within
seconds, never a stale version. The tag is always named (`t3@nightly`, `t3@latest`): a bare
`npm view t3` means `t3@latest` and prints nothing, exit 0, when there is no such tag.

Everything npm prints is parsed strictly and the version validated (`versions.validate_version`)
before it is returned: a missing, ambiguous or malformed answer raises `ResolveError`.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from . import proc, versions

__all__ = [
    "ResolveError", "Target", "Decision", "CODES", "validate_package", "validate_tag",
    "npm_view_argv", "parse_view_output", "parse_publish_time", "resolve_target", "decide",
]

log = logging.getLogger("t3-autoupdate.resolve")

# npm package names (optionally scoped), as config.py accepts them.
_PACKAGE_RE = re.compile(r"(?:@[a-z0-9~][a-z0-9._~-]*/)?[a-z0-9~][a-z0-9._~-]*")
# A dist-tag: a letter first, then letters, digits, '.', '_', '-'. npm refuses tags that are
# valid semver ranges ("v1", "1.x"), which a leading letter other than v+digit excludes.
_TAG_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_NPM_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")

DEFAULT_FETCH_TIMEOUT_MS = 15000


class ResolveError(Exception):
    """The registry gave no usable answer (unreachable, unknown tag, malformed output).

    Fail closed: the run installs nothing."""


def validate_package(package: str) -> str:
    if not isinstance(package, str) or len(package) > 214 or not _PACKAGE_RE.fullmatch(package):
        raise ValueError(f"invalid npm package name {package!r}")
    return package


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag) or re.match(r"[vV][0-9]", tag):
        raise ValueError(f"invalid npm dist-tag {tag!r}")
    return tag


def npm_view_argv(npm: str, package: str, tag: str, cache_dir: Path, *,
                  fetch_timeout_ms: int = DEFAULT_FETCH_TIMEOUT_MS) -> list[str]:
    """`npm view <pkg>@<tag> version time dist-tags --json`, fresh and failing fast."""
    spec = f"{validate_package(package)}@{validate_tag(tag)}"
    if isinstance(fetch_timeout_ms, bool) or not isinstance(fetch_timeout_ms, int) or fetch_timeout_ms <= 0:
        raise ValueError(f"fetch_timeout_ms must be a positive int, got {fetch_timeout_ms!r}")
    return [str(npm), "view", spec, "version", "time", "dist-tags", "--json",
            "--prefer-online", "--fetch-retries=0", f"--fetch-timeout={fetch_timeout_ms}",
            "--cache", str(cache_dir)]


@dataclass(frozen=True)
class Target:
    """What the tracked tag points at: a validated version and its publish time (UTC), if known."""

    version: str
    published_at: datetime | None
    tag: str = ""


def parse_publish_time(text: object) -> datetime:
    """npm's `2026-06-08T03:14:15.123Z` as an aware UTC datetime; ValueError otherwise."""
    if not isinstance(text, str) or not _NPM_TIME_RE.fullmatch(text):
        raise ValueError(f"publish time {text!r} is not of the form 2026-06-08T03:14:15.123Z")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


def _show(text: str, limit: int = 300) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_view_output(stdout: str, tag: str) -> Target:
    """Parse `npm view <pkg>@<tag> version time dist-tags --json` output strictly.

    Accepted: an object with a string `version` (and optionally `time`, `dist-tags`), or a
    bare JSON string (npm unwraps an object holding only `version`). Refused with
    ResolveError: nothing, non-JSON, a list (several versions matched), an invalid version,
    a `dist-tags` entry for the tag that disagrees with `version`, a malformed publish time.
    """
    if not stdout.strip():
        raise ResolveError(f"npm view printed nothing for tag {tag!r}")
    try:
        data = json.loads(stdout)
    except ValueError:
        raise ResolveError(f"npm view printed no JSON: {_show(stdout)}") from None
    if isinstance(data, str):
        data = {"version": data}
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        raise ResolveError(f"npm view printed no single version for tag {tag!r}: {_show(stdout)}")
    try:
        version = versions.validate_version(data["version"], f"version of dist-tag {tag!r}")
    except versions.VersionError as exc:
        raise ResolveError(f"registry answered an unacceptable version: {exc}") from None
    tags = data.get("dist-tags")
    if tags is not None:
        tagged = tags.get(tag) if isinstance(tags, dict) else None
        if tagged != version:
            raise ResolveError(f"npm view answered {version} but dist-tags say {tag} -> {tagged}")
    published_at = None
    times = data.get("time")
    if times is not None:
        if not isinstance(times, dict):
            raise ResolveError(f"npm view printed a malformed time map: {_show(json.dumps(times))}")
        if version in times:
            try:
                published_at = parse_publish_time(times[version])
            except ValueError as exc:
                raise ResolveError(f"{version}: {exc}") from None
    return Target(version, published_at, tag)


def _npm_failure(exc: proc.CommandError) -> str:
    """What npm said, briefly: the `--json` error object if there is one, else the output tail."""
    try:
        err = json.loads(exc.stdout).get("error") or {}
        if err.get("code") or err.get("summary"):
            return f"{err.get('code', '?')}: {err.get('summary', '')}".strip()
    except (ValueError, AttributeError):
        pass
    tail = (exc.stderr or exc.stdout).strip().splitlines()[-3:]
    return " | ".join(tail) or exc.reason


def resolve_target(npm: str, package: str, tag: str, *, env: Mapping[str, str], scratch_dir: Path,
                   timeout: float = 60, fetch_timeout_ms: int = DEFAULT_FETCH_TIMEOUT_MS) -> Target:
    """The version `<package>@<tag>` points at now, asked with an empty per-call cache.

    `tag` is the tracked dist-tag (config `track`), always named explicitly. Raises
    ResolveError when npm fails or answers anything not strictly valid.
    """
    scratch_dir = Path(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="npm-view-", dir=scratch_dir))
    try:
        argv = npm_view_argv(npm, package, tag, work / "cache", fetch_timeout_ms=fetch_timeout_ms)
        try:
            # cwd: an empty directory of our own, so no stray `.npmrc` applies. run_light: this
            # is the only command of a run with nothing to do, which then never imports `sh`.
            done = proc.run_light(argv, env=env, cwd=work, timeout=timeout)
        except proc.CommandError as exc:
            raise ResolveError(f"npm view {package}@{tag} failed ({exc.reason}): {_npm_failure(exc)}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    target = parse_view_output(done.stdout, tag)
    log.info("resolve: %s@%s -> %s (published %s)", package, tag, target.version,
             target.published_at.isoformat() if target.published_at else "unknown")
    return target


# --------------------------------------------------------------------------- the decision

#: Stable tokens for logs and metrics (`decision=<code>`).
CODES = {
    "newer": "install: strictly newer, on the track, not quarantined, old enough",
    "pinned": "install: the pinned version (up or down)",
    "pinned-current": "hold: the pinned version is installed",
    "pinned-down": "hold: the pin is older than last-good; going down needs a restore: `rollback --to`",
    "pinned-quarantined": "hold: the pinned version is quarantined; clear the quarantine first",
    "already-current": "hold: the target is the installed version",
    "not-newer": "hold: the target is older than the installed version (tag moved backward)",
    "not-on-track": "hold: the target is not of the tracked channel",
    "quarantined": "hold: the target failed a gate before",
    "no-publish-time": "hold: a minimum age is set and the publish time is unknown",
    "too-young": "hold: the target is younger than the minimum age",
}


@dataclass(frozen=True)
class Decision:
    action: str  # "install" | "hold"
    version: str | None  # the version to install, or the one considered
    reason: str
    code: str


def _hold(version: str | None, code: str, reason: str) -> Decision:
    return Decision("hold", version, reason, code)


def decide(target: Target | None, *, installed: str | None, track: str, pin: str | None,
           quarantined: set[str] | frozenset[str], min_age: float | None, now: datetime) -> Decision:
    """The pure policy of phase 2. `target` may be None only when pinned.

    A pin moves up to exactly the pinned version, whatever the tag, the track and the minimum
    age say; a pin below `installed` holds (`pinned-down`: the way down is `rollback --to`, a
    restore); a quarantined pin is refused (fail closed: the operator clears the
    quarantine explicitly). Otherwise the target must be strictly newer than `installed` (npm
    precedence; `installed=None` means nothing is installed yet), of the tracked channel, not
    quarantined, and at least `min_age` seconds old (unknown publish time: refused).
    """
    if now.tzinfo is None:
        raise ValueError("decide: `now` must be timezone-aware")
    if pin is not None:
        versions.validate_version(pin, "pin")
        if installed is not None and versions.compare(pin, installed) == 0:
            return _hold(pin, "pinned-current", f"pinned to {pin}, which is installed")
        if installed is not None and versions.compare(pin, installed) < 0:
            # An older build on data a newer one migrated fails at query time, and a pre-V2 build
            # ignores statev2.sqlite: going down is a restore, never an install (nothing is
            # quarantined or removed, so the way back stays installed).
            return _hold(pin, "pinned-down", f"pinned to {pin}, older than last-good {installed}: going down "
                                             f"needs a database restore; run `t3-autoupdate rollback --to {pin}`")
        if pin in quarantined:
            return _hold(pin, "pinned-quarantined",
                         f"pinned to {pin}, but {pin} is quarantined (failed a gate); clear it to install it")
        where = "nothing installed" if installed is None else f"up from {installed}"
        return Decision("install", pin, f"pinned to {pin} ({where})", "pinned")
    if target is None:
        raise ValueError("decide: no target and no pin")
    version = versions.validate_version(target.version, "target version")
    if installed is not None:
        order = versions.compare(version, installed)
        if order == 0:
            return _hold(version, "already-current", f"{version} is already installed")
        if order < 0:
            return _hold(version, "not-newer", f"{version} is older than the installed {installed} "
                                               "(the tag moved backward); never downgrade unless pinned")
    if not versions.matches_track(version, track):
        return _hold(version, "not-on-track", f"{version} is not a {track} build")
    if version in quarantined:
        return _hold(version, "quarantined", f"{version} is quarantined (it failed a gate before)")
    if min_age is not None:
        if target.published_at is None:
            return _hold(version, "no-publish-time", f"min_age is {min_age:g}s and the registry gave "
                                                     f"no publish time for {version}")
        age = (now - target.published_at).total_seconds()
        if age < min_age:
            return _hold(version, "too-young", f"{version} was published {age:.0f}s ago, "
                                               f"less than min_age {min_age:g}s")
    frm = "nothing installed" if installed is None else f"newer than {installed}"
    return Decision("install", version, f"{version} is {frm}", "newer")
