"""install-units and install-mint: the host's own units and helper are kept, the timers are
enabled (never started), every variable a unit uses is set, and the old jobs retired."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.events import EventLog
from runner.install import (MintInstallError, daemon_reload_argv, enable_timer_argv, install_mint, install_units,
                            kept_mint_path, uninstall_mint)
from runner.units import OWN_UNITS, SERVE_DROPIN_PATH, TIMERS
from tests.sim.systemctl import install_systemctl

# The seed host's own unit (docs: the contract's "The deployment this tracker takes over").
HOST_SERVE_UNIT = """[Unit]
Description=T3 Code server for %i
After=network-online.target

[Service]
Type=simple
User=%i
EnvironmentFile=@ENV@/%i.env
EnvironmentFile=-@HOME@/%i/.config/claude-auth-sync/claude-oauth.env
Environment=HOME=@HOME@/%i
Environment=PATH=/usr/local/bin:/usr/bin:/bin
Environment=NODE_ENV=production
ExecStart=/usr/bin/t3 serve --host 0.0.0.0 --port ${T3_PORT} --base-dir @HOME@/%i/.t3
Restart=on-failure
RestartSec=5
MemoryHigh=infinity
MemoryMax=24G
MemorySwapMax=0
OOMPolicy=continue

[Install]
WantedBy=multi-user.target
"""
OLD_TIMERS = {
    "t3-migrate-idle": "*-*-* 01..05:00/20", "t3-backup-state": "*-*-* 03:30:00",
}


def make_host(tmp: Path, *, host_unit: bool) -> SimpleNamespace:
    units, env, home = tmp / "etc" / "systemd" / "system", tmp / "etc" / "t3-serve", tmp / "home"
    for d in (units, env, home):
        d.mkdir(parents=True)
    if host_unit:
        (units / "t3-serve@.service").write_text(
            HOST_SERVE_UNIT.replace("@ENV@", str(env)).replace("@HOME@", str(home)))
    (env / "wizard.env").write_text("T3_PORT=3781\n")  # the host's: T3_PORT only; emo has none yet
    dispatch_map = tmp / "etc" / "t3-dispatch" / "dispatch.json"
    dispatch_map.parent.mkdir(parents=True)
    dispatch_map.write_text(json.dumps({"vbarzin": {"os_user": "wizard", "port": 3781},
                                        "emil.barzin": {"os_user": "emo", "port": 3782}}))
    systemctl = install_systemctl(tmp / "sim", units)
    return SimpleNamespace(active_dir=tmp / "var" / "lib" / "t3-autoupdate" / "active", home_root=home,
                           serve_host="0.0.0.0", dispatch_map=dispatch_map, systemctl=str(systemctl),
                           config_file=tmp / "etc" / "t3-autoupdate" / "config.toml",
                           mint_helper=tmp / "usr" / "local" / "bin" / "t3-mint", units=units, env=env, tmp=tmp,
                           state_dir=tmp / "var" / "lib" / "t3-autoupdate", backup_dest=tmp / "var" / "backups" / "t3-state",
                           freeze_file=tmp / "etc" / "t3-autoupdate.freeze", bin_link=tmp / "usr" / "local" / "bin" / "t3",
                           gate_user="64123", useradd="useradd")  # a numeric gate uid: nothing to create


def ctl(host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([host.systemctl, *args], capture_output=True, text=True, timeout=60)


def install(host) -> list[str]:
    out = io.StringIO()
    install_units(host, dest=host.units, serve_env_dir=host.env, bin_path="/usr/local/bin/t3-autoupdate",
                  events=EventLog(out))
    return [line.split("t3-autoupdate: ", 1)[1] for line in out.getvalue().splitlines()]


def test_enable_argv_has_no_now():
    assert enable_timer_argv("/bin/systemctl") == ["/bin/systemctl", "enable", "t3-autoupdate.timer"]
    assert daemon_reload_argv("systemctl") == ["systemctl", "daemon-reload"]


def test_host_serve_unit_is_kept_and_only_extended_by_a_dropin(tmp_path):
    host = make_host(tmp_path, host_unit=True)
    before = (host.units / "t3-serve@.service").read_bytes()
    events = install(host)
    assert (host.units / "t3-serve@.service").read_bytes() == before
    assert sorted(p.relative_to(host.units).as_posix() for p in host.units.rglob("*") if p.is_file()) == sorted(
        ["t3-serve@.service", SERVE_DROPIN_PATH, *OWN_UNITS])
    assert any(e.startswith("INSTALLED") and "drop-in" in e for e in events), events
    cat = ctl(host, "cat", "t3-serve@wizard.service").stdout
    assert f"# {host.units}/t3-serve@.service\n" in cat and f"# {host.units}/{SERVE_DROPIN_PATH}\n" in cat
    shown = ctl(host, "show", "-p", "MemoryMax,MemorySwapMax,MemoryHigh,OOMPolicy,ExecStart,EnvironmentFiles,"
                "Environment,Restart", "t3-serve@wizard.service").stdout
    props = dict(line.split("=", 1) for line in shown.splitlines())
    assert (props["MemoryMax"], props["MemorySwapMax"], props["MemoryHigh"], props["OOMPolicy"]) == (
        str(24 * 1024 ** 3), "0", "infinity", "continue")
    assert props["Restart"] == "on-failure"
    assert "claude-oauth.env (ignore_errors=yes)" in props["EnvironmentFiles"]
    assert "NODE_ENV=production" in props["Environment"] and f"HOME={host.home_root}/wizard" in props["Environment"]
    # the one change: the user's own link, bound like production
    assert props["ExecStart"] == (f"{{ path={host.active_dir}/wizard/bin/t3 ; argv[]={host.active_dir}/wizard/bin/t3 "
                                  f"serve --host 0.0.0.0 --port ${{T3_PORT}} --base-dir {host.home_root}/wizard/.t3 }}")


def test_the_full_template_only_where_the_host_has_none_with_containment_defaults(tmp_path):
    host = make_host(tmp_path, host_unit=False)
    install(host)
    assert not (host.units / SERVE_DROPIN_PATH).exists()
    props = dict(line.split("=", 1) for line in ctl(host, "show", "-p", "MemoryMax,MemorySwapMax,MemoryHigh,OOMPolicy",
                                                    "t3-serve@emo.service").stdout.splitlines())
    assert props == {"MemoryMax": str(24 * 1024 ** 3), "MemorySwapMax": "0", "MemoryHigh": "infinity",
                     "OOMPolicy": "continue"}
    install(host)  # a second install recognises its own template: still no drop-in
    assert not (host.units / SERVE_DROPIN_PATH).exists()


def _env_of(path: Path) -> set[str]:
    return {line.split("=", 1)[0].strip() for line in path.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")} if path.exists() else set()


@pytest.mark.parametrize("host_unit", [True, False])
def test_every_variable_a_unit_uses_is_set_by_a_file_the_host_or_installer_has(tmp_path, host_unit):
    host = make_host(tmp_path, host_unit=host_unit)
    events = install(host)
    assert (host.env / "wizard.env").read_text() == "T3_PORT=3781\n"  # the host's file is kept as it is
    assert (host.env / "emo.env").read_text() == "T3_PORT=3782\n"  # the missing one written from the map
    assert any("env_files=emo.env" in e for e in events), events
    for user in ("wizard", "emo"):
        shown = ctl(host, "show", "-p", "ExecStart,EnvironmentFiles,Environment", f"t3-serve@{user}.service").stdout
        props = dict(line.split("=", 1) for line in shown.splitlines())
        used = set(re.findall(r"\$\{(\w+)\}", props["ExecStart"]))
        assert used == {"T3_PORT"}
        provided = {w.split("=", 1)[0] for w in props["Environment"].split()}
        for entry in re.findall(r"(\S+) \(ignore_errors=(yes|no)\)", props["EnvironmentFiles"]):
            provided |= _env_of(Path(entry[0]))
        assert used <= provided, (user, used, provided)


def test_the_old_trackers_own_units_of_the_same_name_are_kept_aside(tmp_path):
    host = make_host(tmp_path, host_unit=True)
    old = "[Unit]\nDescription=bash t3 tracker\n\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/t3-autoupdate.sh\n"
    (host.units / "t3-autoupdate.service").write_text(old)
    events = install(host)
    assert (host.units / "t3-autoupdate.service.pre-t3-autoupdate").read_text() == old
    assert (host.units / "t3-autoupdate.service").read_text() != old
    assert sum(e.startswith("KEPT ASIDE unit=t3-autoupdate.service") for e in events) == 1
    install(host)  # ours now: nothing more kept, the old copy untouched
    assert (host.units / "t3-autoupdate.service.pre-t3-autoupdate").read_text() == old
    assert not (host.units / "t3-autoupdate.timer.pre-t3-autoupdate").exists()


def test_new_timers_are_enabled_not_started_and_the_old_jobs_retired(tmp_path):
    host = make_host(tmp_path, host_unit=True)
    for name, calendar in OLD_TIMERS.items():
        (host.units / f"{name}.service").write_text(f"[Service]\nType=oneshot\nExecStart=/usr/local/sbin/{name}\n")
        (host.units / f"{name}.timer").write_text(f"[Timer]\nOnCalendar={calendar}\n\n[Install]\nWantedBy=timers.target\n")
        assert ctl(host, "enable", "--now", f"{name}.timer").returncode == 0
    events = install(host)
    for timer in TIMERS:
        assert ctl(host, "is-enabled", timer).stdout.strip() == "enabled"
        assert ctl(host, "is-active", timer).stdout.strip() != "active"
        text = (host.units / timer).read_text()
        assert not any(line.startswith("Persistent") for line in text.splitlines())
    for name in OLD_TIMERS:
        assert ctl(host, "is-enabled", f"{name}.timer").stdout.strip() == "disabled"
        assert ctl(host, "is-active", f"{name}.timer").stdout.strip() != "active"
        assert (host.units / f"{name}.timer").exists()  # disabled, not deleted
    order = [e.split()[0] for e in events]
    assert order == ["INSTALLED", "RETIRED", "RETIRED"], events
    assert "replaced_by=t3-autoupdate-drain.timer" in events[1] and "t3-migrate-idle.timer" in events[1]
    assert "OnCalendar=*-*-* 01,02,03,05:00/20:00" in (host.units / "t3-autoupdate-drain.timer").read_text()
    assert "ExecStart=/usr/local/bin/t3-autoupdate drain-deferred" in (
        host.units / "t3-autoupdate-drain.service").read_text()
    assert "ExecStart=/usr/local/bin/t3-autoupdate backup" in (host.units / "t3-autoupdate-backup.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("host_unit", [True, False])
def test_systemd_analyze_verify_passes_on_the_installed_units(tmp_path, host_unit):
    host = make_host(tmp_path, host_unit=host_unit)
    if host_unit:  # the host's ExecStart binary must exist for verify; on the host it is /usr/bin/t3
        text = (host.units / "t3-serve@.service").read_text().replace("/usr/bin/t3", "/bin/true")
        (host.units / "t3-serve@.service").write_text(text)
    tracker = tmp_path / "bin" / "t3-autoupdate"
    tracker.parent.mkdir()
    tracker.write_text("#!/bin/sh\n")
    tracker.chmod(0o755)
    out = io.StringIO()
    install_units(host, dest=host.units, serve_env_dir=host.env, bin_path=str(tracker), events=EventLog(out))
    link = host.active_dir / "wizard" / "bin" / "t3"
    link.parent.mkdir(parents=True)
    link.write_text("#!/bin/sh\n")
    link.chmod(0o755)
    names = ["t3-serve@wizard.service", *OWN_UNITS]
    done = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=120,
                          env={"SYSTEMD_UNIT_PATH": f"{host.units}:", "PATH": "/usr/bin:/bin"})
    problems = [line for line in (done.stdout + done.stderr).splitlines() if str(host.units) in line
                or any(n in line for n in names)]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


# ------------------------------------------------------------------ install-mint

OLD_HELPER = "#!/bin/bash\n# the deployment's own helper\nexec runuser -u \"$1\" -- /usr/bin/t3 auth pairing create\n"


def test_install_mint_keeps_the_host_helper_and_uninstall_restores_it(tmp_path):
    host = make_host(tmp_path, host_unit=True)
    host.mint_helper.parent.mkdir(parents=True)
    host.mint_helper.write_text(OLD_HELPER)
    host.mint_helper.chmod(0o750)
    out = io.StringIO()
    install_mint(host, bin_path="/usr/local/bin/t3-autoupdate", events=EventLog(out))
    kept = kept_mint_path(host.mint_helper)
    assert kept.name == "t3-mint.pre-t3-autoupdate"
    assert kept.read_text() == OLD_HELPER and kept.stat().st_mode & 0o777 == 0o750
    wrapper = host.mint_helper.read_text()
    assert wrapper.startswith("#!/bin/sh\n") and host.mint_helper.stat().st_mode & 0o777 == 0o755
    assert f"export T3_CONFIG={host.config_file}\n" in wrapper
    assert wrapper.endswith('exec /usr/local/bin/t3-autoupdate mint "$1"\n')
    install_mint(host, bin_path="/usr/local/bin/t3-autoupdate", events=EventLog(out))  # again: kept stays the host's
    assert kept.read_text() == OLD_HELPER
    uninstall_mint(host, events=EventLog(out))
    assert host.mint_helper.read_text() == OLD_HELPER and not kept.exists()
    with pytest.raises(MintInstallError, match="not the t3-autoupdate wrapper"):
        uninstall_mint(host, events=EventLog(out))


def test_install_mint_never_overwrites_a_kept_helper(tmp_path):
    host = make_host(tmp_path, host_unit=True)
    host.mint_helper.parent.mkdir(parents=True)
    host.mint_helper.write_text(OLD_HELPER)
    kept_mint_path(host.mint_helper).write_text("#!/bin/sh\n# an older kept helper\n")
    with pytest.raises(MintInstallError, match="already exists"):
        install_mint(host, bin_path="/usr/local/bin/t3-autoupdate", events=EventLog(io.StringIO()))
    assert host.mint_helper.read_text() == OLD_HELPER


def test_wrapper_takes_exactly_one_argument(tmp_path):
    host = make_host(tmp_path, host_unit=False)
    host.mint_helper.parent.mkdir(parents=True)
    install_mint(host, bin_path="/bin/echo", events=EventLog(io.StringIO()))
    assert subprocess.run([str(host.mint_helper)], capture_output=True, timeout=10).returncode == 2
    one = subprocess.run([str(host.mint_helper), "wizard"], capture_output=True, text=True, timeout=10)
    assert (one.returncode, one.stdout) == (0, "mint wizard\n")  # exactly `<bin> mint <os_user>`
    assert not kept_mint_path(host.mint_helper).exists()  # nothing was there to keep
    uninstall_mint(host, events=EventLog(io.StringIO()))
    assert not host.mint_helper.exists()


def test_install_units_in_the_world_renders_enables_and_does_not_start_the_timer(world):
    done = world.run_tracker("install-units", "--dest", str(world.unit_dir), "--serve-env-dir",
                             str(world.serve_env_dir), "--bin", "/usr/local/bin/t3-autoupdate")
    assert done.exit_code == 0, done.stderr
    timer = (world.unit_dir / "t3-autoupdate.timer").read_text()
    assert "OnCalendar=*-*-* 04:00:00" in timer
    assert not any(line.strip().startswith("Persistent") for line in timer.splitlines())
    assert "ExecStart=/usr/local/bin/t3-autoupdate" in (world.unit_dir / "t3-autoupdate.service").read_text()
    serve = (world.unit_dir / "t3-serve@.service").read_text()
    assert f"ExecStart={world.active_dir}/%i/bin/t3 serve --host 0.0.0.0 --port ${{T3_PORT}}" in serve
    for timer in TIMERS:
        assert world.systemctl_run("is-enabled", timer, ok_codes=range(256)).stdout.strip() == "enabled"
        assert world.systemctl_run("is-active", timer, ok_codes=range(256)).stdout.strip() != "active"
