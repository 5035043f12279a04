"""The systemctl command line: its options, its verbs (start/stop/restart, is-active,
is-failed, show, status, cat, list-units, daemon-reload, enable/disable, is-enabled,
reset-failed) with systemctl's output and exit codes, and the hidden verb that runs a
unit's supervisor."""
from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from .common import (EXIT_FAILURE, EXIT_NO_SUCH_UNIT, EXIT_NOT_ACTIVE, EXIT_OK, SimError, format_timestamp)
from .manager import Manager, transition
from .syntax import format_timespan
from .units import parse_unit_name, resource_properties


RESOURCE_PROPERTIES = ("MemoryHigh", "MemoryMax", "MemorySwapMax", "OOMPolicy")
PROPERTIES = [
    "Type", "Restart", "RestartUSec", "NRestarts", "MainPID", "ExecMainStartTimestamp", "ExecMainExitTimestamp",
    "ExecMainPID", "ExecMainCode", "ExecMainStatus", "Result", "User", "WorkingDirectory", "Environment",
    "EnvironmentFiles", "ExecStart", "KillMode", "KillSignal", "TimeoutStopUSec", "Id", "Names", "Description",
    "LoadState", "ActiveState", "SubState", "FragmentPath", "DropInPaths", "UnitFileState", "NeedDaemonReload",
    "InvocationID", "StateChangeTimestamp", "InactiveExitTimestamp", "ActiveEnterTimestamp",
    "ActiveExitTimestamp", "InactiveEnterTimestamp", *RESOURCE_PROPERTIES,
]


def properties(manager: Manager, name: str) -> dict[str, str]:
    unit = manager.load(name)
    st = manager.view(name) if unit or manager.read_state(name) else {"active_state": "inactive", "sub_state": "dead"}
    props = {"Id": name, "Names": name, "Description": name, "LoadState": "not-found",
             "ActiveState": st["active_state"], "SubState": st["sub_state"], "MainPID": str(st.get("main_pid") or 0),
             "UnitFileState": "", "FragmentPath": "", "DropInPaths": "", "NeedDaemonReload": "no"}
    for key, ts in (("StateChangeTimestamp", "state_change_ts"), ("InactiveExitTimestamp", "inactive_exit_ts"),
                    ("ActiveEnterTimestamp", "active_enter_ts"), ("ActiveExitTimestamp", "active_exit_ts"),
                    ("InactiveEnterTimestamp", "inactive_enter_ts"), ("ExecMainStartTimestamp", "exec_main_start_ts"),
                    ("ExecMainExitTimestamp", "exec_main_exit_ts")):
        props[key] = format_timestamp(st.get(ts))
    if unit is None:
        return props
    props.update(Description=unit.description, FragmentPath=unit.fragments[0][0],
                 DropInPaths=" ".join(p for p, _ in unit.fragments[1:]),
                 NeedDaemonReload="yes" if unit.need_reload else "no",
                 UnitFileState=("enabled" if st.get("enabled") else "disabled") if unit.install else "static",
                 InvocationID=st.get("invocation", ""))
    if unit.bad_setting:
        props["LoadState"] = "bad-setting"
        return props
    props["LoadState"] = "loaded"
    if unit.is_service:
        props.update(
            Type=unit.type, Restart=unit.restart, RestartUSec=format_timespan(unit.restart_sec),
            NRestarts=str(st.get("n_restarts", 0)), ExecMainPID=str(st.get("exec_main_pid", 0)),
            ExecMainCode=str(st.get("exec_main_code", 0)), ExecMainStatus=str(st.get("exec_main_status", 0)),
            Result=st.get("result", "success"), User=unit.user or "",
            WorkingDirectory=unit.working_directory[0] if unit.working_directory else "",
            Environment=" ".join(f"{k}={v}" for k, v in unit.environment),
            EnvironmentFiles=" ".join(f"{p} (ignore_errors={'yes' if o else 'no'})" for p, o in unit.environment_files),
            ExecStart=" ".join("{ path=%s ; argv[]=%s }" % (c.path, " ".join(c.argv)) for c in unit.exec_start),
            KillMode=unit.kill_mode, KillSignal=str(unit.kill_signal), TimeoutStopUSec=format_timespan(unit.timeout_stop),
        )
        props.update(resource_properties(unit))
    return props


def cmd_cat(manager: Manager, names: list[str]) -> int:
    """`systemctl cat`: the unit file and its drop-ins, each under a `# <path>` line."""
    if not names:
        raise SimError("Too few arguments.")
    blocks = []
    for raw in names:
        name = parse_unit_name(raw).name
        fragments = manager._disk_fragments(parse_unit_name(name))
        if not fragments:
            raise SimError(f"No files found for {name}.", EXIT_FAILURE)
        blocks.extend(f"# {path}\n{text.rstrip()}\n" for path, text in fragments)
    print("\n".join(blocks), end="")
    return EXIT_OK


class Options:
    """systemctl's options as parsed (plain classes in this package, no dataclasses: every
    call of the stand-in is a Python start, and importing dataclasses costs more than the
    rest of the stand-in)."""

    def __init__(self) -> None:
        self.properties: list[str] = []
        self.value = self.all = self.quiet = self.plain = self.now = False
        self.legend = True
        self.types: list[str] = []
        self.states: list[str] = []
        self.lines = 10


_FLAGS = {"--value": "value", "-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "--plain": "plain",
          "--now": "now", "--no-legend": None, "--no-pager": None, "-l": None, "--full": None, "--no-block": None,
          "--system": None, "--no-ask-password": None, "--no-reload": None, "-f": None, "--force": None}
_WITH_ARG = {"-p": "property", "--property": "property", "-P": "P", "-t": "type", "--type": "type",
             "--state": "state", "-n": "lines", "--lines": "lines"}


def parse_args(args: list[str]) -> tuple[Options, list[str]]:
    opts, positional = Options(), []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positional.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positional.append(a)
            continue
        if a == "--user":
            raise SimError("simctl: only the system manager is simulated (--user is not supported)")
        if a == "--no-legend":
            opts.legend = False
            continue
        if a in _FLAGS:
            if _FLAGS[a]:
                setattr(opts, _FLAGS[a], True)
            continue
        key, value = a, None
        if a.startswith("--") and "=" in a:
            key, value = a.split("=", 1)
        elif not a.startswith("--") and len(a) > 2:
            if a[:2] in _WITH_ARG:
                key, value = a[:2], a[2:]
            elif all(f"-{c}" in _FLAGS for c in a[1:]):
                for c in a[1:]:
                    if _FLAGS[f"-{c}"]:
                        setattr(opts, _FLAGS[f"-{c}"], True)
                continue
        if key not in _WITH_ARG:
            raise SimError(f"systemctl: unrecognized option '{a}'")
        if value is None:
            if i >= len(args):
                raise SimError(f"systemctl: option '{a}' requires an argument")
            value = args[i]
            i += 1
        what = _WITH_ARG[key]
        if what in ("property", "P"):
            opts.properties.extend(p for p in value.split(",") if p)
            opts.value = opts.value or what == "P"
        elif what == "type":
            opts.types.extend(value.split(","))
        elif what == "state":
            opts.states.extend(value.split(","))
        elif what == "lines":
            opts.lines = int(value)
    return opts, positional


def cmd_show(manager: Manager, opts: Options, names: list[str]) -> int:
    blocks = []
    for name in names:
        props = properties(manager, parse_unit_name(name).name)
        keys = opts.properties or [k for k in PROPERTIES if k in props and (props[k] or opts.all)]
        lines = [props[k] if opts.value else f"{k}={props[k]}" for k in keys if k in props]
        blocks.append("\n".join(lines))
    out = "\n\n".join(blocks)
    if out:
        print(out)
    return EXIT_OK


def cmd_is(manager: Manager, opts: Options, names: list[str], wanted: tuple[str, ...], miss_code: int) -> int:
    hit = False
    for name in names:
        name = parse_unit_name(name).name
        state = manager.view(name)["active_state"] if manager.read_state(name) else "inactive"
        hit = hit or state in wanted
        if not opts.quiet:
            print(state)
    return EXIT_OK if hit else miss_code


def cmd_list_units(manager: Manager, opts: Options, patterns: list[str]) -> int:
    rows = []
    for name in manager.known_units():
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if opts.types and name.rsplit(".", 1)[-1] not in opts.types:
            continue
        props = properties(manager, name)
        states = {props["LoadState"], props["ActiveState"], props["SubState"]}
        if opts.states:
            if not states & set(opts.states):
                continue
        elif not opts.all and props["ActiveState"] == "inactive":
            continue
        rows.append([name, props["LoadState"], props["ActiveState"], props["SubState"], props["Description"]])
    table = ([["UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"]] if opts.legend else []) + rows
    widths = [max((len(r[c]) for r in table), default=0) for c in range(4)]
    for index, row in enumerate(table):
        text = " ".join(row[c].ljust(widths[c]) for c in range(4)) + " " + row[4]
        if not opts.plain:
            is_header = opts.legend and index == 0
            text = ("● " if not is_header and row[2] == "failed" else "  ") + text
        print(text.rstrip())
    if opts.legend:
        print("\nLOAD   = Reflects whether the unit definition was properly loaded.\n"
              "ACTIVE = The high-level unit activation state, i.e. generalization of SUB.\n"
              "SUB    = The low-level unit activation state, values depend on unit type.\n")
        print(f"{len(rows)} loaded units listed.")
    return EXIT_OK


def cmd_status(manager: Manager, opts: Options, names: list[str]) -> int:
    code = EXIT_OK
    for index, raw in enumerate(names):
        name = parse_unit_name(raw).name
        unit = manager.load(name)
        if unit is None:
            print(f"Unit {name} could not be found.", file=sys.stderr)
            code = max(code, EXIT_NO_SUCH_UNIT)
            continue
        p = properties(manager, name)
        active = p["ActiveState"]
        dot = "●" if active != "failed" else "×"
        if index:
            print()
        print(f"{dot} {name} - {p['Description']}")
        print(f"     Loaded: {p['LoadState']} ({p['FragmentPath']}; {p['UnitFileState'] or 'static'})")
        detail = f"{active} ({p['SubState']})" if active != "failed" else f"failed (Result: {p.get('Result', '')})"
        since = p["StateChangeTimestamp"]
        print(f"     Active: {detail}" + (f" since {since}" if since else ""))
        if p["MainPID"] != "0":
            print(f"   Main PID: {p['MainPID']}")
        if opts.lines > 0 and manager.log_path(name).exists():
            tail = manager.log_path(name).read_text(errors="replace").splitlines()[-opts.lines:]
            if tail:
                print()
                print("\n".join(tail))
        if active not in ("active", "reloading"):
            code = max(code, EXIT_NOT_ACTIVE)
    return code


def cmd_enable(manager: Manager, opts: Options, names: list[str], enable: bool) -> int:
    verb = "enable" if enable else "disable"
    for raw in names:
        name = parse_unit_name(raw).name
        unit = manager.load(name)
        if unit is None:
            raise SimError(f"Failed to {verb} unit: Unit file {name} does not exist.", EXIT_FAILURE)
        if unit.uname.instance == "":
            raise SimError(f"Failed to {verb} unit: Unit {name} is a template; name an instance.")
        manager.update_state(name, lambda s: s.update(enabled=enable))
    for raw in names:
        if opts.now:
            code = manager.start(raw) if enable else manager.stop(raw)
            if code:
                return code
    return EXIT_OK


def cmd_reset_failed(manager: Manager, names: list[str]) -> int:
    for name in names or manager.known_units():
        name = parse_unit_name(name).name

        def reset(s):
            if s.get("active_state") == "failed":
                transition(s, "inactive", "dead")
            s.update(result="success", start_times=[], n_restarts=0)
        if manager.read_state(name):
            manager.update_state(name, reset)
    return EXIT_OK


def run(argv: list[str]) -> int:
    root = unit_dir = user_map_file = None
    host_users = False
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--host-users":
            host_users = True
            i += 1
            continue
        if a == "--user-map-file" and i + 1 < len(argv):
            user_map_file = argv[i + 1]
            i += 2
            continue
        if a in ("--root", "--unit-dir") and i + 1 < len(argv):
            root, unit_dir = (argv[i + 1], unit_dir) if a == "--root" else (root, argv[i + 1])
            i += 2
            continue
        if a.startswith("--root=") or a.startswith("--unit-dir="):
            key, value = a.split("=", 1)
            root, unit_dir = (value, unit_dir) if key == "--root" else (root, value)
            i += 1
            continue
        rest.append(a)
        i += 1
    if not root:
        print("simctl: --root is required", file=sys.stderr)
        return 2
    try:
        manager = Manager(Path(root), Path(unit_dir) if unit_dir else None, host_users=host_users,
                          user_map_file=user_map_file)
    except SimError as e:
        print(e, file=sys.stderr)
        return e.code
    if rest[:1] == ["__supervise"]:
        from .supervisor import supervise  # here: its imports (ctypes, subprocess) are the supervisor's alone

        return supervise(manager, rest[1], rest[2])
    try:
        opts, positional = parse_args(rest)
        verb, names = (positional[0], positional[1:]) if positional else ("list-units", [])
        jobs = {"start": manager.start, "stop": manager.stop, "restart": manager.restart}
        if verb in jobs or verb == "try-restart":
            if not names:
                raise SimError("Too few arguments.")
            code = EXIT_OK
            for name in names:
                if verb == "try-restart":
                    if manager.view(parse_unit_name(name).name)["active_state"] == "active":
                        code = max(code, manager.restart(name))
                else:
                    code = max(code, jobs[verb](name))
            return code
        if verb == "is-active":
            return cmd_is(manager, opts, names, ("active", "reloading"), EXIT_NOT_ACTIVE)
        if verb == "is-failed":
            return cmd_is(manager, opts, names, ("failed",), EXIT_FAILURE)
        if verb == "show":
            return cmd_show(manager, opts, names)
        if verb == "status":
            return cmd_status(manager, opts, names)
        if verb == "cat":
            return cmd_cat(manager, names)
        if verb == "list-units":
            return cmd_list_units(manager, opts, names)
        if verb == "daemon-reload":
            manager.daemon_reload()
            return EXIT_OK
        if verb in ("enable", "disable"):
            return cmd_enable(manager, opts, names, verb == "enable")
        if verb == "is-enabled":
            enabled = False
            for raw in names:
                name = parse_unit_name(raw).name
                if manager.load(name) is None:
                    raise SimError(f"Failed to get unit file state for {name}: No such file or directory")
                state = "enabled" if manager.read_state(name).get("enabled") else "disabled"
                enabled = enabled or state == "enabled"
                if not opts.quiet:
                    print(state)
            return EXIT_OK if enabled else EXIT_FAILURE
        if verb == "reset-failed":
            return cmd_reset_failed(manager, names)
        raise SimError(f"Unknown command verb '{verb}'.")
    except SimError as e:
        print(e, file=sys.stderr)
        return e.code


def main() -> None:
    sys.exit(run(sys.argv[1:]))
