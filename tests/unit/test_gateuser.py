"""runner.gateuser and runner.scratch: the gate user's ids, its creation, its private scratch."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import proc
from runner.events import EventLog
from runner.gateuser import GateUserError, ensure_gate_user, gate_ids, useradd_argv
from runner.scratch import ScratchError, private_scratch

# A name no machine has (OS_USER_RE allows 32 characters): creation must be attempted.
ABSENT = "t3gate-absent-7f3a9c2e1b"


def test_useradd_argv_makes_a_system_user_without_login_or_home():
    assert useradd_argv("/usr/sbin/useradd", "t3-gate") == [
        "/usr/sbin/useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
        "--shell", "/usr/sbin/nologin", "--comment", "t3-autoupdate gate (runs candidate builds)", "t3-gate"]


def test_a_numeric_gate_user_is_its_own_uid_and_gid():
    assert gate_ids(SimpleNamespace(gate_user="64123")) == proc.UserIds(64123, 64123, "64123")


def test_a_missing_named_gate_user_is_an_error_naming_it():
    with pytest.raises(GateUserError, match=ABSENT):
        gate_ids(SimpleNamespace(gate_user=ABSENT))


def _fake_useradd(tmp_path: Path, exit_code: int) -> Path:
    record = tmp_path / "useradd.argv"
    fake = tmp_path / "useradd"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nexit {exit_code}\n')
    fake.chmod(0o755)
    return fake


def test_ensure_gate_user_runs_useradd_when_missing(tmp_path):
    fake = _fake_useradd(tmp_path, 0)
    events = EventLog()
    cfg = SimpleNamespace(gate_user=ABSENT, useradd=str(fake))
    with pytest.raises(GateUserError, match="does not exist"):  # the fake created nobody
        ensure_gate_user(cfg, events)
    assert (tmp_path / "useradd.argv").read_text().splitlines() == useradd_argv(str(fake), ABSENT)[1:]
    assert any("GATE USER CREATED" in line for line in events.lines)


def test_a_failing_useradd_is_a_clear_error(tmp_path):
    cfg = SimpleNamespace(gate_user=ABSENT, useradd=str(_fake_useradd(tmp_path, 9)))
    with pytest.raises(GateUserError, match=f"could not create gate user '{ABSENT}'.*exit code 9"):
        ensure_gate_user(cfg, EventLog())


def test_a_numeric_or_existing_gate_user_is_never_created(tmp_path):
    fake = _fake_useradd(tmp_path, 0)
    assert ensure_gate_user(SimpleNamespace(gate_user="64123", useradd=str(fake)), EventLog()).uid == 64123
    assert not (tmp_path / "useradd.argv").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the gate uid needs root")
def test_private_scratch_is_fresh_private_and_removed(tmp_path):
    cfg = SimpleNamespace(tmpdir=tmp_path / "state" / "scratch", gate_user="64123")
    with private_scratch(cfg, "health") as (root_a, gate_a), private_scratch(cfg, "health") as (root_b, _):
        assert root_a != root_b and root_a.parent == cfg.tmpdir and root_a.name.startswith("health-")
        for path, owner, mode in ((cfg.tmpdir, (0, 64123), 0o710), (root_a, (0, 64123), 0o710),
                                  (gate_a, (64123, 64123), 0o700)):
            st = os.lstat(path)
            assert ((st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)) == (owner, mode), path
    assert list(cfg.tmpdir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the gate uid needs root")
def test_a_scratch_root_that_is_a_symlink_or_someone_elses_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "state").mkdir()
    link = tmp_path / "state" / "scratch"
    link.symlink_to(target)
    with pytest.raises(OSError):  # O_NOFOLLOW: never followed
        with private_scratch(SimpleNamespace(tmpdir=link, gate_user="64123"), "stage"):
            pass
    assert list(target.iterdir()) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 64999, 64999)
    with pytest.raises(ScratchError, match="belongs to uid 64999"):
        with private_scratch(SimpleNamespace(tmpdir=foreign, gate_user="64123"), "stage"):
            pass
