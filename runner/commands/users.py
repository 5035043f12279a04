"""The operations on users' builds and databases: `rollback`, `drain-deferred`, `recover`,
`adopt`, `verify` (the canary gate, now) and `mint` (a pairing credential, at login)."""
from __future__ import annotations

import sys

from runner.adopt import adopt
from runner.commands import FAILED, OK
from runner.config import Config
from runner.context import RunContext
from runner.drain import drain_deferred
from runner.events import EventLog
from runner.manual import manual_rollback
from runner.mint import mint_main
from runner.phases.canary import canary_gate
from runner.phases.recover import locked_and_recovered


def cmd_rollback(cfg: Config, args, events: EventLog) -> int:
    return manual_rollback(RunContext.build(cfg, events=events), to_version=args.to)


def cmd_drain(cfg: Config, args, events: EventLog) -> int:
    return drain_deferred(RunContext.build(cfg, events=events))


def cmd_recover(cfg: Config, args, events: EventLog) -> int:
    # What the tracker unit's ExecStopPost runs: a run killed mid-move is undone within
    # moments, not at the next night's run (a user would stay stopped until then).
    with locked_and_recovered(RunContext.build(cfg, events=events)):
        return OK


def cmd_adopt(cfg: Config, args, events: EventLog) -> int:
    return adopt(RunContext.build(cfg, events=events), args.version)


def cmd_verify(cfg: Config, args, events: EventLog) -> int:
    ctx = RunContext.build(cfg, events=events)
    ctx.open_run_dir("verify")
    result = canary_gate(ctx, users=args.users.split(",") if args.users else None)
    events("VERIFY " + ("PASSED" if result.passed else "FAILED"), tests=result.tests,
           reason=None if result.passed else result.reason(), report=str(result.report))
    return OK if result.passed else FAILED


def cmd_mint(cfg: Config, args, events: EventLog) -> int:
    return mint_main(cfg, args.os_user, sys.stdout)
