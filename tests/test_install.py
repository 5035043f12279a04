"""install-units: the timer is enabled, never started (no --now)."""
from runner.install import daemon_reload_argv, enable_timer_argv


def test_enable_argv_has_no_now():
    assert enable_timer_argv("/bin/systemctl") == ["/bin/systemctl", "enable", "t3-autoupdate.timer"]
    assert daemon_reload_argv("systemctl") == ["systemctl", "daemon-reload"]


def test_install_units_renders_enables_and_does_not_start_the_timer(world):
    done = world.run_tracker("install-units", "--dest", str(world.unit_dir), "--serve-env-dir",
                             str(world.serve_env_dir), "--bin", "/usr/local/bin/t3-autoupdate")
    assert done.exit_code == 0, done.stderr
    timer = (world.unit_dir / "t3-autoupdate.timer").read_text()
    assert "OnCalendar=*-*-* 04:00:00" in timer
    assert not any(line.strip().startswith("Persistent") for line in timer.splitlines())
    assert "ExecStart=/usr/local/bin/t3-autoupdate" in (world.unit_dir / "t3-autoupdate.service").read_text()
    serve = (world.unit_dir / "t3-serve@.service").read_text()
    assert f"ExecStart={world.active_dir}/%i/bin/t3 serve" in serve
    enabled = world.systemctl_run("is-enabled", "t3-autoupdate.timer", ok_codes=range(256))
    assert enabled.stdout.strip() == "enabled"
    active = world.systemctl_run("is-active", "t3-autoupdate.timer", ok_codes=range(256))
    assert active.stdout.strip() != "active"
