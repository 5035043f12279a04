"""The simulated world's ports (tests/sim/proc.py free_port): below the kernel's ephemeral
range, so no connection's source port or bind(0) takes one between its pick and its bind."""
from __future__ import annotations

import socket

from tests.sim import proc as simproc


def ephemeral_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        low, high = (int(n) for n in fh.read().split())
    return low, high


def test_ports_come_from_this_workers_slice_below_the_ephemeral_range_and_differ(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    monkeypatch.setattr(simproc, "_next_port", None)
    ports = [simproc.free_port() for _ in range(20)]
    start = simproc.PORT_BASE + 2 * simproc.PORT_SLICE
    assert all(start <= port < start + simproc.PORT_SLICE for port in ports), ports
    assert len(set(ports)) == len(ports)  # successive picks never hand out the same port again
    assert max(ports) < ephemeral_range()[0]


def test_a_port_in_use_is_skipped(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    start = simproc.PORT_BASE + 3 * simproc.PORT_SLICE
    monkeypatch.setattr(simproc, "_next_port", start)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", start))
        busy.listen()
        assert simproc.free_port() == start + 1
