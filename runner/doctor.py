"""`t3-autoupdate doctor`: can this host be updated safely, and what to fix.

Each check is a small function with what it reads passed in (systemctl, HTTP, the disk), so
the pure part is tested alone; `run_doctor` wires in the real ones. Each check is one line:
`ok <check>: <what>` or `PROBLEM <check>: <what> -> <fix>`.

The dispatch check is a real login (first visit pairs: 302 with the session cookie; the next
visit with that cookie is proxied), as `verify` does, not only a mint: the mint proves neither
the exchange, nor the cookie's name (drifted three times), nor that the dispatch then proxies.
It costs what any browser login costs (one pairing link and one session in the user's auth
tables, which are disposable). It is tried only when the mint helper is the project's and the
user's server runs their own link: then the mint runs the same build as the server, as that
user; another helper (the old one runs the global `t3`) could migrate the database under a
running server of another build (the 2026-06-09 outage).
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import proc
from .activate import ActivationError, release_of_link
from .dispatchmap import DispatchMapError, load_ports
from .gateuser import GateUserError, gate_ids
from .history import read_history
from .install import RETIRED_TIMERS, is_own_wrapper, mint_wrapper_text
from .journal import JournalError, load_journal
from .services import unit_of
from .state import read_freeze
from .takeover import running_off_link
from .units import TIMERS
from .unitshow import ENV_FILE, env_assignments, exec_argv, is_loopback, parse_show, unit_variables

SERVE_PROPS = ("LoadState", "NeedDaemonReload", "FragmentPath", "DropInPaths", "ExecStart", "Environment",
               "EnvironmentFiles")
GOOD_RESULTS = ("updated", "health-check-failed")  # a stopped build touched nobody (it is quarantined)


@dataclass(frozen=True)
class Check:
    check: str
    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"ok {self.check}: {self.what}" if self.ok else f"PROBLEM {self.check}: {self.what} -> {self.fix}"


def _problem(check: str, problems: list[tuple[str, str]], ok_text: str) -> Check:
    if not problems:
        return Check(check, True, ok_text)
    return Check(check, False, "; ".join(p for p, _ in problems), "; ".join(dict.fromkeys(f for _, f in problems)))


# ------------------------------------------------------------------ the checks

def check_config(cfg, *, url_problems: Callable) -> Check:
    problems = url_problems(cfg) if cfg.notify_urls else []
    if problems:
        return Check("config", False, "; ".join(problems), "fix notify_urls (t3-autoupdate config check)")
    return Check("config", True, f"{cfg.config_file or 'built-in defaults'}: valid, {len(cfg.os_users)} users "
                                 f"in {cfg.user_map}")


def check_maps(cfg) -> tuple[Check, dict[str, int]]:
    try:
        ports = load_ports(cfg.dispatch_map, cfg.os_users)
    except DispatchMapError as exc:
        try:  # the users it does give a port to are still checked
            ports = load_ports(cfg.dispatch_map)
        except DispatchMapError:
            ports = {}
        return Check("maps", False, str(exc).replace("\n", "; "), f"fix {cfg.dispatch_map}"), ports
    return Check("maps", True, f"{cfg.dispatch_map} gives every user of {cfg.user_map} a port"), ports


def check_serve_unit(cfg, os_user: str, port: int | None, *, show: Callable[[str, tuple], str],
                     read_env_file: Callable[[Path], str | None]) -> Check:
    unit, fix_units = unit_of(os_user), "t3-autoupdate install-units"
    props = {k: v[-1] if k != "EnvironmentFiles" else " ".join(v) for k, v in parse_show(show(unit, SERVE_PROPS)).items()}
    if props.get("LoadState") != "loaded":
        return Check(f"serve-unit {os_user}", False, f"{unit} is not loaded (LoadState={props.get('LoadState')})",
                     fix_units)
    problems = []
    if props.get("NeedDaemonReload") == "yes":
        problems.append(("its unit files changed on disk since systemd loaded them", "systemctl daemon-reload"))
    argv, link = exec_argv(props.get("ExecStart", "")), cfg.active_link(os_user)
    if argv[:1] != [f"{link}/bin/t3"]:
        problems.append((f"runs {' '.join(argv[:2]) or '(no ExecStart)'}, not the user's link {link}/bin/t3 "
                         f"(the project's drop-in is not applied; unit {props.get('FragmentPath') or '?'}, "
                         f"drop-ins: {props.get('DropInPaths') or 'none'})", fix_units))
    host = argv[argv.index("--host") + 1] if "--host" in argv[:-1] else None
    if host is None or is_loopback(host) or host != cfg.serve_host:
        problems.append((f"binds {host or '(no --host)'}, not {cfg.serve_host} as production (a loopback bind "
                         "renames the session cookie: every login through the dispatch fails)",
                         "set serve_host to the production bind (0.0.0.0), then " + fix_units))
    defined = env_assignments("\n".join(shlex.split(props.get("Environment", ""))))
    env_file = "an EnvironmentFile= of the unit"
    for path, ignore_errors in ENV_FILE.findall(props.get("EnvironmentFiles", "")):
        if Path(path).is_relative_to(cfg.home_root):
            continue  # a user's own file: never read as root, and never counted on
        env_file = path if ignore_errors == "no" else env_file
        text = read_env_file(Path(path))
        if text is None and ignore_errors == "no":
            problems.append((f"its EnvironmentFile {path} is missing (the unit cannot start)", fix_units))
        defined.update(env_assignments(text or ""))
    for name in sorted(unit_variables(argv) - defined.keys()):
        problems.append((f"uses ${{{name}}}, which no Environment= or root-owned EnvironmentFile= sets",
                         f"set {name} in {env_file} (install-units writes a missing one from the dispatch map)"))
    if port is not None and "T3_PORT" in defined and defined["T3_PORT"] != str(port):
        problems.append((f"T3_PORT={defined['T3_PORT']}, but the dispatch sends {os_user} to port {port}",
                         f"make the user's env file and {cfg.dispatch_map} agree"))
    return _problem(f"serve-unit {os_user}", problems, f"{unit} runs {link}/bin/t3 on {host}, every variable set")


def check_instance(cfg, os_user: str, port: int | None, *, is_active: Callable[[str], bool],
                   off_link: Callable[[str, Path], str | None], server_version: Callable) -> Check:
    name, unit, link = f"instance {os_user}", unit_of(os_user), cfg.active_link(os_user)
    try:
        linked = release_of_link(link)
    except ActivationError as exc:
        return Check(name, False, str(exc), "t3-autoupdate adopt <the version running now> (first install)")
    if linked is None:
        return Check(name, False, f"no release link {link}", "t3-autoupdate adopt <the version running now>")
    if port is None:
        return Check(name, False, f"no port in {cfg.dispatch_map}", "see maps")
    if not is_active(unit):
        return Check(name, False, f"{unit} is not running", f"systemctl start {unit}; journalctl -u {unit}")
    why = off_link(unit, link)
    if why:
        return Check(name, False, f"{why} (not restarted since the takeover)",
                     "t3-autoupdate drain-deferred (moves the user once idle)")
    serving = server_version(port)
    if serving != linked:
        what = "does not answer" if serving is None else f"serves {serving}, its link is {linked} (STALE)"
        return Check(name, False, f"port {port} {what}", f"systemctl restart {unit} when the user is idle")
    return Check(name, True, f"serves {linked}, its own link")


def check_dispatch(cfg, sso: str, *, visit: Callable, cookies_of: Callable, not_tried: str | None) -> Check:
    name = f"dispatch {sso}"
    if not_tried:
        return Check(name, False, f"login not tried: {not_tried}", "fix that first, then t3-autoupdate doctor")
    fix_mint = f"run `{cfg.mint_helper} {cfg.users[sso]}` by hand; the dispatch's log"
    try:
        first = visit(sso, None)
    except OSError as exc:  # requests' errors are OSErrors
        return Check(name, False, f"the dispatch at {cfg.dispatch} does not answer ({type(exc).__name__})",
                     "start the dispatch (t3-dispatch), check T3_DISPATCH")
    cookie = dict(cookies_of(first)).get(cfg.cookie_name)
    if first.status_code != 302 or cookie is None:
        fix = {403: f"add {sso} to the dispatch's map", 500: fix_mint}.get(first.status_code, "t3-autoupdate verify")
        return Check(name, False, f"first visit answered {first.status_code} with cookies "
                                  f"{sorted(dict(cookies_of(first))) or 'none'} (expected 302 and {cfg.cookie_name})",
                     fix)
    again = visit(sso, {cfg.cookie_name: cookie})
    if again.status_code != 200:
        return Check(name, False, f"a visit with the session cookie answered {again.status_code}, not the instance's "
                                  "200 (paired again: every request would re-pair)", "t3-autoupdate verify")
    return Check(name, True, "a login pairs (302 with the session cookie) and the next visit is proxied")


def check_mint_helper(cfg, *, executable: Callable[[str], bool]) -> Check:
    helper = Path(cfg.mint_helper)
    fix = "t3-autoupdate install-mint"
    if not is_own_wrapper(helper):
        what = "is missing" if not (helper.exists() or helper.is_symlink()) else "is not the project's (the host's own helper?)"
        return Check("mint-helper", False, f"{helper} {what}: the dispatch's logins would not run each user's link", fix)
    text = helper.read_text()
    exec_line = next((ln for ln in text.splitlines() if ln.startswith("exec ")), "")
    words = shlex.split(exec_line)
    program = words[1] if len(words) > 2 else ""
    if text != mint_wrapper_text(program, cfg.config_file):
        return Check("mint-helper", False, f"{helper} mints with another config than {cfg.config_file}", fix)
    if not executable(program):
        return Check("mint-helper", False, f"{helper} runs {program}, which is not an executable", fix)
    return Check("mint-helper", True, f"{helper} is the project's, runs {program} mint")


def check_gate_user(cfg, *, run_as: Callable[[proc.UserIds], None]) -> Check:
    try:
        ids = gate_ids(cfg)
        run_as(ids)
    except GateUserError as exc:
        return Check("gate-user", False, str(exc), "t3-autoupdate install-units (creates it), or set gate_user")
    except proc.CommandError as exc:
        return Check("gate-user", False, f"cannot run a program as {cfg.gate_user}: {exc}",
                     "check the account (not locked out of exec)")
    return Check("gate-user", True, f"{cfg.gate_user} (uid {ids.uid}) exists and runs programs")


def check_backup_space(cfg, *, bytes_needed: Callable[[str], int], free_bytes: Callable[[Path], int],
                       margin: float) -> Check:
    needed, problems = 0, []
    for os_user in cfg.os_users:
        try:
            needed += bytes_needed(os_user)
        except Exception as exc:  # noqa: BLE001 - one user's unreadable tree is a finding here
            problems.append((str(exc), f"fix {cfg.userdata_dir(os_user)} (that user would be deferred)"))
    free = free_bytes(cfg.backup_dest)
    if free < needed * margin:
        problems.append((f"{free / 1e6:.1f} MB free in {cfg.backup_dest}, a backup of every user needs "
                         f"{needed * margin / 1e6:.1f} MB ({needed / 1e6:.1f} MB x {margin:g})",
                         "free space there, or lower keep_backups/keep_daily_backups"))
    return _problem("backup-space", problems, f"{free / 1e6:.1f} MB free in {cfg.backup_dest}, "
                                              f"a backup of every user needs {needed * margin / 1e6:.1f} MB")


def check_timers(*, is_enabled: Callable[[str], str]) -> Check:
    problems = [(f"{t} is {is_enabled(t) or 'missing'}", "t3-autoupdate install-units (enables, never starts)")
                for t in TIMERS if is_enabled(t) != "enabled"]
    problems += [(f"the old {old} is still enabled (runs beside {new})", f"systemctl disable --now {old}")
                 for old, new in RETIRED_TIMERS.items() if is_enabled(old) == "enabled"]
    return _problem("timers", problems, f"{', '.join(TIMERS)} enabled; {', '.join(RETIRED_TIMERS)} not")


def check_last_run(cfg) -> Check:
    freeze = read_freeze(cfg.freeze_file)
    if freeze is not None:
        return Check("last-run", False, f"the tracker is frozen: {freeze.reason}" + (f" (by {freeze.by})" if freeze.by else ""),
                     "find out why (t3-autoupdate history, status), then t3-autoupdate unfreeze")
    try:
        journal = load_journal(cfg.journal_path)
    except JournalError as exc:
        journal, broken = None, str(exc)
    else:
        broken = None
    if journal is not None or broken:
        what = broken or f"run {journal.run_id} to {journal.version} did not finish"
        return Check("last-run", False, what, "t3-autoupdate recover")
    runs = read_history(cfg.runs_dir, limit=1)
    if not runs:
        return Check("last-run", True, "no run yet")
    last = runs[0]
    what = f"{last['started_at']} {last['from'] or '?'} -> {last['to'] or '?'}: {last['result']}"
    if last["result"] in GOOD_RESULTS:
        return Check("last-run", True, what)
    return Check("last-run", False, f"{what} ({last['report']})", "read the report; t3-autoupdate history, status")


# ------------------------------------------------------------------ the whole host

def _read_root_file(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def run_doctor(cfg) -> list[Check]:
    """Every check against this host, in the order an operator fixes them."""
    import os

    from .t3client import DispatchClient, set_cookies

    from .backups.take import DEFAULT_MARGIN, backup_bytes_needed
    from .notifyurls import url_problems
    from .services import Services
    from .status import server_version

    services = Services(cfg.systemctl)

    def systemctl(*args: str) -> str:
        return proc.run([cfg.systemctl, *args], timeout=60, ok_codes=range(256)).stdout

    checks = [guarded("config", check_config, cfg, url_problems=url_problems)]
    maps, ports = check_maps(cfg)
    checks.append(maps)
    mint = guarded("mint-helper", check_mint_helper, cfg, executable=lambda p: bool(p) and os.access(p, os.X_OK))
    instances = {}
    for os_user in cfg.os_users:
        checks.append(guarded(f"serve-unit {os_user}", check_serve_unit, cfg, os_user, ports.get(os_user),
                              read_env_file=_read_root_file,
                              show=lambda unit, props: systemctl("show", *(f"-p{p}" for p in props), unit)))
        instances[os_user] = guarded(
            f"instance {os_user}", check_instance, cfg, os_user, ports.get(os_user), is_active=services.is_active,
            server_version=server_version, off_link=lambda unit, link: running_off_link(services, unit, link))
        checks.append(instances[os_user])
    checks.append(mint)
    dispatch = DispatchClient(cfg.dispatch)
    for sso, os_user in sorted(cfg.users.items()):
        blocker = (None if mint.ok else "the mint helper is not the project's") or \
                  (None if instances[os_user].ok else f"{os_user}'s instance: {instances[os_user].what}")
        checks.append(guarded(f"dispatch {sso}", check_dispatch, cfg, sso, visit=dispatch.visit,
                              cookies_of=set_cookies, not_tried=blocker))
    checks.append(guarded("gate-user", check_gate_user, cfg,
                          run_as=lambda ids: proc.run(["true"], as_user=ids, timeout=30)))
    checks.append(guarded("backup-space", check_backup_space, cfg, margin=DEFAULT_MARGIN, free_bytes=_free_bytes,
                          bytes_needed=lambda u: backup_bytes_needed(cfg.userdata_dir(u), home_dir=cfg.home_dir(u))))
    checks.append(guarded("timers", check_timers, is_enabled=lambda unit: systemctl("is-enabled", unit).strip()))
    checks.append(guarded("last-run", check_last_run, cfg))
    return checks


def guarded(name: str, check: Callable[..., Check], *args, **kwargs) -> Check:
    """A check that could not be done is a problem (fail closed), never a crash of the others."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong is what the line says
        first = (str(exc).splitlines() or [""])[0][:200]
        return Check(name, False, f"could not check: {type(exc).__name__}: {first}",
                     "run it again; if it stays, the error names what to look at")


def _free_bytes(path: Path) -> int:
    """Free bytes for root's backups at `path` (its nearest existing parent before the first backup)."""
    import os

    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def report(checks: list[Check], *, as_json: bool) -> str:
    if as_json:
        import json

        return json.dumps({"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}, indent=2)
    return "\n".join(c.line() for c in checks)


def exit_code(checks: list[Check]) -> int:
    """0 all pass; 2 the config or its maps are bad; 1 any other problem."""
    if any(not c.ok and c.check in ("config", "maps") for c in checks):
        return 2
    return 0 if all(c.ok for c in checks) else 1
