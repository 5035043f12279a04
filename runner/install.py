"""`t3-autoupdate install-units`: render the shipped units with this host's paths,
install them, reload, and ENABLE the timers, never start them (`--now`): a timer
started late fires its missed run at once, and a bump once began mid-afternoon
with users active (docs/lessons.md).

A host's own `t3-serve@.service` is never replaced: only a drop-in resetting its
ExecStart is installed over it (docs: README "Taking over a host"). The host's old
jobs (`t3-migrate-idle.timer`, `t3-backup-state.timer`) are disabled once the
project's replacements are enabled, so the two never run side by side.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from . import proc
from .dispatchmap import load_ports
from .gateuser import ensure_gate_user
from .state import atomic_write
from .units import OWN_UNITS, SERVE_TEMPLATE, TIMERS, is_own_serve_unit, load_template, units_for_host

TIMER = "t3-autoupdate.timer"
KEPT_SUFFIX = ".pre-t3-autoupdate"  # the host's own file, kept beside the project's
# The host's old jobs -> the project's timer that replaces each.
RETIRED_TIMERS = {"t3-migrate-idle.timer": "t3-autoupdate-drain.timer",
                  "t3-backup-state.timer": "t3-autoupdate-backup.timer"}


def unit_values(cfg, *, serve_env_dir: Path, bin_path: str) -> dict[str, str]:
    return {"ACTIVE_DIR": str(cfg.active_dir), "HOME_ROOT": str(cfg.home_root),
            "SERVE_ENV_DIR": str(serve_env_dir), "SERVE_HOST": cfg.serve_host, "BIN": bin_path,
            # the tracker service's sandbox: the only paths it may write
            "STATE_DIR": str(cfg.state_dir), "BACKUP_DEST": str(cfg.backup_dest),
            "FREEZE_DIR": str(Path(cfg.freeze_file).parent), "BIN_LINK_DIR": str(Path(cfg.bin_link).parent)}


def daemon_reload_argv(systemctl: str) -> list[str]:
    return [systemctl, "daemon-reload"]


def enable_timer_argv(systemctl: str, timer: str = TIMER) -> list[str]:
    return [systemctl, "enable", timer]  # no --now, on purpose


def disable_timer_argv(systemctl: str, timer: str) -> list[str]:
    # --now stops it too: a retired job must not fire once more before the next boot.
    return [systemctl, "disable", "--now", timer]


def host_has_serve_unit(dest: Path) -> bool:
    """A `t3-serve@.service` of the host's own (not an earlier install of ours) is in `dest`."""
    path = Path(dest) / SERVE_TEMPLATE
    if path.is_symlink() or not path.exists():
        return path.is_symlink()  # a linked unit is the operator's too: never overwritten
    return not is_own_serve_unit(path.read_text(encoding="utf-8", errors="replace"))


def write_missing_port_files(dispatch_map: Path, serve_env_dir: Path) -> list[Path]:
    """`<serve_env_dir>/<os_user>.env` with `T3_PORT=<the dispatch's port>` for every user
    who has none, so the serve unit's ${T3_PORT} is always set; existing files are kept."""
    written = []
    for os_user, port in sorted(load_ports(dispatch_map).items()):
        path = Path(serve_env_dir) / f"{os_user}.env"
        if not path.exists() and not path.is_symlink():
            atomic_write(path, f"T3_PORT={port}\n", mode=0o644)
            written.append(path)
    return written


def _unit_loaded(systemctl: str, unit: str) -> bool:
    done = proc.run([systemctl, "show", "-p", "LoadState", "--value", unit], timeout=60, ok_codes=range(256))
    return done.exit_code == 0 and done.stdout.strip() == "loaded"


def retire_old_timers(systemctl: str, events) -> list[str]:
    """Disable the host's old jobs whose replacement is enabled by now; returns those disabled."""
    retired = []
    for old, new in RETIRED_TIMERS.items():
        if _unit_loaded(systemctl, old):
            proc.run(disable_timer_argv(systemctl, old), timeout=60)
            events("RETIRED", timer=old, replaced_by=new)
            retired.append(old)
    return retired


def keep_aside_foreign_units(dest: Path, names, events) -> list[Path]:
    """A unit file of the same name that is not the project's (e.g. the old bash tracker's
    `t3-autoupdate.service`) is kept as `<name>.pre-t3-autoupdate` (systemd does not load
    that name) before ours replaces it; returns the kept copies."""
    kept = []
    for name in names:
        path = Path(dest) / name
        if path.is_symlink() or not path.is_file():
            continue
        first_line = load_template(name).split("\n", 1)[0]
        if path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0] == first_line:
            continue  # an earlier install of ours
        aside = path.with_name(name + KEPT_SUFFIX)
        if not aside.exists():
            shutil.copy2(path, aside, follow_symlinks=False)
            events("KEPT ASIDE", unit=name, copy=str(aside))
        kept.append(aside)
    return kept


def install_units(cfg, *, dest: Path, serve_env_dir: Path, bin_path: str | None = None, events) -> list[Path]:
    bin_path = bin_path or shutil.which("t3-autoupdate") or str(Path(sys.argv[0]).resolve())
    ensure_gate_user(cfg, events)  # the account every candidate build runs as
    dest = Path(dest)
    keep_host_unit = host_has_serve_unit(dest)
    written = []
    values = unit_values(cfg, serve_env_dir=serve_env_dir, bin_path=bin_path)
    rendered = units_for_host(values, host_serve_unit=keep_host_unit)
    keep_aside_foreign_units(dest, [name for name in rendered if name in OWN_UNITS], events)
    for name, text in rendered.items():
        path = dest / name
        atomic_write(path, text, mode=0o644)
        written.append(path)
    env_files = write_missing_port_files(cfg.dispatch_map, serve_env_dir)
    proc.run(daemon_reload_argv(cfg.systemctl), timeout=60)
    for timer in TIMERS:
        proc.run(enable_timer_argv(cfg.systemctl, timer), timeout=60)
    events("INSTALLED", units=",".join(str(p.relative_to(dest)) for p in written), dest=str(dest),
           serve_unit="host's own, extended by a drop-in" if keep_host_unit else "the project's template",
           env_files=",".join(p.name for p in env_files) or None, timers=",".join(TIMERS) + " enabled, not started")
    retire_old_timers(cfg.systemctl, events)
    return written


# ------------------------------------------------------------------ the mint helper
# The production dispatch mints with exactly `sudo -n /usr/local/bin/t3-mint <os_user>`
# (compiled in; its sudoers rule allows that one path) and reads stdout as one JSON
# object. So the project's mint goes AT that path, a wrapper around
# `t3-autoupdate mint`; the host's helper is kept aside, and the sudoers rule untouched.

MINT_WRAPPER_MARKER = "# t3-autoupdate mint helper"


class MintInstallError(RuntimeError):
    """The helper cannot be installed or restored without losing the host's own."""


def kept_mint_path(helper: Path) -> Path:
    return helper.with_name(helper.name + KEPT_SUFFIX)


def mint_wrapper_text(bin_path: str, config_file: Path | None) -> str:
    """The wrapper: one argument, the config this install used, exec `t3-autoupdate mint`."""
    import shlex

    config = f"export T3_CONFIG={shlex.quote(str(config_file))}\n" if config_file else ""
    return (f"#!/bin/sh\n{MINT_WRAPPER_MARKER} (installed by `t3-autoupdate install-mint`; the host's own\n"
            f"# helper is kept beside it as *{KEPT_SUFFIX}; `install-mint --uninstall` restores it).\n"
            "# Mints with the user's OWN release link, as that user; stdout is exactly one JSON\n"
            "# object (the dispatch parses it whole), diagnostics go to stderr.\n"
            '[ "$#" -eq 1 ] || { echo "usage: t3-mint OS_USER" >&2; exit 2; }\n'
            f"{config}exec {shlex.quote(bin_path)} mint \"$1\"\n")


def is_own_wrapper(path: Path) -> bool:
    """Whether `path` is a mint wrapper this project installed (a regular file with its marker)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return MINT_WRAPPER_MARKER.encode() in f.read(4096)


def _keep_aside(helper: Path, kept: Path) -> None:
    """Copy the host's helper (a symlink as a symlink) to `kept`, atomically; the original
    stays in place until the wrapper replaces it, so no mint ever finds the path empty."""
    import os

    tmp = kept.with_name(f".{kept.name}.tmp-{os.getpid()}")
    if helper.is_symlink():
        os.symlink(os.readlink(helper), tmp)
    else:
        shutil.copy2(helper, tmp, follow_symlinks=False)
    os.rename(tmp, kept)


def install_mint(cfg, *, bin_path: str | None = None, events) -> Path:
    helper = Path(cfg.mint_helper)
    kept = kept_mint_path(helper)
    bin_path = bin_path or shutil.which("t3-autoupdate") or str(Path(sys.argv[0]).resolve())
    host_helper = (helper.exists() or helper.is_symlink()) and not is_own_wrapper(helper)
    if host_helper:
        if kept.exists() or kept.is_symlink():
            raise MintInstallError(f"{helper} is not ours and {kept} already exists: refusing to overwrite "
                                   "the kept helper; move one of them away first")
        _keep_aside(helper, kept)
    atomic_write(helper, mint_wrapper_text(bin_path, cfg.config_file), mode=0o755)
    events("INSTALLED", mint_helper=str(helper), runs=f"{bin_path} mint",
           kept=str(kept) if (kept.exists() or kept.is_symlink()) else None)
    return helper


def uninstall_mint(cfg, *, events) -> Path | None:
    """Put the host's helper back (or remove ours if there was none); returns what is at the path."""
    import os

    helper = Path(cfg.mint_helper)
    kept = kept_mint_path(helper)
    if not is_own_wrapper(helper):
        raise MintInstallError(f"{helper} is not the t3-autoupdate wrapper: nothing to uninstall")
    if kept.exists() or kept.is_symlink():
        os.rename(kept, helper)
        events("RESTORED", mint_helper=str(helper), was_kept_at=str(kept))
        return helper
    helper.unlink()
    events("REMOVED", mint_helper=str(helper), reason="no helper was there before install-mint")
    return None
