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
from .phases.recover import locked_and_recovered
from .phases.resolve import frozen, installed_version, resolve_and_decide
from .refusals import RunRefused
from .resolve import ResolveError
from .state import atomic_json, iso

__all__ = ["RunRefused", "tracker_run", "bump", "back_up_while_staging"]


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


def back_up_while_staging(ctx: RunContext, record: RunRecord):
    """Phases 3 and 4 at once: staging needs nothing from the backups (it installs as the gate
    user in its own scratch, touching nothing a user runs), so the candidate is staged while
    every user is backed up, and the run waits for the longer of the two instead of their sum.
    Nobody backed up: the staged release is removed again (nothing installed), then the run
    stops. The journal says "backup" until the backups are done, then "stage"; recovery
    discards a stage from either."""
    from concurrent.futures import ThreadPoolExecutor

    from . import goodbuilds
    from .phases.backup import back_up_everyone
    from .phases.stage import stage_candidate

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage") as pool:
        staging = pool.submit(stage_candidate, ctx, record)
        try:
            taken = back_up_everyone(ctx, record)
        except RunStopped:
            try:
                staging.result()
            except RunStopped:
                pass  # its own STAGE FAILED was logged; the run stops for the backups
            else:
                goodbuilds.remove_if_removable(ctx.cfg, record.version)
                record.release = None
            raise
        record.enter(ctx.cfg.journal_path, "stage")
        return taken, staging.result()


def bump(ctx: RunContext, record: RunRecord) -> int:
    """Phases 3-8 on the chosen build; the record says how the run ended (summary.json)."""
    # The bump's phases are imported here, not at the top: most runs have nothing to do, and
    # their start-up is part of the no-op run's cost (issue 12: npm view + 0.2 s).
    from .phases.canary import roll_out, undo_canary
    from .phases.commit import commit
    from .phases.health import health_gate_ahead, prove_candidate

    journal = ctx.cfg.journal_path
    try:
        record.enter(journal, "backup")
        # The health gate's pytest starts up beside the backups and staging, held for the build
        # and its seeds; any way out before it is told to go ends it (and a dead runner takes it).
        with health_gate_ahead(ctx) as health_gate:
            taken, staged = back_up_while_staging(ctx, record)
            record.enter(journal, "health")
            prove_candidate(ctx, record, staged, taken, health_gate)
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
