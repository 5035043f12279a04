"""The runbook's operations as commands, through the real CLI on the simulated world:
freeze / unfreeze, status, mint, verify, quarantine."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from runner import activate
from tests.cli_checks import lines_starting, snapshot
from tests.runner_checks import assert_user_on, events, link_version
from tests.sim import builds

V24 = "0.0.24"
V26 = builds.GOOD_VERSIONS["good-0.0.26"]
V28 = builds.GOOD_VERSIONS["good-0.0.28"]


# ---------------------------------------------------------------- freeze / unfreeze
def test_freeze_records_who_when_why_and_a_run_then_holds(world):
    world.registry.set_tag("nightly", V28)
    before = snapshot(world)
    done = world.run_tracker("freeze", "--reason", "login bug under investigation", SUDO_USER="viktor")
    assert done.exit_code == 0, done.stderr
    freeze = json.loads(world.freeze_file.read_text())
    assert freeze["reason"] == "login bug under investigation" and freeze["by"] == "viktor"
    at = datetime.strptime(freeze["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - at) < timedelta(minutes=5)
    assert any(e.startswith('FROZEN reason="login bug under investigation" by=viktor') for e in events(done))

    held = world.run_tracker()  # a newer nightly is out, but the freeze holds
    assert held.exit_code == 0, held.stderr
    frozen = [e for e in events(held) if e.startswith("FROZEN ")]
    assert len(frozen) == 1 and frozen[0].startswith('FROZEN reason="login bug under investigation" by=viktor at=')
    assert not [e for e in events(held) if e.startswith(("UPDATE START", "BACKED UP"))]
    assert snapshot(world) == {**before, "freeze": True}

    done = world.run_tracker("unfreeze")
    assert done.exit_code == 0, done.stderr
    assert not world.freeze_file.exists()
    assert any(e.startswith("UNFROZEN") for e in events(done))
    again = world.run_tracker("unfreeze")
    assert again.exit_code == 0, again.stderr
    assert "not frozen" in again.stdout


def test_a_bare_touched_freeze_file_still_freezes(world):
    world.freeze_file.write_text("")  # the runbook's `touch /etc/t3-autoupdate.freeze`
    world.registry.set_tag("nightly", V28)
    held = world.run_tracker()
    assert held.exit_code == 0, held.stderr
    assert any(e.startswith("FROZEN reason=") for e in events(held))
    assert link_version(world, "wizard") == V24


# ---------------------------------------------------------------- status
def status_json(world) -> dict:
    done = world.run_tracker("status", "--json")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def user_line(text: str, os_user: str) -> str:
    found = [line for line in text.splitlines() if line.strip().startswith(f"{os_user}:")]
    assert len(found) == 1, text
    return found[0]


def test_status_of_a_healthy_fleet(world):
    data = status_json(world)
    assert data["last_good"] == V24 and data["frozen"] is None and data["quarantined"] == []
    assert data["unfinished_run"] is None
    assert data["users"] == {u.os_user: {"link": V24, "serving": V24, "stale": False, "off_link": None, "link_problem": None,
                                           "deferred": None, "off_last_good": False}
                             for u in world.users}
    done = world.run_tracker("status")
    assert done.exit_code == 0, done.stderr
    text = done.stdout
    assert "last-good: 0.0.24" in text and "frozen: no" in text and "quarantined: none" in text
    for user in world.users:
        assert user_line(text, user.os_user).strip() == f"{user.os_user}: link={V24} serving={V24}"


def test_status_flags_a_stale_user_a_deferred_user_a_freeze_and_quarantine(world):
    world.install_release(V26)
    world.point_user("emo", V26)  # the link moved, the server was never restarted
    activate.mark_deferred(world.state_dir / "deferred", "ancamilea", version=V28, reason="turn in flight")
    assert world.run_tracker("freeze", "--reason", "waiting for a fix").exit_code == 0
    from runner.quarantine import quarantine_build

    quarantine_build(world.state_dir / "quarantine", builds.BAD_VERSIONS["cookie-renamed"], reason="cookie renamed",
                     report_path=None, run_id="test")
    data = status_json(world)
    assert data["frozen"]["reason"] == "waiting for a fix"
    assert data["quarantined"] == [builds.BAD_VERSIONS["cookie-renamed"]]
    emo, anca, wizard = (data["users"][u] for u in ("emo", "ancamilea", "wizard"))
    assert (emo["link"], emo["serving"], emo["stale"]) == (V26, V24, True)
    assert anca["deferred"]["version"] == V28 and anca["deferred"]["reason"] == "turn in flight"
    assert anca["stale"] is False
    assert (wizard["stale"], wizard["deferred"]) == (False, None)

    text = world.run_tracker("status").stdout
    assert "frozen: yes: waiting for a fix" in text
    assert f"quarantined: {builds.BAD_VERSIONS['cookie-renamed']}" in text
    assert f"link={V26} serving={V24}" in user_line(text, "emo") and "STALE" in user_line(text, "emo")
    assert "deferred:" in user_line(text, "ancamilea") and V28 in user_line(text, "ancamilea")
    assert "STALE" not in user_line(text, "ancamilea") and "[" not in user_line(text, "wizard")


def test_status_shows_a_stopped_instance_as_down(world):
    world.systemctl_run("stop", "t3-serve@emo.service")
    data = status_json(world)
    assert data["users"]["emo"]["serving"] is None and data["users"]["emo"]["stale"] is False
    assert f"link={V24} serving=down" in user_line(world.run_tracker("status").stdout, "emo")


# ---------------------------------------------------------------- mint
def test_mint_prints_the_credential_from_that_users_own_linked_build(world):
    done = world.run_tracker("mint", "wizard")
    assert done.exit_code == 0, done.stderr
    credential = json.loads(done.stdout)
    assert isinstance(credential["credential"], str) and credential["credential"]
    assert "role" in credential and "scopes" not in credential  # 0.0.24's shape
    world.install_release(V26)
    world.point_user("emo", V26)
    emo = json.loads(world.run_tracker("mint", "emo").stdout)
    assert "scopes" in emo and "role" not in emo  # emo's link decides, not the global t3
    wizard = json.loads(world.run_tracker("mint", "wizard").stdout)
    assert "role" in wizard and wizard["credential"] != credential["credential"]


def test_mint_refuses_unmapped_and_invalid_users_with_exit_2(world):
    for os_user, message in (("nobody", "'nobody' is not in the user map"), ("root", "'root' is not in the user map"),
                             ("vbarzin", "'vbarzin' is not in the user map"),  # an SSO name is not an OS user
                             ("../wizard", "invalid OS user name"), ("Wizard", "invalid OS user name"),
                             ("", "invalid OS user name")):
        done = world.run_tracker("mint", os_user)
        assert done.exit_code == 2, (os_user, done.stderr)
        assert done.stdout == "" and message in done.stderr, (os_user, done.stderr)


def test_mint_of_a_mapped_user_without_a_link_is_exit_1(world):
    (world.active_dir / "emo").unlink()
    done = world.run_tracker("mint", "emo")
    assert done.exit_code == 1 and done.stdout == ""
    assert "emo has no release link" in done.stderr


# ---------------------------------------------------------------- verify
def test_verify_passes_on_a_healthy_fleet_and_fails_when_one_instance_is_down(world):
    done = world.run_tracker("verify")
    assert done.exit_code == 0, done.stderr
    passed = lines_starting(done, "t3-autoupdate: VERIFY PASSED")
    assert len(passed) == 1 and "tests=9" in passed[0], done.stderr

    world.systemctl_run("stop", "t3-serve@emo.service")
    broken = world.run_tracker("verify")
    assert broken.exit_code == 1, broken.stderr
    failed = lines_starting(broken, "t3-autoupdate: VERIFY FAILED")
    assert len(failed) == 1 and "emil.barzin" in failed[0], broken.stderr
    assert "vbarzin" not in failed[0].split("report=")[0]
    report = re.search(r' report=("[^"]+"|\S+)', failed[0]).group(1).strip('"')
    assert report.endswith(".xml") and (world.state_dir / "runs") in Path(report).parents

    others = world.run_tracker("verify", "--users", "vbarzin,ancaelena98")
    assert others.exit_code == 0, others.stderr
    assert "tests=6" in lines_starting(others, "t3-autoupdate: VERIFY PASSED")[0]


# ---------------------------------------------------------------- quarantine
def test_quarantine_lists_a_failed_build_and_clear_lets_the_next_run_try_it_again(world):
    bad = builds.BAD_VERSIONS["crash-at-start"]
    world.registry.set_tag("nightly", bad)
    failed = world.run_tracker()
    assert failed.exit_code == 1, failed.stderr
    assert any(e.startswith("HEALTH-CHECK FAILED") for e in events(failed))

    listed = world.run_tracker("quarantine")
    assert listed.exit_code == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert len(rows) == 1 and rows[0][0] == bad, listed.stdout
    assert rows[0][2] and rows[0][2] != "?"  # the reason
    assert Path(rows[0][3]).is_file() and rows[0][3].endswith(".xml")  # the junit report to read
    assert status_json(world)["quarantined"] == [bad]

    held = world.run_tracker()
    assert held.exit_code == 0 and any("code=quarantined" in e for e in events(held))

    cleared = world.run_tracker("quarantine", "--clear", bad)
    assert cleared.exit_code == 0, cleared.stderr
    assert any(e.startswith(f"QUARANTINE CLEARED version={bad}") for e in events(cleared))
    assert world.run_tracker("quarantine").stdout == "none\n"  # an empty listing says so
    again = world.run_tracker("quarantine", "--clear", bad)
    assert again.exit_code == 1 and "is not quarantined" in again.stderr

    retried = world.run_tracker()  # tried again: the gate, not the quarantine, stops it
    assert retried.exit_code == 1, retried.stderr
    assert any(e.startswith("UPDATE START") and f"target={bad}" in e for e in events(retried))
    assert any(e.startswith("HEALTH-CHECK FAILED") for e in events(retried))
    for user in world.users:
        assert_user_on(world, user.sso, V24)
