"""Phases 2 and 4 without npm: argv builders, the strict parser of `npm view`, the pure
decision, and quarantine records. The real-npm side is in test_release_npm.py."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner.quarantine import clear_quarantine, quarantine_build, quarantined_versions, read_quarantine
from runner.resolve import (CODES, Decision, ResolveError, Target, decide, npm_view_argv, parse_view_output,
                            validate_package, validate_tag)
from runner.staging.checks import npm_fetch_install_argv, npm_install_argv, t3_version_argv

UTC = timezone.utc
N25 = "0.0.25-nightly.20260608.497"
N26 = "0.0.26-nightly.20260609.498"
N28 = "0.0.28-nightly.20260616.571"


# --------------------------------------------------------------------------- argv builders

def test_npm_view_argv():
    assert npm_view_argv("/usr/bin/npm", "t3", "nightly", Path("/var/tmp/x/cache"), fetch_timeout_ms=5000) == [
        "/usr/bin/npm", "view", "t3@nightly", "version", "time", "dist-tags", "--json",
        "--prefer-online", "--fetch-retries=0", "--fetch-timeout=5000", "--cache", "/var/tmp/x/cache"]
    assert npm_view_argv("npm", "@acme/t3", "latest", Path("/c"))[2] == "@acme/t3@latest"


def test_npm_install_and_version_argv():
    assert npm_fetch_install_argv("npm", "t3", N28, Path("/g/prefix"), Path("/g/npm-cache"),
                                  fetch_timeout_ms=9000) == [
        "npm", "install", "--global", "--prefix", "/g/prefix", f"t3@{N28}", "--json", "--prefer-online",
        "--fetch-retries=0", "--fetch-timeout=9000", "--no-audit", "--no-fund", "--cache", "/g/npm-cache",
        "--ignore-scripts"]
    assert npm_install_argv("npm", Path("/r/s"), Path("/r/s/t3-0.0.24.tgz"), Path("/r/s/.c")) == [
        "npm", "install", "--global", "--prefix", "/r/s", "--offline", "/r/s/t3-0.0.24.tgz",
        "--no-audit", "--no-fund", "--cache", "/r/s/.c", "--ignore-scripts"]
    assert t3_version_argv(Path("/r/0.0.24/bin/t3")) == ["/r/0.0.24/bin/t3", "--version"]


@pytest.mark.parametrize("package", ["", "T3", "t3 x", "t3;rm", "--registry=http://evil", "../t3", "@/t3",
                                     "t3@nightly", "a" * 215])
def test_bad_package_names_are_refused_before_any_command(package):
    with pytest.raises(ValueError):
        validate_package(package)
    with pytest.raises(ValueError):
        npm_view_argv("npm", package, "nightly", Path("/c"))


@pytest.mark.parametrize("tag", ["", "-x", "--registry=http://evil", "v1", "1.x", "night ly", "a/b", "x" * 65])
def test_bad_tags_are_refused(tag):
    with pytest.raises(ValueError):
        validate_tag(tag)


@pytest.mark.parametrize("version", ["v0.0.24", "0.0.24+b", "latest", "0.0.24 --global", "../0.0.24"])
def test_fetch_install_argv_refuses_bad_versions(version):
    with pytest.raises(ValueError):
        npm_fetch_install_argv("npm", "t3", version, Path("/p"), Path("/c"))


def test_install_argv_needs_an_absolute_tgz():
    with pytest.raises(ValueError):
        npm_install_argv("npm", Path("/p"), Path("t3-0.0.24.tgz"), Path("/c"))
    with pytest.raises(ValueError):
        npm_install_argv("npm", Path("/p"), Path("/p/t3@nightly"), Path("/c"))


# --------------------------------------------------------------------------- parse_view_output

def _view(version, times=None, tags=None):
    data = {"version": version}
    if times is not None:
        data["time"] = times
    if tags is not None:
        data["dist-tags"] = tags
    return json.dumps(data)


def test_parse_view_output_reads_version_and_time():
    out = _view(N28, {N28: "2026-06-16T03:14:15.123Z", "created": "2026-01-01T00:00:00.000Z"},
                {"nightly": N28, "latest": "0.0.26"})
    assert parse_view_output(out, "nightly") == Target(
        N28, datetime(2026, 6, 16, 3, 14, 15, 123000, tzinfo=UTC), "nightly")
    assert parse_view_output(json.dumps(N28), "nightly") == Target(N28, None, "nightly")
    assert parse_view_output(_view(N28, {}, {"nightly": N28}), "nightly").published_at is None


@pytest.mark.parametrize("stdout, message", [
    ("", "printed nothing"),
    ("\n", "printed nothing"),
    ("0.0.24", "no JSON"),
    ("version = '0.0.24'", "no JSON"),
    (json.dumps([N25, N28]), "no single version"),
    (json.dumps({"time": {}}), "no single version"),
    (json.dumps({"version": 24}), "no single version"),
    (_view("v0.0.24"), "leading 'v'"),
    (_view("0.0.24+build"), "build metadata"),
    (_view("00.0.24"), "not strict SemVer"),
    (_view("1.2.3-rc.01"), "not strict SemVer"),
    (_view("0.0.24; rm -rf /"), "whitespace"),
    (_view(N28, tags={"nightly": N25}), "dist-tags say nightly -> " + N25),
    (_view(N28, tags={"latest": N28}), "dist-tags say nightly -> None"),
    (_view(N28, times={N28: "yesterday"}), "publish time 'yesterday'"),
    (_view(N28, times={N28: "2026-06-16T03:14:15+02:00"}), "publish time"),
    (_view(N28, times=[N28]), "malformed time map"),
])
def test_parse_view_output_fails_closed(stdout, message):
    with pytest.raises(ResolveError) as info:
        parse_view_output(stdout, "nightly")
    assert message in str(info.value)


# --------------------------------------------------------------------------- decide

NOW = datetime(2026, 6, 20, 4, 0, tzinfo=UTC)
HOUR = 3600.0


def _t(version, age_hours=48.0):
    return Target(version, None if age_hours is None else NOW - timedelta(hours=age_hours), "nightly")


DECIDE_CASES = [
    # id, target, installed, track, pin, quarantined, min_age -> (action, version, code)
    ("newer nightly", _t(N28), N25, "nightly", None, set(), None, ("install", N28, "newer")),
    ("nothing installed yet", _t(N28), None, "nightly", None, set(), None, ("install", N28, "newer")),
    ("already current", _t(N28), N28, "nightly", None, set(), None, ("hold", N28, "already-current")),
    ("tag moved backward", _t(N25), N28, "nightly", None, set(), None, ("hold", N25, "not-newer")),
    ("stable 0.0.26 vs older nightly 0.0.26-nightly", _t(N26), "0.0.26", "nightly", None, set(), None,
     ("hold", N26, "not-newer")),
    ("nightly before its own stable is older", _t("0.0.26"), N26, "latest", None, set(), None,
     ("install", "0.0.26", "newer")),
    ("numeric run numbers: .999 < .1000", _t("0.0.26-nightly.20260609.1000"), "0.0.26-nightly.20260609.999",
     "nightly", None, set(), None, ("install", "0.0.26-nightly.20260609.1000", "newer")),
    ("stable on the nightly track", _t("0.0.27"), N26, "nightly", None, set(), None,
     ("hold", "0.0.27", "not-on-track")),
    ("rc on the nightly track", _t("0.0.27-rc.1"), N26, "nightly", None, set(), None,
     ("hold", "0.0.27-rc.1", "not-on-track")),
    ("nightly on the latest track", _t(N28), "0.0.26", "latest", None, set(), None,
     ("hold", N28, "not-on-track")),
    ("impossible nightly date", _t("0.0.27-nightly.20261340.1"), N26, "nightly", None, set(), None,
     ("hold", "0.0.27-nightly.20261340.1", "not-on-track")),
    ("quarantined", _t(N28), N25, "nightly", None, {N28}, None, ("hold", N28, "quarantined")),
    ("quarantined other version", _t(N28), N25, "nightly", None, {N26}, None, ("install", N28, "newer")),
    ("too young", _t(N28, 1.0), N25, "nightly", None, set(), 6 * HOUR, ("hold", N28, "too-young")),
    ("old enough", _t(N28, 7.0), N25, "nightly", None, set(), 6 * HOUR, ("install", N28, "newer")),
    ("published in the future", _t(N28, -1.0), N25, "nightly", None, set(), 0.0, ("hold", N28, "too-young")),
    ("no publish time, min_age set", _t(N28, None), N25, "nightly", None, set(), 6 * HOUR,
     ("hold", N28, "no-publish-time")),
    ("no publish time, no min_age", _t(N28, None), N25, "nightly", None, set(), None, ("install", N28, "newer")),
    ("pin up", _t(N25), "0.0.24", "nightly", "0.0.26", set(), None, ("install", "0.0.26", "pinned")),
    ("pin down", _t(N28), N28, "nightly", "0.0.24", set(), None, ("hold", "0.0.24", "pinned-down")),
    ("pin down to a quarantined build", _t(N28), N28, "nightly", "0.0.24", {"0.0.24"}, None,
     ("hold", "0.0.24", "pinned-down")),
    ("pin equal to installed", _t(N28), "0.0.26", "nightly", "0.0.26", set(), None,
     ("hold", "0.0.26", "pinned-current")),
    ("pin ignores min_age and track", _t(N28, 0.0), N25, "nightly", "0.0.26", set(), 6 * HOUR,
     ("install", "0.0.26", "pinned")),
    ("pin with nothing installed", _t(N28), None, "nightly", N25, set(), None, ("install", N25, "pinned")),
    ("pinned version quarantined", _t(N28), "0.0.24", "nightly", N26, {N26}, None,
     ("hold", N26, "pinned-quarantined")),
    ("pin needs no target", None, "0.0.24", "nightly", N26, set(), None, ("install", N26, "pinned")),
]


@pytest.mark.parametrize("target, installed, track, pin, quarantined, min_age, expected",
                         [c[1:] for c in DECIDE_CASES], ids=[c[0] for c in DECIDE_CASES])
def test_decide(target, installed, track, pin, quarantined, min_age, expected):
    got = decide(target, installed=installed, track=track, pin=pin, quarantined=quarantined,
                 min_age=min_age, now=NOW)
    assert (got.action, got.version, got.code) == expected
    assert got.code in CODES and got.reason and got.version in got.reason


def test_decide_reason_text():
    assert decide(_t(N25), installed=N28, track="nightly", pin=None, quarantined=set(), min_age=None,
                  now=NOW) == Decision("hold", N25, f"{N25} is older than the installed {N28} (the tag moved "
                                                     "backward); never downgrade unless pinned", "not-newer")


def test_decide_refuses_bad_input():
    with pytest.raises(ValueError):
        decide(None, installed=N25, track="nightly", pin=None, quarantined=set(), min_age=None, now=NOW)
    with pytest.raises(ValueError):  # naive now
        decide(_t(N28), installed=N25, track="nightly", pin=None, quarantined=set(), min_age=None,
               now=datetime(2026, 6, 20))
    with pytest.raises(ValueError):
        decide(_t(N28), installed=N25, track="beta", pin=None, quarantined=set(), min_age=None, now=NOW)
    with pytest.raises(ValueError):
        decide(_t("v1.0.0"), installed=N25, track="nightly", pin=None, quarantined=set(), min_age=None, now=NOW)
    with pytest.raises(ValueError):
        decide(_t(N28), installed="garbage", track="nightly", pin=None, quarantined=set(), min_age=None, now=NOW)


# --------------------------------------------------------------------------- quarantine

def test_quarantine_round_trip(tmp_path):
    qdir = tmp_path / "state" / "quarantine"
    assert quarantined_versions(qdir) == set()
    assert read_quarantine(qdir, N28) is None
    report = tmp_path / "runs" / "r1" / "health.xml"
    record = quarantine_build(qdir, N28, reason="health gate: 3 failed", report_path=report, run_id="r1")
    assert record["report"] == str(report) and record["run_id"] == "r1" and record["when"] == record["first_when"]
    assert json.loads((qdir / f"{N28}.json").read_text()) == record
    assert read_quarantine(qdir, N28) == record
    quarantine_build(qdir, N26, reason="canary", report_path=None, run_id="r2")
    assert quarantined_versions(qdir) == {N28, N26}
    again = quarantine_build(qdir, N28, reason="again", report_path=None, run_id="r3")
    assert again["reason"] == "again" and again["first_when"] == record["first_when"]
    assert sorted(p.name for p in qdir.iterdir()) == sorted([f"{N28}.json", f"{N26}.json"])  # no temp files
    assert clear_quarantine(qdir, N28) is True
    assert clear_quarantine(qdir, N28) is False
    assert quarantined_versions(qdir) == {N26}


def test_quarantine_fails_closed_on_odd_records(tmp_path):
    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / f"{N28}.json").write_text("{not json")
    (qdir / "notes.txt").write_text("x")
    (qdir / "garbage.json").write_text("{}")
    (qdir / f".{N25}.json.tmp-1").write_text("{}")
    assert quarantined_versions(qdir) == {N28}  # an unreadable record still quarantines
    assert "unreadable" in read_quarantine(qdir, N28)["reason"]
    for bad in ("../../etc/passwd", "v1.0.0", ""):
        with pytest.raises(ValueError):
            quarantine_build(qdir, bad, reason="x", report_path=None, run_id="r")
        with pytest.raises(ValueError):
            clear_quarantine(qdir, bad)


def test_a_pin_down_points_at_the_restore():
    got = decide(_t(N28), installed=N28, track="nightly", pin="0.0.24", quarantined={"0.0.24"}, min_age=None,
                 now=NOW)
    assert "going down needs a database restore" in got.reason
    assert "t3-autoupdate rollback --to 0.0.24" in got.reason
