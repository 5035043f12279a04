"""Phase 5, the health gate: the staged build on copies of every user's own live database
(from this run's pre-bump backups), each on its own throwaway server, plus an empty base
dir; run as `pytest gates/test_health.py` in a subprocess (runner/gaterun.py), never
imported. docs: README.md, "Phases of one run" and "Security model".

The seeds are backups in directories their users own: root copies each one (no-follow,
non-blocking, checked against the size and sha256 its backup recorded) into fresh private
scratch (runner/scratch.py) before anything opens it as SQLite, and the gate works only on
those copies; every candidate process in it runs as the gate user.
"""
from __future__ import annotations

import hashlib
import logging
import os
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .. import goodbuilds, proc
from ..context import RunContext
from ..gaterun import PendingGate, start_gate
from ..gateuser import GateUserError
from ..journal import RunRecord, RunStopped
from ..livedb import V1_NAME, V2_NAME, live_database_name
from ..scratch import ScratchError, private_scratch
from ..userfiles import UserFileError, copy_to_new_file, open_dir_at, open_file_at, open_trusted_dir
from .rejection import count_rejection, quarantine

log = logging.getLogger("t3-autoupdate.health")

NO_SEED = "no populated database to seed the health gate"

# How the gate's pytest reports a failure: the failed check's own message only (`E ...`
# lines), which is the reason the runner reads. A server that never starts fails every
# check of its case on setup, and pytest's default long tracebacks parse the gate's source
# anew for each one: measured on a build that crashes at start (4 cases, 32 errors), about
# 0.8 s of CPU and several seconds of wall time on a loaded host, before the verdict.
PYTEST_OPTIONS = {"--tb": "line"}


@dataclass(frozen=True)
class HealthVerdict:
    passed: bool
    reason: str  # the cause of a failure; the gate's T3-GATE summary line when it passed
    report: Path | None  # the junit report, when the gate ran

    # False when the gate could not run at all (no seed left, no gate user, no scratch): a
    # problem of the host, not of the build, so the build is not quarantined for it.
    build_judged: bool = True
    # OS user -> why their seed was not used (changed since its backup, not a regular file):
    # that user's data was not proven, so they are deferred, and everyone else goes on.
    unseeded: dict = field(default_factory=dict)

    @property
    def failure(self) -> str | None:
        return None if self.passed else self.reason


class SeedError(RuntimeError):
    """A seed could not be copied safely (not a regular file, a symlink, changed since its backup)."""


def health_purpose(run_id: str) -> str:
    """The private scratch purpose of a run's health gate (recovery removes what it leaves)."""
    return f"health-{run_id.lower()}"


def health_seeds(records: dict[str, list]) -> dict[str, list]:
    """OS user -> the backups that seed that user's case: the backup of the database that
    was live at backup time, and for a V2 user also the state.sqlite frozen beside it (a
    faithful base dir holds both). A user with no database has no case."""
    seeds = {}
    for os_user, user_records in records.items():
        by_name = {r.db_name: r for r in user_records}
        live = live_database_name(by_name)
        if live is None:
            continue
        names = [live] + ([V1_NAME] if live == V2_NAME and V1_NAME in by_name else [])
        seeds[os_user] = [by_name[name] for name in names]
    return seeds


def copy_seed(record, dest: Path) -> Path:
    """Copy one backup, as root, into `dest` (created 0600, never an existing path): opened
    no-follow and non-blocking below its backup root (a trusted directory), a regular file
    only, its size then its sha256 checked against the backup's record. The bytes hashed
    are exactly the bytes copied, so a file replaced or rewritten meanwhile is a mismatch."""
    shown = f"seed of {record.os_user}: {record.path}"
    user_dir = record.path.parent
    with ExitStack() as stack:
        try:
            root_fd, _ = open_trusted_dir(user_dir.parent)
            stack.callback(os.close, root_fd)
            dir_fd = open_dir_at(root_fd, user_dir.name, user_dir)
            stack.callback(os.close, dir_fd)
            fd = open_file_at(dir_fd, record.path.name, record.path)
            stack.callback(os.close, fd)
        except UserFileError as exc:
            raise SeedError(f"{shown}: {exc}") from None
        size = os.fstat(fd).st_size
        if size != record.bytes:  # first: a swapped sparse huge file is refused before any read
            raise SeedError(f"{shown}: {size} bytes, its backup recorded {record.bytes}: changed since the backup")
        digest = hashlib.sha256()
        offset = copy_to_new_file(fd, dest, 0o600, digest, limit=record.bytes)
        if (offset, digest.hexdigest()) != (record.bytes, record.sha256):
            os.unlink(dest)
            raise SeedError(f"{shown}: sha256 {digest.hexdigest()} ({offset} bytes) does not match its backup's"
                            f" record {record.sha256}: changed since the backup")
    return dest


def copy_seeds(seeds: dict[str, list], dest_dir: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Every seed copied by `copy_seed` into `dest_dir` (root's, 0700): (copies per user, the
    reason per user whose seed could not be copied safely). One user's bad seed (a file they
    swapped after the backup) is that user's problem: the others are still gated."""
    os.mkdir(dest_dir, 0o700)
    copies: dict[str, list[Path]] = {}
    problems: dict[str, str] = {}
    for os_user, user_records in seeds.items():
        try:
            copies[os_user] = [copy_seed(r, dest_dir / f"{os_user}-{i}-{r.db_name}")
                               for i, r in enumerate(user_records)]
        except SeedError as exc:
            problems[os_user] = str(exc)
    return copies, problems


def seed_option(seeds: dict[str, list[Path]]) -> str:
    """`--seed-db` as gates/seeds.py reads it: user=path entries, a user's entries one case."""
    return ",".join(f"{user}={path}" for user, paths in sorted(seeds.items()) for path in paths)


def health_gate_options(cfg) -> dict[str, str]:
    """The gate's options known before the build is staged (its process starts with them)."""
    return {**PYTEST_OPTIONS, "--gate-user": cfg.gate_user, "--serve-host": cfg.serve_host,
            "--smoke-port": str(cfg.smoke_port), "--ready-timeout": str(cfg.ready_timeout),
            "--cookie-name": cfg.cookie_name}


def candidate_options(staged, copies: dict[str, list[Path]], scratch: Path) -> dict[str, str]:
    """The gate's options known once the build is staged and the seeds copied (given at go)."""
    return {"--t3-bin": str(staged.bin), "--expect-version": staged.version, "--seed-db": seed_option(copies),
            "--scratch": str(scratch)}


def start_health_gate(ctx: RunContext) -> PendingGate:
    """The health gate's pytest, started now and held before collection until `check_health`
    gives it the build and the seeds: a bump starts it beside the backups and staging, so its
    start-up is done when they are. Leaving it as a context ends it unless it has given its
    verdict (every way out of a run before its go)."""
    return start_gate("health", run_dir=ctx.run_dir, options=health_gate_options(ctx.cfg), env=ctx.env,
                      timeout=ctx.cfg.gate_timeout, start_within=HOLD_LIMIT, options_at_go=True)


def health_gate_ahead(ctx: RunContext):
    """`start_health_gate` for a bump, as a context. When its process cannot start now (no
    fork, no interpreter), the bump goes on without it: `check_health` then starts the gate at
    its moment, where failing to start is a verdict that judges no build (never a crash of
    the run before anyone was backed up)."""
    try:
        return start_health_gate(ctx)
    except proc.CommandError as exc:
        log.warning("health gate not started ahead (it starts at its moment instead): %s", exc)
        return nullcontext(None)


# How long a started health gate waits for its options before it gives up by itself. The
# runner always tells it to go or ends it, and it dies with the runner: this bound only ends
# a gate whose runner hangs, and lies far beyond staging's and the backups' own deadlines, so
# a slow night never ends a gate before its go (and if one did, check_health does not judge
# the build by it).
HOLD_LIMIT = 3600.0


def check_health(ctx: RunContext, staged, records: dict[str, list], gate: PendingGate | None = None) -> HealthVerdict:
    """Gate the staged build on private copies of every user's data; the verdict names the
    cause of a failure (a seed that cannot be copied safely names its user and file). `gate`:
    the health gate started ahead (`start_health_gate`), else it is started here; it is
    ended on every way out that does not tell it to go."""
    pending = gate
    try:
        seeds = health_seeds(records)
        if not seeds:
            return HealthVerdict(False, NO_SEED, None)
        with private_scratch(ctx.cfg, health_purpose(ctx.run_id)) as (root_dir, _gate_dir):
            pending = pending or start_health_gate(ctx)
            with pending:  # ended (if it has not given its verdict) before its scratch is removed
                copies, unseeded = copy_seeds(seeds, root_dir / "seeds")
                for os_user, reason in unseeded.items():
                    ctx.events("SEED REFUSED", user=os_user, reason=reason)
                if not copies:
                    return HealthVerdict(False, "no seed could be copied safely: " + "; ".join(unseeded.values()),
                                         None, build_judged=False, unseeded=unseeded)
                if pending.ended():  # it gave up waiting (HOLD_LIMIT): a verdict on nothing, not on the build
                    return HealthVerdict(False, "the health gate could not run: it ended before it was started",
                                         None, build_judged=False)
                pending.go(candidate_options(staged, copies, root_dir))
                result = pending.result()
    except (GateUserError, ScratchError, OSError, proc.CommandError) as exc:  # fail closed, never a hang or a follow
        return HealthVerdict(False, f"the health gate could not run: {exc}", None, build_judged=False)
    finally:
        if pending is not None:  # also one started ahead when there was no seed or no scratch
            pending.cancel()
    return HealthVerdict(result.passed, result.reason(), result.report, unseeded=unseeded)


def prove_candidate(ctx: RunContext, record: RunRecord, staged, taken: dict[str, list],
                    gate: PendingGate | None = None) -> None:
    """The health phase of a bump: the gate (`gate`, started ahead by the bump: `start_health_gate`)
    on this run's backups (`taken`). A failure stops the
    run before anyone is touched: the build is quarantined when the gate judged it (a host
    problem quarantines nothing) and its release removed. A user whose seed was refused joins
    the record's `unproven`: deferred, never moved on data the gate did not see."""
    verdict = check_health(ctx, staged, taken, gate)
    report = str(verdict.report) if verdict.report is not None else None
    record.health_report = report
    if verdict.failure:
        if verdict.build_judged:
            quarantine(ctx, record.version, reason=verdict.failure, report=report)
        goodbuilds.remove_if_removable(ctx.cfg, record.version)  # never last-good's, the previous good's, or a user's
        ctx.events("HEALTH-CHECK FAILED", version=record.version, reason=verdict.failure, report=report,
                   quarantined="yes" if verdict.build_judged else "no")
        if verdict.build_judged:
            count_rejection(ctx, record.version, gate="health", reason=verdict.failure)
        raise RunStopped("health-check-failed", verdict.failure)
    ctx.events("HEALTH-CHECK PASSED", version=record.version, report=report)
    record.unproven.update({u: f"health gate seed refused: {r}" for u, r in verdict.unseeded.items()})
