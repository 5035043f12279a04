"""A gate started early (runner/gaterun.py start_gate): the canary starts its gate before the
user's stop so pytest's start-up overlaps the restart. It must run no check before `go()`,
run every check after it, fail by itself when never told to go, and end when cancelled."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest

from runner import proc
from runner.gaterun import gate_argv, start_gate, wait_exit

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
