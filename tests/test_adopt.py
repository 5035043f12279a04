"""adopt: taking over a host, and never over one the tracker already manages."""
import os
import shutil

from runner.units import serve_unit_name
from tests.runner_checks import events, link_version


def test_adopt_refuses_a_managed_host(world):
    done = world.run_tracker("adopt", "0.0.26")
    assert done.exit_code == 1
    assert any(e.startswith("REFUSED") and "already managed" in e for e in events(done))
    assert not (world.releases_dir / "0.0.26").exists()


def test_adopt_links_every_user_and_records_last_good(world):
    (world.state_dir / "last-good").unlink()
    shutil.rmtree(world.active_dir)
    world.bin_link.unlink()
    done = world.run_tracker("adopt", "0.0.26")
    assert done.exit_code == 0, done.stderr
    assert (world.state_dir / "last-good").read_text().strip() == "0.0.26"
    assert os.readlink(world.bin_link) == str(world.releases_dir / "0.0.26" / "bin" / "t3")
    for user in world.users:
        assert link_version(world, user.os_user) == "0.0.26"
        assert world.server_version(user.sso) == "0.0.24"  # nobody restarted
    world.systemctl_run("restart", serve_unit_name("wizard"))
    assert world.wait_instance_ready("vbarzin")["serverVersion"] == "0.0.26"


def test_adopt_validates_the_version_before_any_command(world):
    done = world.run_tracker("adopt", "0.0.26; rm -rf /")
    assert done.exit_code == 2 and "invalid" in done.stderr
