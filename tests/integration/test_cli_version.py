"""`t3-autoupdate --version`, the empty quarantine listing, in process (no world needed)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from runner import cli
from runner.quarantine import listing_lines, quarantine_build

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_project_version(capsys):
    assert cli.main(["--version"]) == 0
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"t3-autoupdate {declared}\n"


def test_only_version_looks_the_version_up(monkeypatch, capsys):
    """Every other command skips the lookup (importlib.metadata): part of each start-up."""
    def lookup():
        raise AssertionError("the installed version was looked up")

    monkeypatch.setattr(cli, "project_version", lookup)
    assert cli.build_parser().parse_args(["status"]).command == "status"
    monkeypatch.undo()
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.startswith("t3-autoupdate ")


def test_version_needs_no_config_and_reaches_the_shell(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "T3_CONFIG": str(tmp_path / "missing.toml")}  # would be a config error
    done = subprocess.run([sys.executable, "-m", "runner.cli", "--version"], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("t3-autoupdate "), done.stdout + done.stderr


def test_an_empty_quarantine_says_none(site, capsys):  # noqa: F811
    assert cli.main(["quarantine"]) == 0
    assert capsys.readouterr().out == "none\n"


def test_the_listing_orders_versions_by_precedence(tmp_path):
    for version in ("0.0.26-nightly.20260610.10", "0.0.26-nightly.20260610.9", "0.0.25"):
        quarantine_build(tmp_path, version, reason="r", report_path=None, run_id="x")
    assert [line.split("\t")[0] for line in listing_lines(tmp_path)] == [
        "0.0.25", "0.0.26-nightly.20260610.9", "0.0.26-nightly.20260610.10"]


def test_a_run_starts_without_the_http_and_sh_machinery():
    """What a run with nothing to do imports (lock, recover, freeze, resolve, decide) leaves
    out requests (only waits for instances use it), sh (not a dependency any more) and the
    installed-version lookup (only `--version` asks)."""
    code = ("import sys, runner.cli, runner.context, runner.phases.recover, runner.tracker; "
            "print(sorted(m for m in ('requests', 'sh', 'importlib.metadata') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
