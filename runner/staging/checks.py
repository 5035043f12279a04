"""The command lines of staging (`npm install`, `t3 --version`) and the checks of
what they produce: a tarball naming a path twice is refused, the tarball's and the INSTALLED
package.json must name the package and version, `t3 --version` must report the version."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from pathlib import Path

from runner import proc, versions
from runner.gatework import GateWork
from runner.resolve import validate_package

BIN_NAME = "t3"


class StageError(Exception):
    """Staging (or reinstalling) a release failed; nothing was left behind.

    `step` is one of: gate, space, fetch (the install from the registry, and taking its
    tarball from npm's cache), tarball, install, version, verify, rename."""

    def __init__(self, version: str, step: str, detail: str) -> None:
        self.version, self.step, self.detail = version, step, detail
        super().__init__(f"stage {version}: {step}: {detail}")


def npm_fetch_install_argv(npm: str, package: str, version: str, prefix: Path, cache_dir: Path, *,
                           fetch_timeout_ms: int = 120000) -> list[str]:
    """Install `<package>@<version>` from the registry: fresh, empty cache; `--prefer-online` so
    a cached packument never stands in for the registry's; one fetch attempt, bounded; `--json`
    so a failure is npm's error code and summary (`npm_said`)."""
    spec = f"{validate_package(package)}@{versions.validate_version(version)}"
    return [str(npm), "install", "--global", "--prefix", str(prefix), spec, "--json",
            "--prefer-online", "--fetch-retries=0", f"--fetch-timeout={int(fetch_timeout_ms)}",
            "--no-audit", "--no-fund", "--cache", str(cache_dir), "--ignore-scripts"]


def npm_install_argv(npm: str, prefix: Path, tarball: Path, cache_dir: Path) -> list[str]:
    """Install a kept tarball offline (a rollback's reinstall: no network at all)."""
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


def check_installed_manifest(staging: Path, package: str, version: str) -> None:
    """The INSTALLED package.json (what users will run) must name the package and version."""
    path = staging / "lib" / "node_modules" / package / "package.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(version, "install", f"installed {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("name") != package or data.get("version") != version:
        got = f"{data.get('name')!r}@{data.get('version')!r}" if isinstance(data, dict) else "no object"
        raise StageError(version, "install", f"installed package.json holds {got}, expected {package}@{version}")


def npm_said(exc: proc.CommandError) -> str:
    try:
        err = json.loads(exc.stdout).get("error") or {}
        if err.get("code") or err.get("summary"):
            return f"{err.get('code', '?')}: {err.get('summary', '')} ({exc.reason})"
    except (ValueError, AttributeError):
        pass
    tail = (exc.stderr or exc.stdout).strip().splitlines()[-4:]
    return " | ".join(tail + [f"({exc.reason})"])


def check_version(bin_path: Path, version: str, where: str, timeout: float, gate: "GateWork | None" = None) -> None:
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


def tarball_manifest(path: Path) -> dict:
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
