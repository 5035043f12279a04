"""`t3-autoupdate install-units`: render the shipped units with this host's paths,
install them, reload, and ENABLE the timer, never start it (`--now`): a timer
started late fires its missed run at once, and a bump once began mid-afternoon
with users active (lessons.md)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from . import proc
from .gateuser import ensure_gate_user
from .state import atomic_write
from .units import render_all

TIMER = "t3-autoupdate.timer"


def unit_values(cfg, *, serve_env_dir: Path, bin_path: str) -> dict[str, str]:
    return {"ACTIVE_DIR": str(cfg.active_dir), "HOME_ROOT": str(cfg.home_root),
            "SERVE_ENV_DIR": str(serve_env_dir), "BIN": bin_path,
            # the tracker service's sandbox: the only paths it may write
            "STATE_DIR": str(cfg.state_dir), "BACKUP_DEST": str(cfg.backup_dest),
            "FREEZE_DIR": str(Path(cfg.freeze_file).parent), "BIN_LINK_DIR": str(Path(cfg.bin_link).parent)}


def daemon_reload_argv(systemctl: str) -> list[str]:
    return [systemctl, "daemon-reload"]


def enable_timer_argv(systemctl: str) -> list[str]:
    return [systemctl, "enable", TIMER]  # no --now, on purpose


def install_units(cfg, *, dest: Path, serve_env_dir: Path, bin_path: str | None = None, events) -> list[Path]:
    bin_path = bin_path or shutil.which("t3-autoupdate") or str(Path(sys.argv[0]).resolve())
    ensure_gate_user(cfg, events)  # the account every candidate build runs as
    written = []
    for name, text in render_all(unit_values(cfg, serve_env_dir=serve_env_dir, bin_path=bin_path)).items():
        path = Path(dest) / name
        atomic_write(path, text, mode=0o644)
        written.append(path)
    proc.run(daemon_reload_argv(cfg.systemctl), timeout=60)
    proc.run(enable_timer_argv(cfg.systemctl), timeout=60)
    events("INSTALLED", units=",".join(p.name for p in written), dest=str(dest), timer="enabled, not started")
    return written
