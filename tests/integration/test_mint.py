"""runner/mint.py: the dispatch's mint helper runs the user's OWN linked build, as that user,
on that user's base dir, and refuses anyone not in the user map."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from runner import activate, mint, proc
from runner.config import load_config
from runner.mint import MintError, UnknownUser
from tests.sim import builds, dbgen
from tests.sim.world import unused_ids

V24 = builds.VERSIONS["good-0.0.24"]
V28 = builds.VERSIONS["good-0.0.28"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")


def test_mint_argv():
    assert mint.mint_argv(Path("/var/lib/t3-autoupdate/active/wizard"), Path("/home/wizard/.t3")) == [
        "/var/lib/t3-autoupdate/active/wizard/bin/t3", "auth", "pairing", "create",
        "--base-dir", "/home/wizard/.t3", "--ttl", "5m", "--json"]


def test_mint_env_is_the_users():
    env = mint.mint_env(Path("/home/wizard"), "wizard", {"PATH": "/bin", "SECRET": "x", "HOME": "/root",
                                                          "LC_ALL": "C"})
    assert env == {"PATH": "/bin", "LC_ALL": "C", "HOME": "/home/wizard", "USER": "wizard", "LOGNAME": "wizard"}


class Site:
    """Two mapped users on different releases: wizard on 0.0.24 (schema 30), emo on 0.0.28 (33)."""

    def __init__(self, root: Path):
        self.root = root
        releases = root / "var" / "lib" / "t3-autoupdate" / "releases"
        self.release = {}
        for profile in ("good-0.0.24", "good-0.0.28"):
            version = builds.VERSIONS[profile]
            builds.install_layout(version, profile, releases / version)
            self.release[version] = releases / version
        (root / "etc").mkdir()
        (root / "etc" / "ttyd-user-map").write_text("# sso=os_user\nvbarzin = wizard\nemil.barzin=emo\n"
                                                    "ancaelena98=ancamilea\n")
        config = root / "etc" / "config.toml"
        config.write_text(f'state_dir = "{root}/var/lib/t3-autoupdate"\nhome_root = "{root}/home"\n'
                          f'user_map = "{root}/etc/ttyd-user-map"\nbin_link = "{root}/usr/local/bin/t3"\n')
        self.cfg = load_config({"T3_CONFIG": str(config)})
        for user, version, level in (("wizard", V24, 30), ("emo", V28, 33)):
            dbgen.make_database(self.database(user), level, threads=2)
            activate.point_user(self.cfg.active_dir, user, self.release[version])
        # ancamilea is mapped but has no release link (never activated).
        self.cfg.home_dir("ancamilea").mkdir(parents=True)
        # Each home is its user's, a real unprivileged uid (as on a host): the mint runs as it.
        self.uid = dict(zip(("wizard", "emo", "ancamilea"), unused_ids(3)))
        for user, uid in self.uid.items():
            chown_tree(self.cfg.home_dir(user), uid)

    def database(self, user: str) -> Path:
        return self.cfg.userdata_dir(user) / "state.sqlite"


def chown_tree(top: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
    os.chown(top, uid, uid, follow_symlinks=False)


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path / "site")


def test_each_user_mints_with_their_own_release(site):
    wizard = json.loads(mint.mint_for(site.cfg, "wizard"))
    emo = json.loads(mint.mint_for(site.cfg, "emo"))
    # The JSON's shape proves which build ran: `role` up to 0.0.24, `scopes` from 0.0.25.
    assert wizard["role"] == "owner" and "scopes" not in wizard
    assert emo["scopes"] == ["owner"] and "role" not in emo
    for data in (wizard, emo):
        assert len(data["credential"]) == 12 and data["id"] and data["expiresAt"]
    # The 2026-06-09 lesson: a mint must not migrate a user's database past their server's build.
    assert dbgen.schema_level(site.database("wizard")) == 30
    assert dbgen.schema_level(site.database("emo")) == 33
    # Each credential landed in that user's own database.
    assert dbgen.table_counts(site.database("wizard"))["auth_pairing_links"] == 3
    assert dbgen.table_counts(site.database("emo"))["auth_pairing_links"] == 3


def test_the_link_decides_not_the_global_binary(site):
    bin_link = site.cfg.bin_link
    activate.point_bin_link(bin_link, site.release[V28])  # the operators' t3 is the newer build
    assert "role" in json.loads(mint.mint_for(site.cfg, "wizard"))
    assert dbgen.schema_level(site.database("wizard")) == 30
    activate.point_user(site.cfg.active_dir, "wizard", site.release[V28])  # wizard restarted onto 0.0.28
    assert json.loads(mint.mint_for(site.cfg, "wizard"))["scopes"] == ["owner"]
    assert dbgen.schema_level(site.database("wizard")) == 33


def test_unknown_users_are_refused(site):
    for user in ("mallory", "root", "vbarzin"):  # valid names, but not an OS user of the map
        with pytest.raises(UnknownUser, match=repr(user)):
            mint.mint_for(site.cfg, user)
    for user in ("../wizard", "Wizard", "wizard\n", "", "-rf"):
        with pytest.raises(UnknownUser):
            mint.mint_for(site.cfg, user)


def test_mint_main_exit_codes(site):
    out, err = io.StringIO(), io.StringIO()
    assert mint.mint_main(site.cfg, "emo", out, err) == 0
    assert json.loads(out.getvalue())["scopes"] == ["owner"] and err.getvalue() == ""

    out, err = io.StringIO(), io.StringIO()
    assert mint.mint_main(site.cfg, "mallory", out, err) == 2
    assert out.getvalue() == "" and "'mallory'" in err.getvalue()

    out, err = io.StringIO(), io.StringIO()
    assert mint.mint_main(site.cfg, "ancamilea", out, err) == 1  # mapped, but no release link
    assert out.getvalue() == "" and "no release link" in err.getvalue()


def test_a_failed_mint_is_exit_1_with_the_cause(site):
    """An older build on a newer database fails at query time (the contract's example)."""
    activate.point_user(site.cfg.active_dir, "emo", site.release[V24])
    out, err = io.StringIO(), io.StringIO()
    assert mint.mint_main(site.cfg, "emo", out, err) == 1
    assert out.getvalue() == ""
    assert "emo" in err.getvalue() and "no column named role" in err.getvalue()


def test_a_symlinked_home_is_refused(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    site.cfg.home_dir("wizard").rename(elsewhere)
    site.cfg.home_dir("wizard").symlink_to(elsewhere)
    with pytest.raises(MintError, match="symlink"):
        mint.mint_for(site.cfg, "wizard")


def test_mint_runs_as_the_owner_of_the_home(site):
    seen = []

    def spy(argv, **kwargs):
        seen.append((argv, kwargs["as_user"], kwargs["env"]["HOME"]))
        return proc.run(argv, **kwargs)

    mint.mint_for(site.cfg, "wizard", run=spy)
    st = os.lstat(site.cfg.home_dir("wizard"))
    (argv, as_user, home), = seen
    assert argv == mint.mint_argv(site.cfg.active_link("wizard"), site.cfg.t3_base_dir("wizard"))
    assert (as_user.uid, as_user.gid, as_user.name) == (st.st_uid, st.st_gid, "wizard")
    assert home == str(site.cfg.home_dir("wizard"))


@needs_root
def test_root_drops_to_the_users_uid(site):
    """A real drop: the CLI runs as wizard's own uid, so the files it makes are wizard's; with
    the home given to another uid the mint runs as that uid, which cannot open wizard's
    database (0644 in wizard's 0700 userdata), so it fails, though root could have done it."""
    seen_uids = []

    def spy(argv, **kwargs):
        seen_uids.append(kwargs["as_user"].uid)
        return proc.run(argv, **kwargs)

    assert "role" in json.loads(mint.mint_for(site.cfg, "wizard", run=spy))
    assert seen_uids == [site.uid["wizard"]]
    userdata = site.cfg.userdata_dir("wizard")
    for path in userdata.iterdir():  # the database and anything SQLite made beside it
        assert path.stat().st_uid == site.uid["wizard"], path
    before = dbgen.table_counts(site.database("wizard"))
    os.chmod(userdata, 0o700)
    os.chown(site.cfg.home_dir("wizard"), site.uid["emo"], site.uid["emo"])
    with pytest.raises(MintError, match="mint for wizard"):
        mint.mint_for(site.cfg, "wizard")
    assert dbgen.table_counts(site.database("wizard")) == before


def test_a_home_owned_by_root_is_refused_and_nothing_runs(site):
    """issue 8: a root-owned home would make the mint run the user's build as root."""
    os.chown(site.cfg.home_dir("wizard"), 0, 0)
    ran = []
    with pytest.raises(MintError, match=r"owned by root \(uid 0\).*refusing to mint as root"):
        mint.mint_for(site.cfg, "wizard", run=lambda argv, **kw: ran.append(argv))
    assert ran == []
    out, err = io.StringIO(), io.StringIO()
    assert mint.mint_main(site.cfg, "wizard", out, err) == 1
    assert out.getvalue() == "" and "owned by root" in err.getvalue()
