"""Phase 4, stage: install a candidate into its own release directory, never over a live one.

Layout of one release, `<releases_dir>/<version>/`:

    bin/t3                      npm's bin link (relative: ../lib/node_modules/t3/bin/t3)
    lib/node_modules/<pkg>/     the installed package
    <tarball>.tgz               the exact bytes `npm pack` fetched, for an offline rollback
    release.json                version, package, tarball name, sha512 (SRI form), staged_at

Staging happens in `<releases_dir>/.staging-<version>-<pid>/` (same filesystem, so the final
rename is atomic): `npm pack <pkg>@<version>` (fresh, empty cache; npm checks the registry's
integrity), sha512 of the tarball, a check that the tarball's package.json names that package
and version (a tarball naming a path twice is refused), `npm install --global --offline
<tarball>` (never with lifecycle scripts: `--ignore-scripts` on pack and install), a check of
the INSTALLED package.json, then `bin/t3 --version` must report the version. Only then is the
directory renamed to `<releases_dir>/<version>`, and `bin/t3 --version` checked again from
there. Any failure removes the staging directory and raises `StageError` naming the step.

`stage_for(cfg, ...)` is how the runner stages: every npm step and every `t3 --version` runs
as the unprivileged gate user (config `gate_user`) in a fresh private scratch directory
(`runner.scratch`) with an explicit environment (`gate_env`); root copies the packed tarball
out (no-follow), moves the gate's installed tree into the staging dir and makes it root's
(`take_ownership`: root:root, no group/other write), so users run a release the gate user
cannot change.

An existing `<releases_dir>/<version>` (an earlier run staged it) is verified (release.json,
tarball sha512, `bin/t3 --version`) and reused without touching the network; if it fails
verification it is rebuilt and replaced by an atomic directory exchange (renameat2
RENAME_EXCHANGE; a rename-aside fallback where the filesystem lacks it).

npm verifies no integrity for a local tarball, so `reinstall_from_tarball` compares the kept
tarball with the sha512 recorded at pack time before installing it offline.
"""
from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import proc, state, versions
from .gatework import GateWork, adopt_gate_tree, copy_untrusted, gate_env, take_ownership
from .gateuser import GateUserError, gate_ids
from .resolve import validate_package
from .scratch import ScratchError, private_scratch

__all__ = [
    "StageError", "Release", "npm_pack_argv", "npm_install_argv", "t3_version_argv", "sha512_of",
    "stage_release", "load_release", "verify_release", "reinstall_from_tarball", "remove_release",
    "clean_staging", "BIN_NAME", "RELEASE_FILE", "GateWork", "gate_env", "stage_for", "take_ownership",
]

log = logging.getLogger("t3-autoupdate.stage")

BIN_NAME = "t3"
RELEASE_FILE = "release.json"
STAGING_PREFIX = ".staging-"
DEFAULT_MIN_FREE = 256 * 2**20


class StageError(Exception):
    """Staging (or reinstalling) a release failed; nothing was left behind.

    `step` is one of: gate, space, pack, tarball, install, version, verify, rename."""

    def __init__(self, version: str, step: str, detail: str) -> None:
        self.version, self.step, self.detail = version, step, detail
        super().__init__(f"stage {version}: {step}: {detail}")


@dataclass(frozen=True)
class Release:
    version: str
    prefix: Path
    bin: Path
    tarball: Path
    sha512: str  # SRI form, "sha512-<base64>", comparable with the registry's dist.integrity
    reused: bool = False


# --------------------------------------------------------------------------- argv builders

def npm_pack_argv(npm: str, package: str, version: str, dest: Path, cache_dir: Path, *,
                  fetch_timeout_ms: int = 120000) -> list[str]:
    spec = f"{validate_package(package)}@{versions.validate_version(version)}"
    return [str(npm), "pack", spec, "--pack-destination", str(dest), "--json",
            "--prefer-online", "--fetch-retries=0", f"--fetch-timeout={int(fetch_timeout_ms)}",
            "--cache", str(cache_dir), "--ignore-scripts"]


def npm_install_argv(npm: str, prefix: Path, tarball: Path, cache_dir: Path) -> list[str]:
    tarball = Path(tarball)
    if not tarball.is_absolute() or tarball.suffix != ".tgz":
        raise ValueError(f"npm_install_argv: expected an absolute path to a .tgz, got {tarball}")
    return [str(npm), "install", "--global", "--prefix", str(prefix), "--offline", str(tarball),
            "--no-audit", "--no-fund", "--cache", str(cache_dir), "--ignore-scripts"]


def t3_version_argv(bin_path: Path) -> list[str]:
    return [str(bin_path), "--version"]


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _check_installed_manifest(staging: Path, package: str, version: str) -> None:
    """The INSTALLED package.json (what users will run) must name the package and version."""
    path = staging / "lib" / "node_modules" / package / "package.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(version, "install", f"installed {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("name") != package or data.get("version") != version:
        got = f"{data.get('name')!r}@{data.get('version')!r}" if isinstance(data, dict) else "no object"
        raise StageError(version, "install", f"installed package.json holds {got}, expected {package}@{version}")


# --------------------------------------------------------------------------- helpers

class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.end - time.monotonic())


def _npm_said(exc: proc.CommandError) -> str:
    try:
        err = json.loads(exc.stdout).get("error") or {}
        if err.get("code") or err.get("summary"):
            return f"{err.get('code', '?')}: {err.get('summary', '')} ({exc.reason})"
    except (ValueError, AttributeError):
        pass
    tail = (exc.stderr or exc.stdout).strip().splitlines()[-4:]
    return " | ".join(tail + [f"({exc.reason})"])


def _check_version(bin_path: Path, version: str, where: str, timeout: float, gate: "GateWork | None" = None) -> None:
    try:
        done = proc.run(t3_version_argv(bin_path), timeout=min(timeout, 60), cwd=bin_path.parent.parent,
                        **(gate.run_kwargs() if gate else {}))
    except proc.CommandError as exc:
        raise StageError(version, "version", f"{where} t3 --version failed: {exc}") from exc
    try:
        reported = versions.parse_t3_version_output(done.stdout)
    except versions.VersionError as exc:
        raise StageError(version, "version", f"{where} t3 --version: {exc}") from exc
    if reported != version:
        raise StageError(version, "version", f"{where} t3 --version reports {reported}, expected {version}")


def _tarball_manifest(path: Path) -> dict:
    """The tarball's package/package.json. A tarball naming any path twice is refused: the
    check would read one copy while extraction keeps another (a smuggled version or script)."""
    seen: set[str] = set()
    manifest = None
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = os.path.normpath(member.name.lstrip("/")).lstrip("./") or "."
            if name in seen:
                raise ValueError(f"duplicate entry {member.name!r} in the tarball")
            seen.add(name)
            parts = name.split("/")
            if len(parts) == 2 and parts[1] == "package.json" and member.isfile():
                manifest = json.loads(tar.extractfile(member).read().decode("utf-8"))
    if manifest is None:
        raise ValueError("no package/package.json in the tarball")
    return manifest


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False if unsupported here."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename staging to final; an existing final is swapped out atomically and removed."""
    if not final.exists() and not final.is_symlink():
        os.rename(staging, final)
    elif final.is_dir() and not final.is_symlink() and _exchange(staging, final):
        shutil.rmtree(staging)  # now holds the replaced release
    else:
        aside = final.with_name(f"{STAGING_PREFIX}old-{final.name}-{os.getpid()}")
        os.rename(final, aside)
        os.rename(staging, final)
        shutil.rmtree(aside) if aside.is_dir() and not aside.is_symlink() else aside.unlink()
    state.fsync_dir(final.parent)


def _release_of(prefix: Path, meta: dict, version: str) -> Release:
    name = meta.get("tarball")
    sha = meta.get("sha512")
    if meta.get("version") != version or not isinstance(name, str) or "/" in name \
            or not name.endswith(".tgz") or name.startswith(".") \
            or not isinstance(sha, str) or not sha.startswith("sha512-"):
        raise StageError(version, "verify", f"{prefix / RELEASE_FILE}: malformed release record")
    return Release(version, prefix, prefix / "bin" / BIN_NAME, prefix / name, sha)


def _write_record(prefix: Path, version: str, package: str, tarball: Path, sha: str) -> None:
    state.atomic_json(prefix / RELEASE_FILE, {
        "version": version, "package": package, "tarball": tarball.name, "sha512": sha,
        "staged_at": state.iso(state.utc_now())})


def _new_staging(releases_dir: Path, version: str) -> Path:
    staging = releases_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    os.chmod(staging, 0o755)  # users run their linked release; whatever root's umask
    return staging


def _install_and_check(npm: str, staging: Path, tarball: Path, version: str, env, deadline: _Deadline,
                       gate: GateWork | None = None, package: str | None = None) -> None:
    """`npm install` the tarball (scripts never run), then `t3 --version`. With a gate, npm runs
    as the gate user into its own prefix, and root then takes the tree into `staging`."""
    if gate is None:
        prefix, cache, run_as = staging, staging / ".npm-cache", {"env": env}
    else:
        prefix, cache, run_as = gate.subdir("prefix"), gate.dir / "npm-cache", gate.run_kwargs()
    try:
        proc.run(npm_install_argv(npm, prefix, tarball, cache), cwd=gate.dir if gate else staging,
                 timeout=deadline.left(), **run_as)
    except proc.CommandError as exc:
        raise StageError(version, "install", _npm_said(exc)) from exc
    finally:
        if gate is None:
            shutil.rmtree(cache, ignore_errors=True)
    if gate is not None:
        try:
            adopt_gate_tree(prefix, staging)
        except OSError as exc:
            raise StageError(version, "install", f"taking the gate user's install: {exc}") from exc
    if package is not None:
        _check_installed_manifest(staging, package, version)
    _check_version(staging / "bin" / BIN_NAME, version, "staged", deadline.left(), gate)


def _finish(staging: Path, final: Path, version: str, package: str, tarball_name: str, sha: str,
            deadline: _Deadline, gate: GateWork | None = None) -> Release:
    _write_record(staging, version, package, staging / tarball_name, sha)
    existed = final.exists()
    try:
        _move_into_place(staging, final)
    except OSError as exc:
        raise StageError(version, "rename", f"{staging} -> {final}: {exc}") from exc
    release = Release(version, final, final / "bin" / BIN_NAME, final / tarball_name, sha)
    try:
        _check_version(release.bin, version, "released", deadline.left(), gate)
    except StageError:
        if not existed:
            shutil.rmtree(final, ignore_errors=True)
        raise
    return release


# --------------------------------------------------------------------------- public API

def load_release(releases_dir: Path, version: str) -> Release:
    """The Release recorded in `<releases_dir>/<version>/release.json` (no checks of the files)."""
    versions.validate_version(version)
    prefix = Path(releases_dir) / version
    try:
        meta = json.loads((prefix / RELEASE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise StageError(version, "verify", f"{prefix / RELEASE_FILE}: {exc}") from exc
    if not isinstance(meta, dict):
        raise StageError(version, "verify", f"{prefix / RELEASE_FILE}: not a JSON object")
    return _release_of(prefix, meta, version)


def verify_release(releases_dir: Path, version: str, *, timeout: float = 60,
                   gate: GateWork | None = None) -> Release:
    """Load a release and prove it: tarball sha512 as recorded, `bin/t3 --version` right."""
    release = load_release(releases_dir, version)
    try:
        actual = sha512_of(release.tarball)
    except OSError as exc:
        raise StageError(version, "verify", f"kept tarball {release.tarball}: {exc}") from exc
    if actual != release.sha512:
        raise StageError(version, "verify", f"kept tarball {release.tarball} does not match its recorded sha512")
    _check_version(release.bin, version, "released", timeout, gate)
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
    staging = _new_staging(releases_dir, version)
    try:
        tarball = _pack(npm, package, version, staging, env, gate, deadline, fetch_timeout_ms)
        sha = sha512_of(tarball)
        try:
            manifest = _tarball_manifest(tarball)
        except (OSError, ValueError, tarfile.TarError) as exc:
            raise StageError(version, "tarball", f"{tarball.name}: {exc}") from exc
        if manifest.get("name") != package or manifest.get("version") != version:
            raise StageError(version, "tarball", f"{tarball.name} holds {manifest.get('name')!r}@"
                                                 f"{manifest.get('version')!r}, expected {package}@{version}")
        _install_and_check(npm, staging, tarball, version, env, deadline, gate, package)
        release = _finish(staging, final, version, package, tarball.name, sha, deadline, gate)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("stage: %s@%s staged at %s (%s)%s", package, version, final, sha,
             f" as gate uid {gate.user.uid}" if gate else "")
    return release


def _pack(npm: str, package: str, version: str, staging: Path, env, gate: GateWork | None,
          deadline: _Deadline, fetch_timeout_ms: int) -> Path:
    """`npm pack` into `staging` (as the gate user into its own dir, then copied by root)."""
    if gate is None:
        dest, cache, run_as, cwd = staging, staging / ".npm-cache", {"env": env}, staging
    else:
        dest, cache, run_as, cwd = gate.subdir("pack"), gate.dir / "npm-cache", gate.run_kwargs(), gate.dir
    try:
        done = proc.run(npm_pack_argv(npm, package, version, dest, cache, fetch_timeout_ms=fetch_timeout_ms),
                        cwd=cwd, timeout=deadline.left(), **run_as)
    except proc.CommandError as exc:
        raise StageError(version, "pack", _npm_said(exc)) from exc
    finally:
        if gate is None:
            shutil.rmtree(cache, ignore_errors=True)
    packed = _packed_tarball(dest, done.stdout, version)
    if gate is None:
        return packed
    tarball = staging / packed.name
    try:
        copy_untrusted(packed, tarball)
    except OSError as exc:
        raise StageError(version, "pack", f"copying {packed}: {exc}") from exc
    return tarball


def stage_for(cfg, version: str, *, env: Mapping[str, str], timeout: float = 300) -> Release:
    """Stage as production does: as the configured gate user, in fresh private scratch; only
    `npm_config_registry` of `env` reaches npm."""
    try:
        gate_user = gate_ids(cfg)
        with private_scratch(cfg, "stage", gate_user) as (_root_dir, gate_dir):
            gate = GateWork(gate_user, gate_dir, env.get("npm_config_registry"))
            return stage_release(cfg.npm, cfg.package, version, cfg.releases_dir, env=env, timeout=timeout,
                                 gate=gate)
    except (GateUserError, ScratchError) as exc:  # fail closed: never fall back to root
        raise StageError(version, "gate", str(exc)) from exc


def _packed_tarball(staging: Path, stdout: str, version: str) -> Path:
    try:
        entries = json.loads(stdout)
        name = entries[0]["filename"] if isinstance(entries, list) and len(entries) == 1 else None
    except (ValueError, KeyError, TypeError):
        name = None
    found = sorted(p.name for p in staging.glob("*.tgz"))
    if not isinstance(name, str) or found != [name] or "/" in name:
        raise StageError(version, "pack", f"npm pack printed {stdout.strip()[:200]!r}; tarballs found: {found}")
    return staging / name


def reinstall_from_tarball(npm: str, release: Release, *, env: Mapping[str, str], timeout: float = 300) -> Release:
    """Rebuild `release.prefix` from its kept tarball, offline, after checking its sha512.

    Works with no registry at all. The rebuilt directory replaces the old one atomically;
    on failure the old one is left exactly as it was."""
    version = versions.validate_version(release.version)
    deadline = _Deadline(timeout)
    try:
        actual = sha512_of(release.tarball)
    except OSError as exc:
        raise StageError(version, "verify", f"kept tarball {release.tarball}: {exc}") from exc
    if actual != release.sha512:
        raise StageError(version, "verify", f"kept tarball {release.tarball} does not match its recorded "
                                            f"sha512 (recorded {release.sha512}, found {actual})")
    package = None
    try:
        package = json.loads((release.prefix / RELEASE_FILE).read_text()).get("package")
    except (OSError, ValueError, AttributeError):
        pass
    staging = _new_staging(release.prefix.parent, version)
    try:
        copy = staging / release.tarball.name
        shutil.copyfile(release.tarball, copy)
        if sha512_of(copy) != release.sha512:
            raise StageError(version, "verify", f"copy of {release.tarball} changed while copying")
        if package is None:
            try:
                package = _tarball_manifest(copy).get("name")
            except (OSError, ValueError, tarfile.TarError) as exc:
                raise StageError(version, "tarball", f"{copy.name}: {exc}") from exc
        _install_and_check(npm, staging, copy, version, env, deadline)
        rebuilt = _finish(staging, release.prefix, version, validate_package(package), copy.name,
                          release.sha512, deadline)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("stage: %s reinstalled offline from %s", version, rebuilt.tarball)
    return rebuilt


def remove_release(releases_dir: Path, version: str) -> bool:
    """Delete `<releases_dir>/<version>`; False if absent. A symlink there is unlinked, never followed.

    The caller must make sure no active link points at it."""
    versions.validate_version(version)
    releases_dir = Path(releases_dir)
    path = releases_dir / version
    if path.parent.resolve() != releases_dir.resolve() or path.name != version:
        raise ValueError(f"remove_release: {path} is not directly inside {releases_dir}")
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        return False
    state.fsync_dir(releases_dir)
    log.info("stage: removed release %s", path)
    return True


def clean_staging(releases_dir: Path) -> list[str]:
    """Remove leftover `.staging-*` directories (a killed run's); call under the run lock."""
    removed = []
    try:
        entries = list(Path(releases_dir).iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(STAGING_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed
