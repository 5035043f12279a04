"""Staging as the gate user: its environment, and root taking over what it produced.

The gate user (config `gate_user`) runs npm and the candidate's `t3 --version` in its own
0700 directory of private scratch (`runner.scratch`). Root then copies the fetched tarball
out of its npm cache (`runner.staging.npmcache`, no-follow) and moves the installed tree
into the release's staging dir, making it root's (`adopt_gate_tree`, `take_ownership`), so users run a release the
gate user cannot change and no gate-made symlink is ever followed.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from . import proc

__all__ = ["GateWork", "gate_env", "take_ownership", "adopt_gate_tree"]


@dataclass(frozen=True)
class GateWork:
    """As whom and where candidate code runs while staging: the gate user, in its own private
    0700 directory (`runner.scratch.private_scratch`'s gate_dir), with an explicit environment."""
    user: proc.UserIds
    dir: Path
    registry: str | None = None

    def env(self) -> dict[str, str]:
        return gate_env(self.dir, self.registry)

    def run_kwargs(self) -> dict:
        return {"as_user": self.user, "env": self.env()}

    def subdir(self, name: str) -> Path:
        """A fresh directory of the gate user's inside its own (made by root, owned by the gate)."""
        path = self.dir / name
        os.mkdir(path, 0o700)
        os.chown(path, self.user.uid, self.user.gid, follow_symlinks=False)
        return path


def gate_env(gate_dir: Path, registry: str | None) -> dict[str, str]:
    """npm's whole environment as the gate user: HOME, cache and prefix in its private dir, the
    registry passed through, nothing else of root's (no token, no root npmrc)."""
    extra = {"HOME": str(gate_dir / "home"), "npm_config_cache": str(gate_dir / "npm-cache"),
             "npm_config_prefix": str(gate_dir / "npm-prefix"), "npm_config_update_notifier": "false",
             "npm_config_audit": "false", "npm_config_fund": "false"}
    if registry:
        extra["npm_config_registry"] = registry
    return proc.child_env(extra)


def take_ownership(top: Path) -> None:
    """Make a tree the gate user wrote root's: root:root, dirs 0755, files 0644 (0755 if
    executable), symlinks kept only when they stay inside the tree; anything else refused.

    Walks by descriptor (os.fwalk, no-follow), so a swapped path is never followed."""
    top = Path(top)
    real_top = os.path.realpath(top)
    for dirpath, _dirs, files, dfd in os.fwalk(top, follow_symlinks=False):
        os.fchown(dfd, 0, 0)
        os.fchmod(dfd, 0o755)
        for name in files:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.chown(name, 0, 0, dir_fd=dfd, follow_symlinks=False)
                target = os.path.realpath(os.path.join(dirpath, name))
                if not (target == real_top or target.startswith(real_top + os.sep)):
                    raise OSError(errno.EPERM, f"symlink pointing out of the release ({target})",
                                  os.path.join(dirpath, name))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EPERM, "neither a file, a directory nor a symlink", os.path.join(dirpath, name))
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            try:
                mode = os.fstat(fd).st_mode
                os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
            finally:
                os.close(fd)


def adopt_gate_tree(prefix: Path, staging: Path) -> None:
    """Move the gate's installed `bin/` and `lib/` into root's staging dir and make them root's."""
    for part in ("bin", "lib"):
        src, dest = prefix / part, staging / part
        if not stat.S_ISDIR(os.lstat(src).st_mode):
            raise OSError(errno.EPERM, "not a directory", str(src))
        try:
            os.rename(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copytree(src, dest, symlinks=True)  # scratch on another filesystem
    take_ownership(staging)
