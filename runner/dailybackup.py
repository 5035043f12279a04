"""`t3-autoupdate backup`: the daily verified backup (t3-autoupdate-backup.timer, 03:30).

It replaces the host's old `t3-backup-state.timer`, which copied only `state.sqlite`:
with t3's V2 layout users' live history is in `statev2.sqlite`. Every SQLite database
under each user's `userdata/` is copied online (`VACUUM INTO`), as that user, verified
(integrity check, sha256 manifest), with the same code as a run's pre-bump backup
(runner/backups/take.py), named `<db>-daily-<version>-<ts>` and pruned to
`keep_daily_backups` per database. Pruning counts daily copies only, so the pre-bump
restore points a rollback needs are never pruned by it.

One user's failure is reported and the others are still backed up; the exit code is
1 if any user failed.
"""
from __future__ import annotations

from . import activate
from .backups import take
from .backups.trees import BackupError
from .state import RunLock, read_text_or_none


def daily_backup(cfg, events) -> int:
    failures = 0
    # One at a time with runs and drains: a rollback may be restoring a database right now.
    with RunLock(cfg.lock_path):
        fallback = read_text_or_none(cfg.last_good_path) or "unmanaged"
        for os_user in cfg.os_users:
            try:
                version = activate.release_of_link(cfg.active_link(os_user)) or fallback
                records = take.backup_user_databases(
                    os_user, cfg.userdata_dir(os_user), cfg.backup_dest, version, sqlite3=cfg.sqlite3,
                    timeout=cfg.backup_timeout, keep=cfg.keep_daily_backups, kind="daily")
            except (BackupError, activate.ActivationError, OSError) as exc:
                failures += 1
                events("BACKUP FAILED", user=os_user, kind="daily", reason=str(exc))
                continue
            events("BACKED UP", user=os_user, kind="daily", version=version,
                   files=",".join(r.path.name for r in records) or "none (no database yet)")
    return 1 if failures else 0
