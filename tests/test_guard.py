"""The guard fixture itself: escapes are refused and fail the test."""
import textwrap

pytest_plugins = ["pytester"]

ESCAPES = {
    "write_etc": "open('/etc/t3-guard-probe', 'w')",
    "mkdir_var": "import os; os.mkdir('/var/lib/t3-guard-probe')",
    "sqlite_home": "import sqlite3; sqlite3.connect('/home/t3-guard-probe.sqlite')",
    "real_systemctl": "import subprocess; subprocess.run(['/usr/bin/systemctl', 'status'])",
    "non_loopback": "import socket; s = socket.socket(); s.settimeout(0.2); s.connect(('192.0.2.1', 80))",
}


def _run_inner(pytester, body):
    pytester.makeconftest((__import__("pathlib").Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(test_inner=textwrap.dedent(f"""
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


def test_child_process_reaching_systemctl_by_path_is_trapped(pytester):
    result = _run_inner(pytester, "import subprocess; assert subprocess.run(['systemctl', 'status']).returncode == 97")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*real systemctl was reached*"])
