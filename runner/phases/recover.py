"""Phase 0: every mutating command finishes or undoes an unfinished journal first.

Before the canary nothing a user runs was touched, so the stage is discarded.
During the canary some users may already be on the new build: they are put
back on last-good with their pre-bump databases (replaced files are kept
aside, so no row is lost), and the next decision starts from a clean state.
Only users whose link is still on the journal's version are put back: one an
operator already moved back by hand is left alone, with the work they did
since (restoring the pre-bump backup again would set it aside).
A run that died while committing is finished: every user already passed.

A rollback that fails keeps the journal (with who failed), freezes, and
refuses the command: the record of who was moved is never lost, `status`
shows it, and the next command retries.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager

from .. import activate
from ..context import RunContext
from ..journal import RunRecord, clear_journal, load_journal
from ..refusals import RecoveryFailed
from ..services import unit_of
from ..state import RunLock, write_freeze

__all__ = ["RecoveryFailed", "locked_and_recovered", "recover_unfinished_run", "remove_dead_runs_scratch", "still_on"]

log = logging.getLogger("t3-autoupdate")


@contextmanager
def locked_and_recovered(ctx: RunContext, *, reads_ports: bool = True):
    """The run lock, then any unfinished journal finished or undone; yields the journal
    recovered (None if there was none). `reads_ports`: read the dispatch map now, once,
    before anyone is moved (see RunContext.ports)."""
    with RunLock(ctx.cfg.lock_path):
        if reads_ports:
            ctx.ports()
        remove_dead_runs_scratch(ctx.cfg)
        yield recover_unfinished_run(ctx)


# Staging and a rollback's reinstall make their private scratch only under the run lock (run,
# adopt, rollback, drain-deferred), so a `stage-*` or `rollback-*` directory the lock's holder
# finds was left by a command that died holding it (its npm cache, the tarball, the gate
# user's install), journal or not. Not `dry-run-*`: a dry run takes no lock, one may be
# running now; not `health-*`: named by run, recovery removes a dead run's.
LOCKED_SCRATCH = ("stage", "rollback")


def remove_dead_runs_scratch(cfg) -> list:
    """Remove the leftovers of LOCKED_SCRATCH (the caller holds the run lock); returns them."""
    try:
        names = os.listdir(cfg.tmpdir)
    except FileNotFoundError:
        return []
    if not any(name.startswith(tuple(f"{p}-" for p in LOCKED_SCRATCH)) for name in names):
        return []  # the usual case: scratch's own imports (tempfile, shutil) stay off a no-op run
    from ..scratch import remove_leftovers

    removed = [path for purpose in LOCKED_SCRATCH for path in remove_leftovers(cfg, purpose)]
    for path in removed:
        log.info("removed %s: private scratch a killed command left", path)
    return removed


def still_on(ctx: RunContext, os_user: str, version: str) -> bool:
    """Whether the user's link is still on `version` (an unreadable link counts: any doubt undoes)."""
    try:
        return activate.release_of_link(ctx.cfg.active_link(os_user)) == version
    except activate.ActivationError:
        return True


def recover_unfinished_run(ctx: RunContext) -> RunRecord | None:
    cfg, events = ctx.cfg, ctx.events
    journal = load_journal(cfg.journal_path)
    if journal is None:
        return None
    # Imported here: every command starts with this phase, and almost always finds no journal;
    # the repair's modules (rollback, commit, staging, the health gate's names) are ~0.1 s of
    # start-up a run with nothing to do would pay.
    from .. import goodbuilds
    from ..scratch import remove_leftovers
    from ..staging.releases import clean_staging
    from .commit import commit
    from .health import health_purpose
    from .rollback import roll_back_users

    if journal.phase == "commit":
        commit(ctx, journal)
        events("RECOVERED", run=journal.run_id, phase=journal.phase, action="finished")
        return journal
    if journal.phase == "canary" and journal.moving:
        # A user whose rollback started may have their link moved already: still owed.
        owed = set(journal.rolling_back) | set(journal.rollback_failed)
        back = [u for u in journal.moving if u in owed or still_on(ctx, u, journal.version)]
        left = [u for u in journal.moving if u not in back]
        for os_user in left:
            events("LEFT ALONE", user=os_user, run=journal.run_id,
                   reason=f"no longer on {journal.version}: never moved, or moved back by hand")
            # Killed between stop and relink: the server of the old build is simply started again.
            if not ctx.services.is_active(unit_of(os_user)):
                ctx.services.start(unit_of(os_user))
        journal.rolling_back = back
        journal.save(cfg.journal_path)
        failed = roll_back_users(ctx, back, good_release=cfg.release_dir(journal.from_version),
                                 failed_version=journal.version, backups=journal.backups,
                                 set_aside=journal.set_aside)
        if failed:
            reason = f"recovery of run {journal.run_id} could not roll back {','.join(failed)}"
            journal.rollback_failed, journal.rolling_back = failed, []  # the others are back
            journal.save(cfg.journal_path)
            write_freeze(cfg.freeze_file, reason, by="t3-autoupdate recovery")
            events("FROZEN", reason=reason, freeze_file=str(cfg.freeze_file))
            raise RecoveryFailed(f"{reason}; the journal {cfg.journal_path} is kept, "
                                 "fix what ROLLBACK FAILED names and run again")
        action = "rolled back " + (",".join(back) or "nobody")
        if left:
            action += "; left alone " + ",".join(left)
    else:
        action = "discarded stage"
    # Staging runs beside the backups (tracker.back_up_while_staging): a run killed in "backup"
    # may have staged already.
    if journal.release is not None or journal.phase in ("backup", "stage", "health", "canary"):
        goodbuilds.remove_if_removable(cfg, journal.version)  # never a good build's or a user's release
    clean_staging(cfg.releases_dir)
    # A health gate killed with the run leaves its private scratch (copies of users' databases)
    # behind: only `health-<run id>-*` directly below the root-owned scratch root is removed.
    if re.fullmatch(r"[0-9A-Za-z-]+", journal.run_id):
        remove_leftovers(cfg, health_purpose(journal.run_id))
    clear_journal(cfg.journal_path)
    events("RECOVERED", run=journal.run_id, phase=journal.phase, action=action)
    return journal
