"""Fixtures shared by the simulator's own tests of the t3 builds: the installed builds, the
servers started from them, and an HTTP session that only ever talks to loopback."""
from __future__ import annotations

import pytest
import requests

from tests.sim import builds
from tests.sim.proc import ServeProcess


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """installed(profile) -> the build's `bin/t3`, installed in npm's layout once per test module."""
    return builds.InstalledBuilds(tmp_path_factory.mktemp("builds"))


@pytest.fixture
def servers():
    """servers(bin_t3, base_dir, host=...) -> a started ServeProcess; every one is stopped at teardown."""
    started: list[ServeProcess] = []

    def start(bin_path, base_dir, host="0.0.0.0") -> ServeProcess:
        serve = ServeProcess(bin_path, base_dir, host=host)
        started.append(serve)
        return serve.start()

    yield start
    for serve in started:
        serve.stop()


@pytest.fixture
def http():
    with requests.Session() as session:
        session.trust_env = False  # never a proxy from the environment: loopback only
        yield session
