"""The real npm installs every simulated build from the local registry, and each runs."""
from __future__ import annotations

import os

import pytest

from runner import proc
from runner.versions import parse_t3_version_output
from tests.sim import builds
from tests.sim.registry import NpmRegistry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    tarballs = builds.build_catalogue(root / "tarballs")
    reg = NpmRegistry(root / "registry").start()
    for version, _ in builds.CATALOGUE:
        reg.publish(tarballs[version])
    yield reg
    reg.stop()


@pytest.mark.parametrize("version,profile", builds.CATALOGUE, ids=[p for _, p in builds.CATALOGUE])
def test_npm_installs_each_profile_from_the_local_registry(registry, tmp_path, version, profile):
    env = {**os.environ, **registry.npm_env(tmp_path / "cache")}
    prefix = tmp_path / "prefix"
    proc.run(["npm", "install", "--global", "--prefix", str(prefix), f"t3@{version}"], env=env, cwd=tmp_path,
             timeout=120)
    assert (prefix / "bin" / "t3").is_symlink()
    reported = parse_t3_version_output(proc.run([str(prefix / "bin" / "t3"), "--version"]).stdout)
    expected = builds.PROFILES[profile].reported_version or version
    assert reported == expected
    assert (prefix / "lib" / "node_modules" / "t3" / "profile.json").is_file()
