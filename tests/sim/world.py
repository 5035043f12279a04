"""The simulated deployment: a whole shared machine inside one temporary root.

    <root>/etc/ttyd-user-map, etc/t3-dispatch/dispatch.json, etc/t3-serve/<u>.env,
          etc/systemd/system/*.service (the project's own units, rendered),
          etc/t3-autoupdate/config.toml (the runner's config for this world)
    <root>/home/<u>/.t3/userdata/state.sqlite   populated history per user (a V2 user also
                                                has statev2.sqlite, made by the V2 import);
                                                each home is its user's own (below)
    <root>/var/lib/t3-autoupdate/{releases,active,...}, var/backups/t3-state, var/tmp
    <root>/usr/local/bin/t3                      the operators' link
    <root>/sim/bin/systemctl                     the systemctl stand-in
    <root>/registry, npm-cache                   the local npm registry

Everything real: npm installs from the registry, the stand-in runs real
processes from the unit files, the dispatch pairs over real HTTP.

Every simulated OS user is a real unprivileged uid of its own (`World.uid_of`, from
UID_BASE up, skipping any uid or gid the machine already has) with no passwd entry: their
home (0750), `.t3` (0700) and everything below belong to that uid, as on a host, and the
systemctl stand-in runs `User=<name>` as that uid (`<root>/sim/users.json`, its
--user-map-file). So a product step that wrongly runs as root, or that a user cannot do in
their own home, fails here as it would in production. Tests themselves run as root and may
read and write users' files directly (`World.give_to_user` hands new ones back).
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from runner import proc
from runner.livedb import live_database_name
from runner.units import load_template, render_unit, serve_unit_name

from . import builds, dbgen
from .dispatch import Dispatch
from .proc import free_port
from .prober import LoginProber
from .registry import NpmRegistry
from .systemctl import install_systemctl

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SimUser:
    sso: str
    os_user: str


#: The simulated users' uids start here (one each, skipping uids or gids the machine uses).
UID_BASE = 64200
HOME_MODE, T3_DIR_MODE = 0o750, 0o700


def _id_taken(number: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(number)
            return True
        except KeyError:
            pass
    return False


def unused_ids(count: int, start: int = UID_BASE, avoid: set[int] = frozenset()) -> list[int]:
    """`count` numbers from `start` up that no account or group of the machine has (nor `avoid`)."""
    found, candidate = [], start
    while len(found) < count:
        if candidate not in avoid and not _id_taken(candidate):
            found.append(candidate)
        candidate += 1
    return found


DEPLOYMENT_USERS = (SimUser("vbarzin", "wizard"), SimUser("emil.barzin", "emo"), SimUser("ancaelena98", "ancamilea"))
SCHEMA_OF = {v: builds.PROFILES[p].schema_level for v, p in builds.CATALOGUE}


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.05):
    """Poll `predicate` until truthy or the deadline; never a fixed sleep."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(interval)


#: When the catalogue was published: each version an hour after the one before.
CATALOGUE_PUBLISHED = datetime(2026, 6, 1, 4, 0, tzinfo=timezone.utc)


def publish_catalogue(registry: NpmRegistry, tarball_dir: Path) -> None:
    """Build every catalogue tarball into `tarball_dir` and publish it to `registry`."""
    tarballs = builds.build_catalogue(tarball_dir)
    for i, (version, _) in enumerate(builds.CATALOGUE):
        registry.publish(tarballs[version], published_at=CATALOGUE_PUBLISHED + timedelta(hours=i))


def npm_install_release(npm_env: dict[str, str], prefix: Path, version: str, cwd: Path) -> Path:
    """`npm install --global --prefix <prefix> t3@<version>`: a release as the world installs one."""
    proc.run(["npm", "install", "--global", "--prefix", str(prefix), f"t3@{version}"], env=npm_env, cwd=cwd,
             timeout=120)
    return prefix


class WorldTemplate:
    """What every world builds the same way, built once and then copied into each world.

    Building a world publishes the whole catalogue to a fresh registry and npm-installs its
    releases: the same bytes every time, and seconds of each world's build. A template does
    it once (lazily, per release version) in its own root: the catalogue tarballs, a registry
    storage with the catalogue published (same tarballs, same publish times, so the same
    integrity), and each release a real `npm install --global` from a registry serving that
    storage. A world built with `template=` copies them (full copies, no links: a test may
    edit or tamper with any of it) and serves its copy from its own registry on its own port;
    the world's processes, ports, users and state are its own, as without a template. Not
    copied: npm's cache of the template's installs (keyed by the template registry's URL, of
    no use on another port): the world's npm cache starts empty.

    Not thread-safe; one per pytest worker (tests/conftest.py `world_template`).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tarball_dir = self.root / "tarballs"
        self.registry = NpmRegistry(self.root / "registry")
        self.releases_dir = self.root / "releases"
        self._published = False

    def _publish(self) -> None:
        if not self._published:
            publish_catalogue(self.registry, self.tarball_dir)
            self._published = True

    def copy_catalogue(self, tarball_dir: Path, registry_storage: Path) -> None:
        """The published catalogue into a world: its tarballs and its registry's storage."""
        self._publish()
        shutil.copytree(self.tarball_dir, tarball_dir, dirs_exist_ok=True)
        shutil.copytree(self.registry.storage_dir, registry_storage, dirs_exist_ok=True)

    def serves_same(self, registry: NpmRegistry, version: str) -> bool:
        """True when `registry` is up and serves `version` with the template's bytes, so npm
        would install there exactly what the template installed (a test that tampered with,
        removed or cut off the world's registry gets a real npm install and its failure)."""
        self._publish()
        if not registry.running or registry.outage:
            return False
        theirs, mine = registry.packument() or {}, self.registry.packument()
        if version not in mine["versions"] or theirs.get("versions", {}).get(version) != mine["versions"][version]:
            return False
        try:
            return registry.tarball_path(version).read_bytes() == self.registry.tarball_path(version).read_bytes()
        except FileNotFoundError:
            return False

    def copy_release(self, version: str, prefix: Path) -> Path:
        """The installed release `version` into `prefix` (installed in the template on first use)."""
        made = self.releases_dir / version
        if not made.is_dir():
            self._publish()
            self.registry.start()
            npm_env = {**os.environ, **self.registry.npm_env(self.root / "npm-cache")}
            npm_install_release(npm_env, made.with_name(f".{version}.partial"), version, cwd=self.root)
            made.with_name(f".{version}.partial").rename(made)  # a failed install is never a template
        shutil.copytree(made, prefix, symlinks=True, dirs_exist_ok=True)
        return prefix

    def close(self) -> None:
        self.registry.stop()


#: How often a readiness wait asks the systemctl stand-in whether the unit is still active.
UNIT_CHECK_INTERVAL = 0.5

#: The gate user of the simulated host: a bare uid, so no test depends on the machine's accounts.
GATE_UID = "64123"


class World:
    def __init__(self, root: Path, *, users=DEPLOYMENT_USERS, installed: str = "0.0.24",
                 threads: int = 4, messages_per_thread: int = 12, db_options: dict | None = None,
                 user_versions: dict[str, str] | None = None, template: WorldTemplate | None = None):
        self.root = Path(root)
        self.template = template  # where the catalogue and releases are copied from (None: built here)
        self.users = tuple(users)
        self.installed = installed
        # os_user -> the catalogue version that user's link (and databases) are on instead of
        # `installed`: a host where a deferred user is still on an older (say pre-V2) build.
        self.user_versions = dict(user_versions or {})
        unknown = set(self.user_versions) - {u.os_user for u in self.users}
        if unknown:
            raise ValueError(f"user_versions names no user of this world: {sorted(unknown)}")
        self.threads = threads
        self.messages_per_thread = messages_per_thread
        self.db_options = db_options or {}  # os_user -> extra dbgen.make_user arguments
        self.ports = {u.sso: free_port() for u in self.users}
        self.dispatch_port = free_port()
        r = self.root
        self.etc = r / "etc"
        self.user_map = self.etc / "ttyd-user-map"
        self.dispatch_map = self.etc / "t3-dispatch" / "dispatch.json"
        self.serve_env_dir = self.etc / "t3-serve"
        self.unit_dir = self.etc / "systemd" / "system"
        self.config_path = self.etc / "t3-autoupdate" / "config.toml"
        self.freeze_file = self.etc / "t3-autoupdate.freeze"
        self.home_root = r / "home"
        self.state_dir = r / "var" / "lib" / "t3-autoupdate"
        self.releases_dir = self.state_dir / "releases"
        self.active_dir = self.state_dir / "active"
        self.backup_dest = r / "var" / "backups" / "t3-state"
        self.scratch = r / "var" / "tmp"
        self.bin_link = r / "usr" / "local" / "bin" / "t3"
        self.npm_cache = r / "npm-cache"
        self.registry = NpmRegistry(r / "registry")
        self.dispatch: Dispatch | None = None
        self.systemctl: Path | None = None
        self.mint_helper = r / "usr" / "local" / "bin" / "t3-mint"  # the path the dispatch calls
        self.tracker_bin = str(Path(sys.executable).parent / "t3-autoupdate")  # the console script
        self.users_file = r / "sim" / "users.json"  # the stand-in's --user-map-file
        self.uids = dict(zip((u.os_user for u in self.users), unused_ids(len(self.users), avoid={int(GATE_UID)})))

    # ------------------------------------------------------------------ paths
    def userdata(self, os_user: str) -> Path:
        return self.home_root / os_user / ".t3" / "userdata"

    def database(self, os_user: str) -> Path:
        """The V1 file, state.sqlite (frozen on a V2 user); see live_database."""
        return self.userdata(os_user) / "state.sqlite"

    def live_database(self, os_user: str) -> Path | None:
        """The database the user's build opens: statev2.sqlite once it exists, else state.sqlite."""
        userdata = self.userdata(os_user)
        name = live_database_name(os.listdir(userdata)) if userdata.is_dir() else None
        return userdata / name if name else None

    def version_of(self, os_user: str) -> str:
        """The catalogue version the world set this user up on."""
        return self.user_versions.get(os_user, self.installed)

    def uid_of(self, os_user: str) -> int:
        """The simulated user's own uid (and gid: the same number)."""
        return self.uids[self.user(os_user).os_user]

    def give_to_user(self, os_user: str, *paths: Path) -> None:
        """Hand files a test made as root in a user's home to that user (no-follow): as if the
        user had made them."""
        uid = self.uid_of(os_user)
        for path in paths:
            os.chown(path, uid, uid, follow_symlinks=False)

    def _own_home(self, os_user: str) -> None:
        """The whole home tree the user's: home 0750, .t3 0700 (a host's realistic modes)."""
        uid, home = self.uid_of(os_user), self.home_root / os_user
        for dirpath, dirnames, filenames in os.walk(home):
            for name in [*dirnames, *filenames]:
                os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
        os.chown(home, uid, uid)
        home.chmod(HOME_MODE)
        (home / ".t3").chmod(T3_DIR_MODE)

    def port_of(self, sso: str) -> int:
        return self.ports[sso]

    def user(self, name: str) -> SimUser:
        return next(u for u in self.users if name in (u.sso, u.os_user))

    # ------------------------------------------------------------------ build
    def build(self) -> "World":
        for d in (self.etc, self.serve_env_dir, self.unit_dir, self.home_root, self.releases_dir,
                  self.active_dir, self.backup_dest, self.scratch, self.bin_link.parent, self.config_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        self._publish_catalogue()
        self._write_maps()
        for version in dict.fromkeys([self.installed, *self.user_versions.values()]):
            self.install_release(version)
        for user in self.users:
            self.point_user(user.os_user, self.version_of(user.os_user))
        (self.state_dir / "last-good").write_text(self.installed + "\n")
        self._point_bin_link(self.installed)
        self._install_units()
        self._write_mint_helper()
        self._write_config()
        for user in self.users:
            options = {"threads": self.threads, "messages_per_thread": self.messages_per_thread,
                       **self.db_options.get(user.os_user, {})}
            version = self.version_of(user.os_user)
            dbgen.make_user(self.userdata(user.os_user), SCHEMA_OF[version], builds.profile_for(version).layout,
                            **options)
            self._own_home(user.os_user)
        # One stand-in call for all (each call is a Python start); it starts them in order.
        self.systemctl_run("start", *(serve_unit_name(user.os_user) for user in self.users))
        self.wait_instances_ready([user.sso for user in self.users])
        # Like production: no retry, so a login inside a user's restart window fails.
        self.dispatch = Dispatch(self.dispatch_map, self.mint_helper, port=self.dispatch_port).start()
        return self

    def _publish_catalogue(self) -> None:
        self.registry.start()
        if self.template is not None:
            self.template.copy_catalogue(self.root / "tarballs", self.registry.storage_dir)
        else:
            publish_catalogue(self.registry, self.root / "tarballs")
        self.registry.set_tag("latest", "0.0.24")
        self.registry.set_tag("nightly", self.installed)

    def _write_maps(self) -> None:
        self.user_map.write_text("# sso_name=os_user\n" + "".join(f"{u.sso}={u.os_user}\n" for u in self.users))
        self.dispatch_map.parent.mkdir(parents=True, exist_ok=True)
        self.dispatch_map.write_text(json.dumps(
            {u.sso: {"os_user": u.os_user, "port": self.ports[u.sso]} for u in self.users}, indent=2))
        for u in self.users:
            (self.serve_env_dir / f"{u.os_user}.env").write_text(f"T3_PORT={self.ports[u.sso]}\n")  # as the host's

    def _install_units(self) -> None:
        values = {"ACTIVE_DIR": str(self.active_dir), "HOME_ROOT": str(self.home_root),
                  "SERVE_ENV_DIR": str(self.serve_env_dir), "SERVE_HOST": "0.0.0.0"}
        (self.unit_dir / "t3-serve@.service").write_text(render_unit(load_template("t3-serve@.service"), values))
        self.systemctl = install_systemctl(self.root / "sim", self.unit_dir, user_map_file=self._write_users_file())

    def _write_users_file(self) -> Path:
        """The world's accounts for the systemctl stand-in (its --user-map-file)."""
        self.users_file.parent.mkdir(parents=True, exist_ok=True)
        self.users_file.write_text(json.dumps({
            u.os_user: {"uid": self.uids[u.os_user], "gid": self.uids[u.os_user], "home": str(self.home_root / u.os_user)}
            for u in self.users}, indent=1))
        return self.users_file

    def _write_mint_helper(self) -> None:
        """What the dispatch runs to mint, at the path it calls: the wrapper `install-mint`
        writes around `t3-autoupdate mint <os_user>`, which runs the user's OWN linked binary
        as that user (docs/architecture.md phase 6)."""
        from runner.install import mint_wrapper_text

        self.mint_helper.parent.mkdir(parents=True, exist_ok=True)
        self.mint_helper.write_text(mint_wrapper_text(self.tracker_bin, self.config_path))
        self.mint_helper.chmod(0o755)

    def _write_config(self) -> None:
        values = {
            "state_dir": self.state_dir, "releases_dir": self.releases_dir, "active_dir": self.active_dir,
            "backup_dest": self.backup_dest, "tmpdir": self.scratch, "freeze_file": self.freeze_file,
            "user_map": self.user_map, "dispatch_map": self.dispatch_map, "home_root": self.home_root,
            "bin_link": self.bin_link, "systemctl": self.systemctl, "npm": "npm", "mint_helper": self.mint_helper,
            "dispatch": f"http://127.0.0.1:{self.dispatch_port}",
            "gate_user": GATE_UID,  # candidate builds run as an unprivileged uid, as on a host
        }
        lines = [f'{k} = "{v}"' for k, v in values.items()]
        self.config_path.write_text("# written by the simulated world\n" + "\n".join(lines) + "\n")
        self.config_path.chmod(0o644)

    # ------------------------------------------------------------------ operations
    def npm_env(self) -> dict[str, str]:
        return {**os.environ, **self.registry.npm_env(self.npm_cache)}

    def runner_env(self, **overrides: str) -> dict[str, str]:
        """Environment for a real `t3-autoupdate` run against this world."""
        env = {**self.npm_env(), "T3_CONFIG": str(self.config_path), "PYTHONPATH": str(PROJECT_ROOT)}
        env.update(overrides)
        return env

    def install_release(self, version: str) -> Path:
        """`releases/<version>` as npm installs it from the world's registry (or the template's copy)."""
        return self.npm_install(version, self.releases_dir / version)

    def npm_install(self, version: str, prefix: Path) -> Path:
        """`npm install --global --prefix <prefix> t3@<version>` from the world's registry, or
        the template's copy of that install while the registry serves the template's bytes."""
        if self.template is not None and self.template.serves_same(self.registry, version):
            return self.template.copy_release(version, prefix)
        return npm_install_release(self.npm_env(), prefix, version, cwd=self.root)

    def point_user(self, os_user: str, version: str) -> None:
        link = self.active_dir / os_user
        if link.is_symlink():
            link.unlink()
        link.symlink_to(self.releases_dir / version)

    def _point_bin_link(self, version: str) -> None:
        if self.bin_link.is_symlink():
            self.bin_link.unlink()
        self.bin_link.symlink_to(self.releases_dir / version / "bin" / "t3")

    def systemctl_run(self, *args: str, ok_codes=(0,)) -> proc.Completed:
        return proc.run([str(self.systemctl), *args], ok_codes=ok_codes, timeout=60)

    def environment_of(self, sso: str) -> dict | None:
        try:
            response = requests.get(f"http://127.0.0.1:{self.ports[sso]}/.well-known/t3/environment", timeout=2)
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_instance_ready(self, sso: str, timeout: float = 30.0) -> dict:
        """The user's environment once their unit is active and their server answers (see
        wait_instances_ready)."""
        return self.wait_instances_ready([sso], timeout)[sso]

    def wait_instances_ready(self, ssos, timeout: float = 30.0) -> dict[str, dict]:
        """Each user's environment once all their units are active and their servers answer.

        The servers are asked at every poll; the units (one stand-in call for all: a Python
        start) at the first poll, then at most every UNIT_CHECK_INTERVAL and once more when
        every server answers: a unit that died still fails the wait within that interval, not
        at the deadline, without a Python start per poll."""
        units = {sso: serve_unit_name(self.user(sso).os_user) for sso in ssos}
        answers: dict[str, dict] = {}
        checked_at = None

        def ready():
            nonlocal checked_at
            for sso in units.keys() - answers.keys():
                answer = self.environment_of(sso)
                if answer is not None:
                    answers[sso] = answer
            every = len(answers) == len(units)
            if every or checked_at is None or time.monotonic() - checked_at >= UNIT_CHECK_INTERVAL:
                checked_at = time.monotonic()
                states = self.systemctl_run("is-active", *units.values(), ok_codes=range(256)).stdout.split()
                for unit, state in zip(units.values(), states + ["?"] * (len(units) - len(states))):
                    if state not in ("active", "reloading"):
                        raise RuntimeError(f"{unit} is not active ({state}): {self.unit_log(unit)[-600:]}")
            return answers if every else None

        return wait_until(ready, timeout, f"{', '.join(units.values())} to answer")

    def unit_log(self, unit: str) -> str:
        path = self.root / "sim" / "run" / "simctl" / f"{unit}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def server_version(self, sso: str) -> str | None:
        env = self.environment_of(sso)
        return env.get("serverVersion") if env else None

    def prober(self, sso: str, interval: float = 0.5) -> LoginProber:
        # A browser waits far longer than 15 s for a login; a slower one counts as failed.
        return LoginProber(self.dispatch.url, sso, interval=interval, timeout=15.0)

    def run_tracker(self, *args: str, timeout: float = 600, **env: str) -> proc.Completed:
        """A real `t3-autoupdate` process against this world; any exit code is returned."""
        return proc.run([sys.executable, "-m", "runner.cli", *args], env=self.runner_env(**env), cwd=self.root,
                        timeout=timeout, ok_codes=range(256))

    def stop(self) -> None:
        if self.dispatch is not None:
            self.dispatch.stop()
        if self.systemctl is not None:
            units = [serve_unit_name(u.os_user) for u in self.users]
            # One stand-in call for all (each call is a Python start); one by one if that
            # failed, since the stand-in stops at the first unit it refuses.
            if self.systemctl_run("stop", *units, ok_codes=range(256)).exit_code != 0:
                for unit in units:
                    self.systemctl_run("stop", unit, ok_codes=range(256))
        self.registry.stop()

    def __enter__(self) -> "World":
        return self.build()

    def __exit__(self, *exc) -> None:
        self.stop()
