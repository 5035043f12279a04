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


@pytest.fixture
def make_world(tmp_path):
    """A factory for worlds with options (db_options, installed, ...); all stopped at teardown."""
    built = []

    def make(name: str = "world", **options) -> World:
        world = World(tmp_path / name, **options)
        built.append(world)
        return world.build()

    yield make
    for world in built:
        world.stop()


WORLD_FIXTURES = {"world", "make_world"}


def pytest_collection_modifyitems(config, items):
    """A test on a whole simulated world (servers, npm, the dispatch) is `slow`; those run
    first, so parallel workers (./dev test) do not end on one long test started last."""
    for item in items:
        if WORLD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order kept
