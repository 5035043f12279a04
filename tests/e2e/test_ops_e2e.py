"""End to end on the simulated world: real tracker runs send their outcomes to loopback
receivers (apprise's JSON webhook), and `history` lists those runs from their summaries.

One world, three runs in order: a good bump (`update complete` chosen as an event), a build
the health gate stops (a default event: arrives with the run id and the version, while a
second receiver hangs and costs the run at most `notify_timeout`), and `history` over both.
"""
from __future__ import annotations

import json

import pytest

from tests.runner_checks import events
from tests.sim import builds
from tests.sim.world import World
from tests.webhook import Webhook

V24 = "0.0.24"
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
BAD = builds.BAD_VERSIONS["endpoint-renamed"]


@pytest.fixture(scope="module")
def ops_world(world_template, tmp_path_factory):
    world = World(tmp_path_factory.mktemp("ops-e2e") / "world", template=world_template)
    try:
        yield world.build()
    finally:
        world.stop()


def only(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, lines
    return found[0]


def test_runs_notify_and_history_lists_them(ops_world):
    world = ops_world
    with Webhook() as hook, Webhook(mode="hang") as stuck:
        # 1. A good bump; `update complete` is asked for explicitly (not a default event).
        world.registry.set_tag("nightly", V28)
        good = world.run_tracker(T3_NOTIFY_URLS=hook.url, T3_NOTIFY_EVENTS="update complete,HEALTH-CHECK FAILED")
        assert good.exit_code == 0, good.stderr
        good_run = only(events(good), "UPDATE START ").split("run=")[1].split()[0]
        [sent] = hook.received
        assert sent["title"].endswith(f": update complete {V28}") and f"run: {good_run}" in sent["message"]
        assert only(events(good), "NOTIFIED ").startswith('NOTIFIED about="update complete" url=json://127.0.0.1:')

        # 2. A build the health gate stops; the default events; one receiver never answers.
        world.registry.set_tag("nightly", BAD)
        bad = world.run_tracker(T3_NOTIFY_URLS=f"{stuck.url} {hook.url}", T3_NOTIFY_TIMEOUT="2")
        assert bad.exit_code == 1, bad.stderr  # the gate's verdict; notifying changes nothing
        bad_run = only(events(bad), "UPDATE START ").split("run=")[1].split()[0]
        message = hook.wait_for(2)[1]
        assert message["title"].endswith(f": HEALTH-CHECK FAILED {BAD}"), message
        assert f"run: {bad_run}" in message["message"] and f"update: {V28} -> {BAD}" in message["message"]
        assert "no pairing endpoint" in message["message"]
        assert str(world.state_dir / "runs" / bad_run) in message["message"]
        assert len(stuck.received) == 1  # it got the request, and never answered
        failed = only(events(bad), "NOTIFY FAILED ")
        assert "no answer within 2s (notify_timeout)" in failed and f":{stuck.url.split(':')[2]}" in failed
        assert only(events(bad), "NOTIFIED ").startswith('NOTIFIED about="HEALTH-CHECK FAILED"')
        # Both outcomes of sending are in the run's own log too.
        run_log = (world.state_dir / "runs" / bad_run / "events.log").read_text()
        assert "NOTIFY FAILED " in run_log and "NOTIFIED " in run_log

    # 3. history: newest first, one line per run, from the summaries the runs wrote.
    listed = world.run_tracker("history")
    assert listed.exit_code == 0, listed.stderr
    newest, older = listed.stdout.splitlines()[:2]
    assert f"{V28} -> {BAD}" in newest and "health-check-failed" in newest and "moved 0," in newest
    assert newest.endswith(".xml")  # the failing gate's junit report
    assert f"{V24} -> {V28}" in older and " updated " in older
    assert f"moved {len(world.users)}, deferred 0, rolled back 0" in older
    assert older.endswith(str(world.state_dir / "runs" / good_run))
    as_json = json.loads(world.run_tracker("history", "--json", "-n", "1").stdout)
    assert [(r["run_id"], r["from"], r["to"], r["result"]) for r in as_json] == [
        (bad_run, V28, BAD, "health-check-failed")]
    assert isinstance(as_json[0]["duration_s"], int) and as_json[0]["duration_s"] >= 0
