"""The canary gate against the simulated deployment, through the real dispatch."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

from runner import proc
from runner.gaterun import run_gate
from runner.units import serve_unit_name
from tests.sim import builds
from tests.sim.world import PROJECT_ROOT


def canary_options(world):
    return {"--dispatch": world.dispatch.url, "--dispatch-map": str(world.dispatch_map),
            "--user-map": str(world.user_map), "--active-dir": str(world.active_dir), "--cookie-name": "t3_session"}


def test_every_user_passes_the_canary_on_a_healthy_fleet(world, tmp_path):
    result = run_gate("canary", run_dir=tmp_path, options=canary_options(world))
    assert result.passed, result.reason()
    assert result.tests == 3 * len(world.users)


def test_operator_selects_one_user_with_k_and_defaults_from_config(world, tmp_path):
    """`pytest gates -k vbarzin` on the host: no options, only that user's canary."""
    junit = tmp_path / "junit.xml"
    done = proc.run([sys.executable, "-m", "pytest", "gates", "-k", "vbarzin", "--junitxml", str(junit)],
                    cwd=PROJECT_ROOT, env=world.runner_env(), ok_codes=range(256), timeout=120)
    assert done.exit_code == 0, done.stdout[-2000:]
    names = [case.get("name") for case in ET.parse(junit).getroot().iter("testcase")]
    assert len(names) == 3 and all(name.endswith("[vbarzin]") for name in names), names
    assert "T3-GATE PASS passed=3" in done.stdout


def restart_on(world, sso, version):
    user = world.user(sso)
    world.install_release(version)
    world.point_user(user.os_user, version)
    world.systemctl_run("restart", serve_unit_name(user.os_user))
    world.wait_instance_ready(sso)


def test_renamed_cookie_fails_the_canary_as_a_re_pair(world, tmp_path):
    restart_on(world, "emil.barzin", builds.BAD_VERSIONS["cookie-renamed"])
    result = run_gate("canary", run_dir=tmp_path, options=canary_options(world), keyword="emil.barzin")
    assert not result.passed
    assert any("carries no t3_session cookie" in p for p in result.problems), result.problems


def test_instance_on_another_build_than_its_link_fails_the_canary(world, tmp_path):
    """A server that updated itself (or was never restarted) is a finding, not ignored."""
    good = builds.GOOD_VERSIONS["good-0.0.26"]
    world.install_release(good)
    world.point_user("ancamilea", good)  # link moved, instance not restarted
    result = run_gate("canary", run_dir=tmp_path, options=canary_options(world), keyword="ancaelena98")
    assert not result.passed
    assert any("runs 0.0.24, its release link says 0.0.26" in p for p in result.problems), result.problems


def test_unknown_user_selection_collects_nothing_and_fails(world, tmp_path):
    result = run_gate("canary", run_dir=tmp_path, options=canary_options(world), keyword="nosuchuser")
    assert not result.passed and result.tests == 0


def test_every_good_build_passes_the_canary(world, tmp_path):
    for version in builds.GOOD_VERSIONS.values():
        if version != "0.0.24":
            restart_on(world, "vbarzin", version)
        result = run_gate("canary", run_dir=tmp_path / version, options=canary_options(world), keyword="vbarzin")
        assert result.passed, f"{version}: {result.reason()}"
