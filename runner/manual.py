"""`t3-autoupdate rollback [--to VERSION]`: the runbook's manual rollback, safely.

For a problem found after a bump the gates let through: freeze first, then for
each user not on the target build, stop, relink, restore the backup taken
before they were bumped (kept-aside copies of the replaced databases keep every
row written since), start. The operators' `t3` link and last-good follow.
"""
from __future__ import annotations

import os
import sys

from . import activate
from .context import RunContext
from .rollout import roll_back_users
from .recover import locked_and_recovered
from .state import atomic_write, read_text_or_none, write_freeze
from .versions import VersionError, compare, sort_versions, validate_version


def manual_rollback(ctx: RunContext, *, to_version: str | None) -> int:
    cfg, events = ctx.cfg, ctx.events
    target = validate_version(to_version, "--to") if to_version else read_text_or_none(cfg.last_good_path)
    if not target or not (cfg.release_dir(target) / "bin" / "t3").exists():
        events("ROLLBACK FAILED", reason=f"no installed release for {target or '(no last-good)'}")
        return 1
    with locked_and_recovered(ctx) as recovered:
        by_version: dict[str, list[str]] = {}
        for os_user in cfg.os_users:
            current = activate.release_of_link(cfg.active_link(os_user))
            # Only users on a NEWER build go back; one behind the target (deferred) is left for the drain.
            if current and current != target and compare(current, target) > 0:
                by_version.setdefault(current, []).append(os_user)
        if not by_version and recovered is not None and recovered.from_version == target:
            # The unfinished run's recovery already put everyone back on the target.
            write_freeze(cfg.freeze_file, f"manual rollback to {target}", by="t3-autoupdate rollback")
            events("FROZEN", reason=f"manual rollback to {target}", freeze_file=str(cfg.freeze_file))
            events("ROLLED BACK", to=target, users="-", reason=f"recovery of run {recovered.run_id}")
            return 0
        if not by_version:  # e.g. right after a good bump: last-good IS the current build
            print(f"t3-autoupdate rollback: nothing to roll back: no user is on a build newer than {target}; "
                  f"name the build to go back to: t3-autoupdate rollback --to VERSION "
                  f"(installed: {', '.join(_installed(cfg.releases_dir)) or 'none'})", file=sys.stderr)
            return 1
        write_freeze(cfg.freeze_file, f"manual rollback to {target}", by="t3-autoupdate rollback")
        events("FROZEN", reason=f"manual rollback to {target}", freeze_file=str(cfg.freeze_file))
        failed_all = []
        for version, users in by_version.items():
            from . import backup

            taken = {}
            for os_user in users:
                record = backup.latest_backup(cfg.backup_dest, os_user, "state.sqlite", version=version)
                if record is None:  # never start an older build on a database a newer one migrated
                    events("ROLLBACK FAILED", user=os_user, version=version,
                           reason=f"no pre-bump backup of state.sqlite for {version}; left on {version}")
                    failed_all.append(os_user)
                    continue
                taken[os_user] = {record.db_name: str(record.path)}
            users = [u for u in users if u in taken]
            failed_all += roll_back_users(ctx, users, good_release=cfg.release_dir(target),
                                          failed_version=version, backups=taken)
        atomic_write(cfg.last_good_path, target + "\n")
        activate.point_bin_link(cfg.bin_link, cfg.release_dir(target))
        if failed_all:
            return 1
        events("ROLLED BACK", to=target, users=",".join(u for us in by_version.values() for u in us) or "-")
        return 0


def _installed(releases_dir) -> list[str]:
    names = []
    for name in os.listdir(releases_dir) if os.path.isdir(releases_dir) else ():
        try:
            names.append(validate_version(name))
        except VersionError:
            pass
    return sort_versions(names)
