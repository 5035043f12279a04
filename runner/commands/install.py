"""Putting the project on a host: `install-units`, `install-mint [--uninstall]`, and the
daily verified `backup` the installed backup timer runs."""
from __future__ import annotations

from pathlib import Path

from runner.commands import FAILED, OK
from runner.config import Config
from runner.dailybackup import daily_backup
from runner.events import EventLog
from runner.install import MintInstallError, install_mint, install_units, uninstall_mint


def cmd_install_units(cfg: Config, args, events: EventLog) -> int:
    install_units(cfg, dest=Path(args.dest), serve_env_dir=Path(args.serve_env_dir), bin_path=args.bin, events=events)
    return OK


def cmd_install_mint(cfg: Config, args, events: EventLog) -> int:
    try:
        if args.uninstall:
            uninstall_mint(cfg, events=events)
        else:
            install_mint(cfg, bin_path=args.bin, events=events)
    except (MintInstallError, OSError) as exc:
        events("REFUSED", reason=str(exc))
        return FAILED
    return OK


def cmd_backup(cfg: Config, args, events: EventLog) -> int:
    return daily_backup(cfg, events)
