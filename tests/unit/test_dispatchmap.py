"""dispatch.json is validated when a command that reaches instances starts: exit 2 naming
the file and the entry (a `[]` crashed `status` with exit 3), never a crash mid-run."""
from __future__ import annotations

import json

import pytest

from runner import cli
from runner.dispatchmap import DispatchMapError, parse_ports

GOOD = {"vbarzin": {"os_user": "wizard", "port": 3781}, "emil.barzin": {"os_user": "emo", "port": 3782}}


@pytest.mark.parametrize("text, problem", [
    ("[]", "must be a JSON object of sso name -> {os_user, port}, not list"),
    ("{ not json", "not valid JSON"),
    (json.dumps({**GOOD, "vbarzin": ["wizard", 3781]}), "vbarzin: must be an object with os_user and port"),
    (json.dumps({**GOOD, "vbarzin": {"os_user": "wizard", "port": "3781"}}), "vbarzin: port '3781' is not a port"),
    (json.dumps({**GOOD, "vbarzin": {"os_user": "wizard", "port": 70000}}), "vbarzin: port 70000 is not a port"),
    (json.dumps({**GOOD, "vbarzin": {"os_user": "../root", "port": 3781}}),
     "vbarzin: os_user '../root' is not a valid OS user name"),
    (json.dumps({**GOOD, "emil.barzin": {"os_user": "emo", "port": 3781}}), "port 3781 is already wizard's"),
    (json.dumps({"vbarzin": GOOD["vbarzin"]}), "no entry for OS user emo of the user map"),
])
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["run"], ["rollback"], ["drain-deferred"],
                                     ["verify"]])
def test_a_bad_dispatch_map_is_exit_2_naming_file_and_problem(site, capsys, text, problem, command):  # noqa: F811
    (site / "dispatch.json").write_text(text)
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("t3-autoupdate: configuration error:\n"), err
    assert f"{site / 'dispatch.json'}: " in err and problem in err, err
    assert "CRASHED" not in err and not list((site / "state").glob("runs/crash-*"))


def test_a_missing_dispatch_map_is_exit_2(site, capsys):  # noqa: F811
    (site / "dispatch.json").unlink()
    assert cli.main(["status"]) == 2
    assert f"{site / 'dispatch.json'}: cannot read: No such file or directory" in capsys.readouterr().err


def test_freeze_works_whatever_the_map(site, capsys):  # noqa: F811
    (site / "dispatch.json").write_text("[]")
    assert cli.main(["freeze", "--reason", "map broken, holding"]) == 0
    assert cli.main(["unfreeze"]) == 0


def test_every_problem_is_reported_at_once():
    text = json.dumps({"a": {"os_user": "wizard", "port": 0}, "b": {"os_user": "Emo", "port": 3782}})
    with pytest.raises(DispatchMapError) as caught:
        parse_ports("d.json", text, ("wizard", "emo"))
    assert caught.value.problems == ["d.json: a: port 0 is not a port number (1-65535)",
                                     "d.json: b: os_user 'Emo' is not a valid OS user name"]


def test_a_good_map_gives_each_users_port():
    assert parse_ports("d.json", json.dumps(GOOD), ("wizard", "emo")) == {"wizard": 3781, "emo": 3782}
