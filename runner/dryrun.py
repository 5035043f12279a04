"""`t3-autoupdate dry-run` (or T3_DRY_RUN=1): preview the tracked build without
changing anything: resolve, stage into a temporary prefix, run the health gate
on a fresh online copy of a user's database, print PASS or FAIL with the report.
No restore point, no quarantine, no link, no restart.

Where things go. Every user's database is copied online AS THAT USER, into that user's own
backup dir (`<backup dest>/<user>/`, the one place their uid may write besides their home),
under a `dryrun` name that no restore or pruning of restore points ever takes; root then
copies each one out, no-follow and checked against its recorded size and sha256, into this
preview's private scratch (`runner.scratch.private_scratch`, where the staging happens too,
as the gate user), and removes the user's copy. Any backup, staging or gate failure is
`DRY-RUN FAIL` (exit 1), never a crash.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import backup
from .context import RunContext
from .gatework import GateWork
from .gateuser import GateUserError, gate_ids
from .phases.health import check_health
from .phases.resolve import installed_version, resolve_and_decide
from .resolve import ResolveError
from .scratch import ScratchError, private_scratch
from .stage import StageError, stage_release
from .state import read_freeze


def preview_seeds(cfg, version: str, seeds_dir: Path) -> dict[str, list]:
    """OS user -> records of root's own copies (in `seeds_dir`) of fresh backups of their databases."""
    os.mkdir(seeds_dir, 0o700)
    records = {}
    for os_user in cfg.os_users:
        had_dir = os.path.lexists(cfg.backup_dest / os_user)
        taken = backup.backup_user_databases(os_user, cfg.userdata_dir(os_user), cfg.backup_dest, version,
                                             sqlite3=cfg.sqlite3, timeout=cfg.backup_timeout, keep=1, kind="dryrun")
        user_dir = seeds_dir / os_user
        os.mkdir(user_dir, 0o700)
        try:
            records[os_user] = [backup.copy_backup_out(r, cfg.backup_dest, user_dir / r.db_name) for r in taken]
        finally:
            for record in taken:
                backup.discard_backup(record, cfg.backup_dest)
            if not had_dir:  # leave the host as it was
                backup.remove_backup_dir_if_empty(cfg.backup_dest, os_user)
    return records


def dry_run(ctx: RunContext, *, stdout) -> int:
    cfg, events = ctx.cfg, ctx.events
    try:
        _target, decision = resolve_and_decide(ctx, installed_version(ctx))
    except ResolveError as exc:
        events("RESOLVE FAILED", track=cfg.track, reason=str(exc))
        return 1
    version = decision.version  # the build a run would consider, even one it would hold
    ctx.open_run_dir("dry-run")
    try:
        gate_user = gate_ids(cfg)
        with private_scratch(cfg, "dry-run", gate_user) as (work, gate_dir):
            try:
                records = preview_seeds(cfg, version, work / "seeds")
            except backup.BackupError as exc:
                print(f"DRY-RUN FAIL {version}: backup failed: {exc}", file=stdout)
                return 1
            releases = work / "releases"
            os.mkdir(releases)
            os.chmod(releases, 0o755)  # as releases/ is (run commands' umask is 0077): the gate user reads in it
            try:
                staged = stage_release(cfg.npm, cfg.package, version, releases, env=ctx.env,
                                       gate=GateWork(gate_user, gate_dir, ctx.env.get("npm_config_registry")))
            except StageError as exc:
                print(f"DRY-RUN FAIL {version}: staging failed: {exc}", file=stdout)
                return 1
            verdict = check_health(ctx, staged, records)
    except (GateUserError, ScratchError) as exc:  # fail closed: candidate code never runs as root
        print(f"DRY-RUN FAIL {version}: no private scratch for the gate user: {exc}", file=stdout)
        return 1
    if verdict.report is None:
        print(f"DRY-RUN FAIL {version}: {verdict.reason}", file=stdout)
        return 1
    if verdict.unseeded:  # a user's data was not proven: a preview must not say PASS for them
        print(f"DRY-RUN FAIL {version}: not gated on every user's data: "
              + "; ".join(f"{u}: {r}" for u, r in sorted(verdict.unseeded.items())), file=stdout)
        return 1
    note = f" (a real run would hold: {decision.reason})" if decision.action != "install" else ""
    freeze = read_freeze(cfg.freeze_file)
    if freeze is not None:  # a PASS must not read as "the next run installs it"
        note = f" (a real run would hold: frozen: {freeze.reason})"
    said = "PASS" if verdict.passed else "FAIL"
    print(f"DRY-RUN {said} {version}{note}: {verdict.reason} report={verdict.report}", file=stdout)
    return 0 if verdict.passed else 1
