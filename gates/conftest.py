"""Options and fixtures of the gate suite, shared by the runner and by people.

Every option defaults to the runner's own config (TOML plus `T3_*` environment),
so on a production host `pytest gates -k vbarzin` needs no options. The runner
passes explicit options for the build under test.

Fail closed: a run that collects nothing, skips anything or passes nothing
exits non-zero, and one summary line says PASS or FAIL.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

import pytest

# (option, config attribute, help)
OPTIONS = [
    ("--t3-bin", "bin_link", "t3 binary under test (default: T3_BIN_LINK)"),
    ("--expect-version", None, "version the build under test must report (default: its package.json)"),
    ("--seed-db", None, "health gate seeds: user=path entries, comma-separated (a user's entries are one "
     "case: a V2 user's statev2.sqlite and state.sqlite), or plain paths (default: every user's newest "
     "pre-bump backups)"),
    ("--seed-user", None, "only this OS user's newest backups seed the health gate (default: every user in the map)"),
    ("--health-parallel", None, "throwaway servers the health gate runs at once (default: 4)"),
    ("--scratch", "tmpdir", "scratch directory on disk, never a tmpfs (default: T3_TMPDIR)"),
    ("--gate-user", "gate_user", "unprivileged user (name or numeric uid) every candidate process of the health "
     "gate runs as; never root (default: T3_GATE_USER)"),
    ("--serve-host", "serve_host", "host the throwaway server binds, as production (default: T3_SERVE_HOST)"),
    ("--smoke-port", "smoke_port", "port of the throwaway server, 0 = any free (default: T3_SMOKE_PORT)"),
    ("--ready-timeout", "ready_timeout", "seconds a server may take to become ready (default: T3_READY_TIMEOUT)"),
    ("--cookie-name", "cookie_name", "session cookie name the dispatch expects (default: T3_COOKIE_NAME)"),
    ("--dispatch", "dispatch", "dispatch URL (default: T3_DISPATCH)"),
    ("--dispatch-map", "dispatch_map", "dispatch.json with each SSO user's port (default: T3_DISPATCH_MAP)"),
    ("--user-map", "user_map", "sso=os_user map (default: T3_USER_MAP)"),
    ("--active-dir", "active_dir", "per-user release links (default: T3_ACTIVE_DIR)"),
    ("--backup-dest", "backup_dest", "pre-bump backups (default: T3_BACKUP_DEST)"),
    ("--users", None, "comma-separated SSO users the canary checks (default: everyone in the user map)"),
    ("--canary-version", None, "version every canary instance must run (default: the release its link points to)"),
    ("--start-when", None, "run no test until this file exists (the runner starts a gate early, so its start-up "
     "overlaps the restart it waits for; default: start at once)"),
    ("--options-when", None, "collect no test until this file exists, then take options from it: a JSON object "
     "of option names as listed here to string values (the runner starts the health gate while it stages, before "
     "the build and its seeds exist, so its start-up is done by then; default: the command line's options only)"),
    ("--start-within", None, "seconds --options-when or --start-when may hold the gate; then it fails (default: 900)"),
]
# What an options file may set: any gate option, but never a second hold for options.
FILE_OPTIONS = frozenset(option for option, _, _ in OPTIONS) - {"--options-when"}
OPTIONS_FILE_MAX = 1 << 20  # bytes; a bigger file is not the runner's


def pytest_addoption(parser):
    group = parser.getgroup("t3 gates")
    for option, _, help_text in OPTIONS:
        group.addoption(option, default=None, help=help_text)


class GateSettings:
    """Option values, falling back to the runner's config only when one is missing."""

    def __init__(self, config: pytest.Config):
        self._pytest_config = config
        self._runner_config = None

    def runner_config(self):
        if self._runner_config is None:
            from runner.config import load_config

            self._runner_config = load_config()
        return self._runner_config

    def get(self, option: str):
        value = self._pytest_config.getoption(option.lstrip("-").replace("-", "_"))
        if value is not None:
            return value
        attribute = next(attr for opt, attr, _ in OPTIONS if opt == option)
        if attribute is None:
            return None
        return getattr(self.runner_config(), attribute)

    def path(self, option: str) -> Path | None:
        value = self.get(option)
        return Path(value) if value is not None else None

    def users(self) -> dict[str, str]:
        """SSO name -> OS user, from the user map."""
        from runner.usermap import load_user_map

        return load_user_map(self.path("--user-map"))

    def dispatch_ports(self) -> dict[str, int]:
        path = self.path("--dispatch-map")
        data = json.loads(path.read_text())
        return {sso: int(entry["port"]) for sso, entry in data.items()}


def pytest_configure(config):
    config._t3_gate = GateSettings(config)
    config._t3_gate_counts = _COUNTS
    config._t3_gate_notes = []
    config._t3_gate_stopped = None


@pytest.fixture(scope="session")
def gate(pytestconfig) -> GateSettings:
    return pytestconfig._t3_gate


@pytest.fixture(scope="session")
def gate_notes(pytestconfig) -> list[str]:
    """Findings worth telling an operator that do not fail the gate (printed in the summary)."""
    return pytestconfig._t3_gate_notes


@pytest.fixture(scope="session")
def scratch_root(gate):
    root = gate.path("--scratch") or Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="t3-gate-", dir=root))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def pytest_generate_tests(metafunc):
    if "sso_user" in metafunc.fixturenames:
        gate = metafunc.config._t3_gate
        users = sorted(gate.users())
        chosen = gate.get("--users")
        if chosen is not None:
            wanted = [name for name in chosen.split(",") if name]
            unknown = sorted(set(wanted) - set(users))
            if unknown:
                raise pytest.UsageError(f"--users names {unknown} not in the user map")
            users = wanted
        metafunc.parametrize("sso_user", users, ids=users, scope="module")


def option_dest(option: str) -> str:
    """Where pytest keeps `option` on `config.option` (as `GateSettings.get` reads it)."""
    return option.lstrip("-").replace("-", "_")


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session):
    """Hold a gate started before its options exist (`--options-when`): the health gate's
    cases are its seeds, known only once the build is staged and the seeds copied, so it is
    held before collection. What needs no option is done first: pytest's start-up and the
    import of the gate's test modules (the bulk of what is left is collecting the cases). The
    file's options are then set as if given on the command line."""
    config = session.config
    options_file = config._t3_gate.get("--options-when")
    if options_file is None:
        return
    _import_gate_modules(config)
    _hold(config, options_file, f"T3-GATE HELD for options until {options_file} exists")
    for option, value in read_options_file(options_file, config).items():
        setattr(config.option, option_dest(option), value)


def read_options_file(path: str, config) -> dict[str, str]:
    """The options in `path`, or the gate fails (exit code 1) naming the file and the key: a
    regular file opened without following a link, one JSON object of options in FILE_OPTIONS
    (each once, none also on the command line) to string values."""
    def refuse(why: str):
        stop(config, f"bad options file {path}: {why}")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: a symlink
        refuse(f"cannot be opened without following a link: {exc.strerror}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        refuse("not a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(OPTIONS_FILE_MAX + 1)
    if len(data) > OPTIONS_FILE_MAX:
        refuse(f"larger than {OPTIONS_FILE_MAX} bytes")

    def unique(pairs):
        keys = [key for key, _ in pairs]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            refuse(f"key {twice[0]!r} given twice")
        return dict(pairs)

    try:
        values = json.loads(data, object_pairs_hook=unique)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError says the line and column
        refuse(f"not JSON: {exc}")
    if not isinstance(values, dict):
        refuse(f"not a JSON object but {type(values).__name__}")
    for key, value in values.items():
        if key not in FILE_OPTIONS:
            refuse(f"key {key!r} is not a gate option (one of {', '.join(sorted(FILE_OPTIONS))})")
        if not isinstance(value, str):
            refuse(f"key {key!r}: the value must be a string, not {type(value).__name__}")
        if config.getoption(option_dest(key)) is not None:
            refuse(f"key {key!r} is also on the command line")
    return values


def _import_gate_modules(config) -> None:
    """Import the gate test modules named on the command line, as collection would (pytest's
    assertion rewriting is in place by now; collection then finds them imported). They only
    define checks and import what those use: nothing runs, nothing reads an option."""
    package = __name__.rpartition(".")[0]
    here = Path(__file__).resolve().parent
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if package and path.parent == here and path.suffix == ".py" and path.name.startswith("test_"):
            importlib.import_module(f"{package}.{path.stem}")


def _hold(config, path: str, held_line: str) -> None:
    """Wait (polling every START_POLL) until `path` exists, at most --start-within seconds;
    then the gate fails: it was never told to start, so it proved nothing."""
    within = float(config._t3_gate.get("--start-within") or 900)
    deadline = time.monotonic() + within
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # what a reader of the gate's log (or a test) sees while it waits
        reporter.write_line(held_line)
        reporter.flush()
    while not os.path.lexists(path):
        if time.monotonic() >= deadline:
            stop(config, f"not started: {path} did not appear within {within:g}s")
        time.sleep(START_POLL)


def stop(config, reason: str) -> None:
    """End the gate before any check ran, a failure: the summary's `T3-GATE STOPPED` line says
    why (the runner's verdict quotes it, runner/gaterun.py)."""
    config._t3_gate_stopped = reason
    pytest.exit(f"T3-GATE {reason}", returncode=1)


def pytest_collection_finish(session):
    """Imports and collection are done, no check has run: set what exists now aside from the
    cyclic garbage collector, then hold a gate started early at its start line. A gate never
    told to start fails (it proved nothing).

    The freeze is for the end of the run: pytest's cleanup and the interpreter's exit each
    walk every object the collector tracks (pytest, requests, the runner's modules: most of
    what a gate process holds), which took longer than the canary's checks themselves
    (0.7-1.4 s on a loaded 2-core host, against 0.1 s frozen), after the verdict was written
    and before the runner could read it. Nothing frozen is garbage: it lives until the exit."""
    gc.freeze()
    go_file = session.config._t3_gate.get("--start-when")
    if go_file is None:
        return
    _hold(session.config, go_file, f"T3-GATE HELD until {go_file} exists ({len(session.items)} tests collected, "
                                   f"{gc.get_freeze_count()} objects frozen)")


START_POLL = 0.02  # the gate's start after go costs at most this
STOPPED = "T3-GATE STOPPED "  # the summary line of a gate ended before its checks, and why
_COUNTS = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    counts = _COUNTS
    if report.when == "call" and report.passed:
        counts["passed"] += 1
    elif report.failed:
        counts["failed" if report.when == "call" else "error"] += 1
    elif report.skipped:
        counts["skipped"] += 1


def _verdict(counts: dict, exitstatus: int) -> str:
    clean = exitstatus == 0 and counts["passed"] > 0 and not (counts["failed"] or counts["error"] or counts["skipped"])
    return "PASS" if clean else "FAIL"


def pytest_sessionfinish(session, exitstatus):
    # A skipped gate proved nothing: count it as a failure rather than a pass.
    if session.exitstatus == 0 and _verdict(session.config._t3_gate_counts, 0) == "FAIL":
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config._t3_gate_counts
    for note in config._t3_gate_notes:
        terminalreporter.write_line(f"T3-GATE NOTE {note}")
    if config._t3_gate_stopped:
        terminalreporter.write_line(f"{STOPPED}{config._t3_gate_stopped}")
    terminalreporter.write_line(
        f"T3-GATE {_verdict(counts, exitstatus)} passed={counts['passed']} failed={counts['failed']} "
        f"errors={counts['error']} skipped={counts['skipped']} exit={int(exitstatus)}"
    )
