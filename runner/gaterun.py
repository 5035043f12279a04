"""Run the gate suite as a subprocess and read its verdict, failing closed.

The gates are plain pytest tests (gates/); the runner never imports them, it
runs them exactly as an operator would and trusts only a junit report that
shows at least one test, every test passed, and a zero exit code.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import proc

GATES_DIR = Path(__file__).resolve().parent.parent / "gates"
GATE_FILES = {"health": "test_health.py", "canary": "test_canary.py"}


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
    argv = [python, "-m", "pytest", str(gates_dir / GATE_FILES[gate]), "--junitxml", str(junit), "-q"]
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
    run_dir.mkdir(parents=True, exist_ok=True)
    junit = run_dir / f"junit-{label}.xml"
    log = run_dir / f"gate-{label}.log"
    argv = gate_argv(python, gate, junit=junit, options=options, keyword=keyword)
    try:
        done = proc.run(argv, env=env, timeout=timeout, ok_codes=range(256), cwd=run_dir)
        exit_code, output = done.exit_code, done.stdout + done.stderr
    except proc.CommandError as exc:  # timed out or could not start: a failure, never a pass
        exit_code, output = exc.exit_code if exc.exit_code else 1, f"{exc}\n{exc.stdout}{exc.stderr}"
    log.write_text(output)
    summary = next((line for line in reversed(output.splitlines()) if line.startswith("T3-GATE ")), "")
    result = GateResult(gate, False, exit_code, report=junit, log=log, summary=summary)
    try:
        totals, result.problems = read_junit(junit)
    except (OSError, ValueError, ET.ParseError) as exc:
        result.problems = [f"no readable junit report ({exc}); gate exit code {exit_code}"]
        return result
    result.tests, result.failures, result.errors, result.skipped = (
        totals["tests"], totals["failures"], totals["errors"], totals["skipped"])
    if result.tests == 0:
        result.problems.insert(0, "the gate collected no tests")
    result.passed = (exit_code == 0 and result.tests > 0 and not (result.failures or result.errors or result.skipped)
                     and summary.startswith("T3-GATE PASS"))
    return result
