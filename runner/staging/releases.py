"""Release directories `<releases_dir>/<version>/`: the release record (release.json), its
verification (kept tarball sha512, `bin/t3 --version`), the atomic replacement of a
directory (renameat2 RENAME_EXCHANGE; a rename-aside fallback where the filesystem lacks it),
removal, and the `.staging-*` directories a killed run left."""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from runner import state, versions
from runner.gatework import GateWork
from runner.staging.checks import BIN_NAME, StageError, check_version, sha512_of

log = logging.getLogger("t3-autoupdate.stage")

RELEASE_FILE = "release.json"
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class Release:
    version: str
    prefix: Path
    bin: Path
    tarball: Path
    sha512: str  # SRI form, "sha512-<base64>", comparable with the registry's dist.integrity
    reused: bool = False


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


def move_into_place(staging: Path, final: Path) -> None:
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


def write_record(prefix: Path, version: str, package: str, tarball: Path, sha: str) -> None:
    state.atomic_json(prefix / RELEASE_FILE, {
        "version": version, "package": package, "tarball": tarball.name, "sha512": sha,
        "staged_at": state.iso(state.utc_now())})


def new_staging(releases_dir: Path, version: str) -> Path:
    staging = releases_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    os.chmod(staging, 0o755)  # users run their linked release; whatever root's umask
    return staging


def check_kept_tarball(release: Release) -> None:
    """The kept tarball must be the bytes npm fetched at staging (npm checks no integrity of a local file)."""
    try:
        actual = sha512_of(release.tarball)
    except OSError as exc:
        raise StageError(release.version, "verify", f"kept tarball {release.tarball}: {exc}") from exc
    if actual != release.sha512:
        raise StageError(release.version, "verify", f"kept tarball {release.tarball} does not match its recorded "
                                                    f"sha512 (recorded {release.sha512}, found {actual})")


def release_on_disk(releases_dir: Path, version: str) -> bool:
    """A release to go back to is there: its `bin/t3`, or the record and kept tarball it can be
    reinstalled from offline (`flow.release_for_rollback` proves which, under the run lock)."""
    try:
        release = load_release(releases_dir, version)
    except versions.VersionError:
        return False
    except StageError:  # no record: an installed binary is still a way back
        return (Path(releases_dir) / version / "bin" / BIN_NAME).exists()
    return release.bin.exists() or release.tarball.is_file()


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
    check_kept_tarball(release)
    check_version(release.bin, version, "released", timeout, gate)
    return release


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
