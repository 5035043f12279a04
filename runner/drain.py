"""`t3-autoupdate drain-deferred`: the idle-gated job that moves deferred users.

A deferred user owes a restart onto last-good, and so does a user whose running
server is not on their link (after a takeover: still the old global `t3`). When they
are idle now, the same safe routine as the canary runs for them alone: a fresh
pre-bump backup, link switch, restart, canary gate; a failure puts them back with
that backup.
"""
from __future__ import annotations

from . import activate, backup
from .context import RunContext
from .gaterun import run_gate
from .phases.canary import busy_reason, canary_options, move_and_restart, roll_back_users
from .services import unit_of
from .recover import locked_and_recovered
from .state import new_run_id, read_freeze, read_text_or_none
from .takeover import running_off_link
from .userlock import UserLockTimeout


def off_link_users(ctx: RunContext, os_users) -> dict[str, str]:
    """os_user -> why their running server is not on their link (e.g. the old global t3)."""
    found = {}
    for os_user in os_users:
        reason = running_off_link(ctx.services, unit_of(os_user), ctx.cfg.active_link(os_user))
        if reason:
            found[os_user] = reason
    return found


def drain_deferred(ctx: RunContext) -> int:
    cfg, events = ctx.cfg, ctx.events
    with locked_and_recovered(ctx):
        freeze = read_freeze(cfg.freeze_file)
        if freeze is not None:
            events("FROZEN", reason=freeze.reason, freeze_file=str(cfg.freeze_file))
            return 0
        good = read_text_or_none(cfg.last_good_path)
        if not good:
            return 0
        running = set(ctx.services.running_instances())
        off_link = off_link_users(ctx, sorted(running & set(cfg.os_users)))
        pending = {**activate.deferred_users(cfg.deferred_dir), **off_link}
        if not pending:
            return 0
        ctx.run_id = "drain-" + new_run_id(ctx.now())
        ctx.run_dir = cfg.runs_dir / ctx.run_id
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        ports = ctx.ports()
        failures = 0
        for os_user in sorted(pending):
            current = activate.release_of_link(cfg.active_link(os_user))
            if current == good and os_user not in off_link:
                activate.clear_deferred(cfg.deferred_dir, os_user)
                continue
            if os_user not in running:
                continue
            reason = busy_reason(ctx, os_user)
            if reason:
                events("DEFERRED", user=os_user, version=good, reason=reason)
                continue
            try:
                records = backup.backup_user_databases(os_user, cfg.userdata_dir(os_user), cfg.backup_dest, good,
                                                       sqlite3=cfg.sqlite3, timeout=cfg.backup_timeout,
                                                       keep=cfg.keep_backups, serving=current)
            except backup.BackupError as exc:  # this user's problem: still owed, the others go on
                events("DEFERRED", user=os_user, version=good, reason=f"backup failed: {exc}")
                continue
            failure = None
            try:
                move_and_restart(ctx, os_user, cfg.release_dir(good), ports[os_user])
                options = {**canary_options(cfg, good), "--users": ",".join(ctx.sso_names(os_user))}
                gate = run_gate("canary", run_dir=ctx.run_dir, options=options, env=ctx.env,
                                timeout=cfg.gate_timeout, label=f"canary-{os_user}")
                failure = None if gate.passed else gate.reason()
            except UserLockTimeout as exc:  # nothing was stopped: still owed, try next time
                events("DEFERRED", user=os_user, version=good, reason=f"logins kept the user lock: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - any doubt is a failure
                failure = str(exc)
            if failure is None:
                activate.clear_deferred(cfg.deferred_dir, os_user)
                events("DRAINED", user=os_user, version=good)
                continue
            failures += 1
            events("CANARY FAILED", user=os_user, version=good, reason=failure)
            roll_back_users(ctx, [os_user], good_release=cfg.release_dir(current), failed_version=good,
                            backups={os_user: {r.db_name: str(r.path) for r in records}})
        return 1 if failures else 0
