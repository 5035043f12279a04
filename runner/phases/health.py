"""Phase 5, the health gate: the staged build on copies of every user's own live database
(from this run's pre-bump backups), each on its own throwaway server, plus an empty base
dir; run as `pytest gates/test_health.py` in a subprocess (runner/gaterun.py), never
imported. docs: README.md, "Phases of one run".
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..context import RunContext
from ..gaterun import run_gate
from ..livedb import V1_NAME, V2_NAME, live_database_name

NO_SEED = "no populated database to seed the health gate"


@dataclass(frozen=True)
class HealthVerdict:
    passed: bool
    reason: str  # the cause of a failure; the gate's T3-GATE summary line when it passed
    report: Path | None  # the junit report, when the gate ran

    @property
    def failure(self) -> str | None:
        return None if self.passed else self.reason


def health_seeds(records: dict[str, list]) -> dict[str, list[Path]]:
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
        seeds[os_user] = [by_name[name].path for name in names]
    return seeds


def seed_option(seeds: dict[str, list[Path]]) -> str:
    """`--seed-db` as gates/seeds.py reads it: user=path entries, a user's entries one case."""
    return ",".join(f"{user}={path}" for user, paths in sorted(seeds.items()) for path in paths)


def health_options(ctx: RunContext, staged, seeds: dict[str, list[Path]], scratch: Path) -> dict[str, str]:
    cfg = ctx.cfg
    return {"--t3-bin": str(staged.bin), "--expect-version": staged.version, "--seed-db": seed_option(seeds),
            "--scratch": str(scratch), "--serve-host": cfg.serve_host, "--smoke-port": str(cfg.smoke_port),
            "--ready-timeout": str(cfg.ready_timeout), "--cookie-name": cfg.cookie_name}


def run_health_gate(ctx: RunContext, staged, seeds: dict[str, list[Path]]):
    scratch = Path(ctx.cfg.tmpdir) / f"t3-health-{ctx.run_id}"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        return run_gate("health", run_dir=ctx.run_dir, options=health_options(ctx, staged, seeds, scratch),
                        env=ctx.env, timeout=ctx.cfg.gate_timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_health(ctx: RunContext, staged, records: dict[str, list]) -> HealthVerdict:
    """Gate the staged build on every user's data; the verdict names the cause of a failure."""
    seeds = health_seeds(records)
    if not seeds:
        return HealthVerdict(False, NO_SEED, None)
    gate = run_health_gate(ctx, staged, seeds)
    return HealthVerdict(gate.passed, gate.reason(), gate.report)
