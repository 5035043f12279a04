"""Taking over a host run by the old bash tracker, and finding servers not on their link.

The bash tracker kept its state in the same directory as this project
(`/var/lib/t3-autoupdate/`): `last-good`, one-line `deferred/<user>` markers, the
freeze file `/etc/t3-autoupdate.freeze`, and its daily and pre-bump copies in
`<backup_dest>/<user>/` (`state-<ts>.sqlite`, `state-prebump-<ver>-<ts>.sqlite`). Its
`last-good` alone must not make `adopt` think the project already manages the host.

After a takeover, each user's server keeps running what it was started with (the old
global `t3`) until it is restarted; `running_off_link` tells those users apart so the
drainer can move them once idle and `status` can say so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .versions import VersionError, validate_version

# What only this project writes in the state dir once it manages a host: any of them
# means "already managed". Not `releases/`: a staging that failed during adopt leaves it,
# and the operator's retry of adopt must not be refused for that.
PROJECT_MARKERS = ("active", "journal", "runs", "quarantine")
# The bash tracker's copies: `state-<ts>.sqlite` (daily) and `state-prebump-<ver>-<ts>.sqlite`,
# with its own timestamp format; the project's own copies carry a manifest beside them.
_STAMP = r"(?P<ts>\d{8}[-T_]?\d{4,6}Z?|\d{9,})"  # 20260601-033000, 20260601T033000Z, epoch seconds
_LEGACY_PREBUMP = re.compile(rf"state-prebump-(?P<version>.+?)-{_STAMP}\.sqlite")
_LEGACY_DAILY = re.compile(rf"state-{_STAMP}\.sqlite")


@dataclass(frozen=True)
class RestorePoint:
    os_user: str
    path: Path
    kind: str  # "daily" or "prebump"
    version: str | None
    stamp: str


def managed_by_project(state_dir: Path) -> list[str]:
    """The project-owned entries present in `state_dir` (empty: the project has never run here).

    A directory counts only when it holds something: every command first creates the
    state directories with their modes (state.secure_state_dirs), empty."""
    def in_use(path: Path) -> bool:
        if path.is_dir() and not path.is_symlink():
            return any(path.iterdir())
        return path.exists() or path.is_symlink()

    return [name for name in PROJECT_MARKERS if in_use(Path(state_dir) / name)]


def legacy_restore_points(backup_dest: Path, os_user: str) -> list[RestorePoint]:
    """The bash tracker's copies of one user's database, newest first (by their stamp).

    Files with a project manifest beside them are the project's own, not listed here.
    """
    folder = Path(backup_dest) / os_user
    try:
        names = sorted(p.name for p in folder.iterdir() if not p.is_symlink() and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []
    points = []
    for name in names:
        if (folder / f".{name}.json").exists():
            continue
        if m := _LEGACY_PREBUMP.fullmatch(name):
            points.append(RestorePoint(os_user, folder / name, "prebump", m["version"], m["ts"]))
        elif m := _LEGACY_DAILY.fullmatch(name):
            points.append(RestorePoint(os_user, folder / name, "daily", None, m["ts"]))
    return sorted(points, key=lambda p: p.stamp, reverse=True)


def parse_legacy_marker(text: str) -> dict | None:
    """A one-line `deferred/<user>` marker of the bash tracker: `<version> [reason...]`, or a
    line starting with a stamp (a digit; then all of it is the reason). None for anything
    else (several lines, or text a JSON writer left half-done): that is a corrupt marker."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0][0].isdigit():
        return None
    first, _, rest = lines[0].partition(" ")
    try:
        version = validate_version(first.strip(), "marker")
    except VersionError:
        return {"version": None, "reason": lines[0], "legacy": True}
    return {"version": version, "reason": rest.strip() or "deferred by the old tracker", "legacy": True}


def runs_link(cmdline: list[str], link: Path) -> bool:
    """Whether a process command line runs the user's release link (`<link>/bin/t3`), as the
    installed unit starts it; a server started from a global `t3` does not."""
    wanted = f"{link}/bin/t3"
    return any(arg == wanted for arg in cmdline[:3])


def process_cmdline(pid: int) -> list[str] | None:
    """`/proc/<pid>/cmdline` split at NULs (None: no such process). Reading procfs follows no
    user-controlled path."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def running_off_link(services, unit: str, link: Path) -> str | None:
    """Why the unit's running server is not on `link` (e.g. still the old global t3), or None
    when it is, or when nothing runs (nothing to move)."""
    pid = services.main_pid(unit)
    if not pid:
        return None
    cmdline = process_cmdline(pid)
    if cmdline is None or runs_link(cmdline, link):
        return None
    if not any(arg.endswith("/t3") or arg.endswith("/t3.js") for arg in cmdline[:3]):
        # The command line does not say which binary runs (e.g. a renamed process title):
        # unknown is not "off the link", or the drainer would restart that user every night.
        return None
    shown = " ".join(cmdline[:2])
    return f"running {shown!r}, not {link}/bin/t3"
