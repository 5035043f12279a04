"""`t3-autoupdate doctor` on the simulated world: a healthy host (every line ok, exit 0), then
each problem injected on it, one test each: the line names it and its fix, every other check
stays ok (each case puts the host back), exit 1 (2 for a bad dispatch map).

One world for the module (two users): installed as the README's takeover leaves a host
(`install-units`, the project's mint helper).
"""
from __future__ import annotations

import contextlib
import json
import pwd
import shutil

import pytest

from runner.units import serve_unit_name
from tests.sim.world import DEPLOYMENT_USERS, World, free_port

USERS = DEPLOYMENT_USERS[:2]  # vbarzin=wizard, emil.barzin=emo
ABSENT_USER = "t3-doctor-absent-gate"


@pytest.fixture(scope="module")
def host(machine_guard, world_template, tmp_path_factory):
    world = World(tmp_path_factory.mktemp("doctor") / "world", users=USERS, template=world_template)
    try:
        world.build()
        installed = world.run_tracker("install-units", "--dest", str(world.unit_dir), "--serve-env-dir",
                                      str(world.serve_env_dir), "--bin", world.tracker_bin)
        assert installed.exit_code == 0, installed.stderr
        yield world
    finally:
        world.stop()


def doctor(world, *args, **env):
    done = world.run_tracker("doctor", *args, timeout=300, **env)
    lines = done.stdout.splitlines()
    problems = {line.split(":", 1)[0].removeprefix("PROBLEM "): line for line in lines if line.startswith("PROBLEM ")}
    return done, lines, problems


def test_a_healthy_host_passes_every_check(host):
    done, lines, problems = doctor(host)
    assert done.exit_code == 0 and not problems, done.stdout + done.stderr
    assert all(line.startswith("ok ") for line in lines), lines
    checks = [line.split(":", 1)[0].removeprefix("ok ") for line in lines]
    assert checks == ["config", "maps", "serve-unit emo", "instance emo", "serve-unit wizard", "instance wizard",
                      "mint-helper", "dispatch emil.barzin", "dispatch vbarzin", "gate-user", "backup-space",
                      "timers", "last-run"]
    as_json = json.loads(host.run_tracker("doctor", "--json", timeout=300).stdout)
    assert as_json["ok"] is True and [c["check"] for c in as_json["checks"]] == checks


# ------------------------------------------------------------------ problems, each put back after

def _reload(world):
    world.systemctl_run("daemon-reload")


@contextlib.contextmanager
def drop_in(world, text: str, *, reload: bool = True):
    """An instance drop-in over wizard's serve unit (an operator's hand edit)."""
    path = world.unit_dir / "t3-serve@wizard.service.d" / "zz-hand-edit.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[Service]\n" + text)
    if reload:
        _reload(world)
    try:
        yield {}
    finally:
        shutil.rmtree(path.parent)
        _reload(world)


def exec_start(world, binary: str, bind: str) -> str:
    return (f"ExecStart=\nExecStart={binary} serve --host {bind} --port ${{T3_PORT}} "
            f"--base-dir {world.home_root}/wizard/.t3\n")


@contextlib.contextmanager
def replaced(path, text: str):
    before = path.read_text()
    path.write_text(text)
    try:
        yield {}
    finally:
        path.write_text(before)


@contextlib.contextmanager
def wizard_stopped(world):
    world.systemctl_run("stop", serve_unit_name("wizard"))
    try:
        yield {}
    finally:
        world.systemctl_run("start", serve_unit_name("wizard"))
        world.wait_instance_ready("vbarzin")


@contextlib.contextmanager
def link_moved_without_restart(world):
    link = world.active_dir / "wizard"
    link.unlink()
    link.symlink_to(world.releases_dir / "0.0.99")  # as if moved, and the server never restarted
    try:
        yield {}
    finally:
        world.point_user("wizard", world.installed)


@contextlib.contextmanager
def foreign_mint_helper(world):
    world.mint_helper.write_text("#!/bin/sh\nexec runuser -u \"$1\" -- /usr/bin/t3 auth pairing create --json\n")
    try:
        yield {}
    finally:
        world._write_mint_helper()


@contextlib.contextmanager
def database_symlink(world):
    link = world.userdata("emo") / "extra.sqlite"
    link.symlink_to("/etc/passwd")
    try:
        yield {}
    finally:
        link.unlink()


@contextlib.contextmanager
def systemctl_toggled(world, verb: str, undo: str, unit: str):
    world.systemctl_run(verb, unit)
    try:
        yield {}
    finally:
        world.systemctl_run(undo, unit)


@contextlib.contextmanager
def old_timer_enabled(world):
    paths = [world.unit_dir / "t3-migrate-idle.service", world.unit_dir / "t3-migrate-idle.timer"]
    paths[0].write_text("[Service]\nType=oneshot\nExecStart=/usr/local/sbin/t3-migrate-idle\n")
    paths[1].write_text("[Timer]\nOnCalendar=*-*-* 01..05:00/20\n\n[Install]\nWantedBy=timers.target\n")
    _reload(world)
    world.systemctl_run("enable", "t3-migrate-idle.timer")
    try:
        yield {}
    finally:
        world.systemctl_run("disable", "t3-migrate-idle.timer")
        for path in paths:
            path.unlink()
        _reload(world)


@contextlib.contextmanager
def frozen(world):
    assert world.run_tracker("freeze", "--reason", "investigating a canary failure").exit_code == 0
    try:
        yield {}
    finally:
        assert world.run_tracker("unfreeze").exit_code == 0


@contextlib.contextmanager
def last_run_rolled_back(world):
    run = world.state_dir / "runs" / "20260620T040001Z-4242"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "from": "0.0.24", "to": "0.0.25-nightly.20260608.497", "result": "rolled-back",
        "finished_at": "2026-06-20T04:09:00Z", "canary_reports": [str(run / "junit-canary-1.xml")]}))
    try:
        yield {}
    finally:
        shutil.rmtree(run)


@contextlib.contextmanager
def dispatch_map_without(world, sso: str):
    data = json.loads(world.dispatch_map.read_text())
    del data[sso]
    other = world.root / "dispatch-without.json"
    other.write_text(json.dumps(data))
    try:
        yield {"T3_DISPATCH_MAP": str(other)}
    finally:
        other.unlink()


@contextlib.contextmanager
def environment(**env):
    yield env


CASES = {
    # name: (inject(world), {check: words of its line}, exit code)
    "serve unit runs the global t3": (
        lambda w: drop_in(w, exec_start(w, "/usr/bin/t3", "0.0.0.0")),
        {"serve-unit wizard": ["runs /usr/bin/t3 serve, not the user's link", "-> t3-autoupdate install-units"]}, 1),
    "serve unit binds loopback": (
        lambda w: drop_in(w, exec_start(w, f"{w.active_dir}/wizard/bin/t3", "127.0.0.1")),
        {"serve-unit wizard": ["binds 127.0.0.1, not 0.0.0.0", "renames the session cookie"]}, 1),
    "unit edited but not reloaded": (
        lambda w: drop_in(w, "Environment=EXTRA=1\n", reload=False),
        {"serve-unit wizard": ["changed on disk since systemd loaded them", "-> systemctl daemon-reload"]}, 1),
    "T3_PORT not set": (
        lambda w: replaced(w.serve_env_dir / "wizard.env", "# emptied by hand\n"),
        {"serve-unit wizard": ["uses ${T3_PORT}, which no Environment= or root-owned EnvironmentFile= sets",
                               "set T3_PORT in {serve_env_dir}/wizard.env"]}, 1),
    "T3_PORT differs from the dispatch's port": (
        lambda w: replaced(w.serve_env_dir / "wizard.env", "T3_PORT=1\n"),
        {"serve-unit wizard": ["T3_PORT=1, but the dispatch sends wizard to port"]}, 1),
    "instance stopped": (
        wizard_stopped,
        {"instance wizard": ["t3-serve@wizard.service is not running", "-> systemctl start t3-serve@wizard.service"],
         "dispatch vbarzin": ["login not tried: wizard's instance"]}, 1),
    "server not on its link (stale)": (
        link_moved_without_restart,
        {"instance wizard": ["serves 0.0.24, its link is 0.0.99 (STALE)", "-> systemctl restart"],
         "dispatch vbarzin": ["login not tried"]}, 1),
    "dispatch does not answer": (
        lambda w: environment(T3_DISPATCH=f"http://127.0.0.1:{free_port()}"),
        {"dispatch vbarzin": ["does not answer"], "dispatch emil.barzin": ["does not answer"]}, 1),
    "session cookie not the one expected": (
        lambda w: environment(T3_COOKIE_NAME="t3_session_renamed"),
        {"dispatch vbarzin": ["first visit answered 302 with cookies ['t3_session']", "expected 302 and t3_session_renamed"],
         "dispatch emil.barzin": ["expected 302 and t3_session_renamed"]}, 1),
    "mint helper is the host's own": (
        foreign_mint_helper,
        {"mint-helper": ["is not the project's", "-> t3-autoupdate install-mint"],
         "dispatch vbarzin": ["login not tried: the mint helper is not the project's"],
         "dispatch emil.barzin": ["login not tried"]}, 1),
    "gate user missing": (
        lambda w: environment(T3_GATE_USER=ABSENT_USER),
        {"gate-user": [f"gate user '{ABSENT_USER}' does not exist", "-> t3-autoupdate install-units (creates it)"]}, 1),
    "a user's database cannot be sized": (
        database_symlink,
        {"backup-space": ["extra.sqlite", "(that user would be deferred)"]}, 1),
    "project timer disabled": (
        lambda w: systemctl_toggled(w, "disable", "enable", "t3-autoupdate-drain.timer"),
        {"timers": ["t3-autoupdate-drain.timer is disabled", "-> t3-autoupdate install-units"]}, 1),
    "old timer still enabled": (
        old_timer_enabled,
        {"timers": ["the old t3-migrate-idle.timer is still enabled", "-> systemctl disable --now t3-migrate-idle.timer"]}, 1),
    "tracker frozen": (
        frozen,
        {"last-run": ["the tracker is frozen: investigating a canary failure", "t3-autoupdate unfreeze"]}, 1),
    "last run rolled back": (
        last_run_rolled_back,
        {"last-run": ["0.0.24 -> 0.0.25-nightly.20260608.497: rolled-back", "junit-canary-1.xml"]}, 1),
    "dispatch map lacks a user": (
        lambda w: dispatch_map_without(w, "emil.barzin"),
        {"maps": ["no entry for OS user emo of the user map"], "instance emo": ["no port in"],
         "dispatch emil.barzin": ["login not tried"]}, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_named_with_its_fix(host, case):
    inject, expected, code = CASES[case]
    if case == "gate user missing":
        with pytest.raises(KeyError):  # the test's premise: no such account on this machine
            pwd.getpwnam(ABSENT_USER)
    with inject(host) as env:
        done, lines, problems = doctor(host, **env)
    assert done.exit_code == code, done.stdout + done.stderr
    assert set(problems) == set(expected), done.stdout
    for check, words in expected.items():
        for word in words:
            assert word.replace("{serve_env_dir}", str(host.serve_env_dir)) in problems[check], problems[check]
    assert all(line.startswith(("ok ", "PROBLEM ")) for line in lines), lines
