"""What is there, read-only: `status`, `history`, `config check`, and `doctor` (whether
this host can be updated safely, one line per check)."""
from __future__ import annotations

import json
import sys

from runner.commands import OK, USAGE
from runner.config import Config
from runner.doctor import exit_code, report, run_doctor
from runner.events import EventLog
from runner.history import format_history, read_history
from runner.notifyurls import url_problems
from runner.status import collect_status, format_status


def cmd_status(cfg: Config, args, events: EventLog) -> int:
    status = collect_status(cfg)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return OK


def cmd_history(cfg: Config, args, events: EventLog) -> int:
    runs = read_history(cfg.runs_dir, limit=args.n)
    print(json.dumps(runs, indent=2) if args.json else format_history(runs))
    return OK


def cmd_doctor(cfg: Config, args, events: EventLog) -> int:
    checks = run_doctor(cfg)
    print(report(checks, as_json=args.json))
    return exit_code(checks)


def cmd_config_check(cfg: Config, args, events: EventLog) -> int:
    for line in cfg.check_lines():
        print(line)
    return notify_config_check(cfg)


def notify_config_check(cfg: Config) -> int:
    """The notification URLs, as apprise itself reads them (too slow to import on every
    `mint`, so checked here and when a run starts)."""
    problems = url_problems(cfg) if cfg.notify_urls else []
    if problems:
        print("t3-autoupdate: configuration error:\n" + "\n".join(problems), file=sys.stderr)
    return USAGE if problems else OK
