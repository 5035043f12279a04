"""`t3-autoupdate [run]` (one gated run: what the timer starts) and `dry-run`."""
from __future__ import annotations

import sys

from runner.config import Config
from runner.context import RunContext
from runner.events import EventLog
from runner.tracker import tracker_run


def cmd_run(cfg: Config, args, events: EventLog) -> int:
    if cfg.dry_run:
        return cmd_dry_run(cfg, args, events)
    return tracker_run(RunContext.build(cfg, events=events))


def cmd_dry_run(cfg: Config, args, events: EventLog) -> int:
    from runner.dryrun import dry_run  # here: a timer's run never needs the dry run's modules

    return dry_run(RunContext.build(cfg, events=events), stdout=sys.stdout)
