"""The pieces of a takeover, fast: the old tracker's markers and backups, telling a server
not on its link, the mint's light start, and the daily backup's kinds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import activate, proc
from runner.takeover import (legacy_restore_points, managed_by_project, parse_legacy_marker, process_cmdline,
                             running_off_link, runs_link)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected", [
    ("0.0.26\n", {"version": "0.0.26", "reason": "deferred by the old tracker", "legacy": True}),
    ("0.0.27-nightly.20260612.530 busy: claude child\n",
     {"version": "0.0.27-nightly.20260612.530", "reason": "busy: claude child", "legacy": True}),
    ("2026-06-10T04:00:01+00:00\n", {"version": None, "reason": "2026-06-10T04:00:01+00:00", "legacy": True}),
    ("", None), ("0.0.26\n0.0.27\n", None), ("{not json", None), ("busy\n", None),
])
def test_legacy_marker_lines(text, expected):
    assert parse_legacy_marker(text) == expected


def test_deferred_users_reads_the_old_trackers_markers_not_as_corrupt(tmp_path):
    deferred = tmp_path / "deferred"
    deferred.mkdir()
    (deferred / "emo").write_text("0.0.26 busy\n")
    (deferred / "wizard").write_text('{"version": "0.0.28", "reason": "turn in flight"}')
    (deferred / "ancamilea").write_text("{broken json\nand more\n")
    found = activate.deferred_users(deferred)
    assert found["emo"] == {"version": "0.0.26", "reason": "busy", "legacy": True}
    assert found["wizard"]["version"] == "0.0.28"
    assert found["ancamilea"]["error"].startswith("corrupt marker")  # two lines: still corrupt, still owed


def test_managed_by_project_ignores_the_old_trackers_files(tmp_path):
    (tmp_path / "last-good").write_text("0.0.26\n")
    (tmp_path / "deferred").mkdir()
    (tmp_path / "lock").write_text("")
    assert managed_by_project(tmp_path) == []
    (tmp_path / "releases").mkdir()  # a failed adopt's staging: not yet managed
    assert managed_by_project(tmp_path) == []
    (tmp_path / "active").mkdir()  # every command makes the state dirs first, empty
    (tmp_path / "runs").mkdir()
    assert managed_by_project(tmp_path) == []
    (tmp_path / "active" / "wizard").symlink_to(tmp_path / "releases" / "0.0.26")
    assert managed_by_project(tmp_path) == ["active"]


def test_legacy_restore_points_newest_first_and_never_the_projects_own(tmp_path):
    folder = tmp_path / "wizard"
    folder.mkdir()
    for name in ("state-20260601-033000.sqlite", "state-20260603-033000.sqlite",
                 "state-prebump-0.0.26-20260602-040012.sqlite", "state-prebump-0.0.28-20260610T040000Z.sqlite",
                 "notes.txt"):
        (folder / name).write_text("x")
    (folder / ".state-prebump-0.0.28-20260610T040000Z.sqlite.json").write_text("{}")  # the project's copy
    points = legacy_restore_points(tmp_path, "wizard")
    assert [(p.path.name, p.kind, p.version) for p in points] == [
        ("state-20260603-033000.sqlite", "daily", None),
        ("state-prebump-0.0.26-20260602-040012.sqlite", "prebump", "0.0.26"),
        ("state-20260601-033000.sqlite", "daily", None),
    ]
    assert legacy_restore_points(tmp_path, "nobody") == []


def test_a_server_is_on_its_link_only_when_started_from_it(tmp_path):
    link = tmp_path / "active" / "wizard"
    assert runs_link(["python3", f"{link}/bin/t3", "serve", "--port", "1"], link)
    assert runs_link([f"{link}/bin/t3", "serve"], link)
    assert not runs_link(["/usr/bin/node", "/usr/bin/t3", "serve"], link)
    assert not runs_link(["python3", f"{link}/bin/t3x", "serve"], link)
    global_t3 = tmp_path / "usr" / "bin" / "t3"
    global_t3.parent.mkdir(parents=True)
    global_t3.write_text("import time; time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, str(global_t3), "serve"])
    untold = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "serve"])
    try:
        assert process_cmdline(child.pid)[1:] == [str(global_t3), "serve"]
        services = SimpleNamespace(main_pid=lambda unit: child.pid)
        reason = running_off_link(services, "t3-serve@wizard.service", link)
        assert reason and f"not {link}/bin/t3" in reason and str(global_t3) in reason
        # a command line that names no t3 binary is not judged off the link
        assert running_off_link(SimpleNamespace(main_pid=lambda unit: untold.pid), "x", link) is None
        assert running_off_link(SimpleNamespace(main_pid=lambda unit: None), "t3-serve@wizard.service", link) is None
    finally:
        for p in (child, untold):
            p.kill()
            p.wait()


# ------------------------------------------------------------------ the mint's light start

def test_the_mint_command_imports_none_of_the_run_machinery(tmp_path):
    """Every login pays for the mint's start-up: `sh`, `semver`, `requests` and the tracker
    stay out of it (measured in bench/bench_login.py)."""
    (tmp_path / "map").write_text("a=wizard\n")
    (tmp_path / "c.toml").write_text(f'user_map = "{tmp_path}/map"\nstate_dir = "{tmp_path}/state"\n'
                                     f'home_root = "{tmp_path}/home"\n')
    code = ("import sys; from runner.entry import main; rc = main(['mint', 'wizard']); "
            "print(sorted(m for m in ('sh', 'semver', 'requests', 'runner.tracker', 'runner.cli', 'argparse') "
            "if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "T3_CONFIG": str(tmp_path / "c.toml")})
    assert done.returncode == 1 and "no release link" in done.stderr  # it got as far as the user's link
    assert done.stdout.strip() == "[]"
    # the console script is this entry, and every other command still reaches the full CLI
    assert 't3-autoupdate = "runner.entry:main"' in (ROOT / "pyproject.toml").read_text()
    usage = subprocess.run([sys.executable, "-m", "runner.entry", "mint"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env={**os.environ, "T3_CONFIG": str(tmp_path / "c.toml")})
    assert usage.returncode == 2 and "usage: t3-autoupdate" in usage.stderr


# ------------------------------------------------------------------ the daily backup's kind

def test_daily_copies_are_pruned_among_themselves_never_a_prebump_restore_point(tmp_path):
    from datetime import datetime, timedelta, timezone

    from runner.backups import catalogue, take, trees
    from tests.sim import dbgen

    userdata = tmp_path / "home" / "alice" / ".t3" / "userdata"
    for path in (tmp_path / "home", tmp_path / "home" / "alice", userdata.parent, userdata):
        path.mkdir(mode=0o755)
        path.chmod(0o755)
    dbgen.make_database(userdata / "state.sqlite", 30, threads=2, messages_per_thread=3)
    dbgen.make_database(userdata / "statev2.sqlite", 30, threads=1, messages_per_thread=2)
    dest, day = tmp_path / "backups", datetime(2026, 6, 1, 3, 30, tzinfo=timezone.utc)
    prebump = take.backup_user_databases("alice", userdata, dest, "0.0.24", keep=1, now=day)
    for n in range(1, 4):
        take.backup_user_databases("alice", userdata, dest, "0.0.24", keep=2, kind="daily",
                                     now=day + timedelta(days=n))
    names = sorted(p.name for p in (dest / "alice").glob("*.sqlite"))
    assert [n for n in names if "-daily-" in n] == [
        "state-daily-0.0.24-20260603T033000Z.sqlite", "state-daily-0.0.24-20260604T033000Z.sqlite",
        "statev2-daily-0.0.24-20260603T033000Z.sqlite", "statev2-daily-0.0.24-20260604T033000Z.sqlite"]
    assert {r.path.name for r in prebump} <= set(names)  # the restore points are all still there
    assert catalogue.latest_backup(dest, "alice", "state.sqlite").path == prebump[0].path  # and still the newest
    with pytest.raises(trees.BackupError, match="kind"):
        take.backup_user_databases("alice", userdata, dest, "0.0.24", kind="weekly")


def test_liveness_asks_systemctl_once_then_polls_the_process():
    from runner import services

    calls = []
    answer = {"pid": os.getpid()}

    def fake_run(argv, **kwargs):
        calls.append(list(argv))
        return proc.Completed(tuple(argv), 0, f"ActiveState=active\nMainPID={answer['pid']}\n", "", 0.0)

    svc = services.Services("/sim/systemctl", run=fake_run)
    alive = svc.liveness("t3-serve@wizard.service")
    assert calls == [["/sim/systemctl", "show", "-p", "ActiveState", "-p", "MainPID", "t3-serve@wizard.service"]]
    # Polls read /proc only: a process start per poll lengthened every user's restart window.
    assert all(alive() for _ in range(20)) and len(calls) == 1
    # A main process that has exited (here reaped) is dead; so is a unit not active.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    answer["pid"] = child.pid
    gone = svc.liveness("t3-serve@wizard.service")
    child.wait()
    assert gone() is False
    assert services.process_start(child.pid) is None
    assert services.process_start(os.getpid()) is not None
    inactive = services.Services("/sim/systemctl", run=lambda argv, **kw: proc.Completed(
        tuple(argv), 3, "ActiveState=failed\nMainPID=0\n", "", 0.0)).liveness("t3-serve@wizard.service")
    assert inactive() is False
    assert services.parse_liveness("ActiveState=activating\nMainPID=0\n") == ("activating", None)
    with pytest.raises(services.ServiceError):
        services.parse_liveness("garbage")
