"""A gate started early (runner/gaterun.py start_gate): the canary starts its gate before the
user's stop so pytest's start-up overlaps the restart, and the bump starts the health gate
beside staging, held before collection until it is given its options. It must run no check
before `go()`, run every check after it, fail by itself when never told to go (or told
badly, naming what was wrong), and end when cancelled."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from runner import proc
from runner.gaterun import gate_argv, gate_verdict, start_gate, wait_exit

DEADLINE = 60.0


@pytest.fixture
def dispatch():
    """A stand-in dispatch that counts requests and never pairs (so the canary's checks fail
    once they run: here only whether they run matters)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        hits = 0

        def do_GET(self):
            Handler.hits += 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Handler
    server.shutdown()
    server.server_close()


def canary_options(tmp_path, url: str) -> dict[str, str]:
    user_map, dispatch_map, active = tmp_path / "user-map", tmp_path / "dispatch.json", tmp_path / "active"
    user_map.write_text("vbarzin=wizard\n")
    dispatch_map.write_text(json.dumps({"vbarzin": {"os_user": "wizard", "port": 9}}))
    active.mkdir()
    return {"--dispatch": url, "--dispatch-map": str(dispatch_map), "--user-map": str(user_map),
            "--active-dir": str(active), "--cookie-name": "t3_session", "--canary-version": "0.0.28"}


def wait_for(predicate, what: str):
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {DEADLINE:g}s")
        time.sleep(0.05)


def test_a_started_gate_runs_no_check_before_go_and_every_check_after(tmp_path, dispatch):
    url, handler = dispatch
    run_dir = tmp_path / "run"
    gate = start_gate("canary", run_dir=run_dir, options=canary_options(tmp_path, url), timeout=120,
                      label="canary-wizard")
    try:
        wait_for(lambda: "T3-GATE HELD" in gate.log.read_text(), "hold line in the gate's log")
        held = gate.log.read_text()
        assert "3 tests collected" in held
        # set aside from the collector once collected: the gate's exit does not walk them
        assert int(held.split(" objects frozen")[0].rsplit(" ", 1)[1]) > 10000
        assert handler.hits == 0 and not gate.junit.exists()  # held: nothing checked yet
        gate.go()
        result = gate.result()
    finally:
        gate.cancel()
    assert handler.hits >= 1  # the checks ran after go, against the dispatch
    assert result.tests == 3 and not result.passed  # and judged: this dispatch never pairs
    assert result.report == run_dir / "junit-canary-wizard.xml"
    assert "Unknown config option" not in result.log.read_text()  # pytest-timeout loaded: autoload is off


def test_a_gate_never_told_to_go_fails_by_itself(tmp_path, dispatch):
    url, handler = dispatch
    junit = tmp_path / "junit.xml"
    options = {**canary_options(tmp_path, url), "--start-when": str(tmp_path / "never"), "--start-within": "0.3"}
    done = proc.run(gate_argv(sys.executable, "canary", junit=junit, options=options), cwd=tmp_path,
                    env=proc.child_env({"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}), ok_codes=range(256), timeout=120)
    assert done.exit_code != 0
    assert "T3-GATE not started" in done.stdout + done.stderr
    assert handler.hits == 0


def test_a_cancelled_gate_ends_without_checking(tmp_path, dispatch):
    url, handler = dispatch
    gate = start_gate("canary", run_dir=tmp_path / "run", options=canary_options(tmp_path, url), timeout=120)
    wait_for(lambda: "T3-GATE HELD" in gate.log.read_text(), "hold line in the gate's log")
    gate.cancel()
    assert gate._popen.poll() is not None
    assert handler.hits == 0
    with pytest.raises(RuntimeError, match="never told to go"):
        gate.result()


def test_wait_exit_returns_the_exit_code_and_times_out_on_a_running_process(tmp_path):
    done = proc.spawn([sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "exits.log")
    assert wait_exit(done, DEADLINE) == 3
    assert wait_exit(done, DEADLINE) == 3  # already reaped: asked again, same answer
    running = proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "runs.log")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(running, 0.1)
    finally:
        proc.terminate(running, timeout=5)


# --- a gate held for its options (the health gate, started beside staging) ------------------

HELD_FOR_OPTIONS = "T3-GATE HELD for options"


@pytest.fixture(scope="module")
def health_build(tmp_path_factory):
    """A good simulated build and a populated seed database."""
    from tests.sim import builds, dbgen

    root = tmp_path_factory.mktemp("health-build")
    version = builds.GOOD_VERSIONS["good-0.0.28"]
    t3_bin = builds.install_layout(version, builds.profile_for(version), root / "release")
    seed = root / "state.sqlite"
    dbgen.make_database(seed, 30, threads=2, messages_per_thread=4)
    return SimpleNamespace(t3_bin=t3_bin, version=version, seed=seed)


def health_start_options() -> dict[str, str]:
    """What the runner knows of the health gate before staging (health_gate_options)."""
    from runner.phases.health import PYTEST_OPTIONS
    from tests.sim.world import GATE_UID

    return {**PYTEST_OPTIONS, "--gate-user": str(GATE_UID), "--serve-host": "0.0.0.0", "--smoke-port": "0",
            "--ready-timeout": "20", "--cookie-name": "t3_session"}


def junit_case_names(junit) -> list[str]:
    return [case.get("name") for case in ET.parse(junit).getroot().iter("testcase")]


def test_a_gate_held_for_its_options_runs_the_cases_they_name(tmp_path, health_build):
    """Started before any build or seed exists, the health gate imports its suite and waits
    before collection; at go it is given the build and two users' seeds, and runs exactly the
    cases those name (one per seed plus the empty base dir), as if they had been on its
    command line."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    gate = start_gate("health", run_dir=tmp_path / "run", options=health_start_options(), timeout=120,
                      start_within=DEADLINE, options_at_go=True)
    with gate:
        wait_for(lambda: HELD_FOR_OPTIONS in gate.log.read_text(), "hold line in the gate's log")
        assert "collected" not in gate.log.read_text() and not gate.junit.exists()  # nothing collected yet
        with pytest.raises(ValueError, match="options at go needed"):
            gate.go()
        given = {"--t3-bin": str(health_build.t3_bin), "--expect-version": health_build.version,
                 "--seed-db": f"alice={health_build.seed},bob={health_build.seed}", "--scratch": str(scratch)}
        gate.go(given)
        assert json.loads((tmp_path / "run" / "go-health.json").read_text()) == given  # whole, never half
        assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no temp left
        result = gate.result()
    assert result.passed, result.reason()
    names = junit_case_names(result.report)
    for case in ("populated-alice", "populated-bob", "fresh-empty"):
        assert f"test_database_integrity_ok[{case}]" in names, names
    assert not [name for name in names if "populated-" in name and "alice" not in name and "bob" not in name]


def test_a_gate_started_at_its_start_line_takes_no_options_at_go(tmp_path, dispatch):
    url, _handler = dispatch
    with start_gate("canary", run_dir=tmp_path / "run", options=canary_options(tmp_path, url), timeout=120) as gate:
        with pytest.raises(ValueError, match="options at go not taken"):
            gate.go({"--users": "vbarzin"})
    assert gate.ended()  # left as a context: ended


def run_health_gate_with_options_file(tmp_path, content=None, *, make=None, **extra: str):
    """The health gate run to its end on an options file in place from the start: (its
    verdict, the file's path)."""
    path = tmp_path / "options.json"
    if make is not None:
        make(path)
    elif content is not None:
        path.write_text(content)
    junit, log = tmp_path / "junit.xml", tmp_path / "gate.log"
    options = {**health_start_options(), "--options-when": str(path), "--start-within": "0.5", **extra}
    done = proc.run(gate_argv(sys.executable, "health", junit=junit, options=options), cwd=tmp_path,
                    env=proc.child_env({"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}), ok_codes=range(256), timeout=120)
    output = done.stdout + done.stderr
    log.write_text(output)
    return gate_verdict("health", done.exit_code, output, junit, log), path


@pytest.mark.parametrize("content, why", [
    ('{"--t3-bin": "/x", "--no-such": "1"}', "key '--no-such' is not a gate option"),
    ('{"--options-when": "/x"}', "key '--options-when' is not a gate option"),
    ('{"--t3-bin": 7}', "key '--t3-bin': the value must be a string, not int"),
    ('{"--t3-bin": "/x",\n "--scratch": }', "not JSON: Expecting value: line 2 column 15"),
    ('["--t3-bin", "/x"]', "not a JSON object but list"),
    ('{"--t3-bin": "/x", "--t3-bin": "/y"}', "key '--t3-bin' given twice"),
    ('{"--cookie-name": "other"}', "key '--cookie-name' is also on the command line"),
], ids=["unknown-key", "hold-again", "non-string", "bad-json", "not-object", "twice", "command-line"])
def test_a_bad_options_file_fails_the_gate_naming_file_and_key(tmp_path, content, why):
    result, path = run_health_gate_with_options_file(tmp_path, content)
    assert not result.passed and result.exit_code != 0 and result.tests == 0
    assert f"the gate stopped: bad options file {path}: {why}" in result.reason(), result.reason()


@pytest.mark.parametrize("make, why", [
    (lambda path: path.symlink_to(path.with_name("real.json")), "cannot be opened without following a link"),
    (lambda path: path.mkdir(), "not a regular file"),
], ids=["symlink", "directory"])
def test_an_options_file_that_is_no_regular_file_fails_the_gate(tmp_path, make, why):
    (tmp_path / "real.json").write_text('{"--t3-bin": "/x"}')
    result, path = run_health_gate_with_options_file(tmp_path, make=make)
    assert not result.passed and result.tests == 0
    assert f"bad options file {path}: {why}" in result.reason(), result.reason()


def test_a_gate_held_for_options_never_given_fails_within_its_bound(tmp_path):
    result, path = run_health_gate_with_options_file(tmp_path)  # the file never appears
    assert not result.passed and result.exit_code != 0 and result.tests == 0
    assert f"the gate stopped: not started: {path} did not appear within 0.5s" in result.reason(), result.reason()


def test_a_gate_told_bad_options_at_go_says_why(tmp_path):
    """Through the runner's own path: the verdict names the key the gate refused."""
    with start_gate("health", run_dir=tmp_path / "run", options=health_start_options(), timeout=120,
                    start_within=DEADLINE, options_at_go=True) as gate:
        gate.go({"--seed-db": "alice=/nonexistent", "--no-such-option": "1"})
        result = gate.result()
    assert not result.passed and result.tests == 0
    assert "key '--no-such-option' is not a gate option" in result.reason(), result.reason()
