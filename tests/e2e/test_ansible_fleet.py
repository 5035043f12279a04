"""deploy/ansible/update.yml with ansible-core on three simulated hosts (local connection,
each its own world: registry, systemctl and dispatch stand-ins, config, state): one good build
goes to every host, one at a time (each checked by `doctor` first); then a build that fails on
the second host stops the rollout there, and the third host is left untouched; then a frozen
first host fails its doctor and nothing runs anywhere. Reports are fetched to the controller.

tests/e2e/test_ansible_install.py: the role that installs the tracker (install.yml)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from runner import proc
from tests.sim import builds
from tests.sim.world import DEPLOYMENT_USERS, PROJECT_ROOT, World

PLAYBOOK = PROJECT_ROOT / "deploy" / "ansible" / "update.yml"
V24 = "0.0.24"
GOOD = builds.GOOD_VERSIONS["good-0.0.25"]
NEXT = builds.GOOD_VERSIONS["good-0.0.28"]  # a newer nightly: the hosts track nightly
BAD = builds.BAD_VERSIONS["endpoint-renamed"]  # newer than NEXT; stopped by the health gate
HOSTS = ("h1", "h2", "h3")


def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable))
    assert found, "ansible-core is a test dependency (pyproject [test]): pip install -e '.[test]'"
    return found


@pytest.fixture(scope="module")
def fleet(world_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    worlds = {}
    try:
        for host in HOSTS:  # one user per host keeps three hosts' runs short
            worlds[host] = World(root / host, users=DEPLOYMENT_USERS[:1], template=world_template).build()
            installed = worlds[host].run_tracker(  # units and timers, as a host set up by install.yml
                "install-units", "--dest", str(worlds[host].unit_dir), "--serve-env-dir",
                str(worlds[host].serve_env_dir), "--bin", worlds[host].tracker_bin)
            assert installed.exit_code == 0, installed.stderr
        yield root, worlds
    finally:
        for world in worlds.values():
            world.stop()


def write_inventory(root: Path, worlds: dict) -> Path:
    hosts = {host: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                    "t3_autoupdate_command": [sys.executable, "-m", "runner.cli"],
                    "t3_autoupdate_env": world.runner_env(), "t3_autoupdate_state_dir": str(world.state_dir),
                    "t3_autoupdate_chdir": str(world.root)} for host, world in worlds.items()}
    path = root / "inventory.json"  # JSON is YAML: ansible's yaml inventory reads it
    path.write_text(json.dumps({"t3_hosts": {"hosts": hosts}}))
    return path


def run_playbook(root: Path, worlds: dict) -> proc.Completed:
    inventory = write_inventory(root, worlds)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"), "ANSIBLE_REMOTE_TEMP": str(root / "ansible-tmp"),
           "ANSIBLE_HOME": str(root / "ansible-home"), "ANSIBLE_RETRY_FILES_ENABLED": "0",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    return proc.run([ansible_playbook(), "-i", str(inventory), str(PLAYBOOK),
                     "-e", f"t3_autoupdate_reports={root / 'reports'}"],
                    env=env, cwd=root, timeout=900, ok_codes=range(256))


def last_good(world) -> str:
    return (world.state_dir / "last-good").read_text().strip()


def run_dirs(world) -> list[str]:
    runs = world.state_dir / "runs"
    return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.exists() else []


@pytest.mark.timeout(1200)
def test_a_good_build_reaches_every_host_and_a_failing_host_stops_the_rollout(fleet):
    root, worlds = fleet
    for world in worlds.values():
        world.registry.set_tag("nightly", GOOD)
    done = run_playbook(root, worlds)
    assert done.exit_code == 0, done.stdout + done.stderr
    for host, world in worlds.items():
        assert last_good(world) == GOOD, host
        [run_id] = run_dirs(world)
        summary = json.loads((root / "reports" / host / run_id / "summary.json").read_text())
        assert (summary["from"], summary["to"], summary["result"]) == (V24, GOOD, "updated")
        assert (root / "reports" / host / run_id / "junit-health.xml").is_file()

    worlds["h1"].registry.set_tag("nightly", NEXT)
    worlds["h2"].registry.set_tag("nightly", BAD)
    worlds["h3"].registry.set_tag("nightly", NEXT)
    untouched = run_dirs(worlds["h3"])
    done = run_playbook(root, worlds)
    assert done.exit_code != 0, done.stdout
    assert last_good(worlds["h1"]) == NEXT, done.stdout  # before the failing host: updated
    assert last_good(worlds["h2"]) == GOOD           # the failing host: nothing moved
    assert last_good(worlds["h3"]) == GOOD and run_dirs(worlds["h3"]) == untouched  # never ran
    assert "h3" not in done.stdout.split("PLAY RECAP")[0], done.stdout
    failed_run = run_dirs(worlds["h2"])[-1]
    summary = json.loads((root / "reports" / "h2" / failed_run / "summary.json").read_text())
    assert (summary["to"], summary["result"]) == (BAD, "health-check-failed")  # fetched although it failed
    assert (root / "reports" / "h2" / failed_run / "junit-health.xml").is_file()

    # A frozen host (a hold is not an error for `run`) stops the rollout before its run: doctor.
    assert worlds["h1"].run_tracker("freeze", "--reason", "investigating").exit_code == 0
    before = {host: run_dirs(world) for host, world in worlds.items()}
    done = run_playbook(root, worlds)
    assert done.exit_code != 0 and "PROBLEM last-run: the tracker is frozen: investigating" in done.stdout, done.stdout
    assert {host: run_dirs(world) for host, world in worlds.items()} == before
    assert "h2" not in done.stdout.split("PLAY RECAP")[0], done.stdout
