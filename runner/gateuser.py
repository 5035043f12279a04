"""The gate user: the unprivileged system account every candidate build runs as.

Config `gate_user` (`T3_GATE_USER`, default `t3-gate`) names it, or gives a bare numeric
uid (a user with no passwd entry; the test world uses one so its tests never depend on
which accounts a machine has). `gate_ids` is the one place that turns it into
`proc.UserIds`; `ensure_gate_user` creates a named account when it is missing (the
`install-units` and `adopt` commands), as a system user with no login shell and no home.
"""
from __future__ import annotations

import pwd

from . import proc

__all__ = ["GateUserError", "gate_ids", "useradd_argv", "ensure_gate_user"]


class GateUserError(RuntimeError):
    """The gate user does not exist (and could not be created), or resolves to root."""


def _numeric(gate_user: str) -> bool:
    return gate_user.isascii() and gate_user.isdigit()


def gate_ids(cfg) -> proc.UserIds:
    """uid and gid of the configured gate user (a numeric uid is its own gid)."""
    name = cfg.gate_user
    if _numeric(name):
        ids = proc.UserIds(int(name), int(name), name)
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise GateUserError(f"gate user {name!r} does not exist (run `t3-autoupdate install-units` "
                                f"or `adopt`, which create it, or set T3_GATE_USER)") from None
        ids = proc.UserIds(entry.pw_uid, entry.pw_gid, name)
    if ids.uid == 0 or ids.gid == 0:
        raise GateUserError(f"gate user {name!r} resolves to uid {ids.uid} gid {ids.gid}: never root")
    return ids


def useradd_argv(useradd: str, name: str) -> list[str]:
    """A system account with no home of value and no login shell (and a group of its own)."""
    return [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "--comment", "t3-autoupdate gate (runs candidate builds)",
            name]


def ensure_gate_user(cfg, events, *, run=proc.run) -> proc.UserIds:
    """The gate user's ids, creating a named account first when it is missing."""
    if not _numeric(cfg.gate_user):
        try:
            pwd.getpwnam(cfg.gate_user)
        except KeyError:
            try:
                run(useradd_argv(cfg.useradd, cfg.gate_user), timeout=60)
            except proc.CommandError as exc:
                raise GateUserError(f"could not create gate user {cfg.gate_user!r}: {exc}") from exc
            events("GATE USER CREATED", user=cfg.gate_user)
    return gate_ids(cfg)
