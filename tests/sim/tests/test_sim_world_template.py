"""The world template: a world built from it holds what a world built from scratch holds.

Worlds in tests copy the published catalogue and the installed releases from a per-worker
template instead of publishing and npm-installing them again (tests/sim/world.py
WorldTemplate). These tests hold the copy to the real thing: byte for byte, mode for mode,
link for link, and a world whose registry no longer serves the template's bytes gets a real
npm install and its real failure.
"""
import os
import stat
from pathlib import Path

import pytest

from runner import proc
from tests.sim.registry import NpmRegistry
from tests.sim.world import World, WorldTemplate, npm_install_release, publish_catalogue

V24 = "0.0.24"


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: relative path -> (type, mode, owner, content or link target)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", None)
            else:
                what = ("file", path.read_bytes())
            found[str(path.relative_to(root))] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return found


def packument_without_stamps(registry: NpmRegistry) -> dict:
    doc = registry.packument()
    return {**doc, "time": {k: v for k, v in doc["time"].items() if k != "modified"}}


@pytest.fixture
def scratch_built(tmp_path):
    """A registry with the catalogue published and 0.0.24 installed from it, the way a world
    without a template does both."""
    registry = NpmRegistry(tmp_path / "built" / "registry")
    publish_catalogue(registry, tmp_path / "built" / "tarballs")
    registry.start()
    try:
        env = {**os.environ, **registry.npm_env(tmp_path / "built" / "npm-cache")}
        npm_install_release(env, tmp_path / "built" / "release", V24, cwd=tmp_path)
        yield registry
    finally:
        registry.stop()


def test_a_copied_catalogue_and_release_equal_the_published_and_installed_ones(scratch_built, tmp_path):
    template = WorldTemplate(tmp_path / "template")
    try:
        copy = NpmRegistry(tmp_path / "copy" / "registry")
        template.copy_catalogue(tmp_path / "copy" / "tarballs", copy.storage_dir)
        assert tree(tmp_path / "copy" / "tarballs") == tree(tmp_path / "built" / "tarballs")
        assert packument_without_stamps(copy) == packument_without_stamps(scratch_built)
        for version in scratch_built.versions():
            assert copy.tarball_path(version).read_bytes() == scratch_built.tarball_path(version).read_bytes()
        copied = template.copy_release(V24, tmp_path / "copy" / "release")
        assert tree(copied) == tree(tmp_path / "built" / "release")
        assert os.path.realpath(copied / "bin" / "t3").startswith(str(copied) + os.sep)  # its own files
    finally:
        template.close()


def test_a_world_whose_registry_changed_gets_a_real_npm_install(world_template, tmp_path):
    world = World(tmp_path / "world", template=world_template)
    world.template.copy_catalogue(world.root / "tarballs", world.registry.storage_dir)
    world.registry.start()
    try:
        assert world_template.serves_same(world.registry, V24)
        world.registry.tamper(V24)
        assert not world_template.serves_same(world.registry, V24)
        with pytest.raises(proc.CommandError) as failed:
            world.install_release(V24)
        assert "EINTEGRITY" in str(failed.value)
        world.registry.set_unreachable(True)
        assert not world_template.serves_same(world.registry, "0.0.25")
        world.registry.set_unreachable(False)
        world.registry.stop()
        assert not world_template.serves_same(world.registry, "0.0.25")
    finally:
        world.registry.stop()
