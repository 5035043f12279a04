"""gates.throwaway.ServerPool with stand-in servers: cases start ahead of use, at most
`bound` alive, each on its own port (the configured one once), in the order they will be
used; a failure is that case's verdict and frees its slot; nothing waits on itself."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from runner.t3client import GateFailure
from gates.throwaway import ServerPool


class FakeServer:
    def __init__(self, key, port, log, *, polls_to_ready=1, failure=None):
        self.key, self.port, self.log = key, port, log
        self.polls_left = polls_to_ready
        self.failure = failure
        self.stopped = False

    def check_ready(self):
        if self.failure:
            raise GateFailure(self.failure)
        self.polls_left -= 1
        return self.polls_left <= 0

    waited = False

    def stop_soon(self):
        if not self.stopped:
            self.log.append(("stop", self.key))
        self.stopped = True

    def stop(self, timeout=10.0):
        self.stop_soon()
        self.waited = True
        self.log.append(("waited", self.key, timeout))


class Launched:
    def __init__(self, server):
        self.server = server


def make_pool(keys, *, bound, first_port=0, failures=(), launch_errors=(), polls=1, on_ready=None):
    log, servers = [], {}

    def launch(key, port):
        if key in launch_errors:
            raise GateFailure(f"seed of {key} does not exist")
        log.append(("start", key))
        servers[key] = FakeServer(key, port, log, polls_to_ready=polls,
                                  failure=f"{key} exited" if key in failures else None)
        return Launched(servers[key])

    return ServerPool(keys, launch, bound=bound, first_port=first_port, on_ready=on_ready), log, servers


def alive(log):
    running, peak = set(), 0
    for action, key, *_ in log:
        (running.add if action == "start" else running.discard)(key)
        peak = max(peak, len(running))
    return peak


def test_cases_start_together_up_to_the_bound_and_in_order():
    pool, log, servers = make_pool(["fresh", "a", "b", "c", "d"], bound=3)
    assert pool.get("fresh").server is servers["fresh"]
    assert log == [("start", "fresh"), ("start", "a"), ("start", "b")]  # started before anyone asked
    for key in ["fresh", "a", "b", "c", "d"]:
        assert pool.get(key).server.key == key
        pool.release(key)
    assert alive(log) == 3
    assert [k for action, k, *_ in log if action == "start"] == ["fresh", "a", "b", "c", "d"]
    assert all(s.stopped for s in servers.values())


def test_each_server_gets_its_own_port_and_the_smoke_port_once():
    pool, _, servers = make_pool(["fresh", "a", "b", "c"], bound=4, first_port=39999)
    for key in ["fresh", "a", "b", "c"]:
        pool.get(key)
    ports = [servers[k].port for k in ["fresh", "a", "b", "c"]]
    assert ports[0] == 39999 and len(set(ports)) == 4


def test_a_failure_is_that_case_verdict_and_frees_its_slot():
    pool, log, servers = make_pool(["fresh", "a", "b"], bound=2, failures={"fresh"}, launch_errors={"a"})
    with pytest.raises(GateFailure, match="fresh exited"):
        pool.get("fresh")
    assert servers["fresh"].stopped  # a dead or timed-out server is stopped at once
    with pytest.raises(GateFailure, match="seed of a does not exist"):
        pool.get("a")
    assert pool.get("b").server.key == "b"
    with pytest.raises(GateFailure, match="fresh exited"):  # asked again (another test of the case)
        pool.get("fresh")


def test_a_case_asked_for_out_of_order_never_waits_on_the_pool():
    pool, log, _ = make_pool(["a", "b", "c"], bound=1, polls=3)
    assert pool.get("c").server.key == "c"  # "a" holds the only slot and is never released first
    assert ("start", "c") in log


def test_close_stops_every_server_still_up_and_starts_nothing_more():
    pool, log, servers = make_pool(["a", "b", "c"], bound=2)
    pool.get("a")
    pool.close()
    assert all(s.stopped for s in servers.values())
    assert [k for action, k, *_ in log if action == "start"] == ["a", "b"]


def test_unknown_case_and_bad_bound_are_refused():
    pool, _, _ = make_pool(["a"], bound=1)
    with pytest.raises(KeyError):
        pool.get("zzz")
    with pytest.raises(ValueError):
        ServerPool(["a"], lambda k, p: None, bound=0)


def test_no_database_after_start_is_named(tmp_path):
    from gates.throwaway import ThrowawayServer

    server = ThrowawayServer("/nonexistent/t3", tmp_path / "case", host="0.0.0.0", port=1)
    server.userdata.mkdir(parents=True)
    (server.userdata / "settings.json").write_text("{}")
    with pytest.raises(GateFailure, match="after start, no statev2.sqlite or state.sqlite in the base dir"):
        server.live_db()


def test_on_ready_is_called_once_per_case_when_its_server_is_first_seen_ready():
    seen = []
    pool, log, servers = make_pool(["fresh", "a", "b"], bound=3, polls=2, failures={"b"},
                                   on_ready=lambda launched: seen.append(launched.server.key))
    pool.get("fresh")
    assert sorted(seen) == ["a", "fresh"]  # polled together: "a" was ready too; "b" failed, never ready
    pool.get("a")
    pool.release("fresh")
    assert sorted(seen) == ["a", "fresh"]  # never twice


def test_release_does_not_wait_for_the_server_to_exit_and_close_waits_for_every_one():
    pool, log, servers = make_pool(["fresh", "a"], bound=1)
    pool.get("fresh")
    pool.release("fresh")
    assert servers["fresh"].stopped and not servers["fresh"].waited  # the next case's checks go on
    assert pool.get("a").server.key == "a"
    pool.close()
    assert all(s.waited for s in servers.values())


def test_close_gives_every_server_one_shared_stop_deadline(monkeypatch):
    """All were asked to stop at release: a build that ignores SIGTERM costs one graceful
    wait at close, not one per case (50 users: 51 cases)."""
    from gates import throwaway

    pool, log, servers = make_pool(["a", "b", "c", "d"], bound=4)
    for key in ["a", "b", "c", "d"]:
        pool.get(key)
    clock = iter(range(0, 100, 3))  # every look at the clock: 3 s later (each wait used up)
    monkeypatch.setattr(throwaway, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    pool.close()
    waits = [entry[2] for entry in log if entry[0] == "waited"]
    assert waits == [7, 4, 1, 0.1]  # what is left of one 10 s deadline, never a fresh 10 s each
