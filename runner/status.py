"""`t3-autoupdate status`: what runs where, and what needs a person.

Stale servers are visible here: a running instance whose serverVersion differs
from its release link (never restarted, deferred, or updated itself over the
API) is a finding, not something to ignore.
"""
from __future__ import annotations


from . import activate, quarantine
from .dispatchmap import load_ports
from .goodbuilds import previous_good_path
from .journal import JournalError, load_journal
from .services import Services, unit_of
from .takeover import running_off_link
from .state import read_freeze, read_text_or_none


def server_version(port: int | None) -> str | None:
    import requests  # here: every command loads this module (the CLI's parser), few ask a server
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
        # Said, not raised: status is read when things are wrong.
        linked, link_problem = activate.read_release_link(cfg.active_link(os_user))
        running = server_version(ports.get(os_user))
        try:
            off_link = running_off_link(services, unit_of(os_user), cfg.active_link(os_user))
        except Exception as exc:  # noqa: BLE001 - status reports what it cannot tell, never fails on it
            off_link = f"unknown: {exc}"
        users[os_user] = {"link": linked, "serving": running, "stale": bool(running and linked and running != linked),
                          "off_link": off_link, "link_problem": link_problem, "deferred": deferred.get(os_user),
                          "off_last_good": bool(last_good and linked != last_good)}
    try:
        journal = load_journal(cfg.journal_path)
        unfinished = journal.__dict__ if journal else None
    except JournalError as exc:
        unfinished = {"error": str(exc)}
    return {
        "last_good": last_good,
        "previous_good": read_text_or_none(previous_good_path(cfg)),
        "frozen": freeze._asdict() if freeze else None,
        "quarantined": sorted(quarantine.quarantined_versions(cfg.quarantine_dir)),
        "unfinished_run": unfinished,
        "users": users,
    }


def _deferral(marker: dict) -> str:
    """A deferral marker in words (the old tracker's one-line markers have no time or version)."""
    if marker.get("error"):
        return f"deferred: its marker cannot be read ({marker['error']}); it still owes a restart"
    owes = f"owes a restart onto {marker['version']}" if marker.get("version") else "owes a restart"
    since = f"since {marker['since']}, " if marker.get("since") else ""
    return f"deferred: {since}{owes} ({marker.get('reason') or 'no reason recorded'})"


def _unfinished(run: dict) -> list[str]:
    if run.get("error"):
        return [f"unfinished run: its journal cannot be read ({run['error']}); t3-autoupdate recover says what it needs"]
    moved = ", ".join(run.get("moving") or []) or "nobody yet"
    lines = [f"unfinished run {run.get('run_id')}: {run.get('from_version') or '?'} -> {run.get('version')}, "
             f"stopped in its {run.get('phase')} phase; moved so far: {moved} "
             "(the next command finishes or undoes it; now: t3-autoupdate recover)"]
    if run.get("rollback_failed"):
        lines.append(f"ROLLBACK FAILED, still on {run['version']}: {', '.join(run['rollback_failed'])} "
                     "(the next run retries)")
    return lines


def format_status(status: dict) -> str:
    """Plain sentences an operator reads: no dicts, no Python reprs (`--json` has the data)."""
    lines = [f"last-good: {status['last_good'] or '(none)'}"
             + (f" (previous: {status['previous_good']})" if status.get("previous_good") else "")]
    frozen = status["frozen"]
    if frozen:
        who = " ".join(filter(None, (f"by {frozen['by']}" if frozen.get("by") else "",
                                     f"at {frozen['at']}" if frozen.get("at") else "")))
        lines.append(f"frozen: yes: {frozen['reason']}" + (f" ({who})" if who else "")
                     + "; t3-autoupdate unfreeze resumes tracking")
    else:
        lines.append("frozen: no")
    lines.append(f"quarantined: {', '.join(status['quarantined']) or 'none'}")
    if status["unfinished_run"]:
        lines += _unfinished(status["unfinished_run"])
    for user, info in sorted(status["users"].items()):
        flags = []
        if info.get("link_problem"):
            flags.append(f"RELEASE LINK UNUSABLE: {info['link_problem']} (rollback and drain leave this user alone)")
        if info["stale"]:
            flags.append("STALE: serving differs from link (restart it when idle)")
        off_link = info.get("off_link")
        if off_link and off_link.startswith("unknown: "):
            flags.append(f"which binary its server runs is unknown ({off_link.removeprefix('unknown: ')})")
        elif off_link:
            flags.append(f"NOT ON LINK: {off_link} (drain-deferred moves it once idle)")
        if info["deferred"]:
            flags.append(_deferral(info["deferred"]))
        elif info.get("off_last_good"):  # e.g. a partial manual rollback: who is where
            flags.append(f"not on last-good {status['last_good']}")
        lines.append(f"  {user}: link={info['link'] or '(none)'} serving={info['serving'] or 'down'}"
                     + (f"  [{'; '.join(flags)}]" if flags else ""))
    return "\n".join(lines)
