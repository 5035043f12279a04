"""The dispatch stand-in and the login prober, against a small fake t3 instance.

The fake instance lives here (not the simulated t3) so these tests pin the dispatch's
own behaviour: pairing, the 404 fallback, proxying, dead-cookie re-pairing, the literal
cookie name, every failure status, and the production dispatch's flaws (no retry, a
session check that fails open, an empty 200 for an upgrade to a down instance).
"""
from __future__ import annotations

import json
import secrets
import socket
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.sim.proc import free_port
from tests.sim.world import wait_until

from tests.sim.dispatch import (NEW_EXCHANGE, OLD_EXCHANGE, SUDO_ENV, Dispatch, DispatchConfigError,
                               parse_cookie_header)
from tests.sim.prober import LoginProber

APP_BODY = b"<!doctype html><title>fake t3</title>"


# -- a fake t3 instance ------------------------------------------------------------------
class FakeT3:
    """Just enough of `t3 serve` for the dispatch: exchange, session check, app, echo."""

    def __init__(self, *, exchange_path: str = NEW_EXCHANGE, cookie_name: str = "t3_session",
                 exchange_status: int = 200, session_delay: float = 0.0) -> None:
        self.exchange_path = exchange_path
        self.session_delay = session_delay  # seconds the session check hangs before answering
        self.cookie_name = cookie_name
        self.exchange_status = exchange_status
        self.sessions: set[str] = set()
        self.credentials: list[tuple[str, str]] = []  # (path, credential) of every exchange POST
        self.paths: list[tuple[str, str]] = []  # (method, path) of every request
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "FakeT3":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                self.close_connection = True

            def json(self, status, doc, headers=()):
                self.reply(status, json.dumps(doc).encode(), [("Content-Type", "application/json"), *headers])

            def cookies(self):
                return dict(parse_cookie_header(self.headers.get_all("Cookie") or []))

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with fake.lock:
                    fake.paths.append((self.command, self.path))
                if self.command == "POST" and path in (NEW_EXCHANGE, OLD_EXCHANGE):
                    if path != fake.exchange_path:
                        return self.reply(404, b"not found")
                    try:
                        credential = json.loads(body)["credential"]
                    except (ValueError, KeyError, TypeError):
                        return self.reply(400, b"malformed")
                    with fake.lock:
                        fake.credentials.append((path, credential))
                    if fake.exchange_status != 200:
                        return self.reply(fake.exchange_status, b"no")
                    token = secrets.token_hex(16)
                    with fake.lock:
                        fake.sessions.add(token)
                    cookie = (f"{fake.cookie_name}={token}; HttpOnly; Path=/; SameSite=Lax; "
                              "Expires=Fri, 10 Jul 2026 12:00:00 GMT")
                    return self.json(200, {"authenticated": True, "sessionMethod": "browser-session-cookie"},
                                     [("Set-Cookie", cookie)])
                if self.command == "GET" and path == "/api/auth/session":
                    if fake.session_delay:
                        threading.Event().wait(fake.session_delay)
                    with fake.lock:
                        alive = self.cookies().get(fake.cookie_name) in fake.sessions
                    return self.json(200, {"authenticated": alive, "auth": {"sessionCookieName": fake.cookie_name}})
                if path == "/echo":
                    return self.json(201 if self.command == "POST" else 200, {
                        "method": self.command, "path": self.path, "body": body.decode(),
                        "cookie": self.headers.get("Cookie"), "custom": self.headers.get("X-Custom"),
                    }, [("X-Upstream", "fake"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")])
                if self.command in ("GET", "HEAD") and path == "/":
                    return self.reply(200, APP_BODY, [("Content-Type", "text/html")])
                return self.reply(404, b"not found")

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = handle_any

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # restarting keeps the port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def revoke_all(self) -> None:
        with self.lock:
            self.sessions.clear()


MINT_SCRIPT = textwrap.dedent('''
    import json, os, pathlib, random, sys, time
    here = pathlib.Path(__file__).parent
    mode_file = here / "mint-mode"
    mode = mode_file.read_text().strip() if mode_file.exists() else "ok"
    with open(here / "mint-calls", "a") as calls:
        calls.write(" ".join(sys.argv[1:]) + "\\n")
    with open(here / "mint-env", "w") as env:
        env.write(json.dumps(dict(os.environ)))
    if mode == "fail":
        print("t3: cannot open state.sqlite", file=sys.stderr)
        sys.exit(3)
    if mode == "slow":
        time.sleep(60)
    if mode == "badjson":
        print("Pairing link created: ABC")
        sys.exit(0)
    if mode == "chatty":  # a warning on stdout before the JSON: not one JSON object
        print("warning: migrating state.sqlite")
    doc = {"id": "pl_" + str(random.randrange(10**6)), "expiresAt": "2026-06-09T12:05:00.000Z", "role": "owner"}
    if mode != "nocred":
        doc["credential"] = "".join(random.choice("23456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(12))
    print(json.dumps(doc, indent=2))
''')


class Mint:
    """A fake mint helper at a path (as `/usr/local/bin/t3-mint`); `mode` switches its behaviour."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.helper = root / "t3-mint"
        self.helper.write_text(f"#!{sys.executable}\n" + MINT_SCRIPT)
        self.helper.chmod(0o755)

    def env(self) -> dict:
        return json.loads((self.root / "mint-env").read_text())

    def set_mode(self, mode: str) -> None:
        (self.root / "mint-mode").write_text(mode)

    def calls(self) -> list[str]:
        path = self.root / "mint-calls"
        return path.read_text().splitlines() if path.exists() else []


# -- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture
def mint(tmp_path):
    return Mint(tmp_path / "mint")


@pytest.fixture
def fakes():
    started: list[FakeT3] = []

    def make(**kwargs) -> FakeT3:
        fake = FakeT3(**kwargs).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def dispatches(tmp_path, mint):
    started: list[Dispatch] = []

    def make(users: dict[str, tuple[str, int]], **kwargs) -> Dispatch:
        config = tmp_path / f"dispatch-{len(started)}.json"
        write_config(config, users)
        d = Dispatch(config, mint.helper, **kwargs).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()
        assert d.errors == []


def write_config(path: Path, users: dict[str, tuple[str, int]]) -> None:
    path.write_text(json.dumps({sso: {"os_user": u, "port": p} for sso, (u, p) in users.items()}))


def browse(d: Dispatch, path: str = "/", *, user: str | None = "vbarzin", cookie: str | None = None,
           document: bool = True, method: str = "GET", headers: dict | None = None, **kwargs) -> requests.Response:
    h = dict(headers or {})
    if user is not None:
        h["X-authentik-username"] = user
    if document:
        h["Sec-Fetch-Dest"] = "document"
    if cookie is not None:
        h["Cookie"] = cookie
    with requests.Session() as s:
        s.trust_env = False
        return s.request(method, d.url + path, headers=h, allow_redirects=False, timeout=15, **kwargs)


def set_cookies(resp: requests.Response) -> list[str]:
    return resp.raw.headers.getlist("Set-Cookie")


def cookie_pair(resp: requests.Response) -> str:
    (header,) = set_cookies(resp)
    return header.split(";", 1)[0]




PAIRED = "paired user=vbarzin os_user=wizard endpoint=/api/auth/browser-session fallback=false cookies=t3_session"


# -- pairing -----------------------------------------------------------------------------
def test_pairs_without_cookie_and_relays_the_set_cookie(fakes, dispatches, mint):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    resp = browse(d)
    env = mint.env()  # the helper runs by path with what `sudo -n` leaves, nothing of ours
    assert {k: v for k, v in env.items() if k not in ("PWD", "SHLVL", "_", "LC_CTYPE")} == SUDO_ENV
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/"
    (header,) = set_cookies(resp)
    assert header.startswith("t3_session=")
    assert header.endswith("; HttpOnly; Path=/; SameSite=Lax; Expires=Fri, 10 Jul 2026 12:00:00 GMT")  # as-is
    assert d.log == [PAIRED]
    assert mint.calls() == ["wizard"]
    ((path, credential),) = fake.credentials
    assert path == NEW_EXCHANGE and len(credential) == 12


def test_pairing_falls_back_to_bootstrap_on_404(fakes, dispatches):
    fake = fakes(exchange_path=OLD_EXCHANGE)
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    resp = browse(d)
    assert resp.status_code == 302
    assert cookie_pair(resp).startswith("t3_session=")
    assert d.log == ["paired user=vbarzin os_user=wizard endpoint=/api/auth/bootstrap fallback=true cookies=t3_session"]
    assert fake.paths == [("POST", NEW_EXCHANGE), ("POST", OLD_EXCHANGE)]
    assert [p for p, _ in fake.credentials] == [OLD_EXCHANGE]


def test_email_local_part_is_the_user(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    assert browse(d, user="vbarzin@example.org").status_code == 302
    assert d.log == [PAIRED]


def test_dispatch_json_is_reread_only_after_the_interval(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)}, map_reload_interval=0.5)
    assert browse(d, user="alice").status_code == 403
    changed = time.monotonic()
    write_config(d.dispatch_json, {"vbarzin": ("wizard", fake.port), "alice": ("alice", fake.port)})
    first = browse(d, user="alice").status_code
    if time.monotonic() - changed < 0.4:  # still inside the interval: the old map answers
        assert first == 403
    wait_until(lambda: browse(d, user="alice").status_code == 302, 10, "the map to be re-read")
    assert d.log[-1] == "paired user=alice os_user=alice endpoint=/api/auth/browser-session fallback=false cookies=t3_session"


# -- proxying ----------------------------------------------------------------------------
def test_valid_cookie_is_proxied(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    cookie = cookie_pair(browse(d))
    resp = browse(d, cookie=cookie)
    assert resp.status_code == 200
    assert resp.content == APP_BODY
    assert resp.headers["Content-Type"] == "text/html"
    assert set_cookies(resp) == []
    assert d.log == [PAIRED, "proxied user=vbarzin os_user=wizard method=GET path=/ status=200"]
    # a document navigation checked the session first
    assert fake.paths[-2:] == [("GET", "/api/auth/session"), ("GET", "/")]


def test_proxy_relays_method_path_query_body_headers_and_cookies(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    cookie = cookie_pair(browse(d))
    resp = browse(d, "/echo?x=1&y=two", cookie=f"other=1; {cookie}", document=False, method="POST",
                  data=b'{"hello": "world"}', headers={"X-Custom": "kept", "Content-Type": "application/json"})
    assert resp.status_code == 201
    assert resp.json() == {"method": "POST", "path": "/echo?x=1&y=two", "body": '{"hello": "world"}',
                           "cookie": f"other=1; {cookie}", "custom": "kept"}
    assert resp.headers["X-Upstream"] == "fake"
    assert set_cookies(resp) == ["a=1; Path=/", "b=2; Path=/"]
    assert ("GET", "/api/auth/session") not in fake.paths  # not a navigation: no session check
    assert d.log[-1] == "proxied user=vbarzin os_user=wizard method=POST path=/echo?x=1&y=two status=201"


def test_proxy_relays_upstream_errors_as_is(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    cookie = cookie_pair(browse(d))
    resp = browse(d, "/nowhere", cookie=cookie, document=False)
    assert resp.status_code == 404
    assert resp.content == b"not found"


def test_dead_cookie_on_navigation_pairs_again(fakes, dispatches, mint):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    old = cookie_pair(browse(d))
    fake.revoke_all()
    # not a navigation: proxied as is (the instance decides; `/` has no auth check)
    assert browse(d, cookie=old, document=False).status_code == 200
    resp = browse(d, cookie=old)
    assert resp.status_code == 302
    new = cookie_pair(resp)
    assert new != old and new.startswith("t3_session=")
    assert d.log[-2:] == ["dead cookie user=vbarzin os_user=wizard", PAIRED]
    assert mint.calls() == ["wizard", "wizard"]
    assert browse(d, cookie=new).status_code == 200


def test_renamed_cookie_makes_every_request_pair_again(fakes, dispatches, mint):
    fake = fakes(cookie_name="t3_session_abc")
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    first = browse(d)
    assert first.status_code == 302
    cookie = cookie_pair(first)
    assert cookie.startswith("t3_session_abc=")
    second = browse(d, cookie=cookie)
    assert second.status_code == 302  # the dispatch looks for the literal `t3_session`
    renamed = "paired user=vbarzin os_user=wizard endpoint=/api/auth/browser-session fallback=false cookies=t3_session_abc"
    assert d.log == [renamed, renamed]
    assert mint.calls() == ["wizard", "wizard"]


# -- refusals and failures ---------------------------------------------------------------
def test_unknown_user_is_forbidden(fakes, dispatches, mint):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    resp = browse(d, user="mallory@example.org")
    assert resp.status_code == 403
    assert d.log == ["forbidden user=mallory reason=unknown user"]
    assert mint.calls() == [] and fake.paths == []


@pytest.mark.parametrize("user", [None, "", "@example.org"])
def test_missing_user_header_is_forbidden(fakes, dispatches, mint, user):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    assert browse(d, user=user).status_code == 403
    assert d.log == ["forbidden user=- reason=missing header"]
    assert mint.calls() == []


@pytest.mark.parametrize("mode, answer, detail", [
    ("fail", "pairing mint failed", "exit 3"),  # stderr is dropped, not quoted
    ("badjson", "unparseable pairing output", "Expecting value: line 1 column 1 (char 0)"),
    ("chatty", "unparseable pairing output", "Expecting value: line 1 column 1 (char 0)"),
    ("nocred", "unparseable pairing output", "no credential"),
    ("slow", "pairing mint failed", "no answer within the test's 0.5s"),
])
def test_mint_failure_is_500(fakes, dispatches, mint, mode, answer, detail):
    fake = fakes()
    mint.set_mode(mode)
    d = dispatches({"vbarzin": ("wizard", fake.port)}, mint_timeout=0.5)
    started = time.monotonic()
    resp = browse(d)
    assert time.monotonic() - started < 5
    assert resp.status_code == 500 and resp.text == answer + "\n"
    assert set_cookies(resp) == []
    assert d.log == [f"mint failed user=vbarzin os_user=wizard reason={answer!r} detail={detail!r}"]
    assert fake.paths == []


def test_mint_helper_missing_is_500(tmp_path, fakes):
    fake = fakes()
    config = tmp_path / "dispatch.json"
    write_config(config, {"vbarzin": ("wizard", fake.port)})
    with Dispatch(config, tmp_path / "no-such-mint") as d:
        resp = browse(d)
        assert resp.status_code == 500 and resp.text == "pairing mint failed\n"
        assert d.log[0].startswith("mint failed user=vbarzin os_user=wizard reason='pairing mint failed' "
                                   "detail='cannot run ")


def test_exchange_rejected_is_502(fakes, dispatches):
    fake = fakes(exchange_status=401)
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    resp = browse(d)
    assert resp.status_code == 502
    assert set_cookies(resp) == []
    assert d.log == ["pairing failed user=vbarzin os_user=wizard endpoint=/api/auth/browser-session status=401"]


def test_exchange_404_on_both_endpoints_is_502(fakes, dispatches):
    fake = fakes(exchange_path="/api/auth/elsewhere")
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    assert browse(d).status_code == 502
    assert d.log == ["pairing failed user=vbarzin os_user=wizard endpoint=/api/auth/bootstrap status=404"]


def test_instance_down_is_502_at_once_and_the_session_check_fails_open(dispatches, mint):
    d = dispatches({"vbarzin": ("wizard", free_port())})
    resp = browse(d)
    assert resp.status_code == 502 and resp.text == "bootstrap request failed\n"
    assert d.log[-1].startswith(
        "pairing failed user=vbarzin os_user=wizard endpoint=/api/auth/browser-session status=error reason=")
    assert browse(d, cookie="t3_session=abc").status_code == 502
    assert d.log[-2].startswith("session check failed open user=vbarzin os_user=wizard reason=")
    assert d.log[-1].startswith("proxy failed user=vbarzin os_user=wizard reason=")
    assert browse(d, cookie="t3_session=abc", document=False).status_code == 502
    assert d.log[-1].startswith("proxy failed user=vbarzin os_user=wizard reason=")


def test_websocket_upgrade_to_a_down_instance_gets_an_empty_200(dispatches):
    d = dispatches({"vbarzin": ("wizard", free_port())})
    resp = browse(d, "/ws", cookie="t3_session=abc", document=False,
                  headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert resp.status_code == 200 and resp.content == b""
    assert d.log[-1].startswith("upgrade failed user=vbarzin os_user=wizard reason=")


def test_session_check_times_out_and_fails_open(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)}, session_check_timeout=0.3)
    cookie = cookie_pair(browse(d))
    fake.revoke_all()  # the cookie is dead, but the instance is too slow to say so
    fake.session_delay = 3.0
    started = time.monotonic()
    resp = browse(d, cookie=cookie)
    assert time.monotonic() - started < 2.5
    assert resp.status_code == 200  # proxied: the check failed open, no re-pair
    assert d.log[-2].startswith("session check failed open user=vbarzin os_user=wizard reason=")
    assert d.log[-1] == "proxied user=vbarzin os_user=wizard method=GET path=/ status=200"


@pytest.mark.parametrize("content", [None, "{not json"])
def test_dispatch_json_missing_or_broken_at_start_is_an_exit(tmp_path, mint, content):
    config = tmp_path / "dispatch.json"
    if content is not None:
        config.write_text(content)
    with pytest.raises(DispatchConfigError, match="cannot read"):
        Dispatch(config, mint.helper).start()


def test_a_broken_reread_keeps_the_old_map(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)}, map_reload_interval=0.05)
    d.dispatch_json.write_text("{not json")
    wait_until(lambda: any(line.startswith("config reload failed") for line in d.log)
               or browse(d).status_code != 302, 10, "a re-read")
    assert browse(d).status_code == 302


# -- the login prober --------------------------------------------------------------------
def test_prober_healthy_records_no_failures(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    with LoginProber(d.url, "vbarzin@example.org", interval=0.05) as prober:
        wait_until(lambda: len(prober.report().attempts) >= 3, what="three probes")
    report = prober.stop()
    assert report.ok, report.summary()
    assert report.failures == [] and report.failure_windows() == []
    assert all(a.step == "login" and a.detail == "ok" for a in report.attempts)
    assert report.stopped_cleanly


def test_prober_records_an_outage_and_the_recovery(fakes, dispatches):
    fake = fakes()
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    prober = LoginProber(d.url, "vbarzin", interval=0.05).start()
    try:
        wait_until(lambda: len(prober.report().successes) >= 2, what="healthy probes")
        down_at = time.monotonic()
        fake.stop()
        wait_until(lambda: len(prober.report().failures) >= 2, what="failed probes")
        up_at = time.monotonic()
        fake.start()  # same port
        wait_until(lambda: len([a for a in prober.report().successes if a.monotonic > up_at]) >= 3,
                   what="recovered probes")
    finally:
        report = prober.stop()
    assert not report.ok
    assert len(report.failures) >= 2
    last_good = max(a.monotonic for a in report.successes if a.monotonic < down_at)
    for f in report.failures:
        # attempts are stamped at their start; one may have started just before the stop
        assert last_good < f.monotonic <= up_at
        assert abs(f.wall - time.time()) < 60
        expected = {"pair": "status 502, expected 302", "proxy": "status 502, expected 200"}
        assert f.detail == expected[f.step]
    assert [a for a in report.attempts if a.monotonic > up_at and not a.ok] == []
    ((start, end, count),) = report.failure_windows()
    assert (start, end, count) == (report.failures[0].monotonic, report.failures[-1].monotonic, len(report.failures))
    assert "step=pair status 502" in report.summary()


def test_prober_catches_a_renamed_cookie(fakes, dispatches):
    fake = fakes(cookie_name="t3_session_abc")
    d = dispatches({"vbarzin": ("wizard", fake.port)})
    literal = LoginProber(d.url, "vbarzin", interval=0.05)
    any_name = LoginProber(d.url, "vbarzin", interval=0.05, cookie_name=None)
    with literal, any_name:
        wait_until(lambda: literal.report().attempts and any_name.report().attempts, what="probes")
    lit, anyn = literal.stop(), any_name.stop()
    assert not lit.ok and not anyn.ok
    assert {(f.step, f.detail) for f in lit.failures} == {
        ("pair", "302 without a t3_session cookie (Set-Cookie names: t3_session_abc)")}
    assert {(f.step, f.detail) for f in anyn.failures} == {
        ("proxy", "status 302: re-paired, the session cookie was not accepted")}


def test_several_probers_at_once_and_a_prompt_stop(fakes, dispatches):
    a, b = fakes(), fakes(exchange_path=OLD_EXCHANGE)
    d = dispatches({"vbarzin": ("wizard", a.port), "alice": ("alice", b.port)})
    probers = [LoginProber(d.url, "vbarzin", interval=0.05), LoginProber(d.url, "alice", interval=30)]
    for p in probers:
        p.start()
    try:
        wait_until(lambda: all(len(p.report().attempts) >= 1 for p in probers)
                   and len(probers[0].report().attempts) >= 3, what="probes")
    finally:
        started = time.monotonic()
        reports = [p.stop() for p in probers]
        assert time.monotonic() - started < 1.5  # the 30 s interval does not hold stop() up
    assert all(r.ok and r.stopped_cleanly for r in reports), [r.summary() for r in reports]
    assert len(reports[1].attempts) == 1
    assert any("user=alice os_user=alice endpoint=/api/auth/bootstrap fallback=true" in line for line in d.log)


# -- against the real simulated t3 -------------------------------------------------------
@pytest.mark.parametrize("version, profile, endpoint, literal_ok", [
    ("0.0.24", "good-0.0.24", OLD_EXCHANGE, True),
    ("0.0.28-nightly.20260616.571", "good-0.0.28", NEW_EXCHANGE, True),
    ("0.0.29-nightly.20260620.604", "cookie-renamed", NEW_EXCHANGE, False),
])
def test_with_the_simulated_t3(tmp_path, version, profile, endpoint, literal_ok):
    from tests.sim import builds
    from tests.sim.proc import ServeProcess

    bin_t3 = builds.install_layout(version, profile, tmp_path / "prefix")
    home = tmp_path / "home" / "wizard" / ".t3"
    helper = tmp_path / "t3-mint"
    helper.write_text(f'#!/bin/sh\nexec "{bin_t3}" auth pairing create --base-dir "{home}" --ttl 5m --json\n')
    helper.chmod(0o755)
    config = tmp_path / "dispatch.json"
    with ServeProcess(bin_t3, home, host="0.0.0.0") as serve:  # as production binds
        serve.wait_ready(timeout=30)
        write_config(config, {"vbarzin": ("wizard", serve.port)})
        with Dispatch(config, helper) as d:
            first = browse(d, user="vbarzin@example.org")
            assert first.status_code == 302, first.text
            name = cookie_pair(first).split("=", 1)[0]
            assert (name == "t3_session") is literal_ok and name.startswith("t3_session")
            assert d.log[-1] == (f"paired user=vbarzin os_user=wizard endpoint={endpoint} "
                                 f"fallback={'true' if endpoint == OLD_EXCHANGE else 'false'} cookies={name}")
            second = browse(d, cookie=cookie_pair(first))
            assert second.status_code == (200 if literal_ok else 302)
            with LoginProber(d.url, "vbarzin", interval=0.05, cookie_name=None) as prober:
                wait_until(lambda: len(prober.report().attempts) >= 2, timeout=20, what="probes")
            report = prober.stop()
            assert report.ok is literal_ok, report.summary()
            if not literal_ok:
                assert {(f.step, f.detail) for f in report.failures} == {
                    ("proxy", "status 302: re-paired, the session cookie was not accepted")}
            assert d.errors == []



class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_a_refused_upstream_is_502_at_once_never_waited_for(tmp_path):
    """The production dispatch has no retry: an instance restarting (connection refused)
    fails the request at once, and a server coming up a moment later does not rescue it."""
    port = free_port()
    (tmp_path / "dispatch.json").write_text(json.dumps({"vbarzin": {"os_user": "wizard", "port": port}}))
    headers = {"X-authentik-username": "vbarzin", "Cookie": "t3_session=x"}
    with Dispatch(tmp_path / "dispatch.json", "/bin/false") as d:
        answers = []
        client = threading.Thread(target=lambda: answers.append(
            requests.get(d.url + "/", headers=headers, timeout=30).status_code))
        started = time.monotonic()
        client.start()
        client.join(30)
        elapsed = time.monotonic() - started
        server = ThreadingHTTPServer(("127.0.0.1", port), _Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            assert requests.get(d.url + "/", headers=headers, timeout=10).status_code == 200
        finally:
            server.shutdown()
            server.server_close()
    assert answers == [502] and elapsed < 5


def _dropping_upstream(drops: int):
    """A raw upstream that resets its first `drops` connections unanswered, then answers 200."""
    import struct

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    seen = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.append(1)
            if len(seen) <= drops:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # RST: accepted, never answered
                continue
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_dropped_upstream_connection_is_never_repeated(tmp_path, method):
    listener, seen = _dropping_upstream(1)
    try:
        port = listener.getsockname()[1]
        (tmp_path / "dispatch.json").write_text(json.dumps({"vbarzin": {"os_user": "wizard", "port": port}}))
        with Dispatch(tmp_path / "dispatch.json", "/bin/false") as dispatch:
            response = requests.request(method, dispatch.url + "/api/x", timeout=10,
                                        headers={"X-authentik-username": "vbarzin", "Cookie": "t3_session=x"})
        assert response.status_code == 502, dispatch.log
        assert dispatch.log[-1].startswith("proxy failed user=vbarzin"), dispatch.log
        assert len(seen) == 1
    finally:
        listener.close()
