"""runner.config: defaults, TOML then environment, every error at once, the user map."""
from pathlib import Path

import pytest

from runner import config as config_mod
from runner.config import Config, ConfigError, load_config
from runner.configkeys import ENV_NAMES, KEYS, parse_duration

USER_MAP = "# SSO name = OS user\nvbarzin = wizard\nalice=alice\n\nbob = alice\n"


@pytest.fixture
def tmp_site(tmp_path, monkeypatch):
    """A user map in tmp_path, and the default config file pointed at a path that is absent."""
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(tmp_path / "etc" / "absent.toml"))
    user_map = tmp_path / "ttyd-user-map"
    user_map.write_text(USER_MAP)
    return tmp_path


def env_for(tmp_site: Path, **extra: str) -> dict[str, str]:
    return {"T3_USER_MAP": str(tmp_site / "ttyd-user-map"), **extra}


def write_toml(tmp_site: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_site / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def errors_of(environ) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(environ)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def test_defaults(tmp_site):
    cfg = load_config(env_for(tmp_site))
    assert (cfg.track, cfg.pin, cfg.dry_run, cfg.smoke_port) == ("nightly", None, False, 0)
    assert cfg.tmpdir == Path("/var/lib/t3-autoupdate/scratch")  # private, never shared /var/tmp
    assert (cfg.gate_user, cfg.useradd) == ("t3-gate", "useradd")
    assert cfg.freeze_file == Path("/etc/t3-autoupdate.freeze")
    assert cfg.state_dir == Path("/var/lib/t3-autoupdate")
    assert cfg.releases_dir == Path("/var/lib/t3-autoupdate/releases")
    assert cfg.active_dir == Path("/var/lib/t3-autoupdate/active")
    assert cfg.backup_dest == Path("/var/backups/t3-state")
    assert cfg.home_root == Path("/home")
    assert cfg.bin_link == Path("/usr/local/bin/t3")
    assert cfg.dispatch == "http://127.0.0.1:3780"
    assert cfg.dispatch_map == Path("/etc/t3-dispatch/dispatch.json")
    assert cfg.serve_host == "0.0.0.0"
    assert (cfg.package, cfg.cookie_name) == ("t3", "t3_session")
    assert (cfg.npm, cfg.systemctl, cfg.sqlite3) == ("npm", "systemctl", "sqlite3")
    assert cfg.min_age is None
    assert (cfg.ready_timeout, cfg.backup_timeout, cfg.gate_timeout) == (30, 1800, 900)
    assert (cfg.busy_quiet, cfg.keep_backups) == (120, 3)
    assert cfg.config_file is None and cfg.npm_config_registry is None
    assert cfg.users == {"vbarzin": "wizard", "alice": "alice", "bob": "alice"}
    assert cfg.os_users == ("alice", "wizard")
    assert {k: v for k, v in cfg.sources.items() if v != "default"} == {"user_map": "environment"}


def test_derived_paths_and_helpers(tmp_site):
    cfg = load_config(env_for(tmp_site, T3_STATE_DIR=str(tmp_site / "state"), T3_HOME_ROOT=str(tmp_site / "home")))
    state = tmp_site / "state"
    assert (cfg.releases_dir, cfg.active_dir) == (state / "releases", state / "active")
    assert (cfg.runs_dir, cfg.quarantine_dir, cfg.deferred_dir) == (
        state / "runs", state / "quarantine", state / "deferred")
    assert (cfg.journal_path, cfg.last_good_path, cfg.lock_path) == (
        state / "journal", state / "last-good", state / "lock")
    assert cfg.home_dir("wizard") == tmp_site / "home" / "wizard"
    assert cfg.t3_base_dir("wizard") == tmp_site / "home" / "wizard" / ".t3"
    assert cfg.userdata_dir("wizard") == tmp_site / "home" / "wizard" / ".t3" / "userdata"
    assert cfg.active_link("wizard") == state / "active" / "wizard"
    assert cfg.release_dir("0.0.25-nightly.20260608.497") == state / "releases" / "0.0.25-nightly.20260608.497"


@pytest.mark.parametrize("bad_user", ["../root", "", "Wizard", "a/b", "wizard\n", ".t3"])
def test_user_helpers_refuse_bad_names(tmp_site, bad_user):
    cfg = load_config(env_for(tmp_site))
    for helper in (cfg.home_dir, cfg.t3_base_dir, cfg.userdata_dir, cfg.active_link):
        with pytest.raises(ValueError):
            helper(bad_user)


@pytest.mark.parametrize("bad_version", ["../x", "latest", "--foo", ""])
def test_release_dir_validates_the_version(tmp_site, bad_version):
    with pytest.raises(ValueError):
        load_config(env_for(tmp_site)).release_dir(bad_version)


def test_toml_then_environment(tmp_site):
    path = write_toml(tmp_site, f'''
track = "latest"
state_dir = "{tmp_site / "file-state"}"
dry_run = true
min_age = 3600
keep_backups = 5
pin = "0.0.24"
serve_host = "::"
''')
    cfg = load_config(env_for(tmp_site, T3_CONFIG=str(path), T3_TRACK="preview", T3_DRY_RUN="no"))
    assert cfg.config_file == path
    assert (cfg.track, cfg.dry_run) == ("preview", False)
    assert (cfg.state_dir, cfg.min_age, cfg.keep_backups, cfg.pin) == (tmp_site / "file-state", 3600, 5, "0.0.24")
    assert cfg.releases_dir == tmp_site / "file-state" / "releases"
    assert cfg.serve_host == "::"
    assert cfg.sources["track"] == "environment" and cfg.sources["dry_run"] == "environment"
    assert cfg.sources["state_dir"] == "file" and cfg.sources["min_age"] == "file"
    assert cfg.sources["gate_timeout"] == "default"

    cfg = load_config(env_for(tmp_site, T3_CONFIG=str(path), T3_STATE_DIR=str(tmp_site / "env-state"), T3_PIN=""))
    assert cfg.releases_dir == tmp_site / "env-state" / "releases"
    assert cfg.pin is None   # an empty T3_PIN clears the file's pin


def test_explicit_release_and_active_dirs_win_over_derived(tmp_site):
    cfg = load_config(env_for(tmp_site, T3_STATE_DIR=str(tmp_site / "s"), T3_RELEASES_DIR=str(tmp_site / "r"),
                              T3_ACTIVE_DIR=str(tmp_site / "a")))
    assert (cfg.releases_dir, cfg.active_dir) == (tmp_site / "r", tmp_site / "a")


def test_environ_defaults_to_os_environ(tmp_site, monkeypatch):
    monkeypatch.setenv("T3_USER_MAP", str(tmp_site / "ttyd-user-map"))
    monkeypatch.setenv("T3_TRACK", "latest")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:4873/")
    cfg = load_config()
    assert cfg.track == "latest" and cfg.npm_config_registry == "http://127.0.0.1:4873/"


def test_every_error_is_reported_at_once(tmp_site):
    path = write_toml(tmp_site, 'state_dir = "relative/state"\nbogus = 1\nkeep_backups = 0\n')
    errors = errors_of({
        "T3_CONFIG": str(path),
        "T3_USER_MAP": str(tmp_site / "ttyd-user-map"),
        "T3_MIN_AGE": "3x",
        "T3_DRY_RUN": "maybe",
        "T3_SMOKE_PORT": "70000",
        "T3_PIN": "v0.0.24",
        "T3_DISPATCH": "ftp://127.0.0.1:3780",
        "T3_TRACK": "stable",
        "T3_NPM": "bin/npm",
    })
    expected = [
        'T3_MIN_AGE (environment): "3x" is not a duration like 90m, 6h, 2d',
        "T3_DRY_RUN (environment):", "T3_SMOKE_PORT (environment):", "T3_PIN (environment):",
        "T3_DISPATCH (environment):", "T3_TRACK (environment):", "T3_NPM (environment):",
        f"{path}: state_dir: ", f"{path}: bogus: unknown key", f"{path}: keep_backups: ",
    ]
    for fragment in expected:
        assert sum(e.startswith(fragment) for e in errors) == 1, (fragment, errors)
    assert len(errors) == len(expected)
    assert any("must be an absolute path" in e for e in errors)


def test_missing_explicit_config_file_is_an_error(tmp_site):
    missing = tmp_site / "nope.toml"
    (error,) = errors_of(env_for(tmp_site, T3_CONFIG=str(missing)))
    assert error.startswith("T3_CONFIG (environment):") and str(missing) in error


def test_relative_t3_config_is_an_error(tmp_site):
    (error,) = errors_of(env_for(tmp_site, T3_CONFIG="config.toml"))
    assert error.startswith("T3_CONFIG (environment):") and "absolute" in error


def test_default_config_file_is_read_when_present(tmp_site, monkeypatch):
    path = write_toml(tmp_site, 'track = "latest"\n', name="default.toml")
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(path))
    cfg = load_config(env_for(tmp_site))
    assert cfg.track == "latest" and cfg.config_file == path and cfg.sources["track"] == "file"


def test_unknown_toml_key_suggests_the_right_one(tmp_site):
    path = write_toml(tmp_site, 'statedir = "/srv/x"\n')
    (error,) = errors_of(env_for(tmp_site, T3_CONFIG=str(path)))
    assert error == f"{path}: statedir: unknown key (did you mean state_dir?)"


def test_toml_section_is_an_unknown_key(tmp_site):
    path = write_toml(tmp_site, '[paths]\nstate_dir = "/srv/x"\n')
    (error,) = errors_of(env_for(tmp_site, T3_CONFIG=str(path)))
    assert error.startswith(f"{path}: paths: unknown key")


def test_malformed_toml_names_file_and_line(tmp_site):
    path = write_toml(tmp_site, 'track = "nightly"\nstate_dir = /srv/x\n')
    errors = errors_of(env_for(tmp_site, T3_CONFIG=str(path), T3_SMOKE_PORT="x"))
    assert any(e.startswith(f"{path}: invalid TOML") and "line 2" in e for e in errors)
    assert any(e.startswith("T3_SMOKE_PORT (environment)") for e in errors)  # still validated


def test_toml_value_of_the_wrong_type(tmp_site):
    path = write_toml(tmp_site, 'state_dir = 5\ndry_run = "perhaps"\nsmoke_port = true\n')
    errors = errors_of(env_for(tmp_site, T3_CONFIG=str(path)))
    assert sorted(e.split(":")[1].strip() for e in errors) == ["dry_run", "smoke_port", "state_dir"]


def test_config_file_writable_by_others_is_refused(tmp_site):
    path = write_toml(tmp_site, 'track = "latest"\n')
    path.chmod(0o666)
    (error,) = errors_of(env_for(tmp_site, T3_CONFIG=str(path)))
    assert error.startswith(f"{path}: writable by others")


def test_bad_user_map_lines_name_file_and_line(tmp_site):
    user_map = tmp_site / "ttyd-user-map"
    user_map.write_text("vbarzin=wizard\n# fine\nalice=Alice!\nnoequals\n")
    errors = errors_of(env_for(tmp_site, T3_MIN_AGE="soon"))
    assert any(e.startswith(f"{user_map}:3:") for e in errors)
    assert any(e.startswith(f"{user_map}:4:") for e in errors)
    assert any(e.startswith("T3_MIN_AGE (environment)") for e in errors)   # same list


def test_missing_user_map_is_an_error(tmp_site):
    (error,) = errors_of({"T3_USER_MAP": str(tmp_site / "missing-map")})
    assert error.startswith("T3_USER_MAP (environment): cannot read") and "missing-map" in error


def test_user_mapped_to_root_is_refused(tmp_site):
    (tmp_site / "ttyd-user-map").write_text("admin = root\n")
    (error,) = errors_of(env_for(tmp_site))
    assert "root" in error and "admin" in error


@pytest.mark.parametrize("key", ["T3_STATE_DIR", "T3_TMPDIR", "T3_BACKUP_DEST", "T3_HOME_ROOT",
                                 "T3_FREEZE_FILE", "T3_BIN_LINK", "T3_USER_MAP", "T3_RELEASES_DIR"])
@pytest.mark.parametrize("value,why", [
    ("var/lib/t3", "must be an absolute path"),
    ("~/state", "'~' is not expanded"),
    ("~root/state", "'~' is not expanded"),
    ("/var/lib/../../etc", "must not contain '..'"),
    ("", "non-empty"),
    ("/var/lib/t3\n", "control characters"),
])
def test_bad_paths_rejected(tmp_site, key, value, why):
    errors = errors_of(env_for(tmp_site, **{key: value}))
    assert any(e.startswith(f"{key} (environment):") and why in e for e in errors), errors


@pytest.mark.parametrize("text,seconds", [
    ("90m", 5400), ("6h", 21600), ("2d", 172800), ("30s", 30), ("3600", 3600), ("0", 0),
    ("1.5h", 5400), ("0.5", 0.5), (" 6h ", 21600),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "h", "6 h", "-1", "-5m", "6H", "1e3", "inf", "nan",
                                  "1h30m", "6hh", ".5", "5.", "１h", None, 5])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="is not a duration like 90m, 6h, 2d"):
        parse_duration(text)


@pytest.mark.parametrize("text,expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("Yes", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("NO", False),
])
def test_dry_run_booleans(tmp_site, text, expected):
    assert load_config(env_for(tmp_site, T3_DRY_RUN=text)).dry_run is expected


@pytest.mark.parametrize("text", ["", "2", "on", "off", "y", "n", "maybe", "true!"])
def test_dry_run_rejects(tmp_site, text):
    (error,) = errors_of(env_for(tmp_site, T3_DRY_RUN=text))
    assert error.startswith("T3_DRY_RUN (environment):")


@pytest.mark.parametrize("toml,expected", [("true", True), ("false", False)])
def test_dry_run_toml_boolean(tmp_site, toml, expected):
    path = write_toml(tmp_site, f"dry_run = {toml}\n")
    assert load_config(env_for(tmp_site, T3_CONFIG=str(path))).dry_run is expected


@pytest.mark.parametrize("key,value,expected", [
    ("T3_MIN_AGE", "6h", 21600), ("T3_MIN_AGE", "0", 0), ("T3_MIN_AGE", "", None),
    ("T3_READY_TIMEOUT", "45", 45), ("T3_GATE_TIMEOUT", "20m", 1200),
    ("T3_BACKUP_TIMEOUT", "1h", 3600), ("T3_BUSY_QUIET", "0", 0),
    ("T3_SMOKE_PORT", "8080", 8080), ("T3_SMOKE_PORT", "65535", 65535),
    ("T3_KEEP_BACKUPS", "1", 1),
    ("T3_NPM", "/usr/bin/npm", "/usr/bin/npm"), ("T3_SQLITE3", "sqlite3", "sqlite3"),
    ("T3_DISPATCH", "http://127.0.0.1:3780/", "http://127.0.0.1:3780"),
    ("T3_DISPATCH", "http://localhost:3780", "http://localhost:3780"),
    ("T3_PACKAGE", "@scope/t3", "@scope/t3"), ("T3_PACKAGE", "t3-code", "t3-code"),
    ("T3_COOKIE_NAME", "t3_session_abc", "t3_session_abc"),
    ("T3_SERVE_HOST", "127.0.0.1", "127.0.0.1"), ("T3_SERVE_HOST", "host.example", "host.example"),
    ("T3_PIN", "0.0.25-nightly.20260608.497", "0.0.25-nightly.20260608.497"),
])
def test_accepted_values(tmp_site, key, value, expected):
    cfg = load_config(env_for(tmp_site, **{key: value}))
    assert getattr(cfg, key[3:].lower()) == expected


@pytest.mark.parametrize("key,value", [
    ("T3_READY_TIMEOUT", "0"), ("T3_GATE_TIMEOUT", "-5"), ("T3_BACKUP_TIMEOUT", "soon"),
    ("T3_SMOKE_PORT", "-1"), ("T3_SMOKE_PORT", "65536"), ("T3_SMOKE_PORT", "0x50"),
    ("T3_SMOKE_PORT", "8_080"), ("T3_SMOKE_PORT", "+80"), ("T3_KEEP_BACKUPS", "0"),
    ("T3_KEEP_BACKUPS", "3.5"), ("T3_TRACK", "Nightly"), ("T3_TRACK", ""),
    ("T3_PIN", "latest"), ("T3_PIN", "0.0.1; rm -rf /"), ("T3_PIN", "--foo"),
    ("T3_NPM", "bin/npm"), ("T3_NPM", "-npm"), ("T3_NPM", "npm --registry x"), ("T3_SYSTEMCTL", ""),
    ("T3_DISPATCH", "127.0.0.1:3780"), ("T3_DISPATCH", "ftp://127.0.0.1"), ("T3_DISPATCH", "http://"),
    ("T3_DISPATCH", "http://u:p@127.0.0.1"), ("T3_DISPATCH", "http://127.0.0.1:99999"),
    ("T3_DISPATCH", "http://127.0.0.1:3780/?x=1"),
    ("T3_PACKAGE", "T3"), ("T3_PACKAGE", "-t3"), ("T3_PACKAGE", "t3@latest"), ("T3_PACKAGE", "../t3"),
    ("T3_PACKAGE", ".t3"), ("T3_COOKIE_NAME", "t3 session"), ("T3_COOKIE_NAME", "a;b"),
    ("T3_SERVE_HOST", "-h"), ("T3_SERVE_HOST", "0.0.0.0 --evil"), ("T3_SERVE_HOST", ""),
])
def test_rejected_values_name_the_key(tmp_site, key, value):
    (error,) = errors_of(env_for(tmp_site, **{key: value}))
    assert error.startswith(f"{key} (environment): ")


def test_unknown_t3_environment_variable_is_an_error(tmp_site):
    """A typo of T3_DRY_RUN must fail closed, never become a real run."""
    errors = errors_of(env_for(tmp_site, T3_DRYRUN="1", T3_CONFIG_X="y"))
    assert "T3_DRYRUN (environment): unknown variable (did you mean T3_DRY_RUN?)" in errors
    assert any(e.startswith("T3_CONFIG_X (environment): unknown variable") for e in errors)
    assert load_config(env_for(tmp_site, T3_PORT="3781")).dry_run is False  # the serve unit's own variable


def test_config_is_frozen(tmp_site):
    cfg = load_config(env_for(tmp_site))
    with pytest.raises(AttributeError):
        cfg.track = "latest"
    with pytest.raises(TypeError):
        cfg.users["eve"] = "root"


def test_as_dict_and_check_lines(tmp_site):
    path = write_toml(tmp_site, 'track = "latest"\n')
    cfg = load_config(env_for(tmp_site, T3_CONFIG=str(path), T3_MIN_AGE="2d",
                              npm_config_registry="http://127.0.0.1:4873"))
    data = cfg.as_dict()
    assert data["track"] == "latest" and data["min_age"] == 172800 and data["pin"] is None
    assert data["state_dir"] == "/var/lib/t3-autoupdate"
    assert data["npm_config_registry"] == "http://127.0.0.1:4873"
    assert data["users"]["vbarzin"] == "wizard"
    lines = cfg.check_lines()
    assert lines[0] == f"# config file: {path}"
    assert 'track = "latest"  # file' in lines
    assert "min_age = 172800.0  # environment" in lines
    assert 'state_dir = "/var/lib/t3-autoupdate"  # default' in lines
    assert "pin = (unset)  # default" in lines
    assert 'npm_config_registry = "http://127.0.0.1:4873"  # environment' in lines


def test_config_class_fields_match_the_key_table():
    fields = set(Config._fields)
    assert set(KEYS) <= fields
    assert set(ENV_NAMES) == {f"T3_{k.upper()}" for k in KEYS}


# --------------------------------------------------------------------------- security keys

@pytest.mark.parametrize("value", ["t3-gate", "_gate", "64123", "1"])
def test_gate_user_accepts_a_name_or_a_numeric_uid(tmp_site, value):
    assert load_config(env_for(tmp_site, T3_GATE_USER=value)).gate_user == value


@pytest.mark.parametrize("value", ["root", "0", "4294967295", "Gate", "a b", "-x", "../x", "12345678901"])
def test_gate_user_refuses_root_and_bad_names(tmp_site, value):
    [error] = errors_of(env_for(tmp_site, T3_GATE_USER=value))
    assert error.startswith("T3_GATE_USER (environment): ")


def test_tmpdir_follows_the_state_dir(tmp_site):
    cfg = load_config(env_for(tmp_site, T3_STATE_DIR=str(tmp_site / "state")))
    assert cfg.tmpdir == tmp_site / "state" / "scratch"


def test_a_world_writable_or_foreign_tmpdir_is_a_config_error(tmp_site):
    shared = tmp_site / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    [error] = errors_of(env_for(tmp_site, T3_TMPDIR=str(shared)))
    assert error.startswith("T3_TMPDIR (environment): ") and "writable by others" in error
    foreign = tmp_site / "foreign"
    foreign.mkdir(mode=0o700)
    import os
    os.chown(foreign, 64123, 64123)
    [error] = errors_of(env_for(tmp_site, T3_TMPDIR=str(foreign)))
    assert "not owned by root" in error and "uid 64123" in error
    link = tmp_site / "link"
    link.symlink_to(tmp_site)
    [error] = errors_of(env_for(tmp_site, T3_TMPDIR=str(link)))
    assert "not a directory" in error
    private = tmp_site / "private"
    private.mkdir(mode=0o700)
    assert load_config(env_for(tmp_site, T3_TMPDIR=str(private))).tmpdir == private


@pytest.mark.parametrize("key", ["T3_USER_MAP", "T3_DISPATCH_MAP"])
@pytest.mark.parametrize("mode,uid", [(0o666, 0), (0o620, 0), (0o644, 64123)])
def test_maps_must_be_roots_and_not_writable_by_others(tmp_site, key, mode, uid):
    import os
    path = tmp_site / ("ttyd-user-map" if key == "T3_USER_MAP" else "dispatch.json")
    if key == "T3_DISPATCH_MAP":
        path.write_text("{}")
    path.chmod(mode)
    os.chown(path, uid, 0)
    errors = errors_of(env_for(tmp_site, **{key: str(path)}))
    assert any(e.startswith(f"{path}: writable by others than its owner, or not owned by root") for e in errors)
    path.chmod(0o644)
    os.chown(path, 0, 0)
    load_config(env_for(tmp_site, **{key: str(path)}))
