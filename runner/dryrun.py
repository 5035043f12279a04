"""`t3-autoupdate dry-run` (or T3_DRY_RUN=1): preview the tracked build without
changing anything: resolve, stage into a temporary prefix, run the health gate
on fresh online copies of every user's live database, print PASS or FAIL with the report.
No backup, no quarantine, no link, no restart.

Everything it writes lives in fresh private scratch (runner/scratch.py), and the candidate
is staged exactly as a run stages it: by the gate user (`stage_for`), never by root."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from . import backup, resolve
from .context import RunContext
from .phases.health import check_health
from .scratch import ScratchError, private_scratch
from .stage import StageError, stage_for
from .state import new_run_id, read_text_or_none, read_freeze


def dry_run(ctx: RunContext, *, stdout) -> int:
    cfg, events = ctx.cfg, ctx.events
    installed = read_text_or_none(cfg.last_good_path)
    try:
        target = None if cfg.pin else resolve.resolve_target(cfg.npm, cfg.package, cfg.track, env=ctx.env,
                                                             scratch_dir=Path(cfg.tmpdir))
    except resolve.ResolveError as exc:
        events("RESOLVE FAILED", track=cfg.track, reason=str(exc))
        return 1
    version = cfg.pin or target.version
    decision = resolve.decide(target, installed=installed, track=cfg.track, pin=cfg.pin, quarantined=set(),
                              min_age=cfg.min_age, now=ctx.now())
    ctx.run_id = "dry-run-" + new_run_id(ctx.now())
    ctx.run_dir = cfg.runs_dir / ctx.run_id
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with private_scratch(cfg, "dry-run") as (work, _gate_dir):
            records = {os_user: backup.backup_user_databases(os_user, cfg.userdata_dir(os_user), work / "seeds",
                                                             version, sqlite3=cfg.sqlite3,
                                                             timeout=cfg.backup_timeout, keep=1)
                       for os_user in cfg.os_users}
            releases = work / "releases"  # like the real releases dir: 0755, the gate user runs what is in it
            os.mkdir(releases, 0o755)
            os.chmod(releases, 0o755)  # whatever the umask
            try:
                staged = stage_for(dataclasses.replace(cfg, releases_dir=releases), version, env=ctx.env)
            except StageError as exc:
                print(f"DRY-RUN FAIL {version}: staging failed: {exc}", file=stdout)
                return 1
            verdict = check_health(ctx, staged, records)
    except ScratchError as exc:
        print(f"DRY-RUN FAIL {version}: {exc}", file=stdout)
        return 1
    if verdict.report is None:
        print(f"DRY-RUN FAIL {version}: {verdict.reason}", file=stdout)
        return 1
    note = f" (a real run would hold: {decision.reason})" if decision.action != "install" else ""
    freeze = read_freeze(cfg.freeze_file)
    if freeze is not None:  # a PASS must not read as "the next run installs it"
        note = f" (a real run would hold: frozen: {freeze.reason})"
    said = "PASS" if verdict.passed else "FAIL"
    print(f"DRY-RUN {said} {version}{note}: {verdict.reason} report={verdict.report}", file=stdout)
    return 0 if verdict.passed else 1
