"""`t3-autoupdate drain-deferred`: the idle-gated job that moves deferred users.

A deferred user owes a restart onto last-good, and so does a user whose running
server is not on their link (after a takeover: still the old global `t3`). When they
are idle now, the same per-user routine as the bump's canary runs for them alone: a
fresh pre-bump backup, link switch, restart, canary gate; a failure puts them back with
that backup.
"""
from __future__ import annotations

from . import activate
from .backups.trees import BackupError
from .context import RunContext
from .phases.backup import back_up_user
from .phases.canary import busy_reason, canary_user
from .phases.recover import locked_and_recovered
from .phases.resolve import frozen, installed_version
from .phases.rollback import roll_back_users
from .services import unit_of
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
        if frozen(ctx):
            return 0
        good = installed_version(ctx)
        if not good:
            return 0
        running = set(ctx.services.running_instances())
        off_link = off_link_users(ctx, sorted(running & set(cfg.os_users)))
        pending = {**activate.deferred_users(cfg.deferred_dir), **off_link}
        if not pending:
            return 0
        ctx.open_run_dir("drain")
        failures = 0
        for os_user in sorted(pending):
            current, problem = activate.read_release_link(cfg.active_link(os_user))
            if problem:  # this user's link, not the others' turn
                events("DEFERRED", user=os_user, version=good, reason=f"release link unusable: {problem}")
                continue
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
                records = back_up_user(ctx, os_user, good)
            except BackupError as exc:  # this user's problem: still owed, the others go on
                events("DEFERRED", user=os_user, version=good, reason=f"backup failed: {exc}")
                continue
            try:
                _report, failure = canary_user(ctx, os_user, cfg.release_dir(good), good)
            except UserLockTimeout as exc:  # nothing was stopped: still owed, try next time
                events("DEFERRED", user=os_user, version=good, reason=f"logins kept the user lock: {exc}")
                continue
            if failure is None:
                activate.clear_deferred(cfg.deferred_dir, os_user)
                events("DRAINED", user=os_user, version=good)
                continue
            failures += 1
            roll_back_users(ctx, [os_user], good_release=cfg.release_dir(current), failed_version=good,
                            backups={os_user: {r.db_name: str(r.path) for r in records}}, set_aside={})
        return 1 if failures else 0
