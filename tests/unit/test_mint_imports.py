"""The mint runs on every login (issue 9: login <= the old helper + 0.1 s), so its start-up
imports only what minting needs. These modules cost it 4-15 ms each and are not needed to mint;
a top-level import of any of them on the mint's path fails here. (urllib.parse and ipaddress
stay: pathlib imports them.)"""
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
