"""Phase 8: every user who could move passed the canary; the build becomes last-good.

Last-good moves (the build it replaces becomes the previous good build: both are the ways
back), the operators' `t3` link follows, the rejection streak ends, the journal is cleared.
Recovery finishes a run killed in this phase the same way: its users all passed.
"""
from __future__ import annotations

from pathlib import Path

from .. import activate, goodbuilds, metrics
from ..context import RunContext
from ..journal import RunRecord, clear_journal


def commit(ctx: RunContext, record: RunRecord) -> None:
    cfg = ctx.cfg
    metrics.clear_rejections(cfg.state_dir)
    goodbuilds.record_last_good(cfg, record.version)
    activate.point_bin_link(cfg.bin_link, Path(record.release))
    record.result, record.reason = "updated", None
    clear_journal(cfg.journal_path)
    ctx.events("update complete", version=record.version, previous=record.from_version,
               users=",".join(record.passed) or "-", deferred=",".join(record.deferred) or None)
