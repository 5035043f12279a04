"""Canary gate: each user's live instance, through the real dispatch, as a browser.

Parametrized by SSO user (ids carry the name), so `pytest gates -k vbarzin`
checks one user. Healthy means: a first visit pairs (302 + session cookie) and
the next visit with that cookie is proxied, not paired again (a renamed cookie
would make every request re-pair).
"""
from __future__ import annotations

import pytest

from runner.t3client import DispatchClient, GateFailure, Instance, package_version_of, set_cookies


@pytest.fixture(scope="module")
def dispatch(gate) -> DispatchClient:
    return DispatchClient(str(gate.get("--dispatch")))


@pytest.fixture(scope="module")
def first_visit(dispatch, sso_user):
    return dispatch.visit(sso_user)


def _session_cookie(response, cookie_name: str) -> str:
    __tracebackhide__ = True
    cookies = dict(set_cookies(response))
    if cookie_name not in cookies:
        raise GateFailure(f"the dispatch's 302 carries no {cookie_name} cookie (got {sorted(cookies) or 'none'})")
    return cookies[cookie_name]


def _release_version(gate, sso_user: str) -> str:
    """The version this user's release link points to (docs/architecture.md phase 6)."""
    __tracebackhide__ = True
    link = gate.path("--active-dir") / gate.users()[sso_user]
    if not link.is_symlink():
        raise GateFailure(f"{link} is not a release link")
    return package_version_of(link / "bin" / "t3")


def test_dispatch_pairs_a_browser(first_visit, sso_user, gate):
    assert first_visit.status_code == 302, (
        f"dispatch answered {first_visit.status_code} to {sso_user}'s first visit, expected 302: {first_visit.text[:200]}")
    _session_cookie(first_visit, str(gate.get("--cookie-name")))


def test_session_cookie_is_proxied_not_paired_again(dispatch, first_visit, sso_user, gate):
    cookie_name = str(gate.get("--cookie-name"))
    cookie = _session_cookie(first_visit, cookie_name)
    again = dispatch.visit(sso_user, cookies={cookie_name: cookie})
    assert again.status_code != 302, (
        f"{sso_user}'s second visit with the {cookie_name} cookie was paired again (302): every request would re-pair")
    assert again.status_code == 200, f"{sso_user}'s second visit answered {again.status_code}, expected 200 from the instance"


def test_instance_runs_the_expected_version(gate, sso_user):
    expected = gate.get("--canary-version") or _release_version(gate, sso_user)
    port = gate.dispatch_ports().get(sso_user)
    assert port, f"{sso_user} has no port in {gate.path('--dispatch-map')}"
    actual = Instance(f"http://127.0.0.1:{port}").server_version()
    assert actual == expected, f"{sso_user}'s instance runs {actual}, its release link says {expected}"
