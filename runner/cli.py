"""`t3-autoupdate`: the timer's job and the runbook's operations as commands.

This module is the parser, `main` (config, private umask, the dispatch map check,
notifications, metrics) and the dispatch that turns exceptions into exit codes; the
commands themselves are in `runner/commands/`.

Exit codes: 0 done or nothing to do; 1 an expected failure, handled (a gate
failed, the run was refused, another run holds the lock); 2 bad usage or
config; 3 a bug (traceback kept in the state dir's runs/).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from .commands import BUG, FAILED, OK, USAGE
from .config import Config, ConfigError, load_config
from .dispatchmap import DispatchMapError, load_ports
from .events import EventLog
from .longdefer import report_long_deferrals
from .metrics import record_run
from .notify import attach_notifier
from .refusals import RecoveryFailed, RunRefused
from .state import RUN_UMASK, LockBusy, atomic_write, new_run_id, read_freeze, read_text_or_none, secure_state_dirs
from .versions import VersionError

__all__ = ["main", "build_parser", "OK", "FAILED", "USAGE", "BUG"]


class Command:
    """`runner.commands.<module>.cmd_<name>`, imported when the command runs: a command's start-up
    pays only for its own modules (a timer run with nothing to do never loads status, doctor,
    the dry run or the installers)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, cfg, args, events) -> int:
        from importlib import import_module

        return getattr(import_module(f"runner.commands.{self.module}"), self.name)(cfg, args, events)

    def __repr__(self) -> str:
        return f"Command({self.module!r}, {self.name!r})"


def project_version() -> str:
    # Imported here: importlib.metadata is ~30 ms of every command's start-up, and only
    # `--version` asks.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("t3-autoupdate")
    except PackageNotFoundError:
        return "(unknown: the package is not installed)"


class _VersionAction(argparse.Action):
    """`--version`, the installed version looked up only when asked: the lookup (importlib.metadata
    and a scan of the installed distributions) is a good part of every other command's start-up."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {project_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t3-autoupdate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="one gated tracker run (the default; what the timer runs)").set_defaults(func=Command("run", "cmd_run"))
    sub.add_parser("dry-run", help="resolve, stage in a temp prefix, health gate; change nothing").set_defaults(
        func=Command("run", "cmd_dry_run"))
    p = sub.add_parser("freeze", help="hold the current build until unfrozen")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=Command("hold", "cmd_freeze"))
    sub.add_parser("unfreeze", help="resume tracking").set_defaults(func=Command("hold", "cmd_unfreeze"))
    p = sub.add_parser("status", help="versions, links, running builds, deferrals, freeze, quarantine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=Command("inspect", "cmd_status"))
    p = sub.add_parser("doctor", help="can this host be updated safely: one line per check, and what to fix")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=Command("inspect", "cmd_doctor"))
    p = sub.add_parser("verify", help="run the canary gate for every user (or --users a,b)")
    p.add_argument("--users", default=None)
    p.set_defaults(func=Command("users", "cmd_verify"))
    p = sub.add_parser("config", help="config check: print the effective config")
    p.add_argument("action", choices=["check"])
    p.set_defaults(func=Command("inspect", "cmd_config_check"))
    p = sub.add_parser("mint", help="mint a pairing credential for OS_USER with their own linked build")
    p.add_argument("os_user")
    p.set_defaults(func=Command("users", "cmd_mint"))
    p = sub.add_parser("quarantine", help="list quarantined builds, or --clear VERSION")
    p.add_argument("--clear", metavar="VERSION")
    p.set_defaults(func=Command("hold", "cmd_quarantine"))
    sub.add_parser("drain-deferred", help="restart deferred users who are idle now").set_defaults(func=Command("users", "cmd_drain"))
    sub.add_parser("recover", help="finish or undo a killed run now (the tracker unit's ExecStopPost)").set_defaults(
        func=Command("users", "cmd_recover"))
    p = sub.add_parser("adopt", help="first install: stage VERSION, link every user to it, record last-good")
    p.add_argument("version")
    p.set_defaults(func=Command("users", "cmd_adopt"))
    p = sub.add_parser("install-units", help="install the units and enable (never start) the daily timer")
    p.add_argument("--dest", default="/etc/systemd/system")
    p.add_argument("--serve-env-dir", default="/etc/t3-serve", help="holds <os_user>.env with T3_PORT")
    p.add_argument("--bin", default=None, help="path of t3-autoupdate (default: as found on PATH)")
    p.set_defaults(func=Command("install", "cmd_install_units"))
    sub.add_parser("backup", help="the daily verified backup of every user's databases (what "
                                  "t3-autoupdate-backup.timer runs)").set_defaults(func=Command("install", "cmd_backup"))
    p = sub.add_parser("install-mint", help="install the mint wrapper at the dispatch's helper path (mint_helper), "
                                            "keeping the host's helper aside; --uninstall puts it back")
    p.add_argument("--bin", default=None, help="path of t3-autoupdate (default: as found on PATH)")
    p.add_argument("--uninstall", action="store_true")
    p.set_defaults(func=Command("install", "cmd_install_mint"))
    p = sub.add_parser("history", help="one line per run: when, from -> to, result, duration, users, report")
    p.add_argument("-n", type=int, default=20, metavar="N", help="the last N runs (default 20; 0 for all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=Command("inspect", "cmd_history"))
    p = sub.add_parser("rollback", help="manual rollback to last-good (or --to VERSION) with database restore")
    p.add_argument("--to", default=None)
    p.set_defaults(func=Command("users", "cmd_rollback"))
    return parser


def _record_crash(cfg: Config | None) -> str:
    text = traceback.format_exc()
    if cfg is None:
        return "(no config: traceback on stderr)"
    try:
        path = cfg.runs_dir / f"crash-{new_run_id()}.txt"
        atomic_write(path, text, mode=0o600)
        return str(path)
    except OSError:
        return "(could not write traceback)"


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and bad usage (2); main returns its code
        return exc.code if isinstance(exc.code, int) else USAGE
    if args.command is None:
        args.func, args.command = Command("run", "cmd_run"), "run"
    events = EventLog()
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"t3-autoupdate: configuration error:\n{exc}", file=sys.stderr)
        return USAGE
    private = args.command not in ("config", "mint", "status", "doctor")
    # Everything a run writes is root's alone unless opened up on purpose (the unit sets
    # UMask=0077 too; a run by hand must be as private). Restored after: main() is also
    # called in-process (tests).
    saved_umask = os.umask(RUN_UMASK) if private else None
    try:
        if private:
            try:
                secure_state_dirs(cfg)
            except OSError as exc:
                print(f"t3-autoupdate: state directories: {exc}", file=sys.stderr)
                return USAGE
        if args.command == "mint":  # on every login: none of the run machinery (tracker, requests)
            return args.func(cfg, args, events)
        if args.command in DISPATCH_MAP_COMMANDS and not (args.command == "run" and cfg.dry_run):
            try:
                load_ports(cfg.dispatch_map, cfg.os_users)
            except DispatchMapError as exc:
                print(f"t3-autoupdate: configuration error:\n{exc}", file=sys.stderr)
                return USAGE
        notifier = wire_outcomes(cfg, args.command, events)
        code = dispatch_command(args, cfg, events)
        if args.command in ("run", "drain-deferred") and not cfg.dry_run:
            tell_long_deferrals(cfg, events)
        if notifier is not None:
            notifier.finish(events)
        if args.command in COUNTED_COMMANDS:
            _record_metrics(cfg, args.command, code, events)
        return code
    finally:
        if saved_umask is not None:
            os.umask(saved_umask)


COUNTED_COMMANDS = {"run", "dry-run", "drain-deferred", "rollback", "backup"}
# Commands that reach instances by the dispatch map's ports. Not freeze/unfreeze (holding the
# tracker must work whatever state the map is in), not mint (every login; it needs no port).
DISPATCH_MAP_COMMANDS = {"run", "status", "verify", "rollback", "drain-deferred", "install-units", "recover"}


def wire_outcomes(cfg: Config, command: str, events: EventLog):
    """Long outcome texts go to files under runs/ (a run's own directory once it has one);
    the commands that act on users' builds send their outcomes to the configured receivers."""
    events.details_dir = cfg.runs_dir
    if command not in COUNTED_COMMANDS | {"verify"}:
        return None
    return attach_notifier(cfg, events)


def tell_long_deferrals(cfg: Config, events: EventLog) -> None:
    try:
        report_long_deferrals(cfg, events)
    except OSError as exc:  # telling must never turn a handled outcome into a crash
        print(f"t3-autoupdate: warning: could not check long deferrals: {exc}", file=sys.stderr)


def dispatch_command(args, cfg: Config, events: EventLog) -> int:
    try:
        return args.func(cfg, args, events)
    except LockBusy as exc:
        events("LOCKED", reason=str(exc))
        return FAILED
    except (RunRefused, RecoveryFailed) as exc:
        events("REFUSED", reason=str(exc))
        return FAILED
    except VersionError as exc:
        print(f"t3-autoupdate: {exc}", file=sys.stderr)
        return USAGE
    except DispatchMapError as exc:  # read later than the start check (e.g. recovery in adopt)
        print(f"t3-autoupdate: configuration error:\n{exc}", file=sys.stderr)
        return USAGE
    except Exception as exc:  # noqa: BLE001 - exit 3 with the traceback kept for a person
        where = _record_crash(cfg)
        events("CRASHED", command=args.command, error=f"{type(exc).__name__}: {exc}", traceback=where)
        return BUG


def _record_metrics(cfg: Config, command: str, code: int, events: EventLog) -> None:
    try:
        record_run(cfg.state_dir, command=command, exit_code=code, lines=events.lines,
                   frozen=read_freeze(cfg.freeze_file) is not None, last_good=read_text_or_none(cfg.last_good_path))
    except OSError as exc:  # metrics must never turn a handled outcome into a crash
        print(f"t3-autoupdate: warning: could not write metrics: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
