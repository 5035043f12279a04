"""Phases 6 and 7: move users one at a time through the canary, and undo on failure.

Each user's serve and mint run that user's own release link, and the link moves
only when that user is restarted, so a running server and its mints always
agree on the build. Busy users are deferred, never killed. On the first canary
failure every user moved in this run goes back to last-good *with* their
databases restored from the pre-bump backup (an older binary on a migrated
database breaks the next login: the 2026-06-09 failure).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import activate, activity, backup
from ..context import RunContext
from ..gaterun import GateResult, start_gate
from ..journal import Journal
from ..mint import MINT_TIMEOUT
from ..services import unit_of, wait_serving
from ..userlock import UserLockTimeout, user_lock

# How long a move waits for mints in flight to finish (the lock prefers the move: no new mint
# starts meanwhile). Past it the user is deferred, never failed: a slow login is not a bad build.
MOVE_LOCK_WAIT = MINT_TIMEOUT


@dataclass
class RolloutResult:
    moved: list[str] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)
    failed_user: str | None = None
    failure: str = ""
    reports: list[str] = field(default_factory=list)


def canary_options(cfg, version: str | None = None) -> dict[str, str]:
    """The canary gate's options from the config; with `version`, every checked instance must run it."""
    options = {"--dispatch": cfg.dispatch, "--dispatch-map": str(cfg.dispatch_map), "--user-map": str(cfg.user_map),
               "--active-dir": str(cfg.active_dir), "--cookie-name": cfg.cookie_name}
    if version is not None:
        options["--canary-version"] = version
    return options


def move_and_restart(ctx: RunContext, os_user: str, release_dir: Path, port: int) -> dict:
    """Stop, switch the link, start: the link never moves under a running server, so no
    mint of the new build can migrate the database under the old one (2026-06-09)."""
    unit = unit_of(os_user)
    with user_lock(ctx.cfg.state_dir, os_user, exclusive=True, timeout=MOVE_LOCK_WAIT):
        # Only the stop, the relink and the start lie between these two stamps: the
        # backup, staging and gate setup all happen before, so logins fail for no longer.
        stopping = time.time()
        ctx.services.stop(unit)
        activate.point_user(ctx.cfg.active_dir, os_user, release_dir)
        ctx.services.start(unit)
        serving = wait_serving(port, ctx.cfg.ready_timeout, is_alive=ctx.services.liveness(unit))
    served = time.time()
    # The window in which the dispatch (which does not retry) fails this user's requests.
    ctx.events("RESTARTED", user=os_user, release=release_dir.name, stopped_at=f"{stopping:.3f}",
               serving_at=f"{served:.3f}", gap_ms=round((served - stopping) * 1000))
    return serving


def restart_and_gate(ctx: RunContext, os_user: str, release_dir: Path, port: int, version: str) -> GateResult:
    """`move_and_restart`, then the user's canary gate through the real dispatch; the gate's
    process is started before the stop and held at its start line until the instance serves,
    so its start-up (most of a gate run's CPU) overlaps the restart instead of following it.
    Every check still runs after the instance serves. A restart that fails (or a lock not
    had) cancels the gate and raises."""
    options = {**canary_options(ctx.cfg, version), "--users": ",".join(ctx.sso_names(os_user))}
    gate = start_gate("canary", run_dir=ctx.run_dir, options=options, env=ctx.env, timeout=ctx.cfg.gate_timeout,
                      start_within=ctx.cfg.gate_timeout, label=f"canary-{os_user}")
    try:
        move_and_restart(ctx, os_user, release_dir, port)
    except BaseException:
        gate.cancel()
        raise
    gate.go()
    return gate.result()


def busy_reason(ctx: RunContext, os_user: str) -> str | None:
    """Why this user must not be restarted now, or None when idle. Unjudgeable counts as busy."""
    busy, reason = activity.assess_user(ctx.cfg.home_dir(os_user), ctx.cfg.userdata_dir(os_user),
                                        sqlite3=ctx.cfg.sqlite3, now=ctx.now(), quiet_seconds=ctx.cfg.busy_quiet)
    return reason if busy else None


def defer(ctx: RunContext, result: RolloutResult, os_user: str, version: str, reason: str) -> None:
    activate.mark_deferred(ctx.cfg.deferred_dir, os_user, version=version, reason=reason)
    result.deferred[os_user] = reason
    ctx.events("DEFERRED", user=os_user, version=version, reason=reason)


def roll_out(ctx: RunContext, journal: Journal, release_dir: Path, *,
             not_backed_up: dict[str, str] | None = None) -> RolloutResult:
    """Move every user through the canary; `not_backed_up` (user -> why) are deferred unmoved:
    nobody moves without a pre-bump backup to come back to."""
    cfg = ctx.cfg
    result = RolloutResult()
    ports = ctx.ports()  # as read at the run's start (RunContext.ports), before anyone moved
    running = set(ctx.services.running_instances())
    for os_user in cfg.os_users:
        if os_user in (not_backed_up or {}):
            defer(ctx, result, os_user, journal.version, not_backed_up[os_user])
            continue
        if os_user not in running:
            defer(ctx, result, os_user, journal.version, "not running")
            continue
        reason = busy_reason(ctx, os_user)
        if reason:
            defer(ctx, result, os_user, journal.version, reason)
            continue
        journal.moving.append(os_user)
        journal.save(cfg.journal_path)  # recorded before the link moves: a crash here is undone
        failure = None
        try:
            gate = restart_and_gate(ctx, os_user, release_dir, ports[os_user], journal.version)
        except UserLockTimeout as exc:  # raised before anything was stopped: nothing to undo
            journal.moving.remove(os_user)
            journal.save(cfg.journal_path)
            defer(ctx, result, os_user, journal.version, f"logins kept the user lock: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - any doubt is a failure
            failure = f"instance did not come back: {exc}; last log: {ctx.services.recent_log(unit_of(os_user))}"
        if failure is None:
            result.reports.append(str(gate.report))
            if not gate.passed:
                failure = f"canary gate failed: {gate.reason()}"
        if failure:
            result.failed_user, result.failure = os_user, failure
            ctx.events("CANARY FAILED", user=os_user, version=journal.version, reason=failure)
            return result
        journal.passed.append(os_user)
        journal.save(cfg.journal_path)
        activate.clear_deferred(cfg.deferred_dir, os_user)
        result.moved.append(os_user)
        ctx.events("CANARY PASSED", user=os_user, version=journal.version)
    return result


def backup_set(ctx: RunContext, os_user: str, taken: dict[str, str]) -> dict[str, backup.BackupRecord]:
    """The records of a backup set named by paths (a journal's, or one `rollback --to` chose), each
    read from its manifest; a path that is not a whole pre-bump backup of its database refuses."""
    known = {str(r.path): r for r in backup.prebump_backups(ctx.cfg.backup_dest, os_user)} if taken else {}
    records = {}
    for db_name, path in sorted(taken.items()):
        record = known.get(str(path))
        if record is None or record.db_name != db_name:
            raise backup.BackupError(f"{os_user}: {path} is not a whole pre-bump backup of {db_name} "
                                     f"(missing, or no manifest); refusing to guess")
        records[db_name] = record
    return records


def restore_databases(ctx: RunContext, os_user: str, failed_version: str,
                      records: dict[str, backup.BackupRecord]) -> None:
    """Make `records` (database name -> pre-bump backup, one backup set) the user's databases again:
    restore every database in the set, and set aside every database that exists now but is not in
    it (a `statev2.sqlite` when going back to a pre-V2 build: a pre-V2 build ignores it, and a later
    re-upgrade must import the restored `state.sqlite` afresh). Replaced and set-aside files are
    kept in the backup dir, named by `failed_version`; each is reported in an event and in the
    run's outcome (`set_aside`)."""
    cfg, events = ctx.cfg, ctx.events
    userdata = cfg.userdata_dir(os_user)
    for db_name, record in sorted(records.items()):
        report = backup.restore_user_database(record, userdata, cfg.backup_dest, failed_version=failed_version,
                                              sqlite3=cfg.sqlite3, timeout=cfg.backup_timeout,
                                              keep=cfg.keep_backups)
        events("RESTORED", user=os_user, database=db_name, backup=str(record.path),
               kept_aside=str(report.kept_aside), rows_since_backup=report.rows_since_backup)
    for db_name in backup.find_user_databases(userdata):
        if db_name not in records:  # e.g. a statev2.sqlite the failed (or newer) build created
            kept = backup.set_aside_database(os_user, userdata, cfg.backup_dest, db_name,
                                             failed_version=failed_version, sqlite3=cfg.sqlite3,
                                             timeout=cfg.backup_timeout, keep=cfg.keep_backups)
            ctx.outcome.setdefault("set_aside", {}).setdefault(os_user, []).append(str(kept))
            events("SET ASIDE", user=os_user, database=db_name, version=failed_version, kept_aside=str(kept),
                   reason="not in the restored backup set")


def roll_back_users(ctx: RunContext, users: list[str], *, good_release: Path, failed_version: str,
                    backups: dict[str, dict[str, str]]) -> list[str]:
    """Put each user back on last-good with their pre-bump databases; returns the users that failed."""
    cfg, events = ctx.cfg, ctx.events
    ports = ctx.ports()
    failed = []
    for os_user in reversed(users):
        unit = unit_of(os_user)
        try:
            # Refuse before stopping anything: a symlinked database, or a backup set that is not
            # whole, would leave the user stopped with nothing restored.
            backup.find_user_databases(cfg.userdata_dir(os_user))
            records = backup_set(ctx, os_user, backups.get(os_user, {}))
            # Mints wait while the database is replaced (they would open and migrate it).
            with user_lock(cfg.state_dir, os_user, exclusive=True, timeout=MINT_TIMEOUT):
                ctx.services.stop(unit)
                # The link moves only once the databases are back: a failed restore never leaves
                # the older build linked to data the newer one migrated.
                restore_databases(ctx, os_user, failed_version, records)
                activate.point_user(cfg.active_dir, os_user, good_release)
                ctx.services.start(unit)
                wait_serving(ports[os_user], cfg.ready_timeout, is_alive=ctx.services.liveness(unit))
        except Exception as exc:  # noqa: BLE001 - keep rolling back the others, then report loudly
            failed.append(os_user)
            events("ROLLBACK FAILED", user=os_user, version=failed_version, reason=str(exc))
    return failed
