"""deploy/ansible/install.yml (role t3_autoupdate) with ansible-core on a replica of the host this
tracker takes over (tests/sim/host.py: the host's own serve unit, the old helper at the
dispatch's path, the bash tracker's state and old timers): pip installs the project into a venv
of its own, writes the config, checks it, checks the gate user (check-only: no account is ever
created), adopts the running build, installs the units and the mint helper, moves the idle user
onto their link, and ends with `doctor` passing. Every path is under the test's root, and
systemctl is the stand-in (the config's `systemctl`)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from runner import proc
from runner.install import MINT_WRAPPER_MARKER
from runner.units import SERVE_DROPIN_PATH, TIMERS
from tests.e2e.test_ansible_fleet import ansible_playbook
from tests.sim.host import OLD_JOBS, OriginalHost
from tests.sim.world import DEPLOYMENT_USERS, PROJECT_ROOT

PLAYBOOK = PROJECT_ROOT / "deploy" / "ansible" / "install.yml"
V24 = "0.0.24"


@pytest.fixture
def original_host(machine_guard, tmp_path):
    host = OriginalHost(tmp_path / "host", users=DEPLOYMENT_USERS[:1], deferred={})
    try:
        yield host.build()
    finally:
        host.stop()


def project_copy(root: Path) -> Path:
    """The project's source as a release would ship it: pip builds in the tree it installs from,
    so it gets a copy under the test's root, never the checkout itself."""
    source = root / "src" / "t3-autoupdate"
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "demo-out", ".tox"))
    return source


def inventory(host, root: Path) -> Path:
    venv = root / "opt" / "t3-autoupdate"
    config = tomllib.loads(host.config_path.read_text())
    env = {**host.registry.npm_env(host.npm_cache), "PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    hosts = {"replica": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "t3_autoupdate_pip_spec": str(project_copy(root)), "t3_autoupdate_venv": str(venv),
        "t3_autoupdate_python": sys.executable,
        "t3_autoupdate_config_file": str(host.etc / "t3-autoupdate" / "from-ansible.toml"),
        "t3_autoupdate_config": config, "t3_autoupdate_env": env,
        "t3_autoupdate_unit_dir": str(host.unit_dir), "t3_autoupdate_serve_env_dir": str(host.serve_env_dir),
        "t3_autoupdate_gate_user_mode": "check", "t3_autoupdate_adopt_version": V24,
        "t3_autoupdate_drain_now": True}}
    path = root / "inventory.json"
    path.write_text(json.dumps({"t3_hosts": {"hosts": hosts}}))
    return path


@pytest.mark.timeout(1200)
def test_install_yml_takes_a_host_over_and_doctor_passes(original_host, tmp_path):
    host = original_host
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_RETRY_FILES_ENABLED": "0",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    done = proc.run([ansible_playbook(), "-i", str(inventory(host, tmp_path)), str(PLAYBOOK)],
                    env=env, cwd=tmp_path, timeout=1100, ok_codes=range(256))
    assert done.exit_code == 0, done.stdout[-6000:] + done.stderr[-2000:]

    venv_bin = tmp_path / "opt" / "t3-autoupdate" / "bin" / "t3-autoupdate"
    assert os.access(venv_bin, os.X_OK)
    written = host.etc / "t3-autoupdate" / "from-ansible.toml"
    assert tomllib.loads(written.read_text()) == tomllib.loads(host.config_path.read_text())
    assert written.stat().st_mode & 0o777 == 0o644
    # The takeover: last-good, the user's link, the drop-in, timers, old jobs off, the mint helper.
    assert (host.state_dir / "last-good").read_text().strip() == V24
    assert os.readlink(host.active_dir / "wizard") == str(host.releases_dir / V24)
    assert (host.unit_dir / SERVE_DROPIN_PATH).is_file()
    for timer in TIMERS:
        assert host.systemctl_run("is-enabled", timer, ok_codes=range(256)).stdout.strip() == "enabled"
    for name in OLD_JOBS:
        assert host.systemctl_run("is-enabled", f"{name}.timer", ok_codes=range(256)).stdout.strip() == "disabled"
    helper = host.mint_helper.read_text()
    assert MINT_WRAPPER_MARKER in helper and f"{venv_bin} mint" in helper and str(written) in helper
    # The idle user was moved onto their link, and doctor (the role's last step) passed.
    assert host.server_version("vbarzin") == V24
    assert "ok dispatch vbarzin: a login pairs" in done.stdout and "PROBLEM" not in done.stdout, done.stdout[-4000:]
    # A login through the dispatch now mints with the venv's tracker, as the user.
    again = host.run_tracker("doctor", T3_CONFIG=str(written))
    assert again.exit_code == 0, again.stdout + again.stderr
