"""Start-up imports of the two commands that run most often. The mint runs on every login
(issue 9: login <= the old helper + 0.1 s), so its start-up imports only what minting needs.
These modules cost it 4-15 ms each and are not needed to mint; a top-level import of any of
them on the mint's path fails here. (urllib.parse and ipaddress stay: pathlib imports them.)"""
import subprocess
import sys

NOT_ON_THE_MINT_PATH = ("dataclasses", "difflib", "logging", "hashlib", "argparse", "semver", "requests", "apprise", "sqlite3", "runner.cli", "runner.notify")


def test_the_mint_path_imports_nothing_minting_does_not_need():
    code = ("import sys, runner.entry, runner.config, runner.mint\n"
            f"print(','.join(m for m in {NOT_ON_THE_MINT_PATH!r} if m in sys.modules))")
    # -I: no user site, no PYTHON* variables; -S would drop the venv: site itself imports none of these
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported on the mint's path: {done.stdout.strip()}"


# What a timer run with nothing to do never needs (issue 12: no-op run <= npm view + 0.2 s):
# the bump's phases, the dry run, the other commands' modules.
NOT_ON_THE_NOOP_PATH = ("runner.phases.health", "runner.phases.canary", "runner.phases.backup", "runner.phases.stage",
                        "runner.phases.commit", "runner.phases.rollback", "runner.dryrun", "runner.gaterun",
                        "runner.status", "runner.doctor", "runner.install", "runner.backups.take",
                        "runner.staging.flow", "runner.staging.releases", "runner.commands.inspect",
                        "runner.commands.users", "runner.commands.install", "runner.commands.hold")


def test_a_run_with_nothing_to_do_imports_no_bump_machinery():
    """Everything a no-op run loads: the CLI, the run command, the tracker, recovery without a
    journal, resolve. (The bump's modules load when a build is chosen.)"""
    code = ("import sys, runner.entry, runner.cli, runner.commands.run, runner.tracker, runner.phases.recover\n"
            f"print(','.join(m for m in {NOT_ON_THE_NOOP_PATH!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported on the no-op run's path: {done.stdout.strip()}"
