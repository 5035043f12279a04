"""The process a unit runs: its argv ($VAR expanded), environment (systemd's, on top of a
pass-through of the caller's PATH, locale, TMPDIR and PYTHON*), working directory and
credentials (User= resolved against the world's accounts, the machine's only when asked);
a StartError where systemd would refuse to start it."""
from __future__ import annotations

import os
from pathlib import Path

from .common import DEFAULT_PATH, PASS_ENV, StartError, new_id
from .syntax import expand_argument, parse_env_file
from .units import Account, Command, Unit, host_account


class ExecSpec:
    """How to exec one command line of a unit (a plain class: see cli.Options)."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str], cwd: str | None,
                 user: tuple[int, int, list[int]] | None, notes: list[str]) -> None:
        self.path, self.argv, self.env, self.cwd, self.user, self.notes = path, argv, env, cwd, user, notes


def exec_spec(unit: Unit, cmd: Command, *, host_users: bool, user_map: dict) -> ExecSpec:
    """argv, environment, directory and credentials for ``cmd``; StartError if systemd would refuse."""
    notes: list[str] = []
    env = {k: v for k, v in os.environ.items() if PASS_ENV.match(k)}
    env.setdefault("PATH", DEFAULT_PATH)
    cwd = None
    user = None
    if unit.working_directory:
        path, optional = unit.working_directory
        if os.path.isdir(path):
            cwd = path
        elif not optional:
            raise StartError(f"Changing to the requested working directory failed: {path}", "exit-code", 200)
    if unit.user and not cmd.privileged:
        entry = host_account(unit.user, host_users, user_map)
        if entry is not None:
            env.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir, SHELL=entry.pw_shell)
            if os.geteuid() == 0:
                groups = list(entry.groups) if isinstance(entry, Account) else \
                    os.getgrouplist(entry.pw_name, entry.pw_gid)
                user = (entry.pw_uid, entry.pw_gid, groups)
            elif entry.pw_uid != os.geteuid():
                notes.append(f"User={unit.user}: not running as root, so running as uid {os.geteuid()} instead (simulation)")
        else:
            notes.append(f"User={unit.user}: a simulated user (the machine's passwd is not consulted), "
                         f"so running as uid {os.geteuid()} (simulation)")
            env.update(USER=unit.user, LOGNAME=unit.user, HOME=cwd or env.get("HOME", "/"), SHELL="/bin/sh")
    env.update(unit.environment)
    for path, optional in unit.environment_files:
        try:
            env.update(parse_env_file(Path(path).read_text()))
        except OSError as e:
            if not optional:
                raise StartError(f"Failed to load environment files: {path}: {e.strerror}") from None
    env["INVOCATION_ID"] = new_id()
    argv = [cmd.argv[0]]
    for word in cmd.argv[1:]:
        argv.extend(expand_argument(word, env) if cmd.expand else [word])
    return ExecSpec(cmd.path, argv, env, cwd, user, notes)
