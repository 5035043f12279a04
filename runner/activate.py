"""Activation state: each user's release link, the operators' `t3` link, deferral markers.

docs/architecture.md phase 6: each user's instance and mint run that user's own link,
`<active_dir>/<os_user>` -> `<releases_dir>/<version>`; the link moves only when that
user is restarted, by an atomic rename (`state.atomic_symlink`), so a reader sees the
old release or the new one, never no link. The operators' plain `t3` link follows
last-good (`<release>/bin/t3`). A busy user who could not be restarted gets a deferral
marker, `<deferred_dir>/<os_user>` (atomic JSON), recording that they owe a restart.

All of these live in root's own state directory, never in a user's tree. Every OS user
name is validated against the user map's pattern before any path is built from it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import state
from .usermap import OS_USER_RE
from .versions import VersionError, validate_version

__all__ = ["ActivationError", "release_of_link", "read_release_link", "point_user", "point_bin_link",
           "mark_deferred", "deferred_users", "clear_deferred"]


class ActivationError(RuntimeError):
    """A link or marker is not what it must be (or a bad user/release was named)."""


def _user(os_user: str) -> str:
    if not isinstance(os_user, str) or not OS_USER_RE.fullmatch(os_user):
        raise ActivationError(f"invalid OS user name {os_user!r} (must match {OS_USER_RE.pattern})")
    return os_user


def _release(release_dir: Path) -> tuple[Path, str]:
    """An installed release directory: absolute, named by a valid version, with `bin/t3`."""
    release_dir = Path(release_dir)
    if not release_dir.is_absolute():
        raise ActivationError(f"release directory must be absolute: {release_dir}")
    try:
        version = validate_version(release_dir.name, "release directory name")
    except VersionError as exc:
        raise ActivationError(str(exc)) from None
    if not (release_dir / "bin" / "t3").is_file():
        raise ActivationError(f"{release_dir} is not an installed release (no bin/t3)")
    return release_dir, version


def release_of_link(link: Path) -> str | None:
    """The version a release link points to; None if there is no link.

    A path that exists but is not a symlink, or a target not named by a valid version,
    raises ActivationError (never a guess).
    """
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ActivationError(f"{link} is not a release link: {exc.strerror or exc}") from None
    name = Path(target).name
    try:
        return validate_version(name, f"release link target of {link}")
    except VersionError as exc:
        raise ActivationError(str(exc)) from None


def read_release_link(link: Path) -> tuple[str | None, str | None]:
    """(`release_of_link(link)`, None), or (None, why the link cannot be read): for the commands
    that go on for every other user when one user's link is broken (drain, rollback, status)."""
    try:
        return release_of_link(link), None
    except ActivationError as exc:
        return None, str(exc)


def point_user(active_dir: Path, os_user: str, release_dir: Path) -> str | None:
    """Atomically point `<active_dir>/<os_user>` at `release_dir`; return the version it had.

    The release must be installed (`bin/t3`) and named by a valid version. A link to a
    non-release is replaced (previous None); a non-link in its place is refused.
    """
    link = Path(active_dir) / _user(os_user)
    release_dir, _ = _release(release_dir)
    if os.path.lexists(link) and not os.path.islink(link):
        raise ActivationError(f"{link} exists and is not a release link; refusing to replace it")
    try:
        previous = release_of_link(link)
    except ActivationError:
        previous = None  # a link to something that is not a release: repaired below
    state.atomic_symlink(link, release_dir)
    return previous


def point_bin_link(bin_link: Path, release_dir: Path) -> None:
    """Atomically point the operators' `t3` link at `<release_dir>/bin/t3` (last-good)."""
    release_dir, _ = _release(release_dir)
    bin_link = Path(bin_link)
    if os.path.lexists(bin_link) and not os.path.islink(bin_link):
        raise ActivationError(f"{bin_link} exists and is not a symlink; refusing to replace it")
    state.atomic_symlink(bin_link, release_dir / "bin" / "t3")


def mark_deferred(deferred_dir: Path, os_user: str, *, version: str, reason: str,
                  now=None) -> dict:
    """Record that `os_user` owes a restart onto `version`. `since` keeps the first deferral."""
    path = Path(deferred_dir) / _user(os_user)
    try:
        version = validate_version(version)
    except VersionError as exc:
        raise ActivationError(str(exc)) from None
    at = state.iso(now or state.utc_now())
    previous = _read_marker(path)
    since = previous.get("since") if previous and previous.get("error") is None else None
    marker = {"os_user": os_user, "version": version, "reason": str(reason), "at": at, "since": since or at}
    state.atomic_json(path, marker)
    return marker


def _read_marker(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return {"error": f"unreadable marker: {exc}"}
    try:
        data = json.loads(text)
    except ValueError as exc:
        # The old bash tracker's one-line markers (a host taken over): parsed, not corrupt.
        from .takeover import parse_legacy_marker

        return parse_legacy_marker(text) or {"error": f"corrupt marker: {exc}"}
    return data if isinstance(data, dict) else {"error": "corrupt marker: not a JSON object"}


def deferred_users(deferred_dir: Path) -> dict[str, dict]:
    """os_user -> marker for every deferral marker. A corrupt marker still counts (with `error`):
    the user still owes a restart. Files not named like an OS user (temp files) are ignored."""
    try:
        names = sorted(os.listdir(deferred_dir))
    except FileNotFoundError:
        return {}
    result = {}
    for name in names:
        if OS_USER_RE.fullmatch(name):
            marker = _read_marker(Path(deferred_dir) / name)
            if marker is not None:
                result[name] = marker
    return result


def clear_deferred(deferred_dir: Path, os_user: str) -> bool:
    """Remove `os_user`'s marker (they were restarted); True if there was one."""
    path = Path(deferred_dir) / _user(os_user)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    state.fsync_dir(path.parent)
    return True
