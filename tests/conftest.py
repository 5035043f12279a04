"""Fixtures shared by the project's own tests: the simulated world."""
from __future__ import annotations

import pytest

from tests.sim.world import World


@pytest.fixture
def world(tmp_path):
    """The deployment's three users on 0.0.24, each serving a populated database, behind the dispatch."""
    built = World(tmp_path / "world")
    try:
        yield built.build()
    finally:
        built.stop()
