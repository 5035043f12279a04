"""The CLI's usage and configuration paths, in process: `runner.cli.main([...])` with the
environment pointed at files under tmp_path (no world needed), plus one real subprocess to
check that the exit code reaches the shell."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import cli
from runner.commands import inspect
from runner.configkeys import KEYS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_config_check_prints_the_effective_config_with_sources(site, monkeypatch, capsys):
    monkeypatch.setenv("T3_PIN", "0.0.26")
    assert cli.main(["config", "check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"# config file: {site / 'config.toml'}"
    lines = {line.split(" = ", 1)[0]: line for line in out[1:] if " = " in line}
    assert lines["state_dir"] == f'state_dir = "{site / "state"}"  # file'
    assert lines["releases_dir"] == f'releases_dir = "{site / "state" / "releases"}"  # default'
    assert lines["pin"] == 'pin = "0.0.26"  # environment'
    assert lines["track"] == 'track = "nightly"  # default'
    assert lines["min_age"] == "min_age = (unset)  # default"
    assert lines["ready_timeout"] == "ready_timeout = 30.0  # default"
    assert lines["users"] == (f'users = {{"vbarzin": "wizard", "emil.barzin": "emo"}}  # {site / "ttyd-user-map"}')
    assert set(lines) >= set(KEYS) | {"users", "npm_config_registry"}
    assert not (site / "state").exists()  # a check creates nothing


def test_config_check_refuses_unknown_env_variables(site, monkeypatch, capsys):
    monkeypatch.setenv("T3_DRYRUN", "1")  # a typo of T3_DRY_RUN
    assert cli.main(["config", "check"]) == 2
    assert "T3_DRYRUN (environment): unknown variable (did you mean T3_DRY_RUN?)" in capsys.readouterr().err


def test_every_config_error_is_reported_at_once_naming_each_key(site, monkeypatch, capsys):
    user_map = site / "ttyd-user-map"
    user_map.write_text("vbarzin = wizard\n# fine\nthis line has no equals sign\nbob = Bad User\n")
    config = site / "config.toml"
    config.write_text(config.read_text().replace(f'state_dir = "{site / "state"}"', 'state_dir = "var/lib/t3"')
                      + 'ready_timeout = "soon"\nbackup_timout = "1h"\n')
    monkeypatch.setenv("T3_BUSY_QUIET", "forever")
    for argv in (["config", "check"], ["run"], ["status"]):  # config is checked before any command runs
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err
        assert err.startswith("t3-autoupdate: configuration error:\n")
        assert f"{config}: state_dir: " in err and "must be an absolute path" in err
        assert f"{config}: ready_timeout: " in err and '"soon" is not a duration' in err
        assert "T3_BUSY_QUIET (environment): " in err and "forever" in err
        assert f"{config}: backup_timout: unknown key (did you mean backup_timeout?)" in err
        assert f"{user_map}:3: expected sso_name=os_user" in err
        assert f"{user_map}:4: invalid OS user name 'Bad User'" in err
        assert len(err.strip().splitlines()) == 1 + 6, err


def test_a_missing_explicit_config_file_is_a_config_error(site, monkeypatch, capsys):
    monkeypatch.setenv("T3_CONFIG", str(site / "nope.toml"))
    assert cli.main(["status"]) == 2
    assert f"config file {site / 'nope.toml'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bogus"], ["freeze"], ["config"], ["config", "show"], ["mint"],
                                  ["status", "--yaml"], ["--no-such-flag"]])
def test_bad_usage_exits_2(site, argv, capsys):
    assert cli.main(argv) == 2
    assert "usage: t3-autoupdate" in capsys.readouterr().err


def test_help_exits_0(site, capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "dry-run", "freeze", "unfreeze", "status", "verify", "config", "mint", "quarantine",
                    "drain-deferred", "rollback"):
        assert command in out


def test_an_invalid_version_argument_is_usage_not_a_crash(site, capsys):
    assert cli.main(["quarantine", "--clear", "0.0.28; rm -rf /"]) == 2
    assert cli.main(["rollback", "--to", "v0.0.24"]) == 2
    err = capsys.readouterr().err
    assert "CRASHED" not in err
    assert not list((site / "state").glob("runs/crash-*"))


def test_unknown_subcommand_exits_2_from_the_real_process(site):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-m", "runner.cli", "bogus"], env=env, cwd=site,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'bogus'" in done.stderr


def test_an_unexpected_exception_exits_3_with_the_traceback_kept(site, monkeypatch, capsys):
    def boom(cfg, args, events):
        raise KeyError("a bug nobody expected")

    monkeypatch.setattr(inspect, "cmd_status", boom)
    assert cli.main(["status"]) == 3
    crashes = list((site / "state" / "runs").glob("crash-*.txt"))
    assert len(crashes) == 1
    text = crashes[0].read_text()
    assert "Traceback (most recent call last)" in text and "a bug nobody expected" in text and "in boom" in text
    assert crashes[0].stat().st_mode & 0o777 == 0o600
    err = capsys.readouterr().err
    assert "CRASHED command=status" in err and f"traceback={crashes[0]}" in err
