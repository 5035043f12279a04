"""Phase 4: stage the chosen build into `releases/<version>/` as the gate user (`runner.stage`).

A staging step whose failure is a property of the build itself (its `--version`, its
tarball's manifest), not of the network or the disk, quarantines it like a gate failure:
the same build fails the same way every night.
"""
from __future__ import annotations

from ..context import RunContext
from ..journal import RunRecord, RunStopped
from ..stage import Release, StageError, stage_for
from .rejection import quarantine

DETERMINISTIC_STAGE_STEPS = {"version", "tarball"}


def stage_candidate(ctx: RunContext, record: RunRecord) -> Release:
    """The staged release (its prefix goes into the record); a failure stops the run."""
    try:
        staged = stage_for(ctx.cfg, record.version, env=ctx.env)
    except StageError as exc:
        ctx.events("STAGE FAILED", version=record.version, reason=str(exc))
        if exc.step in DETERMINISTIC_STAGE_STEPS:
            quarantine(ctx, record.version, reason=str(exc), report=None)
        raise RunStopped("stage-failed", str(exc)) from None
    record.release = str(staged.prefix)
    return staged
