"""Notifications through apprise, against a loopback JSON webhook (tests/webhook.py): what is
sent and when, a receiver that fails or hangs, and the config keys. The end-to-end case (a
real tracker run on the simulated world) is tests/e2e/test_ops_e2e.py."""
from __future__ import annotations

import io
import json
import os

import pytest

from runner import cli
from runner import config as config_mod
from runner.events import EventLog
from runner.notify import Notifier
from runner.notifyurls import DEFAULT_EVENTS
from tests.webhook import Webhook


def notifier_log(urls, events=DEFAULT_EVENTS, timeout=5.0, run_dir=None):
    log = EventLog(stream=io.StringIO())
    log.notifier = Notifier(tuple(urls), tuple(events), timeout, host="testhost")
    log.run_dir = run_dir
    return log


def test_a_default_event_arrives_with_run_version_and_report(tmp_path):
    run_dir = tmp_path / "runs" / "20261130T040000Z-42"
    with Webhook() as hook:
        log = notifier_log([hook.url], run_dir=run_dir)
        log("UPDATE START", run=run_dir.name, installed="0.0.24", target="0.0.25-nightly.20261130.1")
        log("HEALTH-CHECK FAILED", version="0.0.25-nightly.20261130.1", reason="test_populated: rows lost",
            report=str(run_dir / "junit-health.xml"))
        log.notifier.finish(log)
        [message] = hook.received
    assert message["path"] == "/hook"
    assert message["title"] == "t3-autoupdate on testhost: HEALTH-CHECK FAILED 0.0.25-nightly.20261130.1"
    body = message["message"]
    for text in (f"run: {run_dir.name}", "update: 0.0.24 -> 0.0.25-nightly.20261130.1", "reason: test_populated: rows lost",
                 f"report: {run_dir / 'junit-health.xml'}", f"run directory: {run_dir}"):
        assert text in body, body
    assert log.lines[-1].startswith("NOTIFIED about=\"HEALTH-CHECK FAILED\" url=json://127.0.0.1:"), log.lines


def test_only_the_chosen_events_are_sent(tmp_path):
    with Webhook() as hook:
        log = notifier_log([hook.url], events=("update complete", "ROLLED BACK"))
        log("UPDATE START", run="r1", installed="0.0.24", target="0.0.25")
        log("DEFERRED", user="alice", version="0.0.25", reason="turn in flight")
        log("HEALTH-CHECK PASSED", version="0.0.25")
        log("update complete", version="0.0.25", previous="0.0.24", users="bob")
        log.notifier.finish(log)
        assert [m["title"] for m in hook.received] == ["t3-autoupdate on testhost: update complete 0.0.25"]


def test_frozen_is_news_only_after_a_failure_in_the_same_run():
    with Webhook() as hook:
        held = notifier_log([hook.url])
        held("FROZEN", reason="operator hold", by="ops", freeze_file="/etc/t3-autoupdate.freeze")
        held.notifier.finish(held)
        assert hook.received == []  # the daily hold, or an operator's own freeze, is not news
        failed = notifier_log([hook.url])
        failed("ROLLED BACK", version="0.0.25", to="0.0.24", users="alice", reason="canary failed")
        failed("FROZEN", reason="canary failed", freeze_file="/etc/t3-autoupdate.freeze")
        failed.notifier.finish(failed)
        titles = [m["title"] for m in hook.wait_for(2)]
    assert sorted(titles) == ["t3-autoupdate on testhost: FROZEN 0.0.25",
                              "t3-autoupdate on testhost: ROLLED BACK 0.0.25"], titles


def test_a_receiver_answering_500_is_logged_and_changes_nothing():
    with Webhook(mode="error") as hook:
        log = notifier_log([hook.url])
        log("ROLLBACK FAILED", version="0.0.25", users="alice", reason="restore failed")
        log.notifier.finish(log)
        assert len(hook.received) == 1
    failed = [line for line in log.lines if line.startswith("NOTIFY FAILED ")]
    assert len(failed) == 1 and 'about="ROLLBACK FAILED"' in failed[0] and "500" in failed[0], log.lines


def test_a_hanging_receiver_costs_at_most_the_timeout():
    with Webhook(mode="hang") as hook, Webhook() as good:
        log = notifier_log([hook.url, good.url], timeout=1.0)
        log("REPEATED REJECTIONS", count=3, versions="a,b,c", reason="suspect the gate")
        log.notifier.finish(log)  # returns although the hanging receiver never answers
        # The hanging receiver records the body in its own handler thread, which a loaded
        # machine may not have run yet when the client gave up (the good one answered: done).
        assert len(hook.wait_for(1)) == 1 and len(good.received) == 1
    outcomes = [line.split(" about=")[0] for line in log.lines[1:]]
    assert outcomes == ["NOTIFY FAILED", "NOTIFIED"], log.lines
    assert "no answer within 1s (notify_timeout)" in log.lines[1]


def test_an_unreachable_receiver_is_logged():
    with Webhook() as hook:
        url = hook.url
    log = notifier_log([url], timeout=5.0)  # the port is closed now: connection refused
    log("HEALTH-CHECK FAILED", version="0.0.25", reason="x")
    log.notifier.finish(log)
    assert log.lines[-1].startswith("NOTIFY FAILED "), log.lines


# The config keys.

def test_notify_keys_are_shown_by_config_check_with_secrets_masked(site, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("T3_NOTIFY_URLS", "json://127.0.0.1:9/hook ntfys://user:s3cret@ntfy.example/alerts")
    monkeypatch.setenv("T3_NOTIFY_EVENTS", "ROLLED BACK,update complete")
    assert cli.main(["config", "check"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ", 1)[0]: line for line in out.splitlines() if " = " in line}
    assert lines["notify_events"] == 'notify_events = ["ROLLED BACK", "update complete"]  # environment'
    assert lines["notify_timeout"] == "notify_timeout = 10.0  # default"
    assert "json://127.0.0.1:9/hook" in lines["notify_urls"] and "ntfy.example" in lines["notify_urls"]
    assert "s3cret" not in out


def test_notify_defaults(site):  # noqa: F811
    cfg = config_mod.load_config()
    assert cfg.notify_urls == () and cfg.notify_events == DEFAULT_EVENTS and cfg.notify_timeout == 10.0


def test_notify_keys_from_toml(site):  # noqa: F811
    config = site / "config.toml"
    config.write_text(config.read_text() + 'notify_urls = ["json://127.0.0.1:9/a", "ntfy://topic"]\n'
                      'notify_events = ["HEALTH-CHECK FAILED"]\nnotify_timeout = "30s"\n')
    cfg = config_mod.load_config()
    assert cfg.notify_urls == ("json://127.0.0.1:9/a", "ntfy://topic")
    assert cfg.notify_events == ("HEALTH-CHECK FAILED",) and cfg.notify_timeout == 30.0


@pytest.mark.parametrize("name, value, problem", [
    ("T3_NOTIFY_URLS", "hooks.example/alert", "'hooks.example/alert' is not an apprise URL"),
    ("T3_NOTIFY_EVENTS", "ROLLED BACK,ROLLED-BACK", "unknown event 'ROLLED-BACK'"),
    ("T3_NOTIFY_TIMEOUT", "0", "must be more than zero"),
])
def test_bad_notify_values_are_config_errors_naming_the_key(site, monkeypatch, capsys, name, value, problem):  # noqa: F811
    monkeypatch.setenv(name, value)
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert f"{name} (environment): " in err and problem in err, err


def test_a_url_apprise_cannot_use_fails_config_check_and_is_logged_by_a_run(site, monkeypatch, capsys):  # noqa: F811
    config = site / "config.toml"
    config.write_text(config.read_text() + 'notify_urls = ["nosuchservice://token@x"]\n')
    assert cli.main(["config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: notify_urls: 'nosuchservice://...' is not a URL apprise can send to" in err, err
    assert "token" not in err
    # A run is not stopped by it (notifications never change an outcome): it says so.
    log = EventLog(stream=io.StringIO())
    cli.wire_outcomes(config_mod.load_config(), "run", log)
    assert log.lines and log.lines[0].startswith("NOTIFY FAILED reason=") and "notify_urls" in log.lines[0]


def test_mint_and_status_never_import_apprise(site):  # noqa: F811
    """apprise takes seconds to import; `mint` runs at every login."""
    # status asks systemd which binary each server runs: a stand-in that answers nothing (the
    # guard's trap stands where a real systemctl would be found on PATH).
    env = {**os.environ, "T3_NOTIFY_URLS": "json://127.0.0.1:9/hook", "T3_SYSTEMCTL": "/bin/false"}
    code = ("import sys; from runner import cli; cli.main(['status']); "
            "print('apprise' in sys.modules)")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
    json.dumps(done.returncode)


# LONG DEFERRAL (runner/longdefer.py): after a run, once per streak, through the real CLI.

def test_a_user_deferred_longer_than_the_limit_is_told_once_per_streak(site, monkeypatch, capsys):  # noqa: F811
    from datetime import timedelta

    from runner.activate import clear_deferred, mark_deferred
    from runner.state import utc_now, write_freeze

    cfg = config_mod.load_config()
    assert cfg.notify_deferral_after == 3 * 86400  # the default: 3 days
    deferred_dir = site / "state" / "deferred"
    mark_deferred(deferred_dir, "wizard", version="0.0.25", reason="turn in flight", now=utc_now() - timedelta(days=4))
    mark_deferred(deferred_dir, "emo", version="0.0.25", reason="recent activity", now=utc_now() - timedelta(days=1))
    write_freeze(site / "freeze", "operator hold", by="ops")  # a run that holds at once: no instance needed
    monkeypatch.setenv("T3_NOTIFY_EVENTS", "LONG DEFERRAL")

    def run_and_receive() -> tuple[list[dict], str]:
        with Webhook() as hook:
            monkeypatch.setenv("T3_NOTIFY_URLS", hook.url)
            assert cli.main(["run"]) == 0
            return list(hook.received), capsys.readouterr().err

    received, err = run_and_receive()
    assert [m["title"].split(": ", 1)[1] for m in received] == ["LONG DEFERRAL 0.0.25"], err
    assert "user: wizard" in received[0]["message"] and "deferred_for: 4d0h" in received[0]["message"]
    assert "LONG DEFERRAL user=wizard deferred_for=4d0h" in err and "user=emo" not in err
    # The same streak is told once; a later run says nothing about it.
    received, err = run_and_receive()
    assert received == [] and "LONG DEFERRAL" not in err, err
    # Moved, then deferred again for long: a new streak, told again.
    clear_deferred(deferred_dir, "wizard")
    assert cli.main(["run"]) == 0
    mark_deferred(deferred_dir, "wizard", version="0.0.26", reason="turn in flight", now=utc_now() - timedelta(days=5))
    received, err = run_and_receive()
    assert [m["title"].split(": ", 1)[1] for m in received] == ["LONG DEFERRAL 0.0.26"], err


def test_the_deferral_limit_is_a_config_key(site, monkeypatch):  # noqa: F811
    monkeypatch.setenv("T3_NOTIFY_DEFERRAL_AFTER", "36h")
    assert config_mod.load_config().notify_deferral_after == 36 * 3600
