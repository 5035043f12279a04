"""Private scratch space: the only place a run (or the gate user) writes temporary files.

Layout, under config `tmpdir` (default `<state dir>/scratch`, on disk, never a shared
world-writable directory; config refuses one that is writable by others or not root's):

    <tmpdir>/                      root:<gate gid> 0710   made here if missing, checked if present
      <purpose>-XXXXXXXX/          root:<gate gid> 0710   mkdtemp: a fresh, unguessable name
        gate/                      <gate>:<gate>   0700   the gate user's own, nothing else's

Group execute (0710) lets the gate user traverse to its own directory and nobody else
even that: a local user can neither list, pre-create, nor swap anything in the chain, so
no path root writes can be redirected. Nothing is reused: each call makes a new mkdtemp
directory, and the whole tree is removed when the context exits.

    with private_scratch(cfg, "stage") as (root_dir, gate_dir): ...

`root_dir` is for root's own files (the gate user can traverse it but cannot list it or
create in it; give root's files mode 0600); `gate_dir` is where the gate user works.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import proc
from .gateuser import gate_ids

__all__ = ["ScratchError", "private_scratch", "ensure_scratch_root", "remove_leftovers", "SCRATCH_MODE", "GATE_DIR"]

SCRATCH_MODE = 0o710
GATE_DIR = "gate"
_PURPOSE_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")


class ScratchError(RuntimeError):
    """The scratch root is not private (or could not be made so)."""


def ensure_scratch_root(root: Path, gate: proc.UserIds) -> Path:
    """`root` as a directory of root's, group the gate user's, mode 0710; created if missing.

    An existing root that is not a directory (a symlink included) or not the runner's own is
    refused, never adopted or followed."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ScratchError(f"scratch root {root} belongs to uid {st.st_uid}, not the runner")
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != gate.gid):
            raise ScratchError(f"scratch root {root} is writable by others (mode {stat.S_IMODE(st.st_mode):o})")
        os.fchown(fd, os.geteuid(), gate.gid)
        os.fchmod(fd, SCRATCH_MODE)
    finally:
        os.close(fd)
    return root


@contextmanager
def private_scratch(cfg, purpose: str, gate: proc.UserIds | None = None) -> Iterator[tuple[Path, Path]]:
    """A fresh private scratch tree for one task: yields (root_dir, gate_dir); removed on exit.

    `gate` defaults to the configured gate user (`gateuser.gate_ids(cfg)`)."""
    if not isinstance(purpose, str) or not _PURPOSE_RE.fullmatch(purpose):
        raise ValueError(f"private_scratch: purpose {purpose!r} must match {_PURPOSE_RE.pattern}")
    gate = gate or gate_ids(cfg)
    parent = ensure_scratch_root(Path(cfg.tmpdir), gate)
    root_dir = Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=parent))  # 0700, ours
    try:
        os.chown(root_dir, os.geteuid(), gate.gid, follow_symlinks=False)
        os.chmod(root_dir, SCRATCH_MODE)
        gate_dir = root_dir / GATE_DIR
        os.mkdir(gate_dir, 0o700)
        os.chown(gate_dir, gate.uid, gate.gid, follow_symlinks=False)
        os.chmod(gate_dir, 0o700)
        yield root_dir, gate_dir
    finally:
        shutil.rmtree(root_dir, ignore_errors=True)


def remove_leftovers(cfg, purpose: str) -> list[Path]:
    """Remove what a killed run left of `private_scratch(cfg, purpose)`: the `<purpose>-*`
    directories directly below the scratch root (root's own, nobody else can create there);
    a symlink or anything not a directory is left alone, never followed. Returns the removed."""
    if not _PURPOSE_RE.fullmatch(purpose):
        raise ValueError(f"remove_leftovers: purpose {purpose!r} must match {_PURPOSE_RE.pattern}")
    root = Path(cfg.tmpdir)
    removed = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(f"{purpose}-") or len(name) != len(purpose) + 9:  # mkdtemp's 8 characters
            continue
        path = root / name
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
