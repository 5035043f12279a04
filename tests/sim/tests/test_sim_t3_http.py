"""The simulated t3's HTTP contract, per build profile, against real served processes.

Servers bind like production (0.0.0.0 unless a test is about loopback) and are
reached on 127.0.0.1. Cookies are read from and sent in raw headers, so the test
sees exactly the names and attributes the server chose.
"""
from __future__ import annotations

import email.utils
import hashlib
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from tests.sim import builds, dbgen
from tests.sim.proc import ServeProcess, mint_credential, run_t3

BOOTSTRAP = "/api/auth/bootstrap"
BROWSER_SESSION = "/api/auth/browser-session"


@pytest.fixture
def serve(installed, tmp_path):
    """serve(profile, host=..., home=...) -> a ready ServeProcess, stopped at teardown."""
    started: list[ServeProcess] = []

    def start(profile: str, host: str = "0.0.0.0", home=None) -> ServeProcess:
        server = ServeProcess(installed(profile), home or tmp_path / "home", host=host)
        started.append(server)
        return server.start().wait_ready(15)

    yield start
    for server in started:
        server.stop()


def set_cookie(response) -> tuple[str, str, dict[str, str]] | None:
    """(name, value, attributes) of the response's one Set-Cookie, or None."""
    headers = response.raw.headers.getlist("Set-Cookie") or []
    assert len(headers) <= 1, headers
    if not headers:
        return None
    first, *attributes = [part.strip() for part in headers[0].split(";")]
    name, _, value = first.partition("=")
    attrs = {}
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        attrs[key] = val
    return name, value, attrs


def exchange(http, server, path, credential):
    return http.post(server.url + path, json={"credential": credential})


def session_state(http, server, cookie: str | None = None) -> dict:
    response = http.get(server.url + "/api/auth/session", headers={"Cookie": cookie} if cookie else {})
    assert response.status_code == 200
    return response.json()


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------- no-auth endpoints

def test_index_and_environment_need_no_auth(installed, serve, http, tmp_path):
    server = serve("good-0.0.28")
    index = http.get(server.url + "/")
    assert index.status_code == 200 and index.headers["Content-Type"].startswith("text/html")
    env = http.get(server.url + "/.well-known/t3/environment").json()
    assert env == {"environmentId": (tmp_path / "home/userdata/environment-id").read_text(),
                   "serverVersion": builds.GOOD_VERSIONS["good-0.0.28"]}


def test_version_lie_is_exposed_by_the_environment_endpoint(installed, serve, http):
    assert run_t3(installed("version-lie"), "--version").stdout == "t3 v0.0.28-nightly.20260616.571\n"
    server = serve("version-lie")
    env = http.get(server.url + "/.well-known/t3/environment").json()
    assert env["serverVersion"] == builds.BAD_VERSIONS["version-lie"]


# --------------------------------------------------------------------- the exchange endpoint per build

@pytest.mark.parametrize("profile,path,gone", [
    ("good-0.0.24", BOOTSTRAP, [BROWSER_SESSION]),
    ("good-0.0.25", BROWSER_SESSION, [BOOTSTRAP]),
    ("good-0.0.26", BROWSER_SESSION, [BOOTSTRAP]),
    ("good-0.0.28", BROWSER_SESSION, [BOOTSTRAP]),
    ("endpoint-renamed", "/api/auth/pair", [BOOTSTRAP, BROWSER_SESSION]),
])
def test_exchange_path_per_build(installed, serve, http, tmp_path, profile, path, gone):
    server = serve(profile)
    credential = mint_credential(installed(profile), tmp_path / "home")["credential"]
    for missing in gone:  # a 404 is what makes a client fall back (or give up)
        assert exchange(http, server, missing, credential).status_code == 404
    response = exchange(http, server, path, credential)
    assert response.status_code == 200, response.text
    name, value, _ = set_cookie(response)
    assert name == "t3_session"  # every one of these binds 0.0.0.0
    assert session_state(http, server, f"{name}={value}")["authenticated"] is True
    if profile == "good-0.0.24":
        assert "scopes" not in response.json()
    else:
        body = response.json()
        assert body["authenticated"] is True and body["scopes"] == ["owner"]
        assert body["sessionMethod"] == "browser-session-cookie" and body["expiresAt"].endswith("Z")


def test_set_cookie_attributes(installed, serve, http, tmp_path):
    server = serve("good-0.0.26")
    credential = mint_credential(installed("good-0.0.26"), tmp_path / "home")["credential"]
    name, value, attrs = set_cookie(exchange(http, server, BROWSER_SESSION, credential))
    assert value and set(attrs) == {"HttpOnly", "Path", "SameSite", "Expires"}  # no Max-Age, no Secure
    assert attrs["Path"] == "/" and attrs["SameSite"] == "Lax"
    expires = email.utils.parsedate_to_datetime(attrs["Expires"])
    assert abs(expires - datetime.now(timezone.utc) - timedelta(days=30)) < timedelta(minutes=1)


# --------------------------------------------------------------------- the cookie's name (drifted three times)

def expected_cookie_names(mode: str, host: str, port: int, home) -> tuple[str, list[str]]:
    """(name the server sets and reports, other names it also accepts), from the contract."""
    state_dir = str((home / "userdata").absolute())
    env_id = (home / "userdata" / "environment-id").read_text().strip()
    if mode == "classic":
        return "t3_session", []
    if host == "127.0.0.1":  # loopback: host-scoped and env-scoped agree
        return f"t3_session_{port}_{short_hash(state_dir)}", []
    if mode == "host-scoped":
        return "t3_session", []
    return f"t3_session_{short_hash(env_id)}", ["t3_session"]  # env-scoped: legacy still accepted


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("profile,mode", [
    ("good-0.0.26", "classic"), ("good-0.0.28", "host-scoped"), ("cookie-renamed", "env-scoped"),
])
def test_cookie_name_by_host(installed, serve, http, tmp_path, profile, mode, host):
    home = tmp_path / "home"
    server = serve(profile, host=host)
    name, also_accepted = expected_cookie_names(mode, host, server.port, home)
    assert session_state(http, server)["auth"]["sessionCookieName"] == name

    credential = mint_credential(installed(profile), home)["credential"]
    set_name, token, _ = set_cookie(exchange(http, server, BROWSER_SESSION, credential))
    assert set_name == name
    assert session_state(http, server, f"{name}={token}")["authenticated"] is True
    for legacy in also_accepted:
        assert session_state(http, server, f"{legacy}={token}")["authenticated"] is True
    if name != "t3_session" and not also_accepted:
        # The 17-day trap: a loopback server never honours the plain t3_session cookie.
        assert session_state(http, server, f"t3_session={token}")["authenticated"] is False


# --------------------------------------------------------------------- refusals

def test_credentials_are_one_time_and_checked(installed, serve, http, tmp_path):
    home = tmp_path / "home"
    bin_t3 = installed("good-0.0.28")
    server = serve("good-0.0.28")

    used = mint_credential(bin_t3, home)["credential"]
    assert exchange(http, server, BROWSER_SESSION, used).status_code == 200
    assert exchange(http, server, BROWSER_SESSION, used).status_code == 401  # reuse
    assert exchange(http, server, BROWSER_SESSION, "ABCDEFGHJKLM").status_code == 401  # unknown

    expired = mint_credential(bin_t3, home)["credential"]
    conn = sqlite3.connect(home / "userdata/state.sqlite")
    with conn:
        conn.execute("UPDATE auth_pairing_links SET expires_at = '2020-01-01T00:00:00.000Z' WHERE credential = ?",
                     (expired,))
    conn.close()
    assert exchange(http, server, BROWSER_SESSION, expired).status_code == 401

    revoked = mint_credential(bin_t3, home)
    assert run_t3(bin_t3, "auth", "pairing", "revoke", revoked["id"], "--base-dir", home).returncode == 0
    assert exchange(http, server, BROWSER_SESSION, revoked["credential"]).status_code == 401


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'{"credential": 7}'])
def test_malformed_exchange_body_is_400(serve, http, body):
    server = serve("good-0.0.28")
    response = http.post(server.url + BROWSER_SESSION, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400


def test_dead_or_foreign_cookie_is_not_authenticated(installed, serve, http, tmp_path):
    home = tmp_path / "home"
    bin_t3 = installed("good-0.0.26")
    server = serve("good-0.0.26")
    credential = mint_credential(bin_t3, home)["credential"]
    _, token, _ = set_cookie(exchange(http, server, BROWSER_SESSION, credential))
    assert session_state(http, server, "t3_session=not-a-session")["authenticated"] is False
    assert session_state(http, server, f"t3_session={token}")["authenticated"] is True
    assert run_t3(bin_t3, "auth", "session", "revoke", token, "--base-dir", home).returncode == 0
    assert session_state(http, server, f"t3_session={token}")["authenticated"] is False


def test_pairing_no_cookie_answers_200_without_a_cookie(installed, serve, http, tmp_path):
    server = serve("pairing-no-cookie")
    credential = mint_credential(installed("pairing-no-cookie"), tmp_path / "home")["credential"]
    response = exchange(http, server, BROWSER_SESSION, credential)
    assert response.status_code == 200 and response.json()["authenticated"] is True
    assert set_cookie(response) is None


def test_older_server_on_newer_database_answers_500(installed, serve, http, tmp_path):
    home = tmp_path / "home"
    dbgen.make_database(home / "userdata/state.sqlite", 32)
    server = serve("good-0.0.24")  # runs nothing, logs success
    credential = mint_credential(installed("good-0.0.26"), home)["credential"]  # level 32: no-op migrate
    response = exchange(http, server, BOOTSTRAP, credential)
    assert response.status_code == 500
    assert "table auth_sessions has no column named role" in response.json()["error"]


# --------------------------------------------------------------------- what a proxied request sees

def test_history_needs_a_live_session(installed, serve, http, tmp_path):
    home = tmp_path / "home"
    facts = dbgen.make_database(home / "userdata/state.sqlite", 32, threads=2, messages_per_thread=4)
    server = serve("good-0.0.28")
    assert http.get(server.url + "/api/threads").status_code == 401
    credential = mint_credential(installed("good-0.0.28"), home)["credential"]
    name, token, _ = set_cookie(exchange(http, server, BROWSER_SESSION, credential))
    threads = http.get(server.url + "/api/threads", headers={"Cookie": f"{name}={token}"}).json()["threads"]
    assert len(threads) == facts["counts"]["projection_threads"]
    assert sum(t["messageCount"] for t in threads) == facts["counts"]["projection_thread_messages"]
