"""`t3-autoupdate adopt VERSION`: take over a host that runs t3 some other way (the
runbook's global `npm i -g`, or the old bash tracker), or start fresh: stage VERSION as
a release, point every user's link and the operators' `t3` at it, and record it as
last-good.

It restarts nobody: each user moves onto their link at their next restart of
`t3-serve@<user>` (the installed unit runs the link); until then `status` shows them
as not on their link and `drain-deferred` moves them once idle. It refuses to run
over a host the tracker already manages, so it can never move users behind the gates.

A host of the old bash tracker (its `last-good` in the same state dir, but nothing the
project writes) is taken over: its last-good must be VERSION (the build the host runs);
the freeze file stays as it is; its one-line deferral markers stay (and are read); its
backups stay where they are and are listed as restore points.
"""
from __future__ import annotations

from . import activate
from .context import RunContext
from .gateuser import GateUserError, ensure_gate_user
from .phases.recover import locked_and_recovered
from .stage import StageError, stage_for
from .state import atomic_write, read_freeze, read_text_or_none
from .takeover import legacy_restore_points, managed_by_project
from .versions import validate_version


def _report_legacy_state(ctx: RunContext) -> None:
    cfg, events = ctx.cfg, ctx.events
    freeze = read_freeze(cfg.freeze_file)
    deferred = activate.deferred_users(cfg.deferred_dir)
    events("LEGACY STATE", last_good=read_text_or_none(cfg.last_good_path),
           freeze=f"kept: {freeze.reason}" if freeze else "none",
           deferred=",".join(f"{u}({m.get('version') or m.get('error') or '?'})" for u, m in sorted(deferred.items()))
           or "none")
    for os_user in cfg.os_users:
        points = legacy_restore_points(cfg.backup_dest, os_user)
        if points:
            events("RESTORE POINTS", user=os_user, count=len(points), newest=str(points[0].path),
                   prebump=",".join(p.path.name for p in points if p.kind == "prebump") or None)


def adopt(ctx: RunContext, version: str) -> int:
    cfg, events = ctx.cfg, ctx.events
    version = validate_version(version, "adopt VERSION")
    with locked_and_recovered(ctx, reads_ports=False):
        current = read_text_or_none(cfg.last_good_path)
        ours = managed_by_project(cfg.state_dir)
        if current is not None and ours:
            events("REFUSED", reason=f"already managed: last-good is {current} ({cfg.last_good_path}) and "
                                     f"{', '.join(ours)} exist; use a pin or rollback to change builds through the gates")
            return 1
        legacy = current is not None
        if legacy and current != version:
            events("REFUSED", reason=f"the old tracker's last-good is {current} ({cfg.last_good_path}), not {version}: "
                                     "adopt the build the host runs now")
            return 1
        if legacy:
            _report_legacy_state(ctx)
        try:
            ensure_gate_user(cfg, events)
            staged = stage_for(cfg, version, env=ctx.env)  # as the gate user, like every build
        except GateUserError as exc:
            events("STAGE FAILED", version=version, reason=str(exc))
            return 1
        except StageError as exc:
            events("STAGE FAILED", version=version, reason=str(exc))
            return 1
        for os_user in cfg.os_users:
            activate.point_user(cfg.active_dir, os_user, staged.prefix)
        activate.point_bin_link(cfg.bin_link, staged.prefix)
        atomic_write(cfg.last_good_path, version + "\n")
        events("ADOPTED", version=version, users=",".join(cfg.os_users), release=str(staged.prefix),
               taken_over="the old tracker's state" if legacy else None,
               next="each server moves onto its link at its next restart (drain-deferred, once idle)")
        return 0
