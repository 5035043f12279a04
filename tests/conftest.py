"""Fixtures shared by the project's own tests: the simulated world."""
from __future__ import annotations

import json
import os

import pytest

from runner import config as config_mod
from tests.cli_checks import write_config
from tests.sim.world import World, WorldTemplate


@pytest.fixture(scope="session")
def world_template(machine_guard, tmp_path_factory):
    """The catalogue and installed releases every world copies instead of rebuilding (one per
    worker: a session fixture); see WorldTemplate."""
    template = WorldTemplate(tmp_path_factory.mktemp("world-template"))
    try:
        yield template
    finally:
        template.close()


@pytest.fixture
def world(tmp_path, world_template):
    """The deployment's three users on 0.0.24, each serving a populated database, behind the dispatch."""
    built = World(tmp_path / "world", template=world_template)
    try:
        yield built.build()
    finally:
        built.stop()


@pytest.fixture
def make_world(tmp_path, world_template):
    """A factory for worlds with options (db_options, installed, ...); all stopped at teardown."""
    built = []

    def make(name: str = "world", **options) -> World:
        world = World(tmp_path / name, template=world_template, **options)
        built.append(world)
        return world.build()

    yield make
    for world in built:
        world.stop()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A user map and a config TOML under tmp_path; every T3_* variable cleared, T3_CONFIG set."""
    for name in list(os.environ):
        if name.startswith("T3_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    user_map = tmp_path / "ttyd-user-map"
    user_map.write_text("# sso=os\nvbarzin = wizard\nemil.barzin=emo\n")
    config = tmp_path / "config.toml"
    write_config(config, state_dir=tmp_path / "state", user_map=user_map, freeze_file=tmp_path / "freeze",
                 backup_dest=tmp_path / "backups", home_root=tmp_path / "home", tmpdir=tmp_path / "scratch",
                 bin_link=tmp_path / "bin" / "t3", dispatch_map=tmp_path / "dispatch.json")
    (tmp_path / "dispatch.json").write_text(json.dumps({"vbarzin": {"os_user": "wizard", "port": 3781},
                                                        "emil.barzin": {"os_user": "emo", "port": 3782}}))
    monkeypatch.setenv("T3_CONFIG", str(config))
    return tmp_path


def _shared_world_fixture(item) -> str | None:
    """The module-scoped fixture this test shares a world through (one that asks for the
    world template), if any."""
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(info, "names_closure", ()):
        for definition in info.name2fixturedefs.get(name, ()):
            if definition.scope in ("module", "class", "package") and "world_template" in definition.argnames:
                return name
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its hook runs in the workers)
def pytest_collection_modifyitems(config, items):
    """A test on a whole simulated world (servers, npm, the dispatch: anything built from the
    world template) is `slow`; those run first, so parallel workers (./dev test) do not end on
    one long test started last. Tests that share a module-scoped world are one xdist group
    (`--dist loadgroup`, ./dev's default): one worker builds that world once, where spreading
    them would build it on every worker, and again whenever a worker's next test came from
    another module (pytest tears module fixtures down then)."""
    for item in items:
        if "world_template" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        shared = _shared_world_fixture(item)
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{shared}"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order kept
