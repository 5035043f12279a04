"""Last-good, the previous good build, and which releases must never be removed.

The releases of last-good and of the build that was last-good before it are the way back
(`t3-autoupdate rollback --to V` needs an installed release, and restores without the
network), and a release a user's link points at is what that user's serve and mints run.
So whatever removes a release asks `removable` first: only a candidate newer than
last-good, that no user runs and that is neither of the two good builds, may go.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import activate
from .staging.releases import remove_release
from .state import atomic_write, read_text_or_none
from .versions import VersionError, compare, validate_version

__all__ = ["previous_good_path", "record_last_good", "kept_releases", "removable", "remove_if_removable"]

log = logging.getLogger("t3-autoupdate.goodbuilds")


def previous_good_path(cfg) -> Path:
    return cfg.state_dir / "previous-good"


def record_last_good(cfg, version: str) -> None:
    """Make `version` last-good; the build it replaces becomes the previous good build."""
    version = validate_version(version, "last-good")
    current = read_text_or_none(cfg.last_good_path)
    if current and current != version:
        atomic_write(previous_good_path(cfg), current + "\n")
    atomic_write(cfg.last_good_path, version + "\n")


def kept_releases(cfg) -> set[str]:
    """Last-good, the previous good build, and every release a user's link points at.
    A link that cannot be read keeps everything (None in the set: see `removable`)."""
    kept = {read_text_or_none(cfg.last_good_path), read_text_or_none(previous_good_path(cfg))}
    for os_user in cfg.os_users:
        try:
            kept.add(activate.release_of_link(cfg.active_link(os_user)))
        except activate.ActivationError:
            kept.add("?")  # cannot tell which release this user runs: remove none
    return {v for v in kept if v}


def removable(cfg, version: str) -> str | None:
    """None when `version`'s release may be removed, else why not."""
    kept = kept_releases(cfg)
    if "?" in kept:
        return "a user's release link cannot be read"
    if version in kept:
        return f"{version} is last-good, the previous good build, or a user's release"
    last_good = read_text_or_none(cfg.last_good_path)
    try:
        if last_good is None or compare(version, last_good) <= 0:
            return f"{version} is not newer than last-good {last_good or '(none)'}: a way back"
    except VersionError as exc:
        return str(exc)
    return None


def remove_if_removable(cfg, version: str) -> bool:
    """Remove a failed candidate's release unless it must be kept; True if removed."""
    why = removable(cfg, version)
    if why:
        log.info("release %s kept: %s", version, why)
        return False
    return remove_release(cfg.releases_dir, version)
