"""runner/activate.py: per-user release links (atomic), the operators' link, deferral markers."""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone

import pytest

from runner import activate, proc
from runner.activate import ActivationError
from tests.sim import builds

V24 = builds.VERSIONS["good-0.0.24"]
V28 = builds.VERSIONS["good-0.0.28"]


@pytest.fixture
def releases(tmp_path):
    root = tmp_path / "releases"
    for profile in ("good-0.0.24", "good-0.0.28"):
        builds.install_layout(builds.VERSIONS[profile], profile, root / builds.VERSIONS[profile])
    return {V24: root / V24, V28: root / V28}


def test_release_of_link(tmp_path, releases):
    link = tmp_path / "active" / "wizard"
    assert activate.release_of_link(link) is None
    link.parent.mkdir()
    link.symlink_to(releases[V24])
    assert activate.release_of_link(link) == V24
    bad = tmp_path / "active" / "emo"
    bad.symlink_to("/opt/t3;rm -rf")
    with pytest.raises(ActivationError):
        activate.release_of_link(bad)
    plain = tmp_path / "active" / "plain"
    plain.write_text("0.0.24\n")
    with pytest.raises(ActivationError, match="not a release link"):
        activate.release_of_link(plain)


def test_point_user_replaces_the_old_link(tmp_path, releases):
    active = tmp_path / "active"
    assert activate.point_user(active, "wizard", releases[V24]) is None
    assert os.readlink(active / "wizard") == str(releases[V24])
    assert activate.point_user(active, "wizard", releases[V28]) == V24
    assert activate.release_of_link(active / "wizard") == V28
    assert sorted(os.listdir(active)) == ["wizard"]  # no temp link left behind
    # The link is what the unit's ExecStart runs: <active>/<user>/bin/t3.
    done = proc.run([str(active / "wizard" / "bin" / "t3"), "--version"])
    assert done.stdout.strip() == f"t3 v{V28}"


def test_point_user_refuses_bad_input(tmp_path, releases):
    active = tmp_path / "active"
    for user in ("../etc", "Wizard", "wizard\n", "", "a/b", ".hidden"):
        with pytest.raises(ActivationError, match="invalid OS user"):
            activate.point_user(active, user, releases[V24])
    assert not active.exists()
    empty = tmp_path / "releases" / "0.0.99"
    empty.mkdir()
    with pytest.raises(ActivationError, match="no bin/t3"):
        activate.point_user(active, "wizard", empty)
    oddly_named = tmp_path / "releases" / "latest"
    oddly_named.mkdir()
    with pytest.raises(ActivationError):
        activate.point_user(active, "wizard", oddly_named)
    with pytest.raises(ActivationError, match="absolute"):
        activate.point_user(active, "wizard", releases[V24].relative_to(tmp_path))
    active.mkdir(exist_ok=True)
    (active / "emo").mkdir()
    with pytest.raises(ActivationError, match="not a release link"):
        activate.point_user(active, "emo", releases[V24])
    assert (active / "emo").is_dir()


def test_point_user_repairs_a_link_to_a_non_release(tmp_path, releases):
    active = tmp_path / "active"
    active.mkdir()
    (active / "wizard").symlink_to("/nowhere/garbage")
    assert activate.point_user(active, "wizard", releases[V24]) is None
    assert activate.release_of_link(active / "wizard") == V24


def test_readers_never_see_a_missing_link(tmp_path, releases):
    active = tmp_path / "active"
    activate.point_user(active, "wizard", releases[V24])
    link = str(active / "wizard")
    stop = threading.Event()
    seen, failures = set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(os.readlink(link))
            except OSError as exc:
                failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            activate.point_user(active, "wizard", releases[V28] if i % 2 == 0 else releases[V24])
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
    assert seen <= {str(releases[V24]), str(releases[V28])}
    assert activate.release_of_link(active / "wizard") == V24  # 200 switches: back where it started
    assert sorted(os.listdir(active)) == ["wizard"]


def test_point_bin_link_follows_last_good(tmp_path, releases):
    bin_link = tmp_path / "usr" / "local" / "bin" / "t3"
    activate.point_bin_link(bin_link, releases[V24])
    assert os.readlink(bin_link) == str(releases[V24] / "bin" / "t3")
    activate.point_bin_link(bin_link, releases[V28])
    assert proc.run([str(bin_link), "--version"]).stdout.strip() == f"t3 v{V28}"
    other = tmp_path / "other-t3"
    other.write_text("#!/bin/sh\n")
    with pytest.raises(ActivationError, match="not a symlink"):
        activate.point_bin_link(other, releases[V24])
    with pytest.raises(ActivationError):
        activate.point_bin_link(bin_link, tmp_path / "releases" / "0.0.77")


def test_deferral_markers(tmp_path):
    deferred = tmp_path / "deferred"
    assert activate.deferred_users(deferred) == {}
    first = datetime(2026, 11, 28, 4, 0, 0, tzinfo=timezone.utc)
    later = datetime(2026, 11, 29, 4, 0, 0, tzinfo=timezone.utc)
    marker = activate.mark_deferred(deferred, "wizard", version=V28, reason="1 agent turn(s) in flight", now=first)
    assert marker == {"os_user": "wizard", "version": V28, "reason": "1 agent turn(s) in flight",
                      "at": "2026-11-28T04:00:00Z", "since": "2026-11-28T04:00:00Z"}
    assert json.loads((deferred / "wizard").read_text()) == marker
    again = activate.mark_deferred(deferred, "wizard", version=V28, reason="active 5s ago", now=later)
    assert again["since"] == "2026-11-28T04:00:00Z" and again["at"] == "2026-11-29T04:00:00Z"
    activate.mark_deferred(deferred, "emo", version=V28, reason="cannot judge activity", now=later)
    (deferred / ".wizard.tmp-123").write_text("half")  # a temp file is not a marker
    assert set(activate.deferred_users(deferred)) == {"emo", "wizard"}
    assert activate.deferred_users(deferred)["wizard"]["reason"] == "active 5s ago"
    assert activate.clear_deferred(deferred, "wizard") is True
    assert activate.clear_deferred(deferred, "wizard") is False
    assert set(activate.deferred_users(deferred)) == {"emo"}


def test_a_corrupt_marker_still_owes_a_restart(tmp_path):
    deferred = tmp_path / "deferred"
    deferred.mkdir()
    (deferred / "ancamilea").write_text("{not json")
    found = activate.deferred_users(deferred)
    assert set(found) == {"ancamilea"} and "corrupt" in found["ancamilea"]["error"]
    marker = activate.mark_deferred(deferred, "ancamilea", version=V24, reason="busy",
                                    now=datetime(2026, 11, 28, tzinfo=timezone.utc))
    assert marker["since"] == "2026-11-28T00:00:00Z"


def test_markers_refuse_bad_names_and_versions(tmp_path):
    deferred = tmp_path / "deferred"
    for user in ("../x", "Root", "", "a\nb"):
        with pytest.raises(ActivationError):
            activate.mark_deferred(deferred, user, version=V24, reason="r")
        with pytest.raises(ActivationError):
            activate.clear_deferred(deferred, user)
    for version in ("latest", "v0.0.24", "0.0.24;id", ""):
        with pytest.raises(ActivationError):
            activate.mark_deferred(deferred, "wizard", version=version, reason="r")
    assert not deferred.exists()
