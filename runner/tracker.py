"""One tracker run, phase by phase (docs/architecture.md "One run, phase by phase").

recover (any unfinished run first) -> freeze check -> resolve -> backup -> stage -> health ->
canary -> commit; each phase lives in runner/phases/ and writes what it did into the run's one
record (runner/journal.py), saved as the journal before each phase and written as the run's
summary.json when it ends. Every way out ends in a known-good state: the previous build
active, each touched user's databases restored, and after a canary failure the tracker
frozen until a person looks. Exit codes: 0 done or nothing to do, 1 a gate failed (or the
run was refused) and was handled; 2 and 3 are the CLI's.
"""
from __future__ import annotations

from .context import RunContext
from .journal import RunRecord, RunStopped, clear_journal
from .phases.backup import back_up_everyone
from .phases.canary import roll_out, undo_canary
from .phases.commit import commit
from .phases.health import prove_candidate
from .phases.recover import locked_and_recovered
from .phases.resolve import frozen, installed_version, resolve_and_decide
from .phases.stage import stage_candidate
from .resolve import ResolveError
from .state import atomic_json, iso


class RunRefused(Exception):
    """Stopped before touching anything a user runs (exit 1)."""


def tracker_run(ctx: RunContext) -> int:
    cfg, events = ctx.cfg, ctx.events
    with locked_and_recovered(ctx):
        if frozen(ctx):
            return 0
        installed = installed_version(ctx)
        if installed is None:
            raise RunRefused(f"no last-good version at {cfg.last_good_path}: nothing to roll back to, "
                             "so no gated bump can start")
        try:
            target, decision = resolve_and_decide(ctx, installed)
        except ResolveError as exc:
            events("RESOLVE FAILED", track=cfg.track, reason=str(exc))
            return 1
        if decision.action != "install":
            events("HOLD", installed=installed, candidate=target.version if target else cfg.pin,
                   code=decision.code, reason=decision.reason)
            return 0
        ctx.open_run_dir()
        events("UPDATE START", run=ctx.run_id, installed=installed, target=decision.version, reason=decision.reason)
        return bump(ctx, RunRecord(run_id=ctx.run_id, version=decision.version, from_version=installed,
                                   decision=decision.code))


def bump(ctx: RunContext, record: RunRecord) -> int:
    """Phases 3-8 on the chosen build; the record says how the run ended (summary.json)."""
    journal = ctx.cfg.journal_path
    try:
        record.enter(journal, "backup")
        taken = back_up_everyone(ctx, record)
        record.enter(journal, "stage")
        staged = stage_candidate(ctx, record)
        record.enter(journal, "health")
        prove_candidate(ctx, record, staged, taken)
        record.enter(journal, "canary")
        roll_out(ctx, record, staged.prefix)
        if record.failed_user:
            undo_canary(ctx, record)
        record.enter(journal, "commit")
        commit(ctx, record)
    except RunStopped as stop:
        record.result, record.reason = stop.result, stop.reason
        if not record.rollback_failed:  # else kept: status shows who is where, the next command retries
            clear_journal(journal)
    atomic_json(ctx.run_dir / "summary.json", record.summary(finished_at=iso(ctx.now())))
    return 0 if record.result == "updated" else 1
