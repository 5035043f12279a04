"""Run the gate suite as a subprocess and read its verdict, failing closed.

The gates are plain pytest tests (gates/); the runner never imports them, it
runs them exactly as an operator would and trusts only a junit report that
shows at least one test, every test passed, and a zero exit code.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import proc
from .state import atomic_write

GATES_DIR = Path(__file__).resolve().parent.parent / "gates"
GATE_FILES = {"health": "test_health.py", "canary": "test_canary.py"}
STOPPED = "T3-GATE STOPPED "  # gates/conftest.py: a gate ended before its checks says why on this line


@dataclass
class GateResult:
    gate: str
    passed: bool
    exit_code: int
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    report: Path | None = None
    log: Path | None = None
    summary: str = ""
    problems: list[str] = field(default_factory=list)  # "test id: first line of its failure"

    def reason(self) -> str:
        if self.passed:
            return self.summary
        return "; ".join(self.problems[:3]) or self.summary or f"gate exit code {self.exit_code}"


def gate_argv(python: str, gate: str, *, junit: Path, options: Mapping[str, str], keyword: str | None = None,
              gates_dir: Path = GATES_DIR) -> list[str]:
    # pytest-timeout by name: the gate's environment turns plugin autoloading off (_gate_env).
    argv = [python, "-m", "pytest", str(gates_dir / GATE_FILES[gate]), "--junitxml", str(junit), "-q",
            "-p", "pytest_timeout"]
    for option, value in sorted(options.items()):
        argv += [option, str(value)]
    if keyword:
        argv += ["-k", keyword]
    return argv


def failure_message(element, outcome: str) -> str:
    """The failure's message; newer pytest truncates the attribute, so then the `E` lines
    of the element's text (the full report) are used."""
    message = (element.get("message") or "").strip()
    if message and "[truncated" not in message:
        return message.splitlines()[0]
    explained = " ".join(line[1:].strip() for line in (element.text or "").splitlines()
                         if line.startswith("E ") and line[1:].strip())
    if explained:
        return explained
    return message.splitlines()[0] if message else outcome


def read_junit(path: Path) -> tuple[dict[str, int], list[str]]:
    """Totals and the failed tests' first message lines; raises ValueError on anything unreadable."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    if not suites:
        raise ValueError(f"{path}: no testsuite element")
    totals = {k: sum(int(s.get(k, "0")) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    problems = []
    for case in root.iter("testcase"):
        for outcome in ("failure", "error", "skipped"):
            element = case.find(outcome)
            if element is not None:
                problems.append(f"{case.get('name')}: {failure_message(element, outcome)}")
    return totals, problems


def run_gate(gate: str, *, run_dir: Path, options: Mapping[str, str], keyword: str | None = None,
             env: Mapping[str, str] | None = None, timeout: float = 900.0, python: str = sys.executable,
             label: str | None = None) -> GateResult:
    label = label or (f"{gate}-{keyword}" if keyword else gate)
    junit, log = _report_paths(run_dir, label)
    argv = gate_argv(python, gate, junit=junit, options=options, keyword=keyword)
    try:
        done = proc.run(argv, env=_gate_env(env), timeout=timeout, ok_codes=range(256), cwd=run_dir)
        exit_code, output = done.exit_code, done.stdout + done.stderr
    except proc.CommandError as exc:  # timed out or could not start: a failure, never a pass
        exit_code, output = exc.exit_code if exc.exit_code else 1, f"{exc}\n{exc.stdout}{exc.stderr}"
    log.write_text(output)
    return gate_verdict(gate, exit_code, output, junit, log)


class PendingGate:
    """A gate process started ahead of its moment (`start_gate`), held until `go()`. Held at
    its start line, it has imported pytest and the gate suite and collected its tests: the
    canary's gate is started before the user's stop, so its start-up (most of a gate run's
    CPU) overlaps the restart instead of following it. Held for its options
    (`options_at_go`), it has imported them but collects nothing until `go(options)`: the
    health gate's cases are its seeds, which exist only after staging and the seed copies, so
    it is started beside staging. Every check still runs after `go()`.

    `result()` waits for the verdict (at most `timeout` seconds after `go()`, then it is
    killed: a failure); `cancel()` ends a gate that will not be needed (a no-op once it has
    ended), as does leaving it as a context. A runner that dies takes its pending gates with
    it (proc.spawn: they die with their parent)."""

    def __init__(self, gate: str, popen, *, junit: Path, log: Path, go_file: Path, timeout: float,
                 options_at_go: bool = False):
        self.gate, self._popen, self.junit, self.log = gate, popen, junit, log
        self._go_file, self._timeout, self._options_at_go = go_file, timeout, options_at_go
        self._went: float | None = None

    def go(self, options: Mapping[str, str] | None = None) -> None:
        """Start the checks; `options` (gate option -> value) exactly when started `options_at_go`.
        A file of options appears whole or not at all (written aside, fsynced, renamed into place)."""
        if self._went is not None:
            raise RuntimeError(f"{self.gate} gate told to go twice")
        if (options is not None) != self._options_at_go:
            raise ValueError(f"{self.gate} gate: options at go {'needed' if self._options_at_go else 'not taken'}")
        if options is None:  # nothing to read: its appearing is the whole message
            os.close(os.open(self._go_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        else:
            atomic_write(self._go_file, json.dumps({key: str(value) for key, value in options.items()}), 0o600,
                         exclusive=True)
        self._went = time.monotonic()

    def cancel(self) -> None:
        proc.terminate(self._popen, timeout=5)

    def ended(self) -> bool:
        """Whether its process has ended (before `go()`: it gave up waiting, a verdict on nothing)."""
        return self._popen.poll() is not None

    def __enter__(self) -> "PendingGate":
        return self

    def __exit__(self, *exc_info) -> None:
        self.cancel()

    def result(self) -> GateResult:
        if self._went is None:
            raise RuntimeError("result() of a gate never told to go")
        left = self._timeout - (time.monotonic() - self._went)
        try:
            exit_code = wait_exit(self._popen, max(0.0, left))
            prefix = ""
        except subprocess.TimeoutExpired:
            proc.terminate(self._popen, timeout=5)
            exit_code, prefix = 1, f"gate timed out after {self._timeout:g}s\n"
        output = prefix + self.log.read_text(errors="replace")
        return gate_verdict(self.gate, exit_code, output, self.junit, self.log)


def wait_exit(popen, timeout: float) -> int:
    """`popen.wait(timeout)`, told of the exit by the kernel (a pidfd) instead of polling:
    Popen.wait with a timeout sleeps up to 50 ms between looks, and a canary gate's verdict
    is waited for inside the user's canary, once per user. Without pidfds, Popen.wait."""
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # no pidfd here, or the child is already reaped
        return popen.wait(timeout)
    try:
        select.select([pidfd], [], [], timeout)  # readable once the process has exited
    finally:
        os.close(pidfd)
    return popen.wait(0)  # reaps it; TimeoutExpired if the deadline passed first


def start_gate(gate: str, *, run_dir: Path, options: Mapping[str, str], env: Mapping[str, str] | None = None,
               timeout: float = 900.0, start_within: float = 900.0, python: str = sys.executable,
               label: str | None = None, options_at_go: bool = False) -> PendingGate:
    """`run_gate`, started now and held until `.go()` (then `.result()`): at its start line, or
    with `options_at_go` before collection, until `.go(options)` adds the options not known
    yet; `start_within` bounds the hold, after which the gate gives up by itself (a failure)."""
    label = label or gate
    junit, log = _report_paths(run_dir, label)
    go_file = _go_file(run_dir, label, options_at_go)
    hold = "--options-when" if options_at_go else "--start-when"
    options = {**options, hold: str(go_file), "--start-within": f"{start_within:g}"}
    argv = gate_argv(python, gate, junit=junit, options=options)
    popen = proc.spawn(argv, log_path=log, env=_gate_env(env), cwd=run_dir)
    return PendingGate(gate, popen, junit=junit, log=log, go_file=go_file, timeout=timeout,
                       options_at_go=options_at_go)


def _go_file(run_dir: Path, label: str, options_at_go: bool) -> Path:
    return run_dir / (f"go-{label}.json" if options_at_go else f"go-{label}")


def _report_paths(run_dir: Path, label: str) -> tuple[Path, Path]:
    """(junit report, output log) of one gate run; neither may exist yet (a gate's verdict is
    read from its own files only), nor may its go files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    junit, log = run_dir / f"junit-{label}.xml", run_dir / f"gate-{label}.log"
    for path in (junit, log, _go_file(run_dir, label, False), _go_file(run_dir, label, True)):
        if os.path.lexists(path):
            path.unlink()
    return junit, log


def _gate_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The gate's environment: pytest loads only the plugins the gates name (gate_argv,
    gates/pytest.ini), never whatever else is installed beside it (autoloading them is
    start-up cost, and a plugin the gates did not ask for has no business in a verdict)."""
    return {**(proc.child_env() if env is None else env), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def gate_verdict(gate: str, exit_code: int, output: str, junit: Path, log: Path) -> GateResult:
    """Fail closed: a pass needs exit code 0, a readable junit report with at least one test and
    no failure, error or skip, and the gate's own `T3-GATE PASS` summary line."""
    summary = next((line for line in reversed(output.splitlines()) if line.startswith("T3-GATE ")), "")
    result = GateResult(gate, False, exit_code, report=junit, log=log, summary=summary)
    try:
        totals, result.problems = read_junit(junit)
    except (OSError, ValueError, ET.ParseError) as exc:
        result.problems = [f"no readable junit report ({exc}); gate exit code {exit_code}"]
        return result
    result.tests, result.failures, result.errors, result.skipped = (
        totals["tests"], totals["failures"], totals["errors"], totals["skipped"])
    if result.tests == 0:  # the gate's own word on why, when it stopped before its checks
        stopped = next((line[len(STOPPED):] for line in output.splitlines() if line.startswith(STOPPED)), None)
        result.problems.insert(0, f"the gate stopped: {stopped}" if stopped else "the gate collected no tests")
    result.passed = (exit_code == 0 and result.tests > 0 and not (result.failures or result.errors or result.skipped)
                     and summary.startswith("T3-GATE PASS"))
    return result
