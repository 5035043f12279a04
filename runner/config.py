"""The runner's configuration: one validated, frozen `Config`, built once at start.

Sources, later wins: built-in defaults (the runbook's), the TOML file named by `T3_CONFIG`
(default `/etc/t3-autoupdate/config.toml`, optional unless named explicitly; keys are the
`T3_*` names in lower case without `T3_`), then the `T3_*` environment variables.
Everything is validated and every problem reported at once: `ConfigError.errors` holds one
line each, naming the key and its source. The user map is loaded here too; its problems
(`<file>:<line>: ...`) join the same list. `npm_config_registry` is only recorded, and
reaches npm untouched through the environment.
"""
from __future__ import annotations

import json
import os
import stat
import tomllib
import types
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from .configkeys import DERIVED, ENV_NAMES, KEYS, absolute_path
from .notifyurls import private_url
from .usermap import OS_USER_RE, UserMapError, load_user_map
from .versions import validate_version

__all__ = ["DEFAULT_CONFIG_FILE", "ConfigError", "Config", "load_config"]

DEFAULT_CONFIG_FILE = "/etc/t3-autoupdate/config.toml"


class ConfigError(ValueError):
    """The configuration is invalid; `errors` lists every problem, one line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def _check_scratch_root(path: Path) -> str | None:
    """A scratch root that exists must be root's own directory, writable by nobody else:
    in a shared writable directory a user could pre-create or swap what root writes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # created 0710 by runner.scratch when first needed
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory (a symlink is refused)"
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return (f"{path} is writable by others or not owned by root (mode {stat.S_IMODE(st.st_mode):o}, "
                f"uid {st.st_uid}); scratch must be private, e.g. the default under the state dir")
    return None


def _close_match(word: str, known) -> list[str]:
    """The "did you mean" hint of an unknown key. difflib is imported here, on the error path:
    it costs 13 ms, paid on every login by the mint if imported at the top."""
    import difflib

    return difflib.get_close_matches(word, known, n=1)


def _user(os_user: str) -> str:
    if not isinstance(os_user, str) or not OS_USER_RE.fullmatch(os_user):
        raise ValueError(f"invalid OS user name {os_user!r}")
    return os_user


class Config(NamedTuple):
    """Frozen by being a tuple (not a dataclass: importing dataclasses costs the mint 15 ms
    on every login). Built by keyword only, by `load_config`."""
    track: str
    pin: str | None
    dry_run: bool
    smoke_port: int
    tmpdir: Path                          # the private scratch root (runner.scratch)
    gate_user: str                        # runs every candidate build: a name or a numeric uid
    useradd: str
    freeze_file: Path
    state_dir: Path
    releases_dir: Path
    active_dir: Path
    backup_dest: Path
    home_root: Path
    bin_link: Path
    user_map: Path
    dispatch: str
    dispatch_map: Path
    mint_helper: Path
    serve_host: str
    package: str
    cookie_name: str
    npm: str
    systemctl: str
    sqlite3: str
    min_age: float | None
    ready_timeout: float
    backup_timeout: float
    gate_timeout: float
    busy_quiet: float
    keep_backups: int
    keep_daily_backups: int
    notify_urls: tuple[str, ...]
    notify_events: tuple[str, ...]
    notify_timeout: float
    notify_deferral_after: float
    users: Mapping[str, str]              # SSO name -> OS user
    config_file: Path | None              # the TOML file actually read, if any
    sources: Mapping[str, str]            # key -> "default" | "file" | "environment"
    npm_config_registry: str | None = None

    @property
    def os_users(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.users.values())))

    def home_dir(self, os_user: str) -> Path:
        return self.home_root / _user(os_user)

    def t3_base_dir(self, os_user: str) -> Path:
        return self.home_dir(os_user) / ".t3"

    def userdata_dir(self, os_user: str) -> Path:
        return self.t3_base_dir(os_user) / "userdata"

    def active_link(self, os_user: str) -> Path:
        return self.active_dir / _user(os_user)

    def release_dir(self, version: str) -> Path:
        return self.releases_dir / validate_version(version)

    runs_dir = property(lambda self: self.state_dir / "runs")
    quarantine_dir = property(lambda self: self.state_dir / "quarantine")
    deferred_dir = property(lambda self: self.state_dir / "deferred")
    journal_path = property(lambda self: self.state_dir / "journal")
    last_good_path = property(lambda self: self.state_dir / "last-good")
    lock_path = property(lambda self: self.state_dir / "lock")

    def as_dict(self) -> dict[str, Any]:
        """The effective settings, JSON-friendly (paths as strings)."""
        out = {k: str(v) if isinstance(v, Path) else v for k in KEYS for v in [getattr(self, k)]}
        return {**out, "npm_config_registry": self.npm_config_registry, "users": dict(self.users)}

    def check_lines(self) -> list[str]:
        """`key = value  # source` lines for `t3-autoupdate config check`."""
        lines = [f"# config file: {self.config_file or 'none'}"]
        for key, value in self.as_dict().items():
            source = self.sources.get(key) or ("environment" if value is not None else "unset")
            if key == "users":
                source = str(self.user_map)
            if key == "notify_urls":  # tokens and passwords stay out of terminals and logs
                value = [private_url(url) for url in value]
            shown = "(unset)" if value is None else json.dumps(value)
            lines.append(f"{key} = {shown}  # {source}")
        return lines


def untrusted_file_problem(path: Path, st: os.stat_result, why: str) -> str | None:
    """A file root acts on must be root's (or the runner's own user's) and writable by its owner only."""
    if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
        return (f"{path}: writable by others than its owner, or not owned by root "
                f"(mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}; {why})")
    return None


def _check_trusted_file(path: Path, where: str, why: str, errors: list[str]) -> None:
    """Owner and mode of an existing file (lstat: a symlink is judged itself, then refused)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        errors.append(f"{where}: cannot inspect {path}: {exc.strerror}")
        return
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError as exc:
            errors.append(f"{where}: {path} is a dangling symlink: {exc.strerror}")
            return
    problem = untrusted_file_problem(path, st, why)
    if problem:
        errors.append(problem)


def _read_file(env: Mapping[str, str], errors: list[str]) -> tuple[dict[str, Any], Path | None]:
    explicit = "T3_CONFIG" in env
    try:
        path = absolute_path(env["T3_CONFIG"] if explicit else DEFAULT_CONFIG_FILE)
    except ValueError as exc:
        errors.append(f"T3_CONFIG (environment): {exc}")
        return {}, None
    try:
        st = path.stat()
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        if explicit:  # only the default file is optional
            errors.append(f"T3_CONFIG (environment): config file {path} does not exist")
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return {}, None
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"{path}: invalid TOML: {exc}")
        return {}, path
    problem = untrusted_file_problem(path, st, "it names programs run as root")
    if problem:
        errors.append(problem)
    for key in data:
        if key not in KEYS:
            hint = _close_match(key, KEYS)
            errors.append(f"{path}: {key}: unknown key" + (f" (did you mean {hint[0]}?)" if hint else ""))
    return {k: v for k, v in data.items() if k in KEYS}, path


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build the one `Config` from defaults, the TOML file and the environment (env wins)."""
    env = os.environ if environ is None else environ
    errors: list[str] = []
    file_values, config_file = _read_file(env, errors)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    where: dict[str, str] = {}
    for key, (convert, default) in KEYS.items():
        name = f"T3_{key.upper()}"
        if name in env:
            raw, sources[key], where[key] = env[name], "environment", f"{name} (environment)"
        elif key in file_values:
            raw, sources[key], where[key] = file_values[key], "file", f"{config_file}: {key}"
        else:
            raw, sources[key], where[key] = default, "default", f"{name} (default)"
            if key in DERIVED:
                if isinstance(values.get("state_dir"), Path):
                    values[key] = values["state_dir"] / DERIVED[key]
                continue
        try:
            values[key] = convert(raw)
        except ValueError as exc:
            errors.append(f"{where[key]}: {exc}")
    if isinstance(values.get("tmpdir"), Path):
        problem = _check_scratch_root(values["tmpdir"])
        if problem:
            errors.append(f"{where['tmpdir']}: {problem}")
    users: dict[str, str] = {}
    if isinstance(values.get("dispatch_map"), Path):
        _check_trusted_file(values["dispatch_map"], where["dispatch_map"],
                            "it names the ports root restarts and gates", errors)
    if isinstance(values.get("user_map"), Path):
        _check_trusted_file(values["user_map"], where["user_map"],
                            "it names the users root acts for", errors)
        try:
            users = load_user_map(values["user_map"])
        except UserMapError as exc:
            errors.extend(exc.problems)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            errors.append(f"{where['user_map']}: cannot read {values['user_map']}: {reason}")
        for sso, os_user in users.items():
            if os_user == "root":
                errors.append(f"{values['user_map']}: {sso} maps to root; t3 must not run as root")
    # Fail closed on an unknown T3_* name: a typo of T3_DRY_RUN must not become a real run.
    # (T3_PORT is the serve unit's own variable, inherited by shells inside a t3 session.)
    for name in sorted(env):
        if name.startswith("T3_") and name not in ENV_NAMES and name not in ("T3_CONFIG", "T3_PORT"):
            hint = _close_match(name, [*ENV_NAMES, "T3_CONFIG"])
            errors.append(f"{name} (environment): unknown variable" + (f" (did you mean {hint[0]}?)" if hint else ""))
    if errors:
        raise ConfigError(errors)
    return Config(**values, users=types.MappingProxyType(dict(users)), config_file=config_file,
                  sources=types.MappingProxyType(sources),
                  npm_config_registry=env.get("npm_config_registry"))
