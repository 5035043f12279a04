#!/usr/bin/env python3
"""The `systemctl` stand-in as a program (the simulated systemd is tests/sim/systemd/):

    python3 systemctl.py --root ROOT [--unit-dir DIR] [--host-users] [--user-map-file FILE] <systemctl arguments...>

or, with no environment needed, the wrapper ``install_systemctl(root, unit_dir)`` writes to
``ROOT/bin/systemctl``. The same program, with the verb ``__supervise``, is a unit's supervisor.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a file: the package lives below the checkout's root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.sim.systemd.cli import main
from tests.sim.systemd.common import INACTIVE, program_command
from tests.sim.systemd.manager import Manager
from tests.sim.systemd.procs import proc_alive


def install_systemctl(root: Path, unit_dir: Path, *, host_users: bool = False,
                      user_map_file: Path | None = None) -> Path:
    """Write ``<root>/bin/systemctl``, a wrapper that needs no environment; return its path.

    `host_users`: let User= name the machine's real accounts; `user_map_file`: the world's
    own accounts (see tests/sim/systemd/__init__.py)."""
    import shlex  # here: the program itself (every stand-in call) never needs it

    root, unit_dir = Path(root).resolve(), Path(unit_dir).resolve()
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    unit_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bindir / "systemctl"
    command = " ".join(shlex.quote(x) for x in program_command(root, unit_dir, host_users=host_users,
                                                                user_map_file=user_map_file))
    wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def stop_all(root: Path, unit_dir: Path | None = None) -> list[str]:
    """Stop every unit that still has a process (test teardown); returns the units stopped."""
    manager = Manager(Path(root), unit_dir)
    stopped = []
    for name in manager.known_units():
        st = manager.read_state(name)
        if st.get("active_state", "inactive") not in INACTIVE or proc_alive(st.get("supervisor_pid"), st.get("supervisor_start")):
            manager.stop(name)
            stopped.append(name)
    return stopped


if __name__ == "__main__":
    main()
