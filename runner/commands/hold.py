"""Holding builds: `freeze --reason`, `unfreeze`, `quarantine [--clear V]`."""
from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from runner import quarantine
from runner.commands import FAILED, OK
from runner.config import Config
from runner.events import EventLog
from runner.state import write_freeze
from runner.versions import validate_version


def cmd_freeze(cfg: Config, args, events: EventLog) -> int:
    who = os.environ.get("SUDO_USER") or getpass.getuser()
    freeze = write_freeze(cfg.freeze_file, args.reason, by=who)
    events("FROZEN", reason=freeze.reason, by=freeze.by, at=freeze.at, freeze_file=str(cfg.freeze_file))
    return OK


def cmd_unfreeze(cfg: Config, args, events: EventLog) -> int:
    try:
        Path(cfg.freeze_file).unlink()
    except FileNotFoundError:
        print(f"not frozen ({cfg.freeze_file} does not exist)")
        return OK
    events("UNFROZEN", freeze_file=str(cfg.freeze_file))
    return OK


def cmd_quarantine(cfg: Config, args, events: EventLog) -> int:
    if args.clear:
        version = validate_version(args.clear, "quarantine --clear")
        if quarantine.clear_quarantine(cfg.quarantine_dir, version):
            events("QUARANTINE CLEARED", version=version)
            return OK
        print(f"{version} is not quarantined", file=sys.stderr)
        return FAILED
    for line in quarantine.listing_lines(cfg.quarantine_dir):
        print(line)
    return OK
