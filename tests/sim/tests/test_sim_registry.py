"""The simulated npm registry (tests/sim/registry.py) against the REAL npm client.

Every npm call runs with the registry's `npm_env()` (registry, cache, npmrc files all inside
tmp_path), an explicit `--prefix` inside tmp_path for installs, `cwd=tmp_path`, and a
subprocess timeout.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from tests.sim.proc import t3_version
from tests.sim.registry import NpmRegistry, read_package_json

NPM_TIMEOUT = 60
STABLE = "0.0.24"
NIGHTLY_1 = "0.0.25-nightly.20260608.497"
NIGHTLY_2 = "0.0.25-nightly.20260609.498"


def build_tgz(version: str, dest_dir: Path, name: str = "t3") -> Path:
    """A minimal npm package: package.json with a `t3` bin, and bin/t3 printing `t3 v<version>`."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "package/package.json": (json.dumps({"name": name, "version": version, "bin": {"t3": "bin/t3"},
                                             "description": "simulated t3"}, indent=2).encode(), 0o644),
        "package/bin/t3": (f'#!/bin/sh\necho "t3 v{version}"\n'.encode(), 0o755),
    }
    out = dest_dir / f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
    with tarfile.open(out, "w:gz") as tar:
        for member, (data, mode) in files.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out


class World:
    def __init__(self, root: Path, **registry_kwargs) -> None:
        self.root = root
        self.tgz_dir = root / "tgz"
        self.reg = NpmRegistry(root / "registry-store", **registry_kwargs).start()
        self.timings: list[tuple[str, float]] = []

    def publish(self, version: str, tags=(), published_at=None) -> str:
        return self.reg.publish(build_tgz(version, self.tgz_dir), tags=list(tags), published_at=published_at)

    def env(self, cache: str = "npm-cache", **npm_env_kwargs) -> dict[str, str]:
        return {**os.environ, **self.reg.npm_env(self.root / cache, **npm_env_kwargs)}

    def npm(self, *args: str, env: dict | None = None, timeout: float = NPM_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess:
        env = env if env is not None else self.env()
        started = time.monotonic()
        result = subprocess.run(["npm", *args], env=env, cwd=self.root, capture_output=True, text=True,
                                timeout=timeout)
        result.elapsed = time.monotonic() - started
        self.timings.append((" ".join(args[:2]), result.elapsed))
        if check and result.returncode != 0:
            raise AssertionError(f"npm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def view(self, *args: str, **kw) -> str:
        return self.npm("view", *args, **kw).stdout.strip()

    def requests_since(self, mark: int) -> list:
        return self.reg.requests[mark:]


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.reg.stop()


def _sri(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


# --------------------------------------------------------------------------- npm view


def test_view_reports_versions_times_and_dist_tags(world):
    t_stable = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
    t_nightly = datetime(2026, 6, 8, 3, 14, 15, 123000, tzinfo=timezone.utc)
    world.publish(STABLE, tags=["latest", "nightly"], published_at=t_stable)
    world.publish(NIGHTLY_1, tags=["nightly"], published_at=t_nightly)

    assert world.view("t3@nightly", "version") == NIGHTLY_1
    assert world.view("t3@latest", "version") == STABLE
    assert json.loads(world.view("t3", "dist-tags", "--json")) == {"latest": STABLE, "nightly": NIGHTLY_1}
    times = json.loads(world.view("t3", "time", "--json"))
    assert times[STABLE] == "2026-06-01T12:00:00.000Z"
    assert times[NIGHTLY_1] == "2026-06-08T03:14:15.123Z"
    assert times["created"] == "2026-06-01T12:00:00.000Z" and "modified" in times

    dist = json.loads(world.view(f"t3@{NIGHTLY_1}", "dist", "--json"))
    tgz = world.tgz_dir / f"t3-{NIGHTLY_1}.tgz"
    assert dist["integrity"] == _sri(tgz)
    assert dist["shasum"] == hashlib.sha1(tgz.read_bytes()).hexdigest()
    assert dist["tarball"] == f"{world.reg.url}t3/-/t3-{NIGHTLY_1}.tgz"
    assert all(r.path == "/t3" for r in world.reg.requests)


@pytest.mark.parametrize("max_age", [None, 300], ids=["no-cache", "max-age=300"])
def test_view_sees_a_backward_dist_tag_move_at_once(tmp_path, max_age):
    """`npm view` revalidates its packument every run, whatever Cache-Control says."""
    world = World(tmp_path, max_age=max_age)
    try:
        world.publish(STABLE, tags=["latest"])
        world.publish(NIGHTLY_1, tags=["nightly"])
        world.publish(NIGHTLY_2, tags=["nightly"])
        env = world.env(prefer_online=False)  # the warmest, laziest cache
        assert world.view("t3@nightly", "version", env=env) == NIGHTLY_2
        world.reg.set_tag("nightly", NIGHTLY_1)  # backward
        mark = len(world.reg.requests)
        assert world.view("t3@nightly", "version", env=env) == NIGHTLY_1
        assert [(r.path, r.status) for r in world.requests_since(mark)] == [("/t3", 200)]
        mark = len(world.reg.requests)
        assert world.view("t3@nightly", "version", env=env) == NIGHTLY_1
        assert [(r.path, r.status) for r in world.requests_since(mark)] == [("/t3", 304)]  # ETag
    finally:
        world.reg.stop()


def test_install_from_a_cached_packument_needs_prefer_online(tmp_path):
    """With a registry that allows caching (npmjs.org: max-age=300), `npm install` answers from
    its cache: a moved tag is missed and a new exact version is ETARGET, unless --prefer-online."""
    world = World(tmp_path, max_age=300)
    try:
        world.publish(STABLE, tags=["latest"])
        world.publish(NIGHTLY_1, tags=["nightly"])
        prefix = tmp_path / "rel"
        lazy, fresh = world.env(prefer_online=False), world.env(prefer_online=True)
        t3 = prefix / "bin" / "t3"

        world.npm("install", "--global", "--prefix", str(prefix), "t3@nightly", env=lazy)
        assert t3_version(t3) == f"t3 v{NIGHTLY_1}"
        world.reg.set_tag("nightly", STABLE)  # backward
        mark = len(world.reg.requests)
        world.npm("install", "--global", "--prefix", str(prefix), "t3@nightly", env=lazy)
        assert t3_version(t3) == f"t3 v{NIGHTLY_1}", "stale: the cached packument was used"
        assert world.requests_since(mark) == []
        world.npm("install", "--global", "--prefix", str(prefix), "t3@nightly", env=fresh)
        assert t3_version(t3) == f"t3 v{STABLE}"

        world.publish(NIGHTLY_2, tags=["nightly"])
        stale = world.npm("install", "--global", "--prefix", str(prefix), f"t3@{NIGHTLY_2}", env=lazy, check=False)
        assert stale.returncode != 0 and "ETARGET" in stale.stderr
        world.npm("install", "--global", "--prefix", str(prefix), f"t3@{NIGHTLY_2}", env=fresh)
        assert t3_version(t3) == f"t3 v{NIGHTLY_2}"
    finally:
        world.reg.stop()


def test_no_cache_header_alone_keeps_install_fresh(world):
    world.publish(STABLE, tags=["latest"])
    world.publish(NIGHTLY_1, tags=["nightly"])
    prefix = world.root / "rel"
    lazy = world.env(prefer_online=False)
    world.npm("install", "--global", "--prefix", str(prefix), "t3@nightly", env=lazy)
    world.reg.set_tag("nightly", STABLE)
    world.npm("install", "--global", "--prefix", str(prefix), "t3@nightly", env=lazy)
    assert t3_version(prefix / "bin" / "t3") == f"t3 v{STABLE}"


# --------------------------------------------------------------------------- install, pack, offline


def test_global_install_creates_a_bin_symlink_that_runs(world):
    world.publish(STABLE, tags=["latest"])
    world.publish(NIGHTLY_1, tags=["nightly"])
    prefix = world.root / "rel"
    world.npm("install", "--global", "--prefix", str(prefix), f"t3@{STABLE}")
    t3 = prefix / "bin" / "t3"
    assert t3.is_symlink()
    assert os.readlink(t3) == "../lib/node_modules/t3/bin/t3"
    assert t3.resolve() == (prefix / "lib" / "node_modules" / "t3" / "bin" / "t3").resolve()
    assert t3_version(t3) == f"t3 v{STABLE}"
    installed = json.loads((prefix / "lib" / "node_modules" / "t3" / "package.json").read_text())
    assert installed["version"] == STABLE

    world.npm("install", "--global", "--prefix", str(prefix), f"t3@{NIGHTLY_1}")
    assert t3_version(t3) == f"t3 v{NIGHTLY_1}"
    tarballs = [r.path for r in world.reg.requests if r.path.endswith(".tgz")]
    assert tarballs == [f"/t3/-/t3-{STABLE}.tgz", f"/t3/-/t3-{NIGHTLY_1}.tgz"]


def test_saved_tarball_installs_with_the_registry_stopped(world):
    world.publish(STABLE, tags=["latest"])
    saved = world.root / "saved"
    saved.mkdir()
    out = world.npm("pack", f"t3@{STABLE}", "--pack-destination", str(saved), "--json")
    assert json.loads(out.stdout)[0]["filename"] == f"t3-{STABLE}.tgz"
    tgz = saved / f"t3-{STABLE}.tgz"
    assert tgz.read_bytes() == world.reg.tarball_path(STABLE).read_bytes()
    assert read_package_json(tgz)["version"] == STABLE

    world.reg.stop()  # nothing listens any more
    with pytest.raises(requests.ConnectionError):
        requests.get(world.reg.url + "t3", timeout=2)
    # the rollback path: a fresh cache, so nothing can come from npm's cache either
    env = world.env(cache="cold-cache")
    for flag, prefix in (("--offline", world.root / "rollback"), (None, world.root / "rollback-no-flag")):
        args = ["install", "--global", "--prefix", str(prefix), *([flag] if flag else []), str(tgz)]
        world.npm(*args, env=env, timeout=30)
        t3 = prefix / "bin" / "t3"
        assert t3.is_symlink() and t3_version(t3) == f"t3 v{STABLE}"


def test_tampered_tarball_fails_with_eintegrity(world):
    world.publish(STABLE, tags=["latest"])
    world.reg.tamper(STABLE)
    prefix = world.root / "rel"
    result = world.npm("install", "--global", "--prefix", str(prefix), f"t3@{STABLE}", check=False)
    assert result.returncode != 0
    assert "EINTEGRITY" in result.stderr
    assert not (prefix / "bin" / "t3").exists()


# --------------------------------------------------------------------------- outages


OUTAGE_ERROR = {"stopped": "ECONNREFUSED", "503": "E503", "reset": "ECONNRESET", "hang": "network timeout"}


@pytest.mark.parametrize("mode", list(OUTAGE_ERROR))
def test_registry_down_makes_a_cold_npm_view_fail_fast(world, mode):
    """With fetch-retries=0 and a small fetch-timeout, every kind of outage fails at once, but
    only with an empty cache: on a network error (not on an HTTP 5xx) npm view falls back to its
    cached packument, exits 0 and prints the stale answer."""
    world.publish(STABLE, tags=["latest", "nightly"])
    world.publish(NIGHTLY_1)
    fetch_timeout_ms = 1000
    warm = world.env(cache="warm-cache", fetch_timeout_ms=fetch_timeout_ms)
    cold = world.env(cache="cold-cache", fetch_timeout_ms=fetch_timeout_ms)
    assert world.view("t3@nightly", "version", env=warm) == STABLE
    world.reg.set_tag("nightly", NIGHTLY_1)
    if mode == "stopped":
        world.reg.stop()
    else:
        world.reg.set_unreachable(mode)

    limit = fetch_timeout_ms / 1000 + 5 if mode == "hang" else 5
    result = world.npm("view", "t3@nightly", "version", env=cold, check=False, timeout=30)
    assert result.returncode != 0, result.stdout
    assert result.stdout.strip() == ""
    assert OUTAGE_ERROR[mode] in result.stderr, result.stderr
    assert result.elapsed < limit

    stale = world.npm("view", "t3@nightly", "version", env=warm, check=False, timeout=30)
    assert stale.elapsed < limit
    if mode == "503":
        assert stale.returncode != 0 and "E503" in stale.stderr
    else:  # the hazard: success, silently stale
        assert (stale.returncode, stale.stdout.strip(), stale.stderr) == (0, STABLE, "")

    if mode == "stopped":
        world.reg.start()  # same port, same state
    else:
        world.reg.set_unreachable(False)
    assert world.view("t3@nightly", "version", env=cold) == NIGHTLY_1


# --------------------------------------------------------------------------- HTTP surface (no npm)


def test_http_surface(world):
    world.publish(STABLE, tags=["latest"], published_at=datetime(2026, 6, 1, tzinfo=timezone.utc))
    url = world.reg.url
    r = requests.get(url + "t3", timeout=5)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-cache" and r.headers["ETag"]
    doc = r.json()
    assert doc["name"] == "t3" and doc["dist-tags"] == {"latest": STABLE}
    assert doc["versions"][STABLE]["bin"] == {"t3": "bin/t3"}
    assert doc["time"][STABLE] == "2026-06-01T00:00:00.000Z"
    again = requests.get(url + "t3", headers={"If-None-Match": r.headers["ETag"]}, timeout=5)
    assert again.status_code == 304

    corgi = requests.get(url + "t3", headers={"Accept": "application/vnd.npm.install-v1+json; q=1.0, "
                                                        "application/json; q=0.8, */*"}, timeout=5)
    assert corgi.headers["Content-Type"] == "application/vnd.npm.install-v1+json"
    assert "time" not in corgi.json() and corgi.json()["versions"][STABLE]["dist"] == doc["versions"][STABLE]["dist"]
    assert corgi.headers["ETag"] != r.headers["ETag"]

    for missing in ("nope", "t3/-/t3-9.9.9.tgz", "t3/-/whatever"):
        resp = requests.get(url + missing, timeout=5)
        assert (resp.status_code, resp.json()) == (404, {"error": "not found"})
    for path in ("-/npm/v1/security/advisories/bulk", "-/npm/v1/security/audits/quick"):
        assert requests.post(url + path, json={}, timeout=5).status_code == 200
    assert requests.get(url + "-/ping", timeout=5).status_code == 200

    world.reg.set_unreachable(True)
    assert requests.get(url + "t3", timeout=5).status_code == 503
    world.reg.set_unreachable(False)
    assert [(q.method, q.path, q.status) for q in world.reg.requests][:2] == [("GET", "/t3", 200), ("GET", "/t3", 304)]


def test_scoped_package_and_tag_management(world):
    world.reg.publish(build_tgz("1.0.0", world.tgz_dir, name="@sim/tool"))
    world.reg.publish(build_tgz("1.1.0", world.tgz_dir, name="@sim/tool"), tags=["next"])
    url = world.reg.url
    doc = requests.get(url + "@sim%2ftool", timeout=5).json()
    assert doc["dist-tags"] == {"latest": "1.0.0", "next": "1.1.0"}  # first publish gets latest, like npmjs
    tarball = doc["versions"]["1.1.0"]["dist"]["tarball"]
    assert tarball == f"{url}@sim/tool/-/tool-1.1.0.tgz"
    assert requests.get(tarball, timeout=5).content == world.reg.tarball_path("1.1.0", "@sim/tool").read_bytes()
    assert world.view("@sim/tool@next", "version") == "1.1.0"

    world.publish(STABLE, tags=["latest"])
    world.publish(NIGHTLY_1, tags=["nightly"])
    world.reg.set_tag("nightly", STABLE)
    assert world.reg.tags() == {"latest": STABLE, "nightly": STABLE}
    with pytest.raises(KeyError):
        world.reg.set_tag("nightly", "9.9.9")
    with pytest.raises(ValueError):
        world.publish(STABLE)
    world.reg.set_tag("nightly", NIGHTLY_1)
    world.reg.remove_version(NIGHTLY_1)
    assert world.reg.tags() == {"latest": STABLE}  # the tag went with it
    assert NIGHTLY_1 not in world.reg.packument()["time"]
    assert requests.get(f"{url}t3/-/t3-{NIGHTLY_1}.tgz", timeout=5).status_code == 404


def test_state_survives_a_restart_on_another_port(tmp_path):
    store = tmp_path / "store"
    with NpmRegistry(store) as first:
        first.publish(build_tgz(STABLE, tmp_path / "tgz"), tags=["latest", "nightly"])
    with NpmRegistry(store) as second:
        doc = requests.get(second.url + "t3", timeout=5).json()
        assert doc["dist-tags"] == {"latest": STABLE, "nightly": STABLE}
        assert doc["versions"][STABLE]["dist"]["tarball"].startswith(second.url)
        assert requests.get(doc["versions"][STABLE]["dist"]["tarball"], timeout=5).status_code == 200


def test_npm_publish_through_put(world):
    world.publish(STABLE, tags=["latest"])
    tgz = build_tgz(NIGHTLY_1, world.root / "to-publish")
    world.npm("publish", str(tgz), "--tag", "nightly")
    assert world.reg.tags() == {"latest": STABLE, "nightly": NIGHTLY_1}
    assert world.reg.tarball_path(NIGHTLY_1).read_bytes() == tgz.read_bytes()
    assert world.view("t3@nightly", "dist.integrity") == _sri(tgz)


# --------------------------------------------------------------------------- the real simulated builds


def test_installs_a_build_from_the_build_factory(world):
    builds = pytest.importorskip("tests.sim.builds")
    tgz = builds.build_tarball(STABLE, "good-0.0.24", world.root / "builds")
    assert world.reg.publish(Path(tgz), tags=["latest", "nightly"]) == STABLE
    prefix = world.root / "rel"
    world.npm("install", "--global", "--prefix", str(prefix), f"t3@{STABLE}")
    t3 = prefix / "bin" / "t3"
    assert t3_version(t3) == f"t3 v{STABLE}"
    # the factory's npm-less layout matches what npm made
    fake = builds.install_layout(STABLE, "good-0.0.24", world.root / "layout")
    assert os.readlink(fake) == os.readlink(t3)
