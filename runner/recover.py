"""Phase 0: a run that finds an unfinished journal finishes or undoes that run first.

Before the canary nothing a user runs was touched, so the stage is discarded.
During the canary some users may already be on the new build: they are put
back on last-good with their pre-bump databases (replaced files are kept
aside, so no row is lost), and the next decision starts from a clean state.
A run that died while committing is finished: every user already passed.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import goodbuilds, release
from .context import RunContext
from .journal import clear_journal, load_journal
from .rollout import roll_back_users
from .state import write_freeze


def recover_unfinished_run(ctx: RunContext) -> None:
    cfg, events = ctx.cfg, ctx.events
    journal = load_journal(cfg.journal_path)
    if journal is None:
        return
    if journal.phase == "commit":
        from .tracker import commit

        commit(ctx, journal)
        events("RECOVERED", run=journal.run_id, phase=journal.phase, action="finished")
        return
    if journal.phase == "canary" and journal.moving:
        good = journal.from_version
        failed = roll_back_users(ctx, list(journal.moving), good_release=cfg.release_dir(good),
                                 failed_version=journal.version, backups=journal.backups)
        if failed:
            reason = f"recovery of run {journal.run_id} could not roll back {','.join(failed)}"
            write_freeze(cfg.freeze_file, reason, by="t3-autoupdate recovery")
            events("FROZEN", reason=reason, freeze_file=str(cfg.freeze_file))
        action = "rolled back " + ",".join(journal.moving)
    else:
        action = "discarded stage"
    if journal.release is not None or journal.phase in ("stage", "health", "canary"):
        goodbuilds.remove_if_removable(cfg, journal.version)  # never a good build's or a user's release
    release.clean_staging(cfg.releases_dir)
    # A health gate killed with the run leaves its scratch (copies of a user's database) behind.
    if re.fullmatch(r"[0-9A-Za-z-]+", journal.run_id):
        shutil.rmtree(Path(cfg.tmpdir) / f"t3-health-{journal.run_id}", ignore_errors=True)
    clear_journal(cfg.journal_path)
    events("RECOVERED", run=journal.run_id, phase=journal.phase, action=action)
