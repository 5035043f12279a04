"""A build a gate rejected: quarantined (never tried again until an operator clears it), and
counted, so that when the gates reject every build in a row one alarm points at the gate or
the host rather than at the builds."""
from __future__ import annotations

from .. import metrics
from ..context import RunContext
from ..quarantine import quarantine_build


def quarantine(ctx: RunContext, version: str, *, reason: str, report: str | None) -> None:
    quarantine_build(ctx.cfg.quarantine_dir, version, reason=reason, report_path=report, run_id=ctx.run_id)


def count_rejection(ctx: RunContext, version: str, *, gate: str, reason: str) -> None:
    streak = metrics.note_rejection(ctx.cfg.state_dir, version=version, gate=gate, reason=reason)
    if streak["count"] >= metrics.REPEATED_AFTER:
        ctx.events("REPEATED REJECTIONS", count=streak["count"], same_cause=streak["same_cause"],
                   versions=",".join(streak["versions"]),
                   reason="the gates rejected every build in a row; suspect the gate or the host, not only the builds")
