"""`t3-autoupdate status`: what runs where, and what needs a person.

Stale servers are visible here: a running instance whose serverVersion differs
from its release link (never restarted, deferred, or updated itself over the
API) is a finding, not something to ignore.
"""
from __future__ import annotations


import requests

from . import activate, quarantine
from .dispatchmap import load_ports
from .goodbuilds import previous_good_path
from .journal import JournalError, load_journal
from .services import Services, unit_of
from .takeover import running_off_link
from .state import read_freeze, read_text_or_none


def server_version(port: int | None) -> str | None:
    if port is None:
        return None
    try:
        response = requests.get(f"http://127.0.0.1:{port}/.well-known/t3/environment", timeout=2)
        return response.json().get("serverVersion") if response.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError):
        return None


def collect_status(cfg) -> dict:
    freeze = read_freeze(cfg.freeze_file)
    ports = load_ports(cfg.dispatch_map, cfg.os_users)  # DispatchMapError: the CLI's exit 2
    deferred = activate.deferred_users(cfg.deferred_dir)
    last_good = read_text_or_none(cfg.last_good_path)
    services = Services(cfg.systemctl)
    users = {}
    for os_user in cfg.os_users:
        linked = activate.release_of_link(cfg.active_link(os_user))
        running = server_version(ports.get(os_user))
        try:
            off_link = running_off_link(services, unit_of(os_user), cfg.active_link(os_user))
        except Exception as exc:  # noqa: BLE001 - status reports what it cannot tell, never fails on it
            off_link = f"unknown: {exc}"
        users[os_user] = {"link": linked, "serving": running, "stale": bool(running and linked and running != linked),
                          "off_link": off_link, "deferred": deferred.get(os_user),
                          "off_last_good": bool(last_good and linked != last_good)}
    try:
        journal = load_journal(cfg.journal_path)
        unfinished = journal.__dict__ if journal else None
    except JournalError as exc:
        unfinished = {"error": str(exc)}
    return {
        "last_good": last_good,
        "previous_good": read_text_or_none(previous_good_path(cfg)),
        "frozen": freeze.__dict__ if freeze else None,
        "quarantined": sorted(quarantine.quarantined_versions(cfg.quarantine_dir)),
        "unfinished_run": unfinished,
        "users": users,
    }


def format_status(status: dict) -> str:
    lines = [f"last-good: {status['last_good'] or '(none)'}"
             + (f" (previous: {status['previous_good']})" if status.get("previous_good") else "")]
    frozen = status["frozen"]
    lines.append(f"frozen: {'yes: ' + frozen['reason'] if frozen else 'no'}")
    lines.append(f"quarantined: {', '.join(status['quarantined']) or 'none'}")
    if status["unfinished_run"]:
        lines.append(f"unfinished run: {status['unfinished_run']}")
        if status["unfinished_run"].get("rollback_failed"):
            lines.append(f"ROLLBACK FAILED, still on {status['unfinished_run']['version']}: "
                         f"{', '.join(status['unfinished_run']['rollback_failed'])} (the next run retries)")
    for user, info in sorted(status["users"].items()):
        flags = []
        if info["stale"]:
            flags.append("STALE: serving differs from link")
        if info.get("off_link"):
            flags.append(f"NOT ON LINK: {info['off_link']} (drain-deferred moves it once idle)")
        if info["deferred"]:
            flags.append(f"deferred: {info['deferred']}")
        elif info.get("off_last_good"):  # e.g. a partial manual rollback: who is where
            flags.append(f"not on last-good {status['last_good']}")
        lines.append(f"  {user}: link={info['link'] or '-'} serving={info['serving'] or 'down'}"
                     + (f"  [{'; '.join(flags)}]" if flags else ""))
    return "\n".join(lines)
