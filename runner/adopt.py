"""`t3-autoupdate adopt VERSION`: take over a host that runs t3 some other way (the
runbook's global `npm i -g`), or start fresh: stage VERSION as a release, point
every user's link and the operators' `t3` at it, and record it as last-good.

It restarts nobody: each user moves onto their link at their next restart of
`t3-serve@<user>` (the installed unit runs the link). It refuses to run over a
host the tracker already manages, so it can never move users behind the gates.
"""
from __future__ import annotations

from . import activate
from .context import RunContext
from .gateuser import GateUserError, ensure_gate_user
from .recover import locked_and_recovered
from .stage import StageError, stage_for
from .state import atomic_write, read_text_or_none
from .versions import validate_version


def adopt(ctx: RunContext, version: str) -> int:
    cfg, events = ctx.cfg, ctx.events
    version = validate_version(version, "adopt VERSION")
    with locked_and_recovered(ctx, reads_ports=False):
        current = read_text_or_none(cfg.last_good_path)
        if current is not None:
            events("REFUSED", reason=f"already managed: last-good is {current} ({cfg.last_good_path}); "
                                     "use a pin or rollback to change builds through the gates")
            return 1
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
        events("ADOPTED", version=version, users=",".join(cfg.os_users), release=str(staged.prefix))
        return 0
