"""One tracker run, phase by phase (docs/architecture.md "One run, phase by phase").

Every way out ends in a known-good state: the previous build active, each
touched user's databases restored, and after a canary failure the tracker
frozen until a person looks. Exit codes: 0 done or nothing to do, 1 a gate
failed (or the run was refused) and was handled; 2 and 3 are the CLI's.
"""
from __future__ import annotations

from pathlib import Path

from . import activate, backup, goodbuilds, metrics, release, resolve
from .context import RunContext
from .journal import Journal, clear_journal
from .phases.health import check_health
from .recover import locked_and_recovered
from .phases.canary import roll_back_users, roll_out
from .state import atomic_json, iso, new_run_id, read_freeze, read_text_or_none, write_freeze


# Staging steps whose failure is a property of the build itself (its --version, its tarball's
# manifest), not of the network or the disk: such a build is quarantined like a gate failure.
DETERMINISTIC_STAGE_STEPS = {"version", "tarball"}


class RunRefused(Exception):
    """Stopped before touching anything a user runs (exit 1)."""


def installed_version(ctx: RunContext) -> str | None:
    return read_text_or_none(ctx.cfg.last_good_path)


def start_run_dir(ctx: RunContext) -> None:
    ctx.run_id = new_run_id(ctx.now())
    ctx.run_dir = ctx.cfg.runs_dir / ctx.run_id
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ctx.events.also_to(ctx.run_dir / "events.log")


def write_summary(ctx: RunContext, **fields) -> None:
    if ctx.run_dir is None:
        return
    summary = {"run_id": ctx.run_id, "finished_at": iso(ctx.now()), **ctx.outcome, **fields}
    atomic_json(ctx.run_dir / "summary.json", summary)


def choose_target(ctx: RunContext, installed: str | None):
    cfg = ctx.cfg
    # A pin needs no registry answer: it names the version itself.
    target = None if cfg.pin else resolve.resolve_target(cfg.npm, cfg.package, cfg.track, env=ctx.env,
                                                           scratch_dir=Path(cfg.tmpdir))
    decision = resolve.decide(target, installed=installed, track=cfg.track, pin=cfg.pin,
                              quarantined=release.quarantined_versions(cfg.quarantine_dir),
                              min_age=cfg.min_age, now=ctx.now())
    return target, decision


def back_up_everyone(ctx: RunContext, version: str) -> tuple[dict[str, list], dict[str, str]]:
    """(records of the users backed up, reason of each user whose backup failed).

    One user's backup problem (a symlink or FIFO named like a database, an unreadable file, a
    database too big for the free space...) is that user's: they are deferred with the reason,
    never moved without a backup, and everyone else goes on."""
    cfg = ctx.cfg
    records, problems = {}, {}
    for os_user in cfg.os_users:
        userdata = cfg.userdata_dir(os_user)
        try:  # recorded in the manifests: a rollback to that build restores the set taken when leaving it
            serving = activate.release_of_link(cfg.active_link(os_user))
        except activate.ActivationError:
            serving = None
        try:
            records[os_user] = backup.backup_user_databases(
                os_user, userdata, cfg.backup_dest, version, sqlite3=cfg.sqlite3,
                timeout=cfg.backup_timeout, keep=cfg.keep_backups, serving=serving)
        except backup.BackupError as exc:
            problems[os_user] = f"backup failed: {exc}"
            # Not "BACKUP FAILED": that line means the whole run stopped; this user is DEFERRED later.
            ctx.events("NOT BACKED UP", user=os_user, version=version, reason=str(exc))
            continue
        for record in records[os_user]:
            ctx.events("BACKED UP", user=os_user, database=record.db_name, path=str(record.path), bytes=record.bytes)
    return records, problems


def tracker_run(ctx: RunContext) -> int:
    cfg, events = ctx.cfg, ctx.events
    with locked_and_recovered(ctx):
        freeze = read_freeze(cfg.freeze_file)
        if freeze is not None:
            events("FROZEN", reason=freeze.reason, by=freeze.by or None, at=freeze.at or None,
                   freeze_file=str(cfg.freeze_file))
            return 0
        installed = installed_version(ctx)
        if installed is None:
            raise RunRefused(f"no last-good version at {cfg.last_good_path}: nothing to roll back to, "
                             "so no gated bump can start")
        try:
            target, decision = choose_target(ctx, installed)
        except resolve.ResolveError as exc:
            events("RESOLVE FAILED", track=cfg.track, reason=str(exc))
            return 1
        if decision.action != "install":
            events("HOLD", installed=installed, candidate=target.version if target else cfg.pin,
                   code=decision.code, reason=decision.reason)
            return 0
        version = decision.version
        start_run_dir(ctx)
        ctx.outcome.update({"from": installed, "to": version, "decision": decision.code})
        events("UPDATE START", run=ctx.run_id, installed=installed, target=version, reason=decision.reason)
        journal = Journal(run_id=ctx.run_id, version=version, from_version=installed)
        return bump(ctx, journal)


def bump(ctx: RunContext, journal: Journal) -> int:
    cfg, events = ctx.cfg, ctx.events
    version = journal.version
    journal.enter(cfg.journal_path, "backup")
    records, backup_problems = back_up_everyone(ctx, version)
    if not records:  # nobody could be backed up: nobody can move
        reason = "; ".join(f"{u}: {r}" for u, r in backup_problems.items())
        events("BACKUP FAILED", version=version, reason=reason)
        clear_journal(cfg.journal_path)
        write_summary(ctx, result="backup-failed", reason=reason)
        return 1
    journal.backups = {u: {r.db_name: str(r.path) for r in rs} for u, rs in records.items()}
    ctx.outcome["backups"] = journal.backups
    journal.enter(cfg.journal_path, "stage")
    try:
        staged = release.stage_for(cfg, version, env=ctx.env)  # as the gate user
    except release.StageError as exc:
        events("STAGE FAILED", version=version, reason=str(exc))
        if exc.step in DETERMINISTIC_STAGE_STEPS:  # the same build fails the same way every night
            release.quarantine_build(cfg.quarantine_dir, version, reason=str(exc), report_path=None,
                                     run_id=ctx.run_id)
        clear_journal(cfg.journal_path)
        write_summary(ctx, result="stage-failed", reason=str(exc))
        return 1
    journal.release = str(staged.prefix)
    journal.enter(cfg.journal_path, "health")
    verdict = check_health(ctx, staged, records)
    gate_failure, report = verdict.failure, verdict.report
    if report is not None:
        ctx.outcome["health_report"] = str(report)
    if gate_failure:
        if verdict.build_judged:  # the build failed a check; a host problem quarantines nothing
            release.quarantine_build(cfg.quarantine_dir, version, reason=gate_failure,
                                     report_path=str(report) if report else None, run_id=ctx.run_id)
        goodbuilds.remove_if_removable(cfg, version)  # never last-good's, the previous good's, or a user's
        clear_journal(cfg.journal_path)
        events("HEALTH-CHECK FAILED", version=version, reason=gate_failure, report=str(report) if report else None,
               quarantined="yes" if verdict.build_judged else "no")
        if verdict.build_judged:
            report_streak(ctx, version, "health", gate_failure)
        write_summary(ctx, result="health-check-failed", reason=gate_failure)
        return 1
    events("HEALTH-CHECK PASSED", version=version, report=str(report))
    journal.enter(cfg.journal_path, "canary")
    unproven = {**backup_problems, **{u: f"health gate seed refused: {r}" for u, r in verdict.unseeded.items()}}
    result = roll_out(ctx, journal, staged.prefix, not_backed_up=unproven)
    ctx.outcome.update({"moved": result.moved, "deferred": result.deferred, "canary_reports": result.reports})
    if result.failed_user:
        return fail_canary(ctx, journal, result)
    journal.enter(cfg.journal_path, "commit")
    commit(ctx, journal)
    return 0


def fail_canary(ctx: RunContext, journal: Journal, result) -> int:
    cfg, events = ctx.cfg, ctx.events
    good = journal.from_version
    users = list(journal.moving)
    reason = f"canary failed for {result.failed_user} on {journal.version}: {result.failure}"
    # Quarantine and freeze before the rollback: a run killed while rolling back is undone by
    # the next run's recovery, which must then hold, not install the failed build again.
    write_freeze(cfg.freeze_file, reason, by=f"t3-autoupdate run {ctx.run_id}")
    release.quarantine_build(cfg.quarantine_dir, journal.version, reason=reason,
                             report_path=result.reports[-1] if result.reports else None, run_id=ctx.run_id)
    journal.rolling_back = users
    journal.save(cfg.journal_path)
    failed = roll_back_users(ctx, users, good_release=cfg.release_dir(good), failed_version=journal.version,
                             backups=journal.backups)
    if failed:  # keep the record of who was moved: status shows it, the next command retries
        journal.rollback_failed, journal.rolling_back = failed, []  # the others are back
        journal.save(cfg.journal_path)
        events("ROLLBACK FAILED", version=journal.version, users=",".join(failed), reason=reason)
        write_summary(ctx, result="rollback-failed", reason=reason, rolled_back=users, rollback_failed=failed)
        return 1
    clear_journal(cfg.journal_path)
    report_streak(ctx, journal.version, "canary", result.failure)
    events("ROLLED BACK", version=journal.version, to=good, users=",".join(users), reason=reason)
    events("FROZEN", reason=reason, freeze_file=str(cfg.freeze_file))
    write_summary(ctx, result="rolled-back", reason=reason, rolled_back=users)
    return 1


def report_streak(ctx: RunContext, version: str, gate: str, reason: str) -> None:
    streak = metrics.note_rejection(ctx.cfg.state_dir, version=version, gate=gate, reason=reason)
    if streak["count"] >= metrics.REPEATED_AFTER:
        ctx.events("REPEATED REJECTIONS", count=streak["count"], same_cause=streak["same_cause"],
                   versions=",".join(streak["versions"]),
                   reason="the gates rejected every build in a row; suspect the gate or the host, not only the builds")


def commit(ctx: RunContext, journal: Journal) -> None:
    cfg = ctx.cfg
    metrics.clear_rejections(cfg.state_dir)
    release_dir = Path(journal.release)
    goodbuilds.record_last_good(cfg, journal.version)
    activate.point_bin_link(cfg.bin_link, release_dir)
    write_summary(ctx, result="updated", per_user={u: "updated" for u in journal.passed} | {
        u: f"deferred: {r}" for u, r in ctx.outcome.get("deferred", {}).items()})
    clear_journal(cfg.journal_path)
    ctx.events("update complete", version=journal.version, previous=journal.from_version,
               users=",".join(journal.passed) or "-", deferred=",".join(ctx.outcome.get("deferred", {})) or None)
