"""`t3-autoupdate`: the timer's job and the runbook's operations as commands.

Exit codes: 0 done or nothing to do; 1 an expected failure, handled (a gate
failed, the run was refused, another run holds the lock); 2 bad usage or
config; 3 a bug (traceback kept in the state dir's runs/).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import traceback
from pathlib import Path

from .config import Config, ConfigError, load_config
from .events import EventLog
from .state import RUN_UMASK, secure_state_dirs

OK, FAILED, USAGE, BUG = 0, 1, 2, 3


def cmd_run(cfg: Config, args, events: EventLog) -> int:
    from .context import RunContext
    from .tracker import tracker_run

    if cfg.dry_run:
        return cmd_dry_run(cfg, args, events)
    return tracker_run(RunContext.build(cfg, events=events))


def cmd_dry_run(cfg: Config, args, events: EventLog) -> int:
    from .context import RunContext
    from .dryrun import dry_run

    return dry_run(RunContext.build(cfg, events=events), stdout=sys.stdout)


def cmd_freeze(cfg: Config, args, events: EventLog) -> int:
    from .state import write_freeze

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


def cmd_status(cfg: Config, args, events: EventLog) -> int:
    from .status import collect_status, format_status

    status = collect_status(cfg)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return OK


def cmd_verify(cfg: Config, args, events: EventLog) -> int:
    from .gaterun import run_gate
    from .rollout import canary_options
    from .state import new_run_id

    run_dir = cfg.runs_dir / f"verify-{new_run_id()}"
    options = canary_options(cfg)
    if args.users:
        options["--users"] = args.users
    result = run_gate("canary", run_dir=run_dir, options=options, timeout=cfg.gate_timeout)
    events("VERIFY " + ("PASSED" if result.passed else "FAILED"), tests=result.tests,
           reason=None if result.passed else result.reason(), report=str(result.report))
    return OK if result.passed else FAILED


def cmd_config_check(cfg: Config, args, events: EventLog) -> int:
    for line in cfg.check_lines():
        print(line)
    return notify_config_check(cfg)


def notify_config_check(cfg: Config) -> int:
    """The notification URLs, as apprise itself reads them (too slow to import on every
    `mint`, so checked here and when a run starts)."""
    from .notify import url_problems

    problems = url_problems(cfg) if cfg.notify_urls else []
    if problems:
        print("t3-autoupdate: configuration error:\n" + "\n".join(problems), file=sys.stderr)
    return USAGE if problems else OK


def cmd_history(cfg: Config, args, events: EventLog) -> int:
    from .history import format_history, read_history

    runs = read_history(cfg.runs_dir, limit=args.n)
    print(json.dumps(runs, indent=2) if args.json else format_history(runs))
    return OK


def cmd_doctor(cfg: Config, args, events: EventLog) -> int:
    from .doctor import exit_code, report, run_doctor

    checks = run_doctor(cfg)
    print(report(checks, as_json=args.json))
    return exit_code(checks)


def cmd_mint(cfg: Config, args, events: EventLog) -> int:
    from .mint import mint_main

    return mint_main(cfg, args.os_user, sys.stdout)


def cmd_quarantine(cfg: Config, args, events: EventLog) -> int:
    from . import quarantine
    from .versions import validate_version

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


def cmd_drain(cfg: Config, args, events: EventLog) -> int:
    from .context import RunContext
    from .drain import drain_deferred

    return drain_deferred(RunContext.build(cfg, events=events))


def cmd_recover(cfg: Config, args, events: EventLog) -> int:
    from .context import RunContext
    from .recover import locked_and_recovered

    # What the tracker unit's ExecStopPost runs: a run killed mid-move is undone within
    # moments, not at the next night's run (a user would stay stopped until then).
    with locked_and_recovered(RunContext.build(cfg, events=events)):
        return OK


def cmd_rollback(cfg: Config, args, events: EventLog) -> int:
    from .context import RunContext
    from .manual import manual_rollback

    return manual_rollback(RunContext.build(cfg, events=events), to_version=args.to)


def cmd_install_units(cfg: Config, args, events: EventLog) -> int:
    from .install import install_units

    install_units(cfg, dest=Path(args.dest), serve_env_dir=Path(args.serve_env_dir), bin_path=args.bin, events=events)
    return OK


def cmd_backup(cfg: Config, args, events: EventLog) -> int:
    from .dailybackup import daily_backup

    return daily_backup(cfg, events)


def cmd_install_mint(cfg: Config, args, events: EventLog) -> int:
    from .install import MintInstallError, install_mint, uninstall_mint

    try:
        if args.uninstall:
            uninstall_mint(cfg, events=events)
        else:
            install_mint(cfg, bin_path=args.bin, events=events)
    except (MintInstallError, OSError) as exc:
        events("REFUSED", reason=str(exc))
        return FAILED
    return OK


def cmd_adopt(cfg: Config, args, events: EventLog) -> int:
    from .adopt import adopt
    from .context import RunContext

    return adopt(RunContext.build(cfg, events=events), args.version)


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("t3-autoupdate")
    except PackageNotFoundError:
        return "(unknown: the package is not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t3-autoupdate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {project_version()}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="one gated tracker run (the default; what the timer runs)").set_defaults(func=cmd_run)
    sub.add_parser("dry-run", help="resolve, stage in a temp prefix, health gate; change nothing").set_defaults(
        func=cmd_dry_run)
    p = sub.add_parser("freeze", help="hold the current build until unfrozen")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_freeze)
    sub.add_parser("unfreeze", help="resume tracking").set_defaults(func=cmd_unfreeze)
    p = sub.add_parser("status", help="versions, links, running builds, deferrals, freeze, quarantine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("verify", help="run the canary gate for every user (or --users a,b)")
    p.add_argument("--users", default=None)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("config", help="config check: print the effective config")
    p.add_argument("action", choices=["check"])
    p.set_defaults(func=cmd_config_check)
    p = sub.add_parser("mint", help="mint a pairing credential for OS_USER with their own linked build")
    p.add_argument("os_user")
    p.set_defaults(func=cmd_mint)
    p = sub.add_parser("quarantine", help="list quarantined builds, or --clear VERSION")
    p.add_argument("--clear", metavar="VERSION")
    p.set_defaults(func=cmd_quarantine)
    sub.add_parser("drain-deferred", help="restart deferred users who are idle now").set_defaults(func=cmd_drain)
    sub.add_parser("recover", help="finish or undo a killed run now (the tracker unit's ExecStopPost)").set_defaults(
        func=cmd_recover)
    p = sub.add_parser("adopt", help="first install: stage VERSION, link every user to it, record last-good")
    p.add_argument("version")
    p.set_defaults(func=cmd_adopt)
    p = sub.add_parser("install-units", help="install the units and enable (never start) the daily timer")
    p.add_argument("--dest", default="/etc/systemd/system")
    p.add_argument("--serve-env-dir", default="/etc/t3-serve", help="holds <os_user>.env with T3_PORT")
    p.add_argument("--bin", default=None, help="path of t3-autoupdate (default: as found on PATH)")
    p.set_defaults(func=cmd_install_units)
    sub.add_parser("backup", help="the daily verified backup of every user's databases (what "
                                  "t3-autoupdate-backup.timer runs)").set_defaults(func=cmd_backup)
    p = sub.add_parser("install-mint", help="install the mint wrapper at the dispatch's helper path (mint_helper), "
                                            "keeping the host's helper aside; --uninstall puts it back")
    p.add_argument("--bin", default=None, help="path of t3-autoupdate (default: as found on PATH)")
    p.add_argument("--uninstall", action="store_true")
    p.set_defaults(func=cmd_install_mint)
    p = sub.add_parser("history", help="one line per run: when, from -> to, result, duration, users, report")
    p.add_argument("-n", type=int, default=20, metavar="N", help="the last N runs (default 20; 0 for all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("doctor", help="can this host be updated safely: one line per check, and what to fix")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("rollback", help="manual rollback to last-good (or --to VERSION) with database restore")
    p.add_argument("--to", default=None)
    p.set_defaults(func=cmd_rollback)
    return parser


def _record_crash(cfg: Config | None) -> str:
    text = traceback.format_exc()
    if cfg is None:
        return "(no config: traceback on stderr)"
    try:
        from .state import atomic_write, new_run_id

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
        args.func, args.command = cmd_run, "run"
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
        if args.command != "config" and getattr(cfg, "warnings", None):
            for warning in cfg.warnings:
                print(f"t3-autoupdate: warning: {warning}", file=sys.stderr)
        if args.command == "mint":  # on every login: none of the run machinery (tracker, requests, sh)
            return cmd_mint(cfg, args, events)
        if args.command in DISPATCH_MAP_COMMANDS and not (args.command == "run" and cfg.dry_run):
            from .dispatchmap import DispatchMapError, load_ports

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
    from .notify import attach_notifier

    return attach_notifier(cfg, events)


def tell_long_deferrals(cfg: Config, events: EventLog) -> None:
    from .longdefer import report_long_deferrals

    try:
        report_long_deferrals(cfg, events)
    except OSError as exc:  # telling must never turn a handled outcome into a crash
        print(f"t3-autoupdate: warning: could not check long deferrals: {exc}", file=sys.stderr)


def dispatch_command(args, cfg: Config, events: EventLog) -> int:
    from .dispatchmap import DispatchMapError
    from .recover import RecoveryFailed
    from .state import LockBusy
    from .tracker import RunRefused
    from .versions import VersionError

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
    from .metrics import record_run
    from .state import read_freeze, read_text_or_none

    try:
        record_run(cfg.state_dir, command=command, exit_code=code, lines=events.lines,
                   frozen=read_freeze(cfg.freeze_file) is not None, last_good=read_text_or_none(cfg.last_good_path))
    except OSError as exc:  # metrics must never turn a handled outcome into a crash
        print(f"t3-autoupdate: warning: could not write metrics: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
