"""The guard fixture itself: escapes are refused and fail the test."""
import textwrap

pytest_plugins = ["pytester"]

ESCAPES = {
    "write_etc": "open('/etc/t3-guard-probe', 'w')",
    "mkdir_var": "import os; os.mkdir('/var/lib/t3-guard-probe')",
    "sqlite_home": "import sqlite3; sqlite3.connect('/home/t3-guard-probe.sqlite')",
    "real_systemctl": "import subprocess; subprocess.run(['/usr/bin/systemctl', 'status'])",
    "npm_global_prefix": "import os, subprocess; env = dict(os.environ); env.pop('npm_config_prefix'); "
                         "subprocess.run(['npm', 'prefix', '-g'], env=env)",
    "non_loopback": "import socket; s = socket.socket(); s.settimeout(0.2); s.connect(('192.0.2.1', 80))",
}


def _run_inner(pytester, body):
    pytester.makeconftest((__import__("pathlib").Path(__file__).parents[2] / "conftest.py").read_text())
    tests_dir = pytester.mkdir("tests")
    (tests_dir / "test_inner.py").write_text(textwrap.dedent(f"""
        def test_escape():
            try:
                {body}
            except Exception:
                pass  # the guard must fail the test even when the escape is swallowed
    """))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


import pytest


@pytest.mark.parametrize("body", list(ESCAPES.values()), ids=list(ESCAPES))
def test_guard_refuses_escape_even_when_swallowed(pytester, body):
    result = _run_inner(pytester, body)
    assert result.ret != 0
    assert result.parseoutcomes().get("errors", 0) == 1  # fails at teardown, named
    assert "test guard: " in result.stdout.str()


def test_guard_allows_writes_inside_the_test_root(pytester):
    result = _run_inner(pytester, "import sqlite3, tempfile, os; d = tempfile.mkdtemp(); sqlite3.connect(os.path.join(d, 'x.sqlite')).execute('create table t(x)')")
    result.assert_outcomes(passed=1)


def test_python_may_cache_bytecode_of_a_module_outside_the_test_root(pytester):
    """Importing a module of the checkout for the first time inside a test writes its
    `__pycache__` beside it (where PYTHONDONTWRITEBYTECODE is unset: ./dev unsets it): Python's
    own cache, never the machine's state. The package sits outside the inner run's test root."""
    pkg = pytester.mkpydir("probe_pkg_outside_root")
    (pkg / "mod.py").write_text("VALUE = 1\n")
    body = ("import sys, importlib; sys.dont_write_bytecode = False; sys.path.insert(0, %r); "
            "assert importlib.import_module('probe_pkg_outside_root.mod').VALUE == 1" % str(pytester.path))
    result = _run_inner(pytester, body)
    result.assert_outcomes(passed=1)
    assert (pkg / "__pycache__").is_dir()


def test_child_process_reaching_systemctl_by_path_is_trapped(pytester):
    result = _run_inner(pytester, "import subprocess; assert subprocess.run(['systemctl', 'status']).returncode == 97")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*real systemctl was reached*"])


def test_gate_runs_outside_tests_dir_are_not_guarded(pytester):
    """`pytest gates` on a live host must act on the real machine; only tests/ is guarded."""
    pytester.makeconftest((__import__("pathlib").Path(__file__).parents[2] / "conftest.py").read_text())
    gates_dir = pytester.mkdir("gates")
    (gates_dir / "test_probe.py").write_text(
        "import sys\ndef test_guard_is_off():\n    assert sys.modules['conftest'].GUARD.active is False\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "gates").assert_outcomes(passed=1)


def test_directory_relative_writes_are_judged_by_their_directory(pytester):
    """A dir_fd-relative rename into /etc is refused; one inside the root is allowed."""
    body = ("import os, tempfile; d = tempfile.mkdtemp(); fd = os.open(d, os.O_RDONLY); "
            "open(os.path.join(d, 'a'), 'w').close(); os.rename('a', 'b', src_dir_fd=fd, dst_dir_fd=fd); "
            "etc = os.open('/etc', os.O_RDONLY); os.rename('b', 'probe', src_dir_fd=fd, dst_dir_fd=etc)")
    result = _run_inner(pytester, body)
    assert result.parseoutcomes().get("errors", 0) == 1
    assert "/etc/probe" in result.stdout.str()


def test_guard_holds_in_every_xdist_worker(pytester):
    """./dev test runs the suite on pytest-xdist workers: each worker process must be guarded."""
    pytester.makeconftest((__import__("pathlib").Path(__file__).parents[2] / "conftest.py").read_text())
    tests_dir = pytester.mkdir("tests")
    bodies = [ESCAPES["write_etc"], ESCAPES["mkdir_var"], ESCAPES["sqlite_home"], ESCAPES["real_systemctl"]]
    (tests_dir / "test_inner.py").write_text("".join(textwrap.dedent(f"""
        def test_escape_{i}():
            import os
            print("worker", os.environ.get("PYTEST_XDIST_WORKER"))
            try:
                {body}
            except Exception:
                pass
    """) for i, body in enumerate(bodies)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-rA")
    assert result.parseoutcomes().get("errors", 0) == len(bodies), result.stdout.str()
    out = result.stdout.str()
    assert out.count("test guard: ") >= len(bodies)
    assert "worker gw0" in out and "worker gw1" in out  # both workers ran escapes, and both refused them
