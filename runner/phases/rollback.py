"""Putting users back: a build's link and the pre-bump databases they had when they left it.

The canary's failure, the recovery of a killed run, the drainer's failed move and the manual
`t3-autoupdate rollback` all put users back here: stop, restore (then set aside what is not in
the restored set), relink, start, each under the user's lock so no mint opens a database
while it is replaced. The link moves only once the databases are back.
"""
from __future__ import annotations

from pathlib import Path

from .. import activate
from ..backups import catalogue, restore, trees
from ..context import RunContext
from ..mint import MINT_TIMEOUT
from ..services import unit_of, wait_serving
from ..staging.checks import StageError
from ..staging.flow import release_for_rollback
from ..userlock import user_lock


def backup_set(ctx: RunContext, os_user: str, taken: dict[str, str]) -> dict[str, catalogue.BackupRecord]:
    """The records of a backup set named by paths (a journal's, or one `rollback --to` chose), each
    read from its manifest; a path that is not a whole pre-bump backup of its database refuses."""
    known = {str(r.path): r for r in catalogue.prebump_backups(ctx.cfg.backup_dest, os_user)} if taken else {}
    records = {}
    for db_name, path in sorted(taken.items()):
        record = known.get(str(path))
        if record is None or record.db_name != db_name:
            raise trees.BackupError(f"{os_user}: {path} is not a whole pre-bump backup of {db_name} "
                                     f"(missing, or no manifest); refusing to guess")
        records[db_name] = record
    return records


def restore_databases(ctx: RunContext, os_user: str, failed_version: str,
                      records: dict[str, catalogue.BackupRecord], set_aside: dict[str, list[str]]) -> None:
    """Make `records` (database name -> pre-bump backup, one backup set) the user's databases again:
    restore every database in the set, and set aside every database that exists now but is not in
    it (a `statev2.sqlite` when going back to a pre-V2 build: a pre-V2 build ignores it, and a later
    re-upgrade must import the restored `state.sqlite` afresh). Replaced and set-aside files are
    kept in the backup dir, named by `failed_version`; each set-aside one is reported in an event
    and noted in `set_aside` (os_user -> paths)."""
    cfg, events = ctx.cfg, ctx.events
    userdata = cfg.userdata_dir(os_user)
    for db_name, record in sorted(records.items()):
        report = restore.restore_user_database(record, userdata, cfg.backup_dest, failed_version=failed_version,
                                              sqlite3=cfg.sqlite3, timeout=cfg.backup_timeout,
                                              keep=cfg.keep_backups)
        events("RESTORED", user=os_user, database=db_name, backup=str(record.path),
               kept_aside=str(report.kept_aside), rows_since_backup=report.rows_since_backup)
    for db_name in trees.find_user_databases(userdata):
        if db_name not in records:  # e.g. a statev2.sqlite the failed (or newer) build created
            kept = restore.set_aside_database(os_user, userdata, cfg.backup_dest, db_name,
                                             failed_version=failed_version, sqlite3=cfg.sqlite3,
                                             timeout=cfg.backup_timeout, keep=cfg.keep_backups)
            set_aside.setdefault(os_user, []).append(str(kept))
            events("SET ASIDE", user=os_user, database=db_name, version=failed_version, kept_aside=str(kept),
                   reason="not in the restored backup set")


def roll_back_users(ctx: RunContext, users: list[str], *, good_release: Path, failed_version: str,
                    backups: dict[str, dict[str, str]], set_aside: dict[str, list[str]]) -> list[str]:
    """Put each user back on `good_release` with their pre-bump databases (`backups`: os_user ->
    {database: backup path}); returns the users that failed. Databases set aside because they
    are not in the restored set are noted in `set_aside` (os_user -> paths)."""
    cfg, events = ctx.cfg, ctx.events
    try:  # a good release whose installed tree is gone comes back from its kept tarball, offline
        good_release = release_for_rollback(cfg, good_release.name, env=ctx.env) if users else good_release
    except StageError as exc:  # nobody is stopped: each stays where they are, and says why
        for os_user in users:
            events("ROLLBACK FAILED", user=os_user, version=failed_version, reason=str(exc))
        return list(users)
    ports = ctx.ports()
    failed = []
    for os_user in reversed(users):
        unit = unit_of(os_user)
        try:
            # Refuse before stopping anything: a symlinked database, or a backup set that is not
            # whole, would leave the user stopped with nothing restored.
            trees.find_user_databases(cfg.userdata_dir(os_user))
            records = backup_set(ctx, os_user, backups.get(os_user, {}))
            # Mints wait while the database is replaced (they would open and migrate it).
            with user_lock(cfg.state_dir, os_user, exclusive=True, timeout=MINT_TIMEOUT):
                ctx.services.stop(unit)
                # The link moves only once the databases are back: a failed restore never leaves
                # the older build linked to data the newer one migrated.
                restore_databases(ctx, os_user, failed_version, records, set_aside)
                activate.point_user(cfg.active_dir, os_user, good_release)
                ctx.services.start(unit)
                wait_serving(ports[os_user], cfg.ready_timeout, is_alive=ctx.services.liveness_ahead(unit))
        except Exception as exc:  # noqa: BLE001 - keep rolling back the others, then report loudly
            failed.append(os_user)
            events("ROLLBACK FAILED", user=os_user, version=failed_version, reason=str(exc))
    return failed
