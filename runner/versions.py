"""Version strings of t3: strict validation, npm semver precedence, channels.

A version string comes from the registry or from a binary's output, and ends up on a
command line (`npm install t3@<v>`) and in paths (`releases/<v>`). So every string is
validated here, strictly, before it goes anywhere else:

* strict SemVer 2.0 `MAJOR.MINOR.PATCH[-PRERELEASE]`: no leading `v`, no leading zeros
  in numeric identifiers, identifiers of `[0-9A-Za-z-]` only, at most 64 characters;
* build metadata (`+...`) is rejected: it is ignored by precedence, so two different
  strings would compare equal, and t3 never publishes it.

Precedence is npm's (= SemVer 2.0 section 11), computed by the `semver` package:
`0.0.24 < 0.0.25-nightly.20260608.497 < 0.0.25 < 0.0.26-nightly.20260609.498`, and
numeric identifiers compare as numbers (`.999 < .1000`). GNU `sort -V` gets some of
these wrong (it once "upgraded" 0.0.26 to 0.0.26-nightly.20260609.498), and
`packaging.version` cannot parse them at all.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable


__all__ = [
    "MAX_LENGTH", "TRACKS", "VersionError", "validate_version", "compare", "is_newer",
    "sort_versions", "is_nightly", "channel_of", "matches_track", "parse_t3_version_output",
]

MAX_LENGTH = 64
TRACKS = ("nightly", "latest", "preview")
# npm's semver refuses major/minor/patch above Number.MAX_SAFE_INTEGER.
_MAX_SAFE_INTEGER = 2**53 - 1

_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION_RE = re.compile(rf"({_NUM})\.({_NUM})\.({_NUM})(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?")
_NIGHTLY_RE = re.compile(r"nightly\.([0-9]{8})\.(0|[1-9][0-9]*)")
# CSI (colours, cursor), OSC (titles, links; ended by BEL or ST), charset and two-byte escapes.
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]+[0-~]|[@-Z\\^_])")
_T3_VERSION_LINE_RE = re.compile(r"t3 v(\S+)")


class VersionError(ValueError):
    """A version string (or `t3 --version` output) is not acceptable.

    `source` says where the value came from, `value` is the offending value and `reason`
    the problem alone (without source and value), for callers composing their own message.
    """

    def __init__(self, source: str, value: object, reason: str) -> None:
        self.source, self.value, self.reason = source, value, reason
        super().__init__(f"invalid {source} {value!r}: {reason}")


def _reason(text: str) -> str:
    if not text:
        return "empty"
    if len(text) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in text):
        return "contains whitespace or control characters"
    if text[:1] in "vV=":
        return "has a leading 'v' or '='; expected a bare MAJOR.MINOR.PATCH"
    if "+" in text:
        return "has build metadata ('+...'), which is not accepted"
    if text.startswith("-"):
        return "starts with '-'"
    return ("is not strict SemVer MAJOR.MINOR.PATCH[-PRERELEASE] (identifiers of "
            "[0-9A-Za-z-], no leading zeros in numeric ones)")


def validate_version(text: str, source: str = "version") -> str:
    """Return `text` unchanged if it is a strict SemVer version; raise `VersionError`."""
    if not isinstance(text, str):
        raise VersionError(source, text, f"expected a string, got {type(text).__name__}")
    match = _VERSION_RE.fullmatch(text) if len(text) <= MAX_LENGTH else None
    if match is None:
        raise VersionError(source, text, _reason(text))
    if any(int(part) > _MAX_SAFE_INTEGER for part in match.groups()[:3]):
        raise VersionError(source, text, "a numeric part is larger than npm accepts")
    return text


def _parse(text: str, source: str) -> "semver.Version":  # noqa: F821
    import semver  # here: validation alone (the mint, on every login) does not need it

    return semver.Version.parse(validate_version(text, source))


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is lower than, equal to or higher than `b` (npm precedence).

    Both are validated first: an unvalidated string raises `VersionError`.
    """
    return _parse(a, "version").compare(_parse(b, "version"))


def is_newer(candidate: str, current: str) -> bool:
    """True only if `candidate` is strictly newer than `current` (equal is not newer)."""
    return compare(candidate, current) > 0


def sort_versions(versions: Iterable[str], *, reverse: bool = False) -> list[str]:
    """The versions in npm precedence order (oldest first unless `reverse`)."""
    return sorted(versions, key=functools.cmp_to_key(compare), reverse=reverse)


def _prerelease(version: str) -> str | None:
    return _parse(version, "version").prerelease


def is_nightly(version: str) -> bool:
    """True if the prerelease is exactly `nightly.YYYYMMDD.N` with a real calendar date."""
    match = _NIGHTLY_RE.fullmatch(_prerelease(version) or "")
    if match is None:
        return False
    import datetime  # here, not at the top: validation alone (the mint) does not need it

    day = match.group(1)
    try:
        datetime.date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        return False
    return True


def channel_of(version: str) -> str:
    """"stable" (no prerelease), "nightly" (see `is_nightly`) or "other"."""
    if _prerelease(version) is None:
        return "stable"
    return "nightly" if is_nightly(version) else "other"


def matches_track(version: str, track: str) -> bool:
    """Whether `version` belongs to the channel the dist-tag `track` follows.

    `nightly` admits only nightlies, `latest` only stable releases, `preview` only
    `preview.*` prereleases. An unknown track raises `ValueError`.
    """
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r} (expected one of {', '.join(TRACKS)})")
    if track == "nightly":
        return is_nightly(version)
    if track == "latest":
        return channel_of(version) == "stable"
    return (_prerelease(version) or "").startswith("preview.")


def parse_t3_version_output(stdout: str) -> str:
    """The version in `t3 --version` output (`t3 v0.0.24`), validated.

    Colour codes are stripped; blank lines are ignored; anything else (no line, more
    than one line, another form) raises `VersionError`: the check fails closed.
    """
    source = "t3 --version output"
    if not isinstance(stdout, str):
        raise VersionError(source, stdout, f"expected a string, got {type(stdout).__name__}")
    lines = [line.strip() for line in _ANSI_RE.sub("", stdout).splitlines()]
    lines = [line for line in lines if line]
    if len(lines) != 1:
        raise VersionError(source, stdout, f"expected exactly one line 't3 v<version>', "
                                           f"got {len(lines)} non-blank lines")
    match = _T3_VERSION_LINE_RE.fullmatch(lines[0])
    if match is None:
        raise VersionError(source, stdout, "expected the form 't3 v<version>'")
    return validate_version(match.group(1), source)
