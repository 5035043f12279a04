"""Render the shipped units into a temporary directory and print each one's exposure score
from `systemd-analyze security --offline=yes` (lower is safer; issue 8 asks <= 5.0 for
t3-autoupdate.service), plus `systemd-analyze verify`'s verdict.

    python -m bench.unit_security            # a table
    python -m bench.unit_security --details  # systemd-analyze's full per-directive listing
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from runner import proc
from runner.units import render_all

#: Values as on a default host (the runbook's paths); only the score is of interest.
SAMPLE_VALUES = {
    "ACTIVE_DIR": "/var/lib/t3-autoupdate/active", "HOME_ROOT": "/home", "SERVE_ENV_DIR": "/etc/t3-serve",
    "SERVE_HOST": "0.0.0.0",
    "BIN": "/usr/local/bin/t3-autoupdate", "STATE_DIR": "/var/lib/t3-autoupdate",
    "BACKUP_DEST": "/var/backups/t3-state", "FREEZE_DIR": "/etc", "BIN_LINK_DIR": "/usr/local/bin",
}
SCORED = ("t3-autoupdate.service",)  # a template (t3-serve@) cannot be scored offline by name
_SCORE_RE = re.compile(r"Overall exposure level for \S+: ([0-9.]+) (\S+)")


def render_into(directory: Path) -> dict[str, Path]:
    """The units rendered into `directory`, their programs present (verify checks they exist):
    the tracker's ExecStart is this Python, the template's instance `i` has a t3 of its own."""
    t3 = directory / "active" / "i" / "bin" / "t3"
    t3.parent.mkdir(parents=True)
    t3.write_text("#!/bin/sh\n")
    t3.chmod(0o755)
    values = dict(SAMPLE_VALUES, ACTIVE_DIR=str(directory / "active"), BIN=sys.executable)
    paths = {}
    for name, text in render_all(values).items():
        path = directory / name
        path.write_text(text)
        paths[name] = path
    return paths


def security(analyze: str, unit: Path) -> tuple[float, str, str]:
    """(exposure, verdict word, full output) of `systemd-analyze security --offline=yes`."""
    done = proc.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)], timeout=60, ok_codes=range(256))
    match = _SCORE_RE.search(done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"no exposure score in: {(done.stdout + done.stderr)[-500:]}")
    return float(match.group(1)), match.group(2), done.stdout


def verify(analyze: str, paths: list[Path]) -> proc.Completed:
    return proc.run([analyze, "verify", *map(str, paths)], timeout=60, ok_codes=range(256))


def main(argv: list[str]) -> int:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        paths = render_into(Path(tmp))
        checked = verify(analyze, list(paths.values()))
        print(f"systemd-analyze verify: exit {checked.exit_code} {checked.stderr.strip() or 'clean'}")
        print(f"{'unit':28} {'exposure':>8}  verdict")
        for name in SCORED:
            score, word, text = security(analyze, paths[name])
            print(f"{name:28} {score:8.1f}  {word}")
            if "--details" in argv:
                print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
