"""The health gate mints on the candidate's throwaway servers with exactly the command line a
login's mint runs (runner.mint), so the gate proves the very call the dispatch will make."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from runner import t3client
from runner.mint import mint_argv


def test_the_gate_mints_with_the_runners_command_line(monkeypatch, tmp_path):
    ran = []

    def fake_run(argv, **kwargs):
        ran.append(list(argv))
        return SimpleNamespace(stdout=json.dumps({"credential": "c"}), stderr="", exit_code=0)

    monkeypatch.setattr(t3client.proc, "run", fake_run)
    release, base = tmp_path / "releases" / "0.0.28", tmp_path / "home" / ".t3"
    assert t3client.mint_credential(str(release / "bin" / "t3"), base) == "c"
    assert ran == [mint_argv(release, base)]
    assert ran[0][1:4] == ["auth", "pairing", "create"] and Path(ran[0][0]).name == "t3"
