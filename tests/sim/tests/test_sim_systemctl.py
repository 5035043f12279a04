"""The project's unit files, their renderer, and the `systemctl` stand-in that runs them.

The process tests start REAL processes: a tiny fake `t3 serve` (written into tmp_path) run
through the real `runner/units/t3-serve@.service`, rendered with tmp paths. Every wait
polls with a deadline; every test's processes are stopped in teardown.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bench.unit_security import SAMPLE_VALUES
from runner.units import (
    UNIT_FILES,
    load_template,
    placeholders,
    render_all,
    render_unit,
    serve_unit_name,
)
from tests.sim.world import wait_until
from tests.sim.proc import free_port
from tests.sim.systemctl import install_systemctl, stop_all
from tests.sim.systemd import units as sim_units
from tests.sim.systemd.manager import Manager
from tests.sim.systemd.procs import proc_alive, proc_stat
from tests.sim.systemd.syntax import expand_argument, split_words

WAIT = 15.0  # the longest any single wait here may take before the test fails


def wait_for(predicate, timeout: float = WAIT, what: str = "condition"):
    return wait_until(predicate, timeout, what)


# --------------------------------------------------------------------------- render_unit (pure)

def test_render_unit_replaces_every_placeholder():
    text = "[Service]\nExecStart=@BIN@ --dir @DIR@/%i\nWorkingDirectory=@DIR@\n"
    assert render_unit(text, {"BIN": "/usr/local/bin/x", "DIR": "/srv/d"}) == (
        "[Service]\nExecStart=/usr/local/bin/x --dir /srv/d/%i\nWorkingDirectory=/srv/d\n"
    )


def test_render_unit_leaves_systemd_syntax_alone_and_is_single_pass():
    text = "ExecStart=@A@ --port ${T3_PORT} %i %% user@host @B@\n"
    assert render_unit(text, {"A": "/a/@B@", "B": "/b"}) == "ExecStart=/a/@B@ --port ${T3_PORT} %i %% user@host /b\n"


def test_render_unit_names_placeholders_left_unfilled_and_unknown_keys():
    with pytest.raises(ValueError) as missing:
        render_unit("x=@ONE@ @TWO@", {"ONE": "/1"})
    assert "@TWO@" in str(missing.value) and "@ONE@" not in str(missing.value)
    with pytest.raises(ValueError) as unknown:
        render_unit("x=@ONE@", {"ONE": "/1", "EXTRA": "/e"})
    assert "EXTRA" in str(unknown.value)


@pytest.mark.parametrize("bad", ["/with space", "/a\nExecStartPre=/bin/evil", "/pct%i", "/$HOME", "", '/q"uote'])
def test_render_unit_refuses_values_systemd_would_reinterpret(bad):
    with pytest.raises(ValueError, match="BIN"):
        render_unit("ExecStart=@BIN@\n", {"BIN": bad})


def test_serve_template_renders_to_the_production_command():
    text = render_unit(load_template("t3-serve@.service"),
                       {"ACTIVE_DIR": "/var/lib/t3-autoupdate/active", "HOME_ROOT": "/home",
                        "SERVE_ENV_DIR": "/etc/t3-serve", "SERVE_HOST": "0.0.0.0"})
    service = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
    settings = dict(line.split("=", 1) for line in service.splitlines() if line and not line.startswith("#"))
    assert settings["ExecStart"] == (
        "/var/lib/t3-autoupdate/active/%i/bin/t3 serve --host 0.0.0.0 --port ${T3_PORT}"
        " --base-dir /home/%i/.t3"
    )
    assert settings["User"] == "%i"
    assert settings["EnvironmentFile"] == "/etc/t3-serve/%i.env"
    assert settings["WorkingDirectory"] == "/home/%i"
    assert settings["Restart"] == "on-failure"
    assert settings["KillMode"] == "mixed"
    assert "@" not in text.replace("t3-serve@", "")


def test_render_all_gives_each_template_only_its_own_keys():
    values = {"ACTIVE_DIR": "/a", "HOME_ROOT": "/h", "SERVE_ENV_DIR": "/e", "SERVE_HOST": "0.0.0.0",
              "BIN": "/usr/local/bin/t3-autoupdate",
              "STATE_DIR": "/s", "BACKUP_DEST": "/b", "FREEZE_DIR": "/f", "BIN_LINK_DIR": "/l"}
    rendered = render_all(values)
    assert set(rendered) == set(UNIT_FILES)
    assert "ExecStart=/usr/local/bin/t3-autoupdate\n" in rendered["t3-autoupdate.service"]
    assert all(not placeholders(text) for text in rendered.values())
    with pytest.raises(ValueError, match="NOPE"):
        render_all(dict(values, NOPE="/x"))


def test_load_template_refuses_names_it_does_not_ship():
    with pytest.raises(ValueError):
        load_template("../pyproject.toml")


def test_serve_unit_name():
    assert serve_unit_name("wizard") == "t3-serve@wizard.service"
    for bad in ("", "Wizard", "-rf", "a/b", "x" * 33, "wiz ard"):
        with pytest.raises(ValueError):
            serve_unit_name(bad)


def _settings(text: str, section: str) -> list[tuple[str, str]]:
    body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    return [tuple(s.strip() for s in line.split("=", 1)) for line in body.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", ";"))]


def test_timer_fires_daily_at_four_and_has_no_persistent_line():
    text = load_template("t3-autoupdate.timer")
    assert not [line for line in text.splitlines()
                if re.match(r"\s*Persistent\s*=", line)], "Persistent= must not be set at all"
    assert ("OnCalendar", "*-*-* 04:00:00") in _settings(text, "Timer")
    assert "Persistent" in text  # the comment saying why is there


def test_autoupdate_service_is_a_oneshot_running_the_console_script():
    settings = dict(_settings(load_template("t3-autoupdate.service"), "Service"))
    assert (settings["Type"], settings["ExecStart"]) == ("oneshot", "@BIN@")
    assert "User" not in settings and "Restart" not in settings  # root, once per timer tick


# --------------------------------------------------------------------------- systemd syntax (pure)

def test_split_words_follows_systemd_quoting():
    assert split_words(r"""/bin/x "a b" 'c d' e\ f "g\"h" \x41""") == ["/bin/x", "a b", "c d", "e f", 'g"h', "A"]


def test_expand_argument_whole_word_splits_braces_do_not():
    env = {"A": "one two", "P": "3781"}
    assert expand_argument("$A", env) == ["one", "two"]
    assert expand_argument("${A}", env) == ["one two"]
    assert expand_argument("--port=${P}", env) == ["--port=3781"]
    assert expand_argument("$MISSING", env) == []
    assert expand_argument("${MISSING}", env) == [""]
    assert expand_argument("$$P", env) == ["$P"]


def test_a_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: getattr(proc_stat(child.pid), "state", None) == "Z", what="the unreaped child to become a zombie")
        assert not proc_alive(child.pid)
    finally:
        child.wait()
    assert not proc_alive(child.pid)
    assert proc_alive(os.getpid()) and not proc_alive(os.getpid(), proc_stat(os.getpid()).start + 1)


# --------------------------------------------------------------------------- the simulated world

FAKE_T3 = r'''#!{python}
"""A fake `t3 serve`: listens, records how it was started, obeys a few test knobs."""
import json, os, signal, socket, subprocess, sys

args = sys.argv[1:]
assert args[0] == "serve", args
opts = dict(zip(args[1::2], args[2::2]))
base = opts["--base-dir"]
os.makedirs(base, exist_ok=True)
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
child = None
if os.environ.get("FAKE_CHILD"):  # an agent-like child that ignores SIGTERM
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()"])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((opts["--host"], int(opts["--port"])))
server.listen()
record = {{"argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(), "child": child and child.pid,
          "env": {{k: os.environ.get(k) for k in ("USER", "HOME", "T3_PORT", "T3_SERVE_HOST", "FAKE_NOTE", "INVOCATION_ID")}}}}
with open(os.path.join(base, ".fake-t3.tmp"), "w") as f:
    json.dump(record, f)
os.replace(os.path.join(base, ".fake-t3.tmp"), os.path.join(base, "fake-t3.json"))
print("fake t3 listening", flush=True)
while True:
    conn, _ = server.accept()
    line = conn.makefile().readline().strip()
    if line.startswith("exit "):
        conn.close()
        os._exit(int(line.split()[1]))
    conn.sendall(b"pong\n")
    conn.close()
'''


class World:
    def __init__(self, tmp: Path, *, host_users: bool = False):
        self.tmp = tmp
        self.active, self.home, self.env_dir, self.units = (tmp / n for n in ("active", "home", "env", "units"))
        for d in (self.active, self.home, self.env_dir, self.units):
            d.mkdir()
        self.root = tmp / "root"
        self.values = {"ACTIVE_DIR": str(self.active), "HOME_ROOT": str(self.home), "SERVE_ENV_DIR": str(self.env_dir),
                       "SERVE_HOST": "127.0.0.1"}
        (self.units / "t3-serve@.service").write_text(render_unit(load_template("t3-serve@.service"), self.values))
        self.systemctl = install_systemctl(self.root, self.units, host_users=host_users)
        self.ports: dict[str, int] = {}

    def add_user(self, user: str, extra_env: str = "") -> int:
        bindir = self.active / user / "bin"
        bindir.mkdir(parents=True)
        (bindir / "t3").write_text(FAKE_T3.format(python=sys.executable))
        (bindir / "t3").chmod(0o755)
        (self.home / user).mkdir()
        port = self.ports[user] = free_port()
        (self.env_dir / f"{user}.env").write_text(f"T3_PORT={port}\nT3_SERVE_HOST=127.0.0.1\n{extra_env}")
        return port

    def dropin(self, unit_file: str, text: str) -> None:
        d = self.units / f"{unit_file}.d"
        d.mkdir(exist_ok=True)
        (d / "test.conf").write_text(text)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.systemctl), *args], capture_output=True, text=True, timeout=60)

    def prop(self, unit: str, name: str) -> str:
        result = self.ctl("show", "-p", name, "--value", unit)
        assert result.returncode == 0, result.stderr
        return result.stdout.rstrip("\n")

    def main_pid(self, user: str) -> int:
        return int(self.prop(serve_unit_name(user), "MainPID"))

    def record(self, user: str) -> dict | None:
        path = self.home / user / ".t3" / "fake-t3.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_serving(self, user: str, pid: int | None = None) -> dict:
        """Wait until the fake (a new one, if ``pid`` is the old) has recorded itself and answers."""
        def ready():
            rec = self.record(user)
            if not rec or rec["pid"] == pid:
                return None
            with socket.create_connection(("127.0.0.1", self.ports[user]), timeout=2) as s:
                s.sendall(b"ping\n")
                return rec if s.makefile().readline() == "pong\n" else None
        return wait_for(ready, what=f"{user}'s fake t3 to serve")

    def tell(self, user: str, line: str) -> None:
        with socket.create_connection(("127.0.0.1", self.ports[user]), timeout=2) as s:
            s.sendall(line.encode() + b"\n")

    def log(self, unit: str) -> str:
        return (self.root / "run" / "simctl" / f"{unit}.log").read_text()

    def start(self, user: str) -> dict:
        result = self.ctl("start", serve_unit_name(user))
        assert result.returncode == 0, result.stderr
        return self.wait_serving(user)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    stop_all(w.root, w.units)
    for user in w.ports:  # belt and braces: nothing a test started may outlive it
        rec = w.record(user)
        for pid in (rec["pid"], rec["child"]) if rec else ():
            if pid and proc_alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- start / query / stop

def test_start_is_active_mainpid_and_timestamp(world):
    world.add_user("wizard")
    t0 = datetime.now().replace(microsecond=0)
    rec = world.start("wizard")
    unit = "t3-serve@wizard.service"
    result = world.ctl("is-active", unit)
    assert (result.returncode, result.stdout) == (0, "active\n")
    assert world.ctl("is-failed", unit).returncode == 1
    assert world.main_pid("wizard") == rec["pid"]
    stamp = world.prop(unit, "ActiveEnterTimestamp")
    assert re.fullmatch(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", stamp), stamp
    started = datetime.strptime(stamp.rsplit(" ", 1)[0], "%a %Y-%m-%d %H:%M:%S")
    assert t0 <= started <= datetime.now()
    both = world.ctl("show", "-p", "MainPID", "-p", "ActiveState", unit)
    assert both.stdout == f"MainPID={rec['pid']}\nActiveState=active\n"
    assert world.ctl("show", "--property=ActiveState,SubState", "--value", unit).stdout == "active\nrunning\n"
    assert world.ctl("show", "-pSubState", unit).stdout == "SubState=running\n"
    # the short form operators type works too
    assert world.ctl("is-active", "t3-serve@wizard").stdout == "active\n"


def test_environment_file_feeds_the_command_line(world):
    port = world.add_user("wizard", extra_env='FAKE_NOTE="two words"\n# a comment\n')
    rec = world.start("wizard")
    assert rec["argv"][1:] == ["serve", "--host", "127.0.0.1", "--port", str(port),
                               "--base-dir", str(world.home / "wizard" / ".t3")]
    assert rec["argv"][0] == str(world.active / "wizard" / "bin" / "t3")
    assert rec["cwd"] == str(world.home / "wizard")
    assert rec["env"]["FAKE_NOTE"] == "two words"
    assert rec["env"]["USER"] == "wizard"
    assert rec["env"]["INVOCATION_ID"]
    assert "User=wizard" in world.log("t3-serve@wizard.service")  # not a real user here: noted
    assert "fake t3 listening" in world.log("t3-serve@wizard.service")  # stdout goes to the unit log


def test_list_units_honours_the_glob_and_the_state(world):
    for user in ("wizard", "emil"):
        world.add_user(user)
        world.start(user)
    (world.units / "decoy.service").write_text(
        f"[Unit]\nDescription=not a serve\n[Service]\nExecStart={world.active}/wizard/bin/t3 serve"
        f" --host 127.0.0.1 --port {free_port()} --base-dir {world.tmp}/decoy\n")
    assert world.ctl("start", "decoy.service").returncode == 0
    args = ["list-units", "--type=service", "--state=running", "t3-serve@*", "--no-legend", "--plain", "--no-pager"]
    listed = world.ctl(*args)
    assert listed.returncode == 0
    assert listed.stdout == ("t3-serve@emil.service   loaded active running t3 serve for emil\n"
                             "t3-serve@wizard.service loaded active running t3 serve for wizard\n")
    assert world.ctl("stop", "t3-serve@emil.service").returncode == 0
    assert world.ctl(*args).stdout == "t3-serve@wizard.service loaded active running t3 serve for wizard\n"
    everything = world.ctl("list-units", "--no-legend", "--plain").stdout
    assert "decoy.service" in everything and "emil" not in everything  # inactive units need --all
    assert "t3-serve@emil.service" in world.ctl("list-units", "--all", "--plain", "--no-legend").stdout


def test_stop_ends_the_process_and_the_unit_is_inactive(world):
    world.add_user("wizard")
    rec = world.start("wizard")
    unit = "t3-serve@wizard.service"
    began = time.monotonic()
    assert world.ctl("stop", unit).returncode == 0
    assert time.monotonic() - began < 5
    assert not proc_alive(rec["pid"])
    result = world.ctl("is-active", unit)
    assert (result.returncode, result.stdout) == (3, "inactive\n")
    assert world.prop(unit, "MainPID") == "0"
    assert world.prop(unit, "Result") == "success"
    assert world.prop(unit, "ActiveExitTimestamp")  # like systemd, the timestamps stay
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", world.ports["wizard"]), timeout=1).close()
    assert world.ctl("stop", unit).returncode == 0  # stopping a stopped unit is fine


def test_restart_gives_a_new_process(world):
    world.add_user("wizard")
    old = world.start("wizard")
    assert world.ctl("restart", "t3-serve@wizard.service").returncode == 0
    assert world.main_pid("wizard") != old["pid"]
    new = world.wait_serving("wizard", pid=old["pid"])
    assert new["pid"] == world.main_pid("wizard")
    assert not proc_alive(old["pid"])


def test_a_process_that_exits_cleanly_is_inactive_at_once(world):
    world.add_user("wizard")
    rec = world.start("wizard")
    world.tell("wizard", "exit 0")
    wait_for(lambda: not proc_alive(rec["pid"]), what="the fake to exit")
    # no settling time: the exit itself (or the zombie before the reap) is the verdict
    result = world.ctl("is-active", "t3-serve@wizard.service")
    assert (result.returncode, result.stdout) == (3, "inactive\n")
    assert world.main_pid("wizard") == 0


def test_a_failing_process_is_failed_without_restart(world):
    world.add_user("wizard")
    world.dropin("t3-serve@.service", "[Service]\nRestart=no\n")
    rec = world.start("wizard")
    world.tell("wizard", "exit 3")
    wait_for(lambda: not proc_alive(rec["pid"]), what="the fake to exit")
    result = world.ctl("is-failed", "t3-serve@wizard.service")
    assert (result.returncode, result.stdout) == (0, "failed\n")
    assert world.prop("t3-serve@wizard.service", "Result") == "exit-code"
    assert world.prop("t3-serve@wizard.service", "ExecMainStatus") == "3"
    assert world.ctl("is-active", "t3-serve@wizard.service").returncode == 3


def test_restart_on_failure_brings_up_a_new_process(world):
    world.add_user("wizard")
    world.dropin("t3-serve@.service", "[Service]\nRestartSec=200ms\n")
    rec = world.start("wizard")
    world.tell("wizard", "exit 3")
    new = world.wait_serving("wizard", pid=rec["pid"])
    assert world.main_pid("wizard") == new["pid"]
    assert world.prop("t3-serve@wizard.service", "NRestarts") == "1"
    assert world.ctl("is-active", "t3-serve@wizard.service").returncode == 0


def test_a_dead_process_is_not_active_even_without_its_supervisor(world):
    world.add_user("wizard")
    rec = world.start("wizard")
    state = json.loads((world.root / "run" / "simctl" / "t3-serve@wizard.service.json").read_text())
    os.kill(state["supervisor_pid"], signal.SIGKILL)  # nobody will reap or record the main process now
    wait_for(lambda: not proc_alive(state["supervisor_pid"]), what="the supervisor to die")
    assert world.ctl("is-active", "t3-serve@wizard.service").stdout == "active\n"  # the server itself still runs
    assert world.main_pid("wizard") == rec["pid"]
    os.kill(rec["pid"], signal.SIGKILL)
    wait_for(lambda: not proc_alive(rec["pid"]), what="the fake to die")  # gone, or a zombie
    result = world.ctl("is-active", "t3-serve@wizard.service")
    assert result.returncode == 3 and result.stdout != "active\n"
    assert world.main_pid("wizard") == 0


def test_stop_kills_a_process_ignoring_sigterm_at_the_timeout(world):
    world.add_user("wizard", extra_env="FAKE_IGNORE_TERM=1\n")
    world.dropin("t3-serve@.service", "[Service]\nTimeoutStopSec=1\n")
    rec = world.start("wizard")
    began = time.monotonic()
    assert world.ctl("stop", "t3-serve@wizard.service").returncode == 0
    took = time.monotonic() - began
    assert 1.0 <= took < 4.0, took
    assert not proc_alive(rec["pid"])
    assert world.ctl("is-failed", "t3-serve@wizard.service").stdout == "failed\n"  # as systemd: Result=timeout
    assert world.prop("t3-serve@wizard.service", "Result") == "timeout"
    assert "timed out. Killing." in world.log("t3-serve@wizard.service")


def test_stop_leaves_no_child_behind(world):
    world.add_user("wizard", extra_env="FAKE_CHILD=1\n")
    rec = world.start("wizard")
    assert proc_alive(rec["child"])
    began = time.monotonic()
    assert world.ctl("stop", "t3-serve@wizard.service").returncode == 0
    assert time.monotonic() - began < 5  # KillMode=mixed: the rest is SIGKILLed once the server is gone
    assert not proc_alive(rec["pid"]) and not proc_alive(rec["child"])
    assert world.prop("t3-serve@wizard.service", "Result") == "success"


def test_several_units_in_one_command(world):
    for user in ("wizard", "emil"):
        world.add_user(user)
    assert world.ctl("start", "t3-serve@wizard.service", "t3-serve@emil.service").returncode == 0
    world.wait_serving("wizard")
    world.wait_serving("emil")
    assert world.ctl("is-active", "t3-serve@wizard.service", "t3-serve@emil.service").stdout == "active\nactive\n"
    values = world.ctl("show", "-p", "ActiveState", "--value", "t3-serve@wizard.service", "t3-serve@emil.service")
    assert values.stdout == "active\n\nactive\n"
    assert world.ctl("stop", "t3-serve@wizard.service", "t3-serve@emil.service").returncode == 0
    assert world.ctl("is-active", "t3-serve@wizard.service", "t3-serve@emil.service").stdout == "inactive\ninactive\n"


# --------------------------------------------------------------------------- errors and bookkeeping

def test_unknown_unit_and_unknown_command(world):
    result = world.ctl("start", "nosuch.service")
    assert result.returncode == 5
    assert "Unit nosuch.service not found." in result.stderr
    assert world.ctl("restart", "t3-other@wizard.service").returncode == 5
    assert world.ctl("stop", "nosuch.service").returncode == 5
    unknown = world.ctl("is-active", "nosuch.service")
    assert (unknown.returncode, unknown.stdout) == (3, "inactive\n")
    assert world.ctl("show", "-p", "LoadState", "--value", "nosuch.service").stdout == "not-found\n"
    assert world.ctl("status", "nosuch.service").returncode == 4
    verb = world.ctl("frobnicate", "x.service")
    assert verb.returncode == 1 and "frobnicate" in verb.stderr
    assert world.ctl("--bogus-flag", "status").returncode == 1


def test_missing_environment_file_fails_the_start(world):
    world.add_user("wizard")
    (world.env_dir / "wizard.env").unlink()
    result = world.ctl("start", "t3-serve@wizard.service")
    assert result.returncode == 1
    assert "Job for t3-serve@wizard.service failed" in result.stderr
    assert world.ctl("is-failed", "t3-serve@wizard.service").stdout == "failed\n"
    assert world.record("wizard") is None


def test_an_active_unit_keeps_its_definition_until_daemon_reload(world):
    world.add_user("wizard")
    world.start("wizard")
    unit = "t3-serve@wizard.service"
    world.dropin("t3-serve@.service", "[Unit]\nDescription=renamed %i\n")
    assert world.prop(unit, "NeedDaemonReload") == "yes"
    assert world.prop(unit, "Description") == "t3 serve for wizard"
    assert "daemon-reload" in world.ctl("restart", unit).stderr
    assert world.ctl("daemon-reload").returncode == 0
    assert world.prop(unit, "NeedDaemonReload") == "no"
    assert world.prop(unit, "Description") == "renamed wizard"


def test_daemon_reload_loads_every_unit_at_once(world):
    """A file changed after a reload needs another, even if nobody asked about the unit in
    between (systemd loads every unit at the reload; it does not wait to be asked)."""
    world.add_user("wizard")
    world.start("wizard")
    unit = "t3-serve@wizard.service"
    assert world.ctl("daemon-reload").returncode == 0
    world.dropin("t3-serve@.service", "[Unit]\nDescription=renamed %i\n")
    assert world.prop(unit, "NeedDaemonReload") == "yes"
    assert world.prop(unit, "Description") == "t3 serve for wizard"


def test_enable_and_disable_are_recorded(world):
    world.add_user("wizard")
    unit = "t3-serve@wizard.service"
    assert world.ctl("is-enabled", unit).stdout == "disabled\n"
    assert world.ctl("enable", unit).returncode == 0
    assert (world.ctl("is-enabled", unit).returncode, world.prop(unit, "UnitFileState")) == (0, "enabled")
    assert world.ctl("is-active", unit).returncode == 3  # enable without --now starts nothing
    assert world.ctl("disable", unit).returncode == 0
    assert world.ctl("is-enabled", unit).returncode == 1


def _tracker_unit(bin_path: str) -> str:
    """t3-autoupdate.service running `bin_path`, its sandbox paths those of a default host."""
    text = load_template("t3-autoupdate.service")
    values = {**{k: v for k, v in SAMPLE_VALUES.items() if k in placeholders(text)}, "BIN": bin_path}
    return render_unit(text, values)


def test_timer_is_recorded_not_fired(world):
    (world.units / "t3-autoupdate.timer").write_text(load_template("t3-autoupdate.timer"))
    (world.units / "t3-autoupdate.service").write_text(
        _tracker_unit("/bin/true"))
    assert world.ctl("enable", "t3-autoupdate.timer").returncode == 0
    assert world.ctl("is-active", "t3-autoupdate.timer").stdout == "inactive\n"
    assert world.ctl("is-active", "t3-autoupdate.service").stdout == "inactive\n"


def test_oneshot_start_waits_for_the_command_and_reports_failure(world):
    (world.units / "t3-autoupdate.service").write_text(
        _tracker_unit("/bin/false"))
    result = world.ctl("start", "t3-autoupdate.service")
    assert result.returncode == 1 and "Job for t3-autoupdate.service failed" in result.stderr
    assert world.ctl("is-failed", "t3-autoupdate.service").returncode == 0
    (world.units / "t3-autoupdate.service").write_text(
        _tracker_unit("/bin/true"))
    assert world.ctl("reset-failed", "t3-autoupdate.service").returncode == 0
    assert world.ctl("daemon-reload").returncode == 0
    assert world.ctl("start", "t3-autoupdate.service").returncode == 0
    assert world.ctl("is-active", "t3-autoupdate.service").stdout == "inactive\n"
    assert world.prop("t3-autoupdate.service", "Result") == "success"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to User= needs root")
def test_user_is_switched_to_when_root_and_the_user_exists_with_host_users(tmp_path):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    world = World(tmp_path, host_users=True)
    (world.units / "whoami.service").write_text(
        "[Service]\nType=oneshot\nUser=nobody\nWorkingDirectory=/\nExecStart=/usr/bin/id -u\n")
    assert world.ctl("start", "whoami.service").returncode == 0
    assert f"\n{nobody.pw_uid}\n" in "\n" + world.log("whoami.service")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to User= needs root")
def test_user_map_file_runs_user_as_the_worlds_own_uid_with_its_home(tmp_path):
    """--user-map-file: a simulated account (no passwd entry) runs as its own uid, gid and home."""
    from tests.sim.world import unused_ids

    uid = unused_ids(1)[0]
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"wizard": {"uid": uid, "gid": uid, "home": "/nonexistent/wizard"}}))
    units = tmp_path / "units"
    units.mkdir()
    systemctl = install_systemctl(tmp_path / "root", units, user_map_file=users)
    (units / "whoami.service").write_text("[Service]\nType=oneshot\nUser=wizard\nWorkingDirectory=/\n"
                                          "ExecStart=/bin/sh -c 'echo ids=$(id -u):$(id -g):$(id -G) home=$HOME'\n")
    done = subprocess.run([str(systemctl), "start", "whoami.service"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "root" / "run" / "simctl" / "whoami.service.log").read_text()
    assert f"ids={uid}:{uid}:{uid} home=/nonexistent/wizard" in log, log


def test_without_host_users_a_real_account_named_like_a_world_user_is_never_used(tmp_path, monkeypatch):
    """The machine has an account named wizard (the real host does): the stand-in must neither
    look it up nor run wizard's unit as it, nor take its home, uid or shell."""
    looked_up = []
    real = pwd.getpwnam("root")
    impostor = pwd.struct_passwd(("wizard", "x", 4242, 4242, "", "/home/wizard", "/bin/bash"))

    def getpwnam(name):
        looked_up.append(name)
        return impostor if name == "wizard" else real

    monkeypatch.setattr(sim_units.pwd, "getpwnam", getpwnam)
    world = World(tmp_path)
    world.add_user("wizard")
    manager = Manager(world.root, world.units)
    unit = manager.load(serve_unit_name("wizard"))
    spec = manager.exec_spec(unit, unit.exec_start[0])
    assert looked_up == []
    assert spec.user is None and spec.env["HOME"] != "/home/wizard" and spec.env["SHELL"] != "/bin/bash"
    assert any("simulated user" in note for note in spec.notes)
    with_host = Manager(world.root, world.units, host_users=True)  # asked for: the account is used
    spec = with_host.exec_spec(unit, unit.exec_start[0])
    assert looked_up == ["wizard"] and spec.env["HOME"] == "/home/wizard"
