"""Phase 3: a pre-bump backup of every user's databases, before anything of theirs moves.

One user's backup problem (a symlink or FIFO named like a database, an unreadable file, a
database too big for the free space...) is that user's: they are deferred with the reason,
never moved without a backup, and everyone else goes on. Each backup's manifest records the
build the user ran when it was taken: a rollback to that build restores the set taken when
leaving it. The drainer takes the same per-user backup before it moves a deferred user.
"""
from __future__ import annotations

from .. import activate
from ..backups import catalogue, take, trees
from ..context import RunContext
from ..journal import RunRecord, RunStopped


def user_release(cfg, os_user: str) -> str | None:
    """The build a user's link points at; None when there is no link or it cannot be read."""
    return activate.read_release_link(cfg.active_link(os_user))[0]


def back_up_user(ctx: RunContext, os_user: str, version: str) -> list[catalogue.BackupRecord]:
    """Back up every database of `os_user` before moving them to `version`; raises BackupError."""
    cfg = ctx.cfg
    records = take.backup_user_databases(os_user, cfg.userdata_dir(os_user), cfg.backup_dest, version,
                                           sqlite3=cfg.sqlite3, timeout=cfg.backup_timeout, keep=cfg.keep_backups,
                                           serving=user_release(cfg, os_user))
    for record in records:
        ctx.events("BACKED UP", user=os_user, database=record.db_name, path=str(record.path), bytes=record.bytes)
    return records


def back_up_everyone(ctx: RunContext, record: RunRecord) -> dict[str, list[catalogue.BackupRecord]]:
    """The backups taken (what the health gate seeds from); the run record gets their paths and
    each user whose backup failed (`unproven`). Nobody backed up stops the run: nobody can move."""
    taken = {}
    for os_user in ctx.cfg.os_users:
        try:
            taken[os_user] = back_up_user(ctx, os_user, record.version)
        except trees.BackupError as exc:
            record.unproven[os_user] = f"backup failed: {exc}"
            # Not "BACKUP FAILED": that line means the whole run stopped; this user is DEFERRED later.
            ctx.events("NOT BACKED UP", user=os_user, version=record.version, reason=str(exc))
    record.backups = {u: {r.db_name: str(r.path) for r in rs} for u, rs in taken.items()}
    if not taken:
        reason = "; ".join(f"{u}: {r}" for u, r in record.unproven.items())
        ctx.events("BACKUP FAILED", version=record.version, reason=reason)
        raise RunStopped("backup-failed", reason)
    return taken
