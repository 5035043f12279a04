"""The mint helper the dispatch calls: `t3-autoupdate mint <os_user>`.

docs/architecture.md phase 6 and the 2026-06-09 lesson: the pairing CLI opens the user's
`state.sqlite` and runs pending migrations, so a mint must run the SAME build as that
user's running server. It therefore runs the user's own release link
(`<active_dir>/<os_user>/bin/t3`), never the global `t3`, with that user's base dir,
as that user (the owner of their home directory, by lstat; a symlinked home is
refused, and so is a home owned by root: the mint never runs a build as root). The OS user must be a value of the user map: the dispatch passes a name it
read from its own map, and anything else is refused before a path is built from it.

The credential JSON goes to stdout untouched (the dispatch relays its fields).
Exit codes of `mint_main`: 0 ok, 2 unknown or invalid user, 1 the mint failed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from . import proc
from .activate import ActivationError, release_of_link
from .userfiles import UserFileError, home_owner
from .usermap import OS_USER_RE
from .userlock import UserLockTimeout, user_lock

__all__ = ["MintError", "UnknownUser", "pairing_argv", "mint_argv", "mint_env", "mint_for", "mint_main", "MINT_TTL"]

MINT_TTL = "5m"
MINT_TIMEOUT = 60.0
MAINTENANCE_WAIT = 60.0


class MintError(RuntimeError):
    """The mint could not be done (no link, bad home, the CLI failed or printed nonsense)."""


class UnknownUser(MintError):
    """The OS user is not a value of the user map (or is not a valid name at all)."""


def pairing_argv(t3_bin: Path | str, base_dir: Path) -> list[str]:
    """`<t3> auth pairing create --base-dir <base> --ttl 5m --json`: the one mint command line,
    the login's and the health gate's (which mints on the candidate build's throwaway servers)."""
    return [str(t3_bin), "auth", "pairing", "create", "--base-dir", str(base_dir), "--ttl", MINT_TTL, "--json"]


def mint_argv(active_link: Path, base_dir: Path) -> list[str]:
    """The mint of a login: the user's own release link's `bin/t3`."""
    return pairing_argv(f"{active_link}/bin/t3", base_dir)


def mint_env(home: Path, os_user: str, base: dict | None = None) -> dict[str, str]:
    """A small environment for the user's CLI: `proc.child_env`, HOME/USER/LOGNAME theirs."""
    return proc.child_env({"HOME": str(home), "USER": os_user, "LOGNAME": os_user}, base)


def _known_user(cfg, os_user: str) -> str:
    if not isinstance(os_user, str) or not OS_USER_RE.fullmatch(os_user):
        raise UnknownUser(f"invalid OS user name {os_user!r}")
    if os_user not in cfg.users.values():
        raise UnknownUser(f"OS user {os_user!r} is not in the user map {cfg.user_map}")
    return os_user


def mint_for(cfg, os_user: str, *, timeout: float = MINT_TIMEOUT, run=proc.run) -> str:
    """Mint a pairing credential for `os_user` with their own linked binary; return the JSON text."""
    os_user = _known_user(cfg, os_user)
    link = cfg.active_link(os_user)
    try:
        version = release_of_link(link)
    except ActivationError as exc:
        raise MintError(f"{os_user}: {exc}") from None
    if version is None:
        raise MintError(f"{os_user} has no release link at {link}")
    home = cfg.home_dir(os_user)
    try:
        owner = home_owner(home)
    except UserFileError as exc:
        raise MintError(f"{os_user}: {exc}") from None
    if owner.uid == 0:  # a build never runs as root; the home must belong to its user
        raise MintError(f"{os_user}: home {home} is owned by root (uid 0), not by {os_user}: refusing to "
                        "mint as root (chown the home to its user)")
    owner = proc.UserIds(owner.uid, owner.gid, os_user)
    try:
        done = run(mint_argv(link, cfg.t3_base_dir(os_user)), env=mint_env(home, os_user), cwd="/",
                   timeout=timeout, as_user=owner)
    except proc.CommandError as exc:
        raise MintError(f"mint for {os_user} (release {version}) failed: {exc}") from exc
    try:
        data = json.loads(done.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("credential"), str):
        raise MintError(f"mint for {os_user} (release {version}) printed no credential JSON: "
                        f"{done.stdout[:200]!r}")
    return done.stdout


def mint_main(cfg, os_user: str, stdout: TextIO, stderr: TextIO | None = None) -> int:
    """The `t3-autoupdate mint <os_user>` command: 0 ok, 2 unknown user, 1 mint failed."""
    stderr = sys.stderr if stderr is None else stderr
    try:
        _known_user(cfg, os_user)
        with user_lock(cfg.state_dir, os_user, exclusive=False, timeout=MAINTENANCE_WAIT):
            text = mint_for(cfg, os_user)
    except UserLockTimeout as exc:
        print(f"t3-autoupdate mint: {exc}", file=stderr)
        return 1
    except UnknownUser as exc:
        print(f"t3-autoupdate mint: {exc}", file=stderr)
        return 2
    except MintError as exc:
        print(f"t3-autoupdate mint: {exc}", file=stderr)
        return 1
    stdout.write(text if text.endswith("\n") else text + "\n")
    stdout.flush()
    return 0
