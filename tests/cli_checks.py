"""Helpers shared by the CLI tests: what a command must leave unchanged."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.runner_checks import link_version, main_pids


def tree(path: Path) -> list[str]:
    """Every entry under `path` (relative), sorted; [] if it does not exist."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def snapshot(world) -> dict:
    """Everything a run could change for users, operators or the next run."""
    state = world.state_dir
    return {
        "releases": sorted(os.listdir(world.releases_dir)),
        "links": {u.os_user: link_version(world, u.os_user) for u in world.users},
        "last_good": (state / "last-good").read_text(),
        "bin_link": os.readlink(world.bin_link),
        "pids": main_pids(world),
        "backups": tree(world.backup_dest),
        "quarantine": tree(state / "quarantine"),
        "deferred": tree(state / "deferred"),
        "journal": (state / "journal").exists(),
        "freeze": world.freeze_file.exists(),
        "scratch": tree(world.scratch),
        "serving": {u.sso: world.server_version(u.sso) for u in world.users},
    }


def lines_starting(done, prefix: str) -> list[str]:
    return [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith(prefix)]


def write_config(path: Path, **values) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(str(v))}\n" for k, v in values.items()))
    path.chmod(0o644)
    return path
