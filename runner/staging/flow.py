"""Staging a candidate, and reinstalling a release from its kept tarball.

Staging happens in `<releases_dir>/.staging-<version>-<pid>/` (same filesystem, so the final
rename is atomic): `npm install --global <pkg>@<version>` from the registry (fresh, empty
cache, `--prefer-online`; npm checks the tarball against the registry's integrity; never
with lifecycle scripts: `--ignore-scripts`), the tarball it fetched copied out of that cache
with its sha512 (`npmcache`: one npm start-up, not `npm pack` and then an offline install),
a check that the tarball names no path twice and its package.json names that package and
version, a check of the INSTALLED package.json, then `bin/t3 --version` must report the
version. Only then is the directory renamed to `<releases_dir>/<version>`, and `bin/t3
--version` checked again from there. Any failure removes the staging directory and raises
`StageError` naming the step. Nothing of the candidate runs before those checks: the
install runs no script, and `t3 --version` comes after them.

`stage_for(cfg, ...)` is how the runner stages: every npm step and every `t3 --version` runs
as the unprivileged gate user (config `gate_user`) in a fresh private scratch directory
(`runner.scratch`) with an explicit environment (`gate_env`); root copies the fetched tarball
out of the gate's npm cache (by descriptor, no-follow), moves the gate's installed tree into
the staging dir and makes it root's (`take_ownership`: root:root, no group/other write), so
users run a release the gate user cannot change.

An existing `<releases_dir>/<version>` (an earlier run staged it) is verified (release.json,
tarball sha512, `bin/t3 --version`) and reused without touching the network; if it fails
verification it is rebuilt and replaced atomically.

npm verifies no integrity for a local tarball, so `reinstall_from_tarball` compares the kept
tarball with the sha512 recorded at staging before installing it offline; a rollback goes
through `release_for_rollback`, which reinstalls a release whose installed tree is missing or
broken that way (the rollback needs no network).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Iterator, Mapping

from runner import proc, versions
from runner.gateuser import GateUserError, gate_ids
from runner.gatework import GateWork, adopt_gate_tree
from runner.resolve import validate_package
from runner.scratch import ScratchError, private_scratch
from runner.staging.checks import (BIN_NAME, StageError, check_installed_manifest, check_version,
                                   npm_fetch_install_argv, npm_install_argv, npm_said, sha512_of, tarball_manifest)
from runner.staging.npmcache import CacheError, copy_cached_tarball, tarball_name
from runner.staging.releases import (RELEASE_FILE, Release, check_kept_tarball, load_release, move_into_place,
                                     new_staging, verify_release, write_record)

log = logging.getLogger("t3-autoupdate.stage")

DEFAULT_MIN_FREE = 256 * 2**20


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.end - time.monotonic())


@contextlib.contextmanager
def _npm_at(staging: Path, env, gate: GateWork | None) -> Iterator[tuple[Path, Path, dict, Path]]:
    """Where npm installs and caches, how it runs, and its cwd: as the gate user in its own
    dir (removed with the gate's scratch), or (no gate: tests, and the reinstall they drive)
    root's staging dir itself, whose npm cache is removed on the way out."""
    if gate is not None:
        yield gate.subdir("prefix"), gate.dir / "npm-cache", gate.run_kwargs(), gate.dir
        return
    try:
        yield staging, staging / ".npm-cache", {"env": env}, staging
    finally:
        shutil.rmtree(staging / ".npm-cache", ignore_errors=True)


def _npm(argv: list[str], step: str, version: str, cwd: Path, run_as: dict, deadline: _Deadline) -> None:
    try:
        proc.run(argv, cwd=cwd, timeout=deadline.left(), **run_as)
    except proc.CommandError as exc:
        raise StageError(version, step, npm_said(exc)) from exc


def _adopt_and_check(prefix: Path, staging: Path, version: str, deadline: _Deadline,
                     gate: GateWork | None = None, package: str | None = None) -> None:
    """With a gate, root takes the gate user's installed tree into `staging`; then the
    INSTALLED package.json (when the package is known) and `t3 --version`."""
    if gate is not None:
        try:
            adopt_gate_tree(prefix, staging)
        except OSError as exc:
            raise StageError(version, "install", f"taking the gate user's install: {exc}") from exc
    if package is not None:
        check_installed_manifest(staging, package, version)
    check_version(staging / "bin" / BIN_NAME, version, "staged", deadline.left(), gate)


def _fetch_and_install(npm: str, package: str, version: str, staging: Path, env, gate: GateWork | None,
                       deadline: _Deadline, fetch_timeout_ms: int) -> tuple[Path, Path, str]:
    """`npm install <package>@<version>` from the registry (scripts never run), and the tarball
    it fetched copied out of its fresh cache into `staging` (runner.staging.npmcache): one npm
    start-up. Returns (npm's prefix, the kept tarball, its sha512)."""
    tarball = staging / tarball_name(package, version)
    with _npm_at(staging, env, gate) as (prefix, cache, run_as, cwd):
        _npm(npm_fetch_install_argv(npm, package, version, prefix, cache, fetch_timeout_ms=fetch_timeout_ms),
             "fetch", version, cwd, run_as, deadline)
        try:
            sha = copy_cached_tarball(gate.dir.parent if gate else staging, cache, package, version, tarball)
        except (CacheError, OSError) as exc:
            raise StageError(version, "fetch", f"taking the fetched tarball: {exc}") from exc
    return prefix, tarball, sha


def _finish(staging: Path, final: Path, version: str, package: str, tarball_name: str, sha: str,
            deadline: _Deadline, gate: GateWork | None = None) -> Release:
    write_record(staging, version, package, staging / tarball_name, sha)
    existed = final.exists()
    try:
        move_into_place(staging, final)
    except OSError as exc:
        raise StageError(version, "rename", f"{staging} -> {final}: {exc}") from exc
    release = Release(version, final, final / "bin" / BIN_NAME, final / tarball_name, sha)
    try:
        check_version(release.bin, version, "released", deadline.left(), gate)
    except StageError:
        if not existed:
            shutil.rmtree(final, ignore_errors=True)
        raise
    return release


def stage_release(npm: str, package: str, version: str, releases_dir: Path, *, env: Mapping[str, str],
                  timeout: float = 300, fetch_timeout_ms: int = 120000,
                  min_free_bytes: int = DEFAULT_MIN_FREE, gate: GateWork | None = None) -> Release:
    """Stage `<package>@<version>` into `<releases_dir>/<version>` (see the module docstring).

    With `gate`, every npm step and `t3 --version` run as the gate user (see `stage_for`)."""
    versions.validate_version(version)
    validate_package(package)
    releases_dir = Path(releases_dir)
    releases_dir.mkdir(parents=True, exist_ok=True)
    final = releases_dir / version
    deadline = _Deadline(timeout)
    if final.exists():
        try:
            release = verify_release(releases_dir, version, timeout=deadline.left(), gate=gate)
            log.info("stage: %s already staged at %s and verified; reusing it", version, final)
            return Release(**{**release.__dict__, "reused": True})
        except StageError as exc:
            log.warning("stage: existing %s fails verification (%s); rebuilding it", final, exc.detail)
    free = shutil.disk_usage(releases_dir).free
    if free < min_free_bytes:
        raise StageError(version, "space", f"{releases_dir} has {free} bytes free, "
                                           f"less than the {min_free_bytes} required")
    staging = new_staging(releases_dir, version)
    try:
        prefix, tarball, sha = _fetch_and_install(npm, package, version, staging, env, gate, deadline,
                                                  fetch_timeout_ms)
        try:
            manifest = tarball_manifest(tarball)
        except (OSError, ValueError, tarfile.TarError) as exc:
            raise StageError(version, "tarball", f"{tarball.name}: {exc}") from exc
        if manifest.get("name") != package or manifest.get("version") != version:
            raise StageError(version, "tarball", f"{tarball.name} holds {manifest.get('name')!r}@"
                                                 f"{manifest.get('version')!r}, expected {package}@{version}")
        _adopt_and_check(prefix, staging, version, deadline, gate, package)
        release = _finish(staging, final, version, package, tarball.name, sha, deadline, gate)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("stage: %s@%s staged at %s (%s)%s", package, version, final, sha,
             f" as gate uid {gate.user.uid}" if gate else "")
    return release


@contextlib.contextmanager
def _gate_work(cfg, version: str, purpose: str, env: Mapping[str, str]) -> Iterator[GateWork]:
    """The gate user in fresh private scratch: where production runs npm and `t3 --version`; only
    `npm_config_registry` of `env` reaches npm. No gate user: StageError (never fall back to root)."""
    try:
        gate_user = gate_ids(cfg)
        with private_scratch(cfg, purpose, gate_user) as (_root_dir, gate_dir):
            yield GateWork(gate_user, gate_dir, env.get("npm_config_registry"))
    except (GateUserError, ScratchError) as exc:
        raise StageError(version, "gate", str(exc)) from exc


def stage_for(cfg, version: str, *, env: Mapping[str, str], timeout: float = 300) -> Release:
    """Stage as production does: as the configured gate user, in fresh private scratch."""
    with _gate_work(cfg, version, "stage", env) as gate:
        return stage_release(cfg.npm, cfg.package, version, cfg.releases_dir, env=env, timeout=timeout, gate=gate)


def reinstall_from_tarball(npm: str, release: Release, *, env: Mapping[str, str], timeout: float = 300,
                           gate: GateWork | None = None) -> Release:
    """Rebuild `release.prefix` from its kept tarball, offline, after checking its sha512.

    Works with no registry at all. The rebuilt directory replaces the old one atomically;
    on failure the old one is left exactly as it was. With `gate`, npm and `t3 --version` run
    as the gate user (see `stage_for`)."""
    version = versions.validate_version(release.version)
    deadline = _Deadline(timeout)
    check_kept_tarball(release)
    package = None
    try:
        package = json.loads((release.prefix / RELEASE_FILE).read_text()).get("package")
    except (OSError, ValueError, AttributeError):
        pass
    staging = new_staging(release.prefix.parent, version)
    try:
        copy = staging / release.tarball.name
        shutil.copyfile(release.tarball, copy)
        os.chmod(copy, 0o644)  # the gate user installs it; the run's umask keeps root's files private
        if sha512_of(copy) != release.sha512:
            raise StageError(version, "verify", f"copy of {release.tarball} changed while copying")
        if package is None:
            try:
                package = tarball_manifest(copy).get("name")
            except (OSError, ValueError, tarfile.TarError) as exc:
                raise StageError(version, "tarball", f"{copy.name}: {exc}") from exc
        with _npm_at(staging, env, gate) as (prefix, cache, run_as, cwd):
            _npm(npm_install_argv(npm, prefix, copy, cache), "install", version, cwd, run_as, deadline)
        _adopt_and_check(prefix, staging, version, deadline, gate)
        rebuilt = _finish(staging, release.prefix, version, validate_package(package), copy.name,
                          release.sha512, deadline, gate)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("stage: %s reinstalled offline from %s", version, rebuilt.tarball)
    return rebuilt


def release_for_rollback(cfg, version: str, *, env: Mapping[str, str], timeout: float = 300) -> Path:
    """The release directory a rollback to `version` links users to, proven to run: its `t3
    --version` (as the gate user) reports the version. A release whose installed tree is missing
    or broken is reinstalled from its kept tarball first, offline (sha512 checked): a rollback
    needs no network. StageError when neither works (no release record, a changed tarball)."""
    versions.validate_version(version)
    with _gate_work(cfg, version, "rollback", env) as gate:
        prefix = Path(cfg.releases_dir) / version
        try:
            check_version(prefix / "bin" / BIN_NAME, version, "installed", min(timeout, 60), gate)
            return prefix
        except StageError as exc:
            log.warning("rollback: the installed %s does not run (%s); reinstalling it from its kept tarball",
                        version, exc.detail)
        return reinstall_from_tarball(cfg.npm, load_release(cfg.releases_dir, version), env=env, timeout=timeout,
                                      gate=gate).prefix
