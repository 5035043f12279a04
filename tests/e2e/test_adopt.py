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


def _legacy_site(tmp_path, last_good: str):
    import subprocess
    import sys

    state = tmp_path / "state"
    (state / "deferred").mkdir(parents=True)
    (state / "last-good").write_text(last_good + "\n")
    (state / "deferred" / "emo").write_text(f"{last_good} busy\n")
    (tmp_path / "map").write_text("emil.barzin=emo\n")
    (tmp_path / "c.toml").write_text(f'state_dir = "{state}"\nuser_map = "{tmp_path}/map"\n'
                                     f'home_root = "{tmp_path}/home"\nbackup_dest = "{tmp_path}/backups"\n'
                                     f'bin_link = "{tmp_path}/bin/t3"\nnpm = "/bin/false"\n')

    def run(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True,
                              timeout=120, env={"PATH": "/usr/bin:/bin", "T3_CONFIG": str(tmp_path / "c.toml")})

    return state, run


def test_adopt_of_the_old_trackers_host_needs_its_last_good_to_be_the_running_build(tmp_path):
    state, run = _legacy_site(tmp_path, "0.0.26")
    done = run("adopt", "0.0.24")
    assert done.returncode == 1
    assert "the old tracker's last-good is 0.0.26" in done.stderr and "already managed" not in done.stderr
    assert not any((state / "releases").glob("*")) and (state / "last-good").read_text() == "0.0.26\n"
    assert (state / "deferred" / "emo").read_text() == "0.0.26 busy\n"  # left as it was


def test_adopt_of_the_old_trackers_host_goes_past_the_managed_check(tmp_path):
    """Same version: not refused as managed; it reports the old state and reaches staging
    (here npm is /bin/false, so staging fails: nothing else is changed)."""
    state, run = _legacy_site(tmp_path, "0.0.24")
    done = run("adopt", "0.0.24")
    assert "LEGACY STATE last_good=0.0.24" in done.stderr and 'deferred="emo(0.0.24)"' in done.stderr
    assert "STAGE FAILED" in done.stderr and done.returncode == 1
    assert (state / "last-good").read_text() == "0.0.24\n" and not any((state / "active").glob("*"))
    assert run("adopt", "0.0.24").stderr.count("LEGACY STATE") == 1  # a retry is not refused as managed
