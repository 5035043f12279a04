"""Phases 6 and 7: move users one at a time through the canary, and undo on failure.

Each user's serve and mint run that user's own release link, and the link moves
only when that user is restarted, so a running server and its mints always
agree on the build. Busy users are deferred, never killed. On the first canary
failure every user moved in this run goes back to last-good *with* their
databases restored from the pre-bump backup (an older binary on a migrated
database breaks the next login: the 2026-06-09 failure; `phases/rollback.py`).

`canary_user` is the one per-user routine (move, restart, gate) of the bump, the
drainer and (its gate alone, on users as they are) `t3-autoupdate verify`.
"""
from __future__ import annotations

import time
from pathlib import Path

from .. import activate, activity
from ..context import RunContext
from ..gaterun import GateResult, run_gate, start_gate
from ..journal import RunRecord, RunStopped, clear_journal
from ..mint import MINT_TIMEOUT
from ..services import unit_of, wait_serving
from ..state import write_freeze
from ..userlock import UserLockTimeout, user_lock
from .rejection import count_rejection, quarantine
from .rollback import roll_back_users

# How long a move waits for mints in flight to finish (the lock prefers the move: no new mint
# starts meanwhile). Past it the user is deferred, never failed: a slow login is not a bad build.
MOVE_LOCK_WAIT = MINT_TIMEOUT


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
        serving = wait_serving(port, ctx.cfg.ready_timeout, is_alive=ctx.services.liveness_ahead(unit))
    served = time.time()
    # The window in which the dispatch (which does not retry) fails this user's requests.
    ctx.events("RESTARTED", user=os_user, release=release_dir.name, stopped_at=f"{stopping:.3f}",
               serving_at=f"{served:.3f}", gap_ms=round((served - stopping) * 1000))
    return serving


def busy_reason(ctx: RunContext, os_user: str) -> str | None:
    """Why this user must not be restarted now, or None when idle. Unjudgeable counts as busy."""
    busy, reason = activity.assess_user(ctx.cfg.home_dir(os_user), ctx.cfg.userdata_dir(os_user),
                                        sqlite3=ctx.cfg.sqlite3, now=ctx.now(), quiet_seconds=ctx.cfg.busy_quiet)
    return reason if busy else None


def canary_gate(ctx: RunContext, *, version: str | None = None, users: list[str] | None = None,
                label: str = "canary") -> GateResult:
    """`gates/test_canary.py` through the dispatch, on `users` (SSO names; all when None); with
    `version`, every checked instance must run it. Reports go into the command's run dir."""
    return run_gate("canary", run_dir=ctx.run_dir, options=_gate_options(ctx, version, users), env=ctx.env,
                    timeout=ctx.cfg.gate_timeout, label=label)


def _gate_options(ctx: RunContext, version: str | None, users: list[str] | None) -> dict[str, str]:
    options = canary_options(ctx.cfg, version)
    if users:
        options["--users"] = ",".join(users)
    return options


def canary_user(ctx: RunContext, os_user: str, release_dir: Path, version: str) -> tuple[str | None, str | None]:
    """Move one idle user onto `release_dir` and gate them: (the gate's junit report, or None
    when it did not run; the failure, or None when they passed). Raises UserLockTimeout, before
    anything was stopped, when logins kept the user lock (not a failure: try again later).

    The gate's process starts before the stop and waits at its start line until the instance
    serves, so its start-up (most of a gate run's CPU) overlaps the restart instead of following
    it; every check still runs after the instance serves. A restart that fails cancels it."""
    gate = start_gate("canary", run_dir=ctx.run_dir, options=_gate_options(ctx, version, ctx.sso_names(os_user)),
                      env=ctx.env, timeout=ctx.cfg.gate_timeout, start_within=ctx.cfg.gate_timeout,
                      label=f"canary-{os_user}")
    try:
        move_and_restart(ctx, os_user, release_dir, ctx.ports()[os_user])
    except UserLockTimeout:
        gate.cancel()
        raise
    except Exception as exc:  # noqa: BLE001 - any doubt is a failure
        gate.cancel()
        failure = f"instance did not come back: {exc}; last log: {ctx.services.recent_log(unit_of(os_user))}"
        ctx.events("CANARY FAILED", user=os_user, version=version, reason=failure)
        return None, failure
    except BaseException:  # interrupted: the gate must not outlive the move it was to judge
        gate.cancel()
        raise
    gate.go()
    result = gate.result()
    if not result.passed:
        failure = f"canary gate failed: {result.reason()}"
        ctx.events("CANARY FAILED", user=os_user, version=version, reason=failure)
        return str(result.report), failure
    ctx.events("CANARY PASSED", user=os_user, version=version)
    return str(result.report), None


def defer(ctx: RunContext, record: RunRecord, os_user: str, reason: str) -> None:
    activate.mark_deferred(ctx.cfg.deferred_dir, os_user, version=record.version, reason=reason)
    record.deferred[os_user] = reason
    ctx.events("DEFERRED", user=os_user, version=record.version, reason=reason)


def roll_out(ctx: RunContext, record: RunRecord, release_dir: Path) -> None:
    """Move every user through the canary, into the run record (saved as the journal before each
    link moves): who passed, who was deferred and why, and the first failure, which ends it.
    The record's `unproven` users are deferred unmoved: nobody moves without a pre-bump backup
    to come back to, or on data the health gate did not see."""
    cfg = ctx.cfg
    running = set(ctx.services.running_instances())
    for os_user in cfg.os_users:
        reason = record.unproven.get(os_user) or ("not running" if os_user not in running
                                                  else busy_reason(ctx, os_user))
        if reason:
            defer(ctx, record, os_user, reason)
            continue
        record.moving.append(os_user)
        record.save(cfg.journal_path)  # recorded before the link moves: a crash here is undone
        try:
            report, failure = canary_user(ctx, os_user, release_dir, record.version)
        except UserLockTimeout as exc:  # raised before anything was stopped: nothing to undo
            record.moving.remove(os_user)
            record.save(cfg.journal_path)
            defer(ctx, record, os_user, f"logins kept the user lock: {exc}")
            continue
        if report is not None:
            record.canary_reports.append(report)
        if failure:
            record.failed_user, record.failure = os_user, failure
            return
        record.passed.append(os_user)
        record.save(cfg.journal_path)
        activate.clear_deferred(cfg.deferred_dir, os_user)


def undo_canary(ctx: RunContext, record: RunRecord) -> None:
    """After a canary failure: quarantine and freeze, then every user moved in this run back on
    last-good with their pre-bump databases. Always ends the run (RunStopped)."""
    cfg, events = ctx.cfg, ctx.events
    users = list(record.moving)
    reason = f"canary failed for {record.failed_user} on {record.version}: {record.failure}"
    # Quarantine and freeze before the rollback: a run killed while rolling back is undone by
    # the next run's recovery, which must then hold, not install the failed build again.
    write_freeze(cfg.freeze_file, reason, by=f"t3-autoupdate run {ctx.run_id}")
    quarantine(ctx, record.version, reason=reason, report=record.canary_reports[-1] if record.canary_reports else None)
    record.rolling_back = users
    record.save(cfg.journal_path)
    failed = roll_back_users(ctx, users, good_release=cfg.release_dir(record.from_version),
                             failed_version=record.version, backups=record.backups, set_aside=record.set_aside)
    record.rolled_back = users
    if failed:  # the journal keeps the record of who was moved: status shows it, the next command retries
        record.rollback_failed, record.rolling_back = failed, []  # the others are back
        record.save(cfg.journal_path)
        events("ROLLBACK FAILED", version=record.version, users=",".join(failed), reason=reason)
        raise RunStopped("rollback-failed", reason)
    clear_journal(cfg.journal_path)  # before saying so: a run killed after this line is not undone twice
    count_rejection(ctx, record.version, gate="canary", reason=record.failure)
    events("ROLLED BACK", version=record.version, to=record.from_version, users=",".join(users), reason=reason)
    events("FROZEN", reason=reason, freeze_file=str(cfg.freeze_file))
    raise RunStopped("rolled-back", reason)
