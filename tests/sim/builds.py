"""The build factory: real npm tarballs of the simulated t3, one per version and profile.

Every simulated build carries the same code (t3pkg/t3sim.py and t3serve.py) and differs only in
its package.json version and its profile.json behaviour profile. CATALOGUE is the
standard set of builds the tests, the registry and the demo publish: the good
builds the contract's history describes, then one bad nightly per failure the
gates must catch; then the orchestration V2 builds (V2_GOOD_VERSIONS,
V2_BAD_VERSIONS: statev2.sqlite, see t3sim), newer than all of those and kept in
their own groups so tests written for the V1 groups keep their meaning.

    from tests.sim import builds
    tgz = builds.build_tarball("0.0.24", "good-0.0.24", tmp_path)
    bin_t3 = builds.install_layout("0.0.24", "good-0.0.24", tmp_path / "prefix")
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import os
import py_compile
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PAYLOAD_DIR = Path(__file__).parent / "t3pkg"

# npm pack stamps every entry with this date so tarballs are reproducible; so do we.
_NPM_EPOCH = 499162500  # 1985-10-26T08:15:00Z


@dataclass(frozen=True)
class Profile:
    """How one simulated build behaves. Field names are profile.json's keys (see t3sim)."""

    name: str
    description: str
    schema_level: int = 33  # the highest migration this build knows
    auth_shape: str = "scopes"  # "role" (up to 0.0.24) | "scopes" (0.0.25 on)
    exchange_path: str = "/api/auth/browser-session"
    cookie_mode: str = "classic"  # "classic" | "host-scoped" | "env-scoped"
    sets_cookie: bool = True
    migration_variants: tuple[tuple[int, str], ...] = ()  # (migration id, t3sim.MIGRATION_VARIANTS key)
    never_ready: bool = False
    reported_version: str | None = None  # what `--version` claims instead of the truth
    crash_at_start: bool = False
    sql_error_style: str = "message"  # "message" | "code" (newer builds hide SQLite's text)
    layout: str = "v1"  # "v1": state.sqlite | "v2": statev2.sqlite, imported once from state.sqlite
    writes_v1_state: bool = False  # a bad V2 build that keeps writing state.sqlite after the import
    ready_delay: float = 0.0  # seconds after migrating before the server listens (a slow but good build)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["migration_variants"] = {str(mid): variant for mid, variant in self.migration_variants}
        return data


_GOOD_0_0_28 = Profile(
    "good-0.0.28",
    "browser-session, schema 33, scopes; cookie host-scoped (t3_session only on a remote-reachable host)",
    schema_level=33, cookie_mode="host-scoped", sql_error_style="code")


def _bad(name: str, description: str, **changes) -> Profile:
    """A bad build: good-0.0.28 with one thing broken."""
    return dataclasses.replace(_GOOD_0_0_28, name=name, description=description, **changes)


# Orchestration V2 (0.0.46 nightlies on): statev2.sqlite, migrations 50-62 on top of 1-33.
_GOOD_V2_0_0_46 = dataclasses.replace(
    _GOOD_0_0_28, name="good-v2-0.0.46",
    description="orchestration V2: imports state.sqlite into statev2.sqlite on first start, schema 60",
    layout="v2", schema_level=60)


def _bad_v2(name: str, description: str, **changes) -> Profile:
    """A bad V2 build: a V2 nightly at schema 62 with one thing broken."""
    return dataclasses.replace(_GOOD_V2_0_0_46, name=name, description=description, schema_level=62, **changes)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("good-0.0.24", "bootstrap endpoint, schema 30, role, classic cookie",
            schema_level=30, auth_shape="role", exchange_path="/api/auth/bootstrap"),
    Profile("good-0.0.25", "browser-session endpoint, schema 32, scopes, classic cookie", schema_level=32),
    Profile("good-0.0.26", "browser-session endpoint, schema 32, scopes, classic cookie", schema_level=32),
    _GOOD_0_0_28,
    _bad("migration-fails-populated",
         "migration 33 breaks a NOT NULL only when threads exist: empty databases migrate, real ones fail",
         migration_variants=((33, "fails-populated"),)),
    _bad("migration-fails-archived",
         "migration 33 breaks a NOT NULL only when archived threads exist: passes a seed without any, "
         "fails the canary of a user who has some", migration_variants=((33, "fails-on-archived"),)),
    _bad("migration-drops-rows", "migration 33 silently deletes every third message and succeeds",
         migration_variants=((33, "drops-rows"),)),
    _bad("endpoint-renamed", "credential exchange moved to /api/auth/pair: both standard paths 404",
         exchange_path="/api/auth/pair"),
    _bad("cookie-renamed", "remote-reachable cookie renamed t3_session_<h> (h from environment-id)",
         cookie_mode="env-scoped"),
    _bad("pairing-no-cookie", "exchange answers 200 authenticated:true without a Set-Cookie", sets_cookie=False),
    _bad("never-ready", "migrates, then never listens; stays alive until SIGTERM", never_ready=True),
    _bad("version-lie", "--version claims 0.0.28-nightly.20260616.571", reported_version="0.0.28-nightly.20260616.571"),
    _bad("crash-at-start", "serve exits 1 with an error before migrating or listening", crash_at_start=True),
    _GOOD_V2_0_0_46,
    dataclasses.replace(_GOOD_V2_0_0_46, name="good-v2-0.0.47",
                        description="orchestration V2, schema 61: a V2 -> V2 migration (61 adds threads.pinned)",
                        schema_level=61),
    _bad_v2("v2-import-loses-history",
            "the V1 -> V2 import (migration 56) carries only two of every three V1 messages into V2",
            migration_variants=((56, "import-drops-messages"),)),
    _bad_v2("v2-migration-drops-rows", "V2 migration 62 silently deletes every third V2 message and succeeds",
            migration_variants=((62, "v2-drops-rows"),)),
    _bad_v2("v2-migration-fails-populated",
            "V2 migration 62 breaks a NOT NULL when V2 threads exist: rolled back, serve exits 1",
            migration_variants=((62, "v2-fails-populated"),)),
    _bad_v2("v2-writes-state-sqlite",
            "after the import it still writes state.sqlite (a V1 projector on every start, new threads mirrored)",
            writes_v1_state=True),
)}

GOOD_VERSIONS: dict[str, str] = {
    "good-0.0.24": "0.0.24",
    "good-0.0.25": "0.0.25-nightly.20260608.497",
    "good-0.0.26": "0.0.26",
    "good-0.0.28": "0.0.28-nightly.20260616.571",
}
# One nightly per failure, all after the last good one (same day, rising run numbers).
BAD_VERSIONS: dict[str, str] = {
    "migration-fails-populated": "0.0.29-nightly.20260620.601",
    "migration-drops-rows": "0.0.29-nightly.20260620.602",
    "endpoint-renamed": "0.0.29-nightly.20260620.603",
    "cookie-renamed": "0.0.29-nightly.20260620.604",
    "pairing-no-cookie": "0.0.29-nightly.20260620.605",
    "never-ready": "0.0.29-nightly.20260620.606",
    "version-lie": "0.0.29-nightly.20260620.607",
    "crash-at-start": "0.0.29-nightly.20260620.608",
    "migration-fails-archived": "0.0.29-nightly.20260620.609",
}
# Orchestration V2 builds, kept apart so the V1 groups above stay what their tests expect.
V2_GOOD_VERSIONS: dict[str, str] = {
    "good-v2-0.0.46": "0.0.46-nightly.20261101.700",  # the first V2 build: imports
    "good-v2-0.0.47": "0.0.47-nightly.20261110.720",  # a V2 -> V2 migration (61)
}
# All after the good V2 ones; each at schema 62, so hosts on 60 or 61 run the bad body.
V2_BAD_VERSIONS: dict[str, str] = {
    "v2-import-loses-history": "0.0.48-nightly.20261120.731",
    "v2-migration-drops-rows": "0.0.48-nightly.20261120.732",
    "v2-migration-fails-populated": "0.0.48-nightly.20261120.733",
    "v2-writes-state-sqlite": "0.0.48-nightly.20261120.734",
}
VERSIONS: dict[str, str] = {**GOOD_VERSIONS, **BAD_VERSIONS, **V2_GOOD_VERSIONS, **V2_BAD_VERSIONS}  # profile -> version
CATALOGUE: list[tuple[str, str]] = [(version, name) for name, version in VERSIONS.items()]


def profile_for(version: str) -> Profile:
    """The profile of a catalogue version (KeyError for a version not in CATALOGUE)."""
    for catalogue_version, profile_name in CATALOGUE:
        if catalogue_version == version:
            return PROFILES[profile_name]
    raise KeyError(f"no catalogue build has version {version!r}")


def _resolve(profile: str | Profile) -> Profile:
    return PROFILES[profile] if isinstance(profile, str) else profile


def package_files(version: str, profile: str | Profile, *, scripts: dict[str, str] | None = None,
                  extra_files: dict[str, tuple[bytes, int]] | None = None) -> dict[str, tuple[bytes, int]]:
    """The package's files: path under package/ -> (content, mode).

    `scripts` (package.json lifecycle scripts) and `extra_files` make a hostile build."""
    profile = _resolve(profile)
    manifest = {
        "name": "t3",
        "version": version,
        "description": f"T3 Code (simulated build, profile {profile.name})",
        "license": "MIT",
        "bin": {"t3": "bin/t3"},
        "files": ["bin", "lib", "profile.json"],
        "engines": {"node": ">=18"},
        **({"scripts": dict(scripts)} if scripts else {}),
    }
    return {
        **(extra_files or {}),
        "package.json": ((json.dumps(manifest, indent=2) + "\n").encode(), 0o644),
        "profile.json": ((json.dumps(profile.to_json(), indent=2) + "\n").encode(), 0o644),
        "bin/t3": ((PAYLOAD_DIR / "bin_t3").read_bytes(), 0o755),
        **{f"lib/{name}": ((PAYLOAD_DIR / name).read_bytes(), 0o644) for name in PAYLOAD_MODULES},
        **{f"lib/__pycache__/{pyc}": (content, 0o644) for pyc, content in compiled_payload().items()},
    }


#: The payload's Python modules, under lib/ in every package.
PAYLOAD_MODULES = ("t3sim.py", "t3serve.py")


@functools.cache
def compiled_payload() -> dict[str, bytes]:
    """`<module>.<cache tag>.pyc` of each payload module: hash-checked bytecode for this
    interpreter, shipped beside the source as a release ships compiled code. A build run
    as `bin/t3` (every login's mint, every server start) writes no bytecode into its
    installed release, so without these each start compiled the modules again; another
    Python version ignores them, and a changed source fails the hash check (then the
    source is compiled, as without them)."""
    compiled = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in PAYLOAD_MODULES:
            pyc = f"{name[:-3]}.{sys.implementation.cache_tag}.pyc"
            # dfile: tracebacks name the module as installed (lib/<name>), not this checkout
            py_compile.compile(str(PAYLOAD_DIR / name), cfile=os.path.join(scratch, pyc), dfile=name,
                               doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            with open(os.path.join(scratch, pyc), "rb") as fh:
                compiled[pyc] = fh.read()
    return compiled


def build_tarball(version: str, profile: str | Profile, dest_dir: Path, **hostile) -> Path:
    """Write `dest_dir/t3-<version>.tgz`, a reproducible npm package tarball; return its path.

    Members sit under `package/` like `npm pack` output; same inputs give the same bytes.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for relpath, (content, mode) in sorted(package_files(version, profile, **hostile).items()):
            info = tarfile.TarInfo(f"package/{relpath}")
            info.size, info.mode, info.mtime = len(content), mode, _NPM_EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    target = dest_dir / f"t3-{version}.tgz"
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    os.replace(partial, target)  # readers (the registry) never see half a tarball
    return target


def build_catalogue(dest_dir: Path) -> dict[str, Path]:
    """Build every CATALOGUE tarball into dest_dir: version -> tarball path."""
    return {version: build_tarball(version, profile, dest_dir) for version, profile in CATALOGUE}


def unpack_package(tarball: Path, dest_dir: Path) -> Path:
    """Extract a tarball into dest_dir; return the package directory (dest_dir/package)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        # The "data" filter where tarfile has it (3.11.4 on; the project supports 3.11): the
        # tarball is our own, built just above from plain files, so older ones extract it as is.
        tar.extractall(dest_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest_dir / "package"


def install_layout(version: str, profile: str | Profile, prefix: Path) -> Path:
    """Lay a build out the way `npm install -g --prefix <prefix>` would, without npm.

    The package goes to `<prefix>/lib/node_modules/t3` and `<prefix>/bin/t3` is a
    relative symlink to its bin, as npm makes it. Returns the `<prefix>/bin/t3` path.
    """
    prefix = Path(prefix)
    modules = prefix / "lib" / "node_modules"
    package_dir = unpack_package(build_tarball(version, profile, prefix / "tarballs"), modules)
    package_dir.rename(modules / "t3")
    bin_link = prefix / "bin" / "t3"
    bin_link.parent.mkdir(parents=True, exist_ok=True)
    bin_link.symlink_to(os.path.relpath(modules / "t3" / "bin" / "t3", bin_link.parent))
    return bin_link


class InstalledBuilds:
    """Catalogue builds installed on demand under one root (npm's layout, no npm).

        installed = InstalledBuilds(tmp_path)
        bin_t3 = installed("good-0.0.28")   # <root>/<profile>/bin/t3, a symlink
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._bins: dict[str, Path] = {}

    def __call__(self, profile_name: str) -> Path:
        if profile_name not in self._bins:
            self._bins[profile_name] = install_layout(VERSIONS[profile_name], profile_name, self.root / profile_name)
        return self._bins[profile_name]
