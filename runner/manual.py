"""`t3-autoupdate rollback [--to VERSION]`: the runbook's manual rollback, safely.

For a problem found after a bump the gates let through, and the only way DOWN to an older
build (a downward `T3_PIN` holds and points here): freeze first, then for each user on a
build newer than the target: stop, relink, restore the backup set taken when that user LEFT
the target (every database backed up then), set aside every database that exists now but
was not in that set (a `statev2.sqlite` after going back to a pre-V2 build: a pre-V2 build
ignores it, and a later re-upgrade imports the restored `state.sqlite` afresh), start.
Replaced and set-aside files are kept in the backup dir, so no row is destroyed.

Last-good and the operators' `t3` link move to the target only when every user the
rollback had to move is on it; otherwise the freeze names who is where (shown by `status`)
and the command exits 1, and running it again finishes the job. A user behind the target (a
deferred one) is left for the drain.
"""
from __future__ import annotations

import functools
import os
import sys

from . import activate
from .backups import catalogue
from .backups.catalogue import BackupRecord
from .backups.trees import BackupError
from .context import RunContext
from .phases.recover import locked_and_recovered
from .phases.rollback import roll_back_users
from .staging.releases import release_on_disk
from .state import read_text_or_none, write_freeze
from .versions import VersionError, compare, sort_versions, validate_version
from .goodbuilds import record_last_good


def backup_set_for(records: list[BackupRecord], *, target: str,
                   current: str) -> list[BackupRecord] | None:
    """The pre-bump backup set to restore when a user goes from `current` back to `target`.

    A set is the backups one backup pass took (same version, same moment). The right one is
    the newest set taken while the user ran `target` (its manifests' `serving_version`): the
    state they left `target` in. Backups from before the manifests recorded it fall back to
    the set of the first bump past the target (the smallest version in (target, current]),
    newest first. None when there is no such set: never guess.
    """
    sets: dict[tuple, list[BackupRecord]] = {}
    for record in records:
        sets.setdefault((record.version, record.taken_at), []).append(record)

    def serving(key) -> set:
        return {r.serving_version for r in sets[key]}

    left = [key for key in sets if serving(key) == {target}]
    if left:
        return sets[max(left, key=lambda key: key[1])]
    legacy = [key for key in sets if serving(key) == {None}
              and compare(key[0], target) > 0 and compare(key[0], current) <= 0]
    if not legacy:
        return None
    by_version = functools.cmp_to_key(compare)
    first = min((key[0] for key in legacy), key=by_version)
    return sets[max((key for key in legacy if key[0] == first), key=lambda key: key[1])]


def manual_rollback(ctx: RunContext, *, to_version: str | None) -> int:
    cfg, events = ctx.cfg, ctx.events
    target = validate_version(to_version, "--to") if to_version else read_text_or_none(cfg.last_good_path)
    if not target or not release_on_disk(cfg.releases_dir, target):
        events("ROLLBACK FAILED", reason=f"no installed release for {target or '(no last-good)'}")
        return 1
    with locked_and_recovered(ctx) as recovered:
        by_version: dict[str, list[str]] = {}
        unusable: dict[str, str] = {}  # os_user -> why their link cannot be read: not on the target
        for os_user in cfg.os_users:
            current, problem = activate.read_release_link(cfg.active_link(os_user))
            if problem:
                unusable[os_user] = problem
                continue
            # Only users on a NEWER build go back; one behind the target (deferred) is left for the drain.
            if current and current != target and compare(current, target) > 0:
                by_version.setdefault(current, []).append(os_user)
        if not by_version and not unusable and recovered is not None and recovered.from_version == target:
            # The unfinished run's recovery already put everyone back on the target.
            write_freeze(cfg.freeze_file, f"manual rollback to {target}", by="t3-autoupdate rollback")
            events("FROZEN", reason=f"manual rollback to {target}", freeze_file=str(cfg.freeze_file))
            events("ROLLED BACK", to=target, users="-", reason=f"recovery of run {recovered.run_id}")
            return 0
        if not by_version and not unusable:  # e.g. right after a good bump: last-good IS the current build
            print(f"t3-autoupdate rollback: nothing to roll back: no user is on a build newer than {target}; "
                  f"name the build to go back to: t3-autoupdate rollback --to VERSION "
                  f"(installed: {', '.join(_installed(cfg.releases_dir)) or 'none'})", file=sys.stderr)
            return 1
        write_freeze(cfg.freeze_file, f"manual rollback to {target}", by="t3-autoupdate rollback")
        events("FROZEN", reason=f"manual rollback to {target}", freeze_file=str(cfg.freeze_file))
        failed: set[str] = set()  # restore failed or impossible: not on the target, whatever the link says
        for os_user, problem in sorted(unusable.items()):  # one user's broken link stops nobody else's rollback
            events("ROLLBACK FAILED", user=os_user, reason=f"{problem}; left as it is")
        set_aside: dict[str, list[str]] = {}
        for version, users in by_version.items():
            taken = {}
            for os_user in users:
                try:
                    chosen = backup_set_for(catalogue.prebump_backups(cfg.backup_dest, os_user),
                                            target=target, current=version)
                except BackupError as exc:
                    events("ROLLBACK FAILED", user=os_user, version=version, reason=f"{exc}; left on {version}")
                    continue
                if chosen is None:  # never start an older build on a database a newer one migrated
                    events("ROLLBACK FAILED", user=os_user, version=version,
                           reason=f"no pre-bump backup taken while {os_user} ran {target}; left on {version}")
                    continue
                taken[os_user] = {record.db_name: str(record.path) for record in chosen}
            failed |= {u for u in users if u not in taken}
            failed |= set(roll_back_users(ctx, [u for u in users if u in taken], good_release=cfg.release_dir(target),
                                          failed_version=version, backups=taken, set_aside=set_aside))
        moved = [u for us in by_version.values() for u in us]
        on_now = {u: activate.read_release_link(cfg.active_link(u))[0] for u in moved}
        left = {u: v for u, v in on_now.items() if v != target or u in failed}
        left.update({u: "an unreadable link" for u in unusable})
        if left:
            where = ", ".join(f"{u} on {v or 'no release'}{' (restore failed)' if v == target else ''}"
                              for u, v in sorted(left.items()))
            reason = (f"partial manual rollback to {target}: {where}; last-good stays "
                      f"{read_text_or_none(cfg.last_good_path) or '(none)'} until every user is on {target} "
                      f"(fix the cause, then run `t3-autoupdate rollback --to {target}` again)")
            write_freeze(cfg.freeze_file, reason, by="t3-autoupdate rollback")
            events("ROLLBACK PARTIAL", to=target, on_target=",".join(u for u in moved if u not in left) or "-",
                   left=",".join(f"{u}:{v}" for u, v in sorted(left.items())), reason=reason)
            return 1
        record_last_good(cfg, target)
        activate.point_bin_link(cfg.bin_link, cfg.release_dir(target))
        events("ROLLED BACK", to=target, users=",".join(moved),
               set_aside=",".join(f"{u}:{p}" for u, ps in sorted(set_aside.items()) for p in ps) or None)
        return 0


def _installed(releases_dir) -> list[str]:
    names = []
    for name in os.listdir(releases_dir) if os.path.isdir(releases_dir) else ():
        try:
            names.append(validate_version(name))
        except VersionError:
            pass
    return sort_versions(names)
