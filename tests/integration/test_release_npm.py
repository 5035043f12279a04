"""Phases 2 and 4 with the REAL npm against the simulated registry (tests/sim/registry.py).

Every npm call runs with the registry's `npm_env()` (registry, cache and npmrc files inside
tmp_path); the code under test adds its own fresh caches and runs npm with a cwd of its own
inside tmp_path.
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner import proc
from runner.resolve import ResolveError, Target, decide, resolve_target
from runner.staging import releases
from runner.staging.checks import StageError, sha512_of
from runner.staging.flow import reinstall_from_tarball, stage_release
from runner.staging.releases import RELEASE_FILE, clean_staging, load_release, remove_release, verify_release
from tests.sim import builds
from tests.sim.proc import t3_version
from tests.sim.registry import NpmRegistry

UTC = timezone.utc
V24 = builds.GOOD_VERSIONS["good-0.0.24"]
V25 = builds.GOOD_VERSIONS["good-0.0.25"]
V28 = builds.GOOD_VERSIONS["good-0.0.28"]
LIAR = builds.BAD_VERSIONS["version-lie"]
T28 = datetime(2026, 6, 16, 3, 14, 15, 123000, tzinfo=UTC)


class Sim:
    def __init__(self, tmp_path: Path, **registry_kwargs) -> None:
        self.root = tmp_path
        self.reg = NpmRegistry(tmp_path / "reg", **registry_kwargs).start()
        self.env = {**os.environ, **self.reg.npm_env(tmp_path / "npm-cache")}
        self.scratch = tmp_path / "scratch"
        self.releases = tmp_path / "releases"

    def publish(self, profile: str, tags=("nightly",), published_at=None, version=None) -> str:
        version = version or builds.VERSIONS[profile]
        return self.reg.publish(builds.build_tarball(version, profile, self.root / "tgz"),
                                tags=list(tags), published_at=published_at)

    def resolve(self, tag="nightly", **kw) -> Target:
        return resolve_target("npm", "t3", tag, env=self.env, scratch_dir=self.scratch, **kw)

    def stage(self, version, **kw):
        return stage_release("npm", "t3", version, self.releases, env=self.env, **kw)

    def plain_npm(self, *args) -> proc.Completed:
        """npm as a naive script would run it: the shared cache of npm_env()."""
        return proc.run(["npm", *args], env=self.env, cwd=self.root, timeout=60)

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.releases.iterdir()) if self.releases.exists() else []


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path)
    yield s
    s.reg.stop()


# --------------------------------------------------------------------------- resolve

def test_resolve_sees_the_tag_and_its_publish_time(sim):
    sim.publish("good-0.0.24", published_at=datetime(2026, 6, 1, tzinfo=UTC))
    sim.publish("good-0.0.28", published_at=T28)
    target = sim.resolve()
    assert target == Target(V28, T28, "nightly")
    assert sim.resolve("latest") == Target(V24, datetime(2026, 6, 1, tzinfo=UTC), "latest")
    assert list(sim.scratch.iterdir()) == []  # the per-call cache is gone
    # publish time feeds min_age
    common = dict(installed=V24, track="nightly", pin=None, quarantined=set())
    young = decide(target, min_age=6 * 3600, now=T28 + timedelta(hours=1), **common)
    old = decide(target, min_age=6 * 3600, now=T28 + timedelta(hours=7), **common)
    assert (young.action, young.code, old.action, old.code) == ("hold", "too-young", "install", "newer")


def test_resolving_starts_npm_without_the_sh_machinery(sim):
    """npm view is the only command of a run with nothing to do: it must not pay for
    importing `sh` (and asyncio with it), measured in bench/bench_noop.py."""
    sim.publish("good-0.0.28", published_at=T28)
    code = ("import sys; from pathlib import Path; from runner.resolve import resolve_target; "
            f"t = resolve_target('npm', 't3', 'nightly', env={sim.env!r}, scratch_dir=Path({str(sim.scratch)!r})); "
            "print(t.version, 'sh' in sys.modules)")
    done = proc.run([sys.executable, "-c", code], env=sim.env, cwd=sim.root, timeout=60)
    assert done.stdout.split() == [V28, "False"]


@pytest.mark.parametrize("max_age", [None, 300])
def test_a_tag_moved_backward_is_seen_at_once(tmp_path, max_age):
    sim = Sim(tmp_path, max_age=max_age)  # 300: npmjs-like Cache-Control on packuments
    try:
        sim.publish("good-0.0.25")
        sim.publish("good-0.0.28")
        assert sim.resolve().version == V28
        sim.reg.set_tag("nightly", V25)
        target = sim.resolve()
        assert target.version == V25
        got = decide(target, installed=V28, track="nightly", pin=None, quarantined=set(), min_age=None,
                     now=datetime.now(UTC))
        assert (got.action, got.code) == ("hold", "not-newer")
    finally:
        sim.reg.stop()


@pytest.mark.parametrize("outage", ["stopped", "503", "reset"])
def test_unreachable_registry_is_an_error_even_after_a_cache_was_filled(sim, outage):
    sim.publish("good-0.0.28")
    assert sim.resolve().version == V28
    assert json.loads(sim.plain_npm("view", "t3@nightly", "version", "--json").stdout) == V28  # fills the cache
    sim.reg.set_tag("nightly", V28)
    if outage == "stopped":
        sim.reg.stop()
        # The hazard: plain npm answers the stale cached tag, exit 0.
        assert json.loads(sim.plain_npm("view", "t3@nightly", "version", "--json").stdout) == V28
    else:
        sim.reg.set_unreachable(outage)
    started = time.monotonic()
    with pytest.raises(ResolveError, match=r"npm view t3@nightly failed .*(ECONNREFUSED|E503|ECONNRESET)"):
        sim.resolve()
    assert time.monotonic() - started < 10
    assert list(sim.scratch.iterdir()) == []


def test_a_hanging_registry_fails_after_the_fetch_timeout(sim):
    sim.publish("good-0.0.28")
    sim.reg.set_unreachable("hang")
    started = time.monotonic()
    with pytest.raises(ResolveError, match="network timeout|ETIMEDOUT|FETCH_ERROR"):
        sim.resolve(fetch_timeout_ms=1000)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("garbage", ["v0.0.30", "1.2.3-rc.01", "00.0.1", "0.0.30+build"])
def test_garbage_version_in_the_tag_is_refused(sim, garbage):
    sim.publish("good-0.0.24")
    sim.publish("good-0.0.28", version=garbage)
    with pytest.raises(ResolveError, match="unacceptable version"):
        sim.resolve()


def test_unknown_tag_or_package_is_an_error(sim):
    sim.publish("good-0.0.24", tags=["latest"])
    with pytest.raises(ResolveError, match="E404"):
        sim.resolve("nightly")
    with pytest.raises(ResolveError, match="E404"):
        resolve_target("npm", "t3-other", "nightly", env=sim.env, scratch_dir=sim.scratch)


# --------------------------------------------------------------------------- stage

def test_stage_installs_into_its_own_release_dir(sim):
    sim.publish("good-0.0.28")
    rel = sim.stage(V28)
    final = sim.releases / V28
    assert (rel.version, rel.prefix, rel.bin, rel.tarball, rel.reused) == (
        V28, final, final / "bin" / "t3", final / f"t3-{V28}.tgz", False)
    assert t3_version(final / "bin" / "t3") == f"t3 v{V28}"
    assert not os.readlink(rel.bin).startswith("/")  # relative: the directory could be renamed
    integrity = sim.reg.packument()["versions"][V28]["dist"]["integrity"]
    assert rel.sha512 == sha512_of(rel.tarball) == integrity
    record = json.loads((final / RELEASE_FILE).read_text())
    assert (record["version"], record["package"], record["sha512"]) == (V28, "t3", integrity)
    assert sorted(p.name for p in final.iterdir()) == sorted(["bin", "lib", f"t3-{V28}.tgz", RELEASE_FILE])
    assert sim.leftovers() == [V28]
    assert load_release(sim.releases, V28) == rel
    # Staging it again reuses the verified directory without asking the registry.
    seen = len(sim.reg.requests)
    again = sim.stage(V28)
    assert again.reused and again.prefix == final and len(sim.reg.requests) == seen


def test_version_lie_fails_staging_and_leaves_nothing(sim):
    sim.publish("version-lie")
    with pytest.raises(StageError) as info:
        sim.stage(LIAR)
    assert info.value.step == "version"
    assert f"staged t3 --version reports {V28}, expected {LIAR}" in str(info.value)
    assert sim.leftovers() == []


def test_tampered_tarball_fails_staging_and_leaves_nothing(sim):
    sim.publish("good-0.0.28")
    sim.reg.tamper(V28)
    with pytest.raises(StageError, match="EINTEGRITY") as info:
        sim.stage(V28)
    assert info.value.step == "fetch"
    assert sim.leftovers() == []


def test_unpublished_version_and_stopped_registry_fail_staging(sim):
    sim.publish("good-0.0.24")
    with pytest.raises(StageError, match="ETARGET|E404") as info:
        sim.stage(V28)
    assert info.value.step == "fetch" and sim.leftovers() == []
    sim.reg.stop()
    with pytest.raises(StageError, match="ECONNREFUSED"):
        sim.stage(V24)
    assert sim.leftovers() == []


def test_a_failing_npm_install_leaves_nothing(sim, tmp_path):
    sim.publish("good-0.0.28")
    fake = tmp_path / "npm-install-fails"
    fake.write_text('#!/bin/sh\nif [ "$1" = install ]; then echo "npm error code EBOOM" >&2; exit 1; fi\n'
                    'exec npm "$@"\n')
    fake.chmod(0o755)
    with pytest.raises(StageError, match="EBOOM") as info:
        stage_release(str(fake), "t3", V28, sim.releases, env=sim.env)
    assert info.value.step == "fetch" and sim.leftovers() == []


def test_not_enough_space_stops_before_npm(sim):
    sim.publish("good-0.0.28")
    seen = len(sim.reg.requests)
    with pytest.raises(StageError) as info:
        sim.stage(V28, min_free_bytes=2**62)
    assert info.value.step == "space" and sim.leftovers() == [] and len(sim.reg.requests) == seen


def test_a_broken_existing_release_dir_is_rebuilt_and_replaced(sim):
    sim.publish("good-0.0.28")
    final = sim.releases / V28
    (final / "bin").mkdir(parents=True)
    (final / "junk").write_text("half a release from a killed run")
    rel = sim.stage(V28)
    assert not rel.reused and not (final / "junk").exists()
    assert t3_version(rel.bin) == f"t3 v{V28}" and sim.leftovers() == [V28]
    # A verified release whose package was damaged is rebuilt too.
    (final / "lib" / "node_modules" / "t3" / "bin" / "t3").unlink()
    rel = sim.stage(V28)
    assert not rel.reused and t3_version(rel.bin) == f"t3 v{V28}" and sim.leftovers() == [V28]


def test_reinstall_from_the_kept_tarball_with_the_registry_stopped(sim):
    sim.publish("good-0.0.24")
    sim.stage(V24)
    sim.reg.stop()
    seen = len(sim.reg.requests)
    final = sim.releases / V24
    (final / "lib" / "node_modules" / "t3" / "bin" / "t3").unlink()  # the release is damaged
    with pytest.raises(StageError):
        verify_release(sim.releases, V24)
    rel = reinstall_from_tarball("npm", load_release(sim.releases, V24), env=sim.env)
    assert rel.prefix == final and t3_version(rel.bin) == f"t3 v{V24}"
    assert verify_release(sim.releases, V24) == rel
    assert len(sim.reg.requests) == seen and sim.leftovers() == [V24]
    # A kept tarball that no longer matches its sha512 is refused; the release is untouched.
    with open(rel.tarball, "ab") as fh:
        fh.write(b"\0")
    before = sorted(str(p.relative_to(final)) for p in final.rglob("*"))
    with pytest.raises(StageError, match="does not match its recorded sha512") as info:
        reinstall_from_tarball("npm", rel, env=sim.env)
    assert info.value.step == "verify"
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == before
    assert sim.leftovers() == [V24]


def test_remove_release_and_clean_staging(sim, tmp_path):
    sim.releases.mkdir()
    (sim.releases / V24 / "bin").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (sim.releases / V25).symlink_to(outside)
    (sim.releases / f".staging-{V28}-123" / "lib").mkdir(parents=True)
    assert remove_release(sim.releases, V24) is True
    assert remove_release(sim.releases, V24) is False
    assert remove_release(sim.releases, V25) is True and (outside / "keep").exists()  # link removed, not followed
    for bad in ("..", "../outside", "v0.0.24", f".staging-{V28}-123"):
        with pytest.raises(ValueError):
            remove_release(sim.releases, bad)
    assert clean_staging(sim.releases) == [f".staging-{V28}-123"]
    assert sim.leftovers() == []


def test_replacing_without_renameat2_falls_back_to_rename_aside(sim, monkeypatch):
    sim.publish("good-0.0.28")
    (sim.releases / V28).mkdir(parents=True)
    (sim.releases / V28 / "junk").write_text("x")
    monkeypatch.setattr(releases, "_exchange", lambda a, b: False)
    rel = sim.stage(V28)
    assert t3_version(rel.bin) == f"t3 v{V28}" and sim.leftovers() == [V28]
    assert not (rel.prefix / "junk").exists()
