"""runner/services.py: argv and parsers by equality; behaviour on real processes run by the
systemctl stand-in from the project's own (rendered) t3-serve@ unit."""
from __future__ import annotations

import http.server
import os
import signal
import threading
import time

import pytest

from runner import activate, proc, services
from runner.services import NotServing, ServiceError, Services
from runner.units import load_template, render_unit, serve_unit_name
from tests.sim import builds
from tests.sim.proc import free_port
from tests.sim.systemctl import install_systemctl, stop_all

SC = "/sim/bin/systemctl"


# ------------------------------------------------------------------ pure: argv

def test_argv_builders():
    unit = "t3-serve@wizard.service"
    assert services.start_argv(SC, unit) == [SC, "start", unit]
    assert services.stop_argv(SC, unit) == [SC, "stop", unit]
    assert services.is_active_argv(SC, unit) == [SC, "is-active", unit]
    assert services.show_argv(SC, unit, "MainPID") == [SC, "show", "-p", "MainPID", "--value", unit]
    assert services.list_running_argv(SC) == [
        SC, "list-units", "--type=service", "--state=running", "--no-legend", "--plain", "t3-serve@*"]


def test_unit_names_come_only_from_validated_users():
    assert services.unit_of("wizard") == serve_unit_name("wizard") == "t3-serve@wizard.service"
    assert services.user_of_unit("t3-serve@emo.service") == "emo"
    for bad in ("--help", "sshd.service", "t3-serve@.service", "t3-serve@Root.service",
                "t3-serve@../x.service", "t3-serve@a b.service", "t3-serve@wizard\n.service",
                "t3-serve@wizard.service\n", "t3-serve@wizard.service --now", None):
        with pytest.raises(ServiceError):
            services.start_argv(SC, bad)
    for bad in ("Wizard", "a/b", "wizard\n", "", "x" * 40):
        with pytest.raises(ServiceError):
            services.unit_of(bad)
    with pytest.raises(ServiceError):
        services.show_argv(SC, "t3-serve@wizard.service", "ExecStart")


def test_systemctl_runs_in_utc():
    env = services.systemctl_env({"PATH": "/bin", "TZ": "Europe/Sofia"})
    assert env["TZ"] == "UTC" and env["PATH"] == "/bin"


# ------------------------------------------------------------------ pure: parsers

def test_parse_main_pid():
    assert services.parse_main_pid("4242\n") == 4242
    assert services.parse_main_pid("0\n") is None
    for bad in ("", "n/a", "-1", "12 13", "0x10"):
        with pytest.raises(ServiceError):
            services.parse_main_pid(bad)


def test_parse_running_instances():
    text = ("t3-serve@wizard.service loaded active running t3 serve for wizard\n"
            "t3-serve@emo.service    loaded active running t3 serve for emo\n\n")
    assert services.parse_running_instances(text) == ["emo", "wizard"]
    assert services.parse_running_instances("") == []
    for bad in ("t3-serve@wizard.service loaded failed failed t3 serve\n",
                "● t3-serve@wizard.service loaded active running t3\n",
                "t3-serve@Wizard.service loaded active running t3\n",
                "t3-serve@../etc.service loaded active running t3\n",
                "sshd.service loaded active running OpenSSH\n",
                "0 loaded units listed.\n"):
        with pytest.raises(ServiceError):
            services.parse_running_instances(bad)


# ------------------------------------------------------------------ a small deployment

class Deployment:
    """Users' t3-serve@ units from the real template, run by the systemctl stand-in."""

    def __init__(self, root, users, profiles=None):
        self.root = root
        self.users = users
        self.unit_dir = root / "etc" / "systemd" / "system"
        self.env_dir = root / "etc" / "t3-serve"
        self.active_dir = root / "active"
        self.home_root = root / "home"
        self.sim_root = root / "sim"
        self.ports = {u: free_port() for u in users}
        for d in (self.unit_dir, self.env_dir, self.active_dir, self.home_root):
            d.mkdir(parents=True)
        values = {"ACTIVE_DIR": str(self.active_dir), "HOME_ROOT": str(self.home_root),
                  "SERVE_ENV_DIR": str(self.env_dir), "SERVE_HOST": "127.0.0.1"}
        (self.unit_dir / "t3-serve@.service").write_text(
            render_unit(load_template("t3-serve@.service"), values))
        self.systemctl = str(install_systemctl(self.sim_root, self.unit_dir))
        self.releases = {}
        for user in users:
            profile = (profiles or {}).get(user, "good-0.0.24")
            version = builds.VERSIONS[profile]
            release = root / "releases" / version
            if version not in self.releases:
                builds.install_layout(version, profile, release)
                self.releases[version] = release
            activate.point_user(self.active_dir, user, release)
            (self.home_root / user / ".t3").mkdir(parents=True)
            (self.env_dir / f"{user}.env").write_text(
                f"T3_PORT={self.ports[user]}\n")

    def unit_log(self, user):
        path = self.sim_root / "run" / "simctl" / f"{serve_unit_name(user)}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        stop_all(self.sim_root, self.unit_dir)


@pytest.fixture
def deployment(tmp_path):
    made = []

    def make(users=("wizard", "emo", "ancamilea"), profiles=None):
        made.append(Deployment(tmp_path / f"d{len(made)}", users, profiles))
        return made[-1]

    yield make
    for d in made:
        d.stop()


def test_running_instances_lists_exactly_the_running_ones(deployment):
    d = deployment()
    svc = Services(d.systemctl)
    assert svc.running_instances() == []
    svc.start(services.unit_of("wizard"))
    svc.start(services.unit_of("ancamilea"))
    assert svc.running_instances() == ["ancamilea", "wizard"]
    assert svc.is_active(services.unit_of("wizard")) and not svc.is_active(services.unit_of("emo"))
    assert svc.main_pid(services.unit_of("emo")) is None
    svc.stop(services.unit_of("wizard"))
    assert svc.running_instances() == ["ancamilea"]
    assert not svc.is_active(services.unit_of("wizard"))


def test_stop_then_start_gives_a_new_main_pid_and_serves(deployment):
    """The move's own sequence (stop, relink, start): a new process, serving again."""
    d = deployment(users=("wizard",))
    svc = Services(d.systemctl)
    unit = services.unit_of("wizard")
    svc.start(unit)
    env = services.wait_serving(d.ports["wizard"], 30, is_alive=svc.liveness(unit))
    assert env["serverVersion"] == "0.0.24", d.unit_log("wizard")
    first_pid = svc.main_pid(unit)
    assert first_pid and os.path.exists(f"/proc/{first_pid}")

    t0 = time.monotonic()
    svc.stop(unit)
    assert svc.main_pid(unit) is None and not svc.is_active(unit)
    svc.start(unit)
    t1 = time.monotonic()
    second_pid = svc.main_pid(unit)
    assert second_pid and second_pid != first_pid
    env = services.wait_serving(d.ports["wizard"], 30, is_alive=svc.liveness(unit))
    assert env["serverVersion"] == "0.0.24"
    print(f"stop+start {t1 - t0:.2f}s, then serving after {time.monotonic() - t1:.2f}s")


def test_wait_serving_raises_at_once_when_the_unit_dies_at_start(deployment):
    d = deployment(users=("wizard",), profiles={"wizard": "crash-at-start"})
    svc = Services(d.systemctl)
    unit = services.unit_of("wizard")
    svc.start(unit)  # Type=simple: start succeeds, the process then exits 1
    started = time.monotonic()
    with pytest.raises(NotServing, match="died"):
        # A huge timeout: only the death verdict can end this (pytest-timeout guards it).
        services.wait_serving(d.ports["wizard"], 3600, is_alive=svc.liveness(unit))
    print(f"dead-at-start verdict after {time.monotonic() - started:.2f}s")
    assert "Cannot find module" in d.unit_log("wizard")


def test_wait_serving_raises_at_once_when_the_unit_dies_while_polled(deployment):
    d = deployment(users=("wizard",), profiles={"wizard": "never-ready"})
    svc = Services(d.systemctl)
    unit = services.unit_of("wizard")
    svc.start(unit)
    pid = svc.main_pid(unit)
    alive = svc.liveness(unit)
    polled = threading.Event()
    calls = []

    def is_alive():
        calls.append(time.monotonic())
        if len(calls) == 3:
            polled.set()
        return alive()

    killed_at = []

    def killer():
        polled.wait(60)
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with pytest.raises(NotServing, match="died"):
            services.wait_serving(d.ports["wizard"], 3600, is_alive=is_alive)
    finally:
        thread.join(60)
    assert killed_at and len(calls) >= 3
    print(f"died-while-polled verdict {time.monotonic() - killed_at[0]:.2f}s after the kill, {len(calls)} polls")


def test_wait_serving_on_a_stopped_unit_never_polls(deployment):
    d = deployment(users=("wizard",))
    svc = Services(d.systemctl)
    unit = services.unit_of("wizard")
    with pytest.raises(NotServing, match="died"):
        services.wait_serving(d.ports["wizard"], 3600, is_alive=svc.liveness(unit))


def test_wait_serving_times_out_when_nothing_answers():
    port = free_port()
    with pytest.raises(NotServing, match="did not serve within"):
        services.wait_serving(port, 0.3, is_alive=lambda: True)


def _http_server(status, body, content_type="text/html"):
    class Handler(http.server.BaseHTTPRequestHandler):
        hits = 0

        def do_GET(self):
            Handler.hits += 1
            code = status(Handler.hits) if callable(status) else status
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, Handler


def test_wait_serving_polls_through_non_200_then_returns_the_json():
    server, handler = _http_server(lambda n: 503 if n < 3 else 200,
                                   '{"environmentId": "e", "serverVersion": "0.0.24"}', "application/json")
    try:
        env = services.wait_serving(server.server_address[1], 3600, is_alive=lambda: True)
    finally:
        server.shutdown()
        server.server_close()
    assert env == {"environmentId": "e", "serverVersion": "0.0.24"} and handler.hits == 3


def test_wait_serving_accepts_no_200_before_the_unit_is_known_alive():
    """`Services.liveness_ahead`: polls start before systemctl has said which process is the
    unit's, but an answer on the port counts only once it has (another process could hold it)."""
    server, handler = _http_server(200, '{"serverVersion": "0.0.24"}', "application/json")
    said = iter([None, None, True])
    try:
        env = services.wait_serving(server.server_address[1], 3600, is_alive=lambda: next(said))
    finally:
        server.shutdown()
        server.server_close()
    assert env == {"serverVersion": "0.0.24"} and handler.hits == 3


def test_liveness_ahead_answers_as_liveness_once_systemctl_has_answered():
    release = threading.Event()
    answers = iter(["ActiveState=active\nMainPID=%d\n" % os.getpid(), "ActiveState=failed\nMainPID=0\n"])

    def slow_run(argv, **kwargs):
        release.wait(60)
        return proc.Completed(tuple(argv), 0, next(answers), "", 0.0)

    svc = Services("/sim/systemctl", run=slow_run)
    alive = svc.liveness_ahead("t3-serve@wizard.service")
    assert alive() is None  # systemctl has not answered yet
    release.set()
    deadline = time.monotonic() + 60
    while alive() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert alive() is True
    dead = svc.liveness_ahead("t3-serve@wizard.service")
    while (verdict := dead()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert verdict is False

    def broken_run(argv, **kwargs):
        return proc.Completed(tuple(argv), 0, "garbage", "", 0.0)

    unsure = Services("/sim/systemctl", run=broken_run).liveness_ahead("t3-serve@wizard.service")
    with pytest.raises(ServiceError, match="unparseable liveness"):
        while unsure() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_wait_serving_200_without_json_is_a_verdict():
    server, handler = _http_server(200, "<html>app</html>")
    try:
        with pytest.raises(NotServing, match="without a JSON object"):
            services.wait_serving(server.server_address[1], 3600, is_alive=lambda: True)
    finally:
        server.shutdown()
        server.server_close()
    assert handler.hits == 1


def test_unparseable_systemctl_answers_fail_closed(tmp_path):
    fake = tmp_path / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    "case \"$1\" in\n"
                    "  show) echo 'yesterday-ish' ;;\n"
                    "  list-units) echo 't3-serve@wizard.service loaded active running x'; echo 'garbage' ;;\n"
                    "  is-active) echo unknown; exit 4 ;;\n"
                    "esac\n")
    fake.chmod(0o755)
    svc = Services(str(fake))
    unit = services.unit_of("wizard")
    with pytest.raises(ServiceError):
        svc.main_pid(unit)
    with pytest.raises(ServiceError):
        svc.running_instances()
    with pytest.raises(proc.CommandError):
        svc.is_active(unit)  # neither active (0) nor not active (3): an error, not False


def test_against_the_simulated_world(world):
    """The whole deployment: three users' instances, bound like production (0.0.0.0)."""
    svc = Services(str(world.systemctl))
    assert svc.running_instances() == sorted(u.os_user for u in world.users)
    for user in world.users:
        unit = services.unit_of(user.os_user)
        env = services.wait_serving(world.port_of(user.sso), 30, is_alive=svc.liveness(unit))
        assert env["serverVersion"] == world.installed
