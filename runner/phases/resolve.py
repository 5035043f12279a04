"""Phases 1-2: hold while frozen, then choose the build (docs/architecture.md "One run, phase by phase").

The freeze (after a canary failure, or set by an operator) holds every run and drain until a
person lifts it. The choice is `runner.resolve`: what the tracked tag points at (a pin needs no
registry answer), then the pure `decide` against last-good, the track, the quarantine and the
minimum age. The bump and the dry-run both choose here, so a preview says what a run would do.
"""
from __future__ import annotations

from pathlib import Path

from ..context import RunContext
from ..quarantine import quarantined_versions
from ..resolve import Decision, Target, decide, resolve_target
from ..state import read_freeze, read_text_or_none


def frozen(ctx: RunContext) -> bool:
    """Whether the tracker is frozen; says so (FROZEN) when it is."""
    freeze = read_freeze(ctx.cfg.freeze_file)
    if freeze is None:
        return False
    ctx.events("FROZEN", reason=freeze.reason, by=freeze.by or None, at=freeze.at or None,
               freeze_file=str(ctx.cfg.freeze_file))
    return True


def installed_version(ctx: RunContext) -> str | None:
    """Last-good: the build every user is moved back to when anything fails."""
    return read_text_or_none(ctx.cfg.last_good_path)


def resolve_and_decide(ctx: RunContext, installed: str | None) -> tuple[Target | None, Decision]:
    """(what the tag points at, or None when pinned; the decision). Raises resolve.ResolveError."""
    cfg = ctx.cfg
    target = None if cfg.pin else resolve_target(cfg.npm, cfg.package, cfg.track, env=ctx.env,
                                                 scratch_dir=Path(cfg.tmpdir))
    decision = decide(target, installed=installed, track=cfg.track, pin=cfg.pin,
                      quarantined=quarantined_versions(cfg.quarantine_dir), min_age=cfg.min_age, now=ctx.now())
    return target, decision
