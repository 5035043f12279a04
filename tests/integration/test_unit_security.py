"""The shipped units pass `systemd-analyze verify`, and the tracker's service is sandboxed
(`systemd-analyze security --offline=yes`: exposure <= 5.0, issue 8)."""
from __future__ import annotations

import shutil

import pytest

from bench.unit_security import SCORED, render_into, security, verify
from runner import proc

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")


@needs_analyze
def test_every_shipped_unit_verifies(tmp_path):
    paths = render_into(tmp_path)
    done = verify(ANALYZE, list(paths.values()))
    assert (done.exit_code, done.stderr.strip()) == (0, "")


@needs_analyze
@pytest.mark.parametrize("unit", SCORED)
def test_the_tracker_service_is_sandboxed(tmp_path, unit):
    path = render_into(tmp_path)[unit]
    score, word, _ = security(ANALYZE, path)
    assert score <= 5.0, f"{unit}: exposure {score} {word}"
    done = proc.run([ANALYZE, "security", "--offline=yes", "--threshold=50", "--no-pager", str(path)],
                    timeout=60, ok_codes=range(256))
    assert done.exit_code == 0, done.stdout[-2000:]


def test_the_sandbox_keeps_what_the_tracker_needs():
    from runner.units import load_template

    text = load_template("t3-autoupdate.service")
    caps = next(line for line in text.splitlines() if line.startswith("CapabilityBoundingSet="))
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL"):
        assert cap in caps  # switch to users, chown releases/backups, signal stuck children
    assert "ReadWritePaths=@STATE_DIR@ @BACKUP_DEST@ @HOME_ROOT@" in text
    assert "MemoryDenyWriteExecute" not in text  # node (npm, the candidate) needs a JIT
    assert "PrivateNetwork" not in text and "ProtectHome" not in text
    # every directive says why: the line before each one is a comment or another directive
    lines = [l for l in text.split("[Service]", 1)[1].splitlines() if l.strip()]
    assert lines[0].startswith("Type=") and all(l.startswith("#") or "=" in l for l in lines)
