"""runner.proc: the one module that starts processes."""
import json
import os
import signal
import sys
import time

import pytest

from runner import proc


def test_run_returns_output_and_exit_code():
    done = proc.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert (done.exit_code, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_failure_raises_with_command_code_and_output():
    with pytest.raises(proc.CommandError) as info:
        proc.run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(4)"])
    err = info.value
    assert err.exit_code == 4 and "boom" in err.stderr
    assert "exit code 4" in str(err) and "boom" in str(err)


def test_ok_codes_accept_expected_failures():
    assert proc.run([sys.executable, "-c", "raise SystemExit(3)"], ok_codes=(0, 3)).exit_code == 3


def test_timeout_is_a_command_error():
    with pytest.raises(proc.CommandError, match="timed out"):
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_timeout_kills_the_whole_process_group_and_keeps_what_it_wrote(tmp_path):
    """A grandchild holding the output pipes open must neither outlive the timeout nor make
    `run` wait for it; what the child printed before the timeout is in the error."""
    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
              f" open({str(pid_file)!r}, 'w').write(str(g.pid)); print('partial', flush=True);"
              f" print('so far', file=sys.stderr, flush=True); time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(proc.CommandError, match="timed out after 1s") as info:
        proc.run([sys.executable, "-c", script], timeout=1)
    assert time.monotonic() - started < 15  # not the grandchild's 60 s
    assert (info.value.stdout, info.value.stderr, info.value.exit_code) == ("partial\n", "so far\n", -signal.SIGKILL)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{grandchild}/stat") as fh:  # a zombie of init's is gone for our purpose
            if fh.read().split(") ")[-1].startswith("Z"):
                break
        time.sleep(0.05)
    else:
        raise AssertionError(f"grandchild {grandchild} still runs after the timeout")


def test_a_child_killed_by_a_signal_is_a_command_error_with_its_output():
    with pytest.raises(proc.CommandError, match="killed by signal 15") as info:
        proc.run([sys.executable, "-c", "import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGTERM)"])
    assert info.value.stdout == "before\n"


def test_input_reaches_stdin_and_no_input_is_an_empty_stdin():
    assert proc.run([sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"], input="abc").stdout == "cba\n"
    assert proc.run([sys.executable, "-c", "import sys; print(len(sys.stdin.buffer.read()))"],
                    input=b"\x00\x01").stdout == "2\n"
    assert proc.run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"]).stdout == "''\n"


def test_the_env_given_is_the_whole_environment(tmp_path):
    seen = proc.run([sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                    env={"ONLY": "this"}, cwd=tmp_path).stdout
    assert {k: v for k, v in json.loads(seen).items() if k not in ("LC_CTYPE",)} == {"ONLY": "this"}


def test_a_missing_working_directory_is_not_a_missing_program(tmp_path):
    with pytest.raises(proc.CommandError, match="could not start: no directory") as info:
        proc.run([sys.executable, "-c", "pass"], cwd=tmp_path / "gone")
    assert info.value.exit_code == 126


def test_missing_program_is_a_command_error(tmp_path):
    with pytest.raises(proc.CommandError, match="not found"):
        proc.run([str(tmp_path / "no-such-program")])


def test_arguments_are_never_interpreted_by_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    done = proc.run(["/bin/echo", f"; touch {marker}"])
    assert done.stdout.strip() == f"; touch {marker}" and not marker.exists()


def test_env_and_cwd_are_passed(tmp_path):
    done = proc.run([sys.executable, "-c", "import os; print(os.getcwd(), os.environ['X'])"],
                    env={**os.environ, "X": "y"}, cwd=tmp_path)
    assert done.stdout.split() == [str(tmp_path), "y"]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_as_user_runs_with_that_uid(tmp_path):
    nobody = proc.UserIds(65534, 65534)
    done = proc.run(["/bin/sh", "-c", "id -u; id -g"],
                    as_user=nobody, cwd="/")
    assert done.stdout.split()[:2] == ["65534", "65534"]


def test_spawn_logs_output_and_terminate_stops_the_group(tmp_path):
    log_path = tmp_path / "server.log"
    popen = proc.spawn([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                       log_path=log_path)
    import time
    deadline = time.monotonic() + 10
    while b"ready" not in log_path.read_bytes() and time.monotonic() < deadline:
        popen.poll()
        threading_event_wait(0.05)
    assert b"ready" in log_path.read_bytes()
    assert proc.terminate(popen, timeout=5) == -15


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); time.sleep(60)"
    log_path = tmp_path / "log"
    popen = proc.spawn([sys.executable, "-c", script], log_path=log_path)
    import time
    deadline = time.monotonic() + 10
    while not log_path.read_bytes() and time.monotonic() < deadline:
        threading_event_wait(0.05)
    assert proc.terminate(popen, timeout=0.5) == -9


def threading_event_wait(seconds):
    import threading
    threading.Event().wait(seconds)


def test_child_env_keeps_only_locale_path_and_tz_then_the_callers_extras():
    base = {"PATH": "/p", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "NPM_TOKEN": "secret",
            "HOME": "/root", "SSH_AUTH_SOCK": "/run/agent", "npm_config_registry": "http://r"}
    assert proc.child_env(base=base) == {"PATH": "/p", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC"}
    assert proc.child_env({"HOME": "/h", "PATH": "/q"}, base=base) == \
        {"PATH": "/q", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "HOME": "/h"}
    assert proc.child_env(base={}) == {"PATH": proc.DEFAULT_PATH}


def test_a_secret_in_the_runners_environment_reaches_no_child(tmp_path, monkeypatch):
    monkeypatch.setenv("NPM_TOKEN", "npm_secret")
    show = [sys.executable, "-c", "import os; print(os.environ.get('NPM_TOKEN', 'absent'))"]
    assert proc.run(show).stdout.strip() == "absent"
    log_path = tmp_path / "spawned.log"
    popen = proc.spawn(show, log_path=log_path)
    assert popen.wait(30) == 0
    assert log_path.read_text().strip() == "absent"
