"""A stand-in for the per-user dispatch (the SSO reverse proxy in front of `t3 serve`).

It behaves as the production dispatch does (docs: the contract's "The dispatch"),
flaws included, so that what the tests measure is what users see:

* the user comes from ``X-authentik-username`` (an email's local part); a missing header
  or a user not in ``dispatch.json`` gets 403. The map is read at start (missing or
  unreadable: `start()` raises, as the production service exits) and re-read every
  `map_reload_interval` seconds (60 in production); a failed re-read keeps the old map;
* a request carrying a cookie named exactly `cookie_name` is reverse-proxied to the user's
  instance at ``127.0.0.1:<port>``, except that on a top-level navigation
  (``Sec-Fetch-Dest: document``) the instance's ``GET /api/auth/session`` is asked first
  with a `session_check_timeout` (5 s) and a dead cookie (``authenticated`` false) is
  paired again. The check FAILS OPEN: no answer, an error or nonsense counts as alive;
* otherwise it pairs: runs ``<mint_helper> <os_user>`` by path, as sudo would (a minimal
  environment: `SUDO_ENV`), and parses its stdout as exactly one JSON object with a
  non-empty ``credential``. A non-zero exit answers 500 "pairing mint failed" (stderr is
  dropped); any other stdout answers 500 "unparseable pairing output". It exchanges the
  credential at ``POST /api/auth/browser-session`` falling back to
  ``POST /api/auth/bootstrap`` on 404 (non-200: 502; no connection: 502 "bootstrap
  request failed"), relays every ``Set-Cookie`` as-is and answers ``302 Location: /``;
* there is NO retry anywhere: a refused or dropped upstream connection is an immediate
  502, so every request during an instance restart fails; a WebSocket upgrade that finds
  the instance down gets an empty 200.

The cookie name is checked literally on purpose: an instance that renames its session
cookie makes every browser request re-pair, which is exactly what the canary gate must
catch.

Every request leaves one outcome line in `Dispatch.log`:

    forbidden user=<sso|-> reason=<missing header|unknown user>
    config error reason=<text>
    proxied user=<sso> os_user=<u> method=<M> path=<path> status=<code>
    proxy failed user=<sso> os_user=<u> reason=<text>
    upgrade failed user=<sso> os_user=<u> reason=<text>      (answered with an empty 200)
    session check failed open user=<sso> os_user=<u> reason=<text>   (then the proxy's line)
    dead cookie user=<sso> os_user=<u>                (followed by the pairing's own line)
    mint failed user=<sso> os_user=<u> reason=<pairing mint failed exit=<n>|unparseable pairing output|...>
    pairing failed user=<sso> os_user=<u> endpoint=<path> status=<code|error> [reason=<text>]
    paired user=<sso> os_user=<u> endpoint=<path> fallback=<true|false> cookies=<name,...|->
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from runner.usermap import sso_local_part

__all__ = ["Dispatch", "DispatchConfigError", "NEW_EXCHANGE", "OLD_EXCHANGE", "SUDO_ENV", "parse_cookie_header"]

NEW_EXCHANGE = "/api/auth/browser-session"
OLD_EXCHANGE = "/api/auth/bootstrap"
SESSION_PATH = "/api/auth/session"
USER_HEADER = "X-authentik-username"
MINT_FAILED = "pairing mint failed"
UNPARSEABLE = "unparseable pairing output"
EXCHANGE_UNREACHABLE = "bootstrap request failed"
# What `sudo -n` leaves a command (env_reset, Debian's secure_path), as root.
SUDO_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh",
    "SUDO_USER": "t3-dispatch", "LANG": "C.UTF-8",
}

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
}


def parse_cookie_header(values: list[str]) -> list[tuple[str, str]]:
    """``name=value`` pairs of one or more ``Cookie`` request headers, in order."""
    pairs = []
    for value in values:
        for part in value.split(";"):
            name, eq, val = part.strip().partition("=")
            if eq and name.strip():
                pairs.append((name.strip(), val.strip()))
    return pairs


def _one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Reply(Exception):
    """Raised inside the handler to answer with an error status and a log line."""

    def __init__(self, status: int, log_line: str, body: str | None = None) -> None:
        super().__init__(log_line)
        self.status = status
        self.log_line = log_line
        self.body = body  # the production dispatch's own answer text, where it has one


class DispatchConfigError(RuntimeError):
    """dispatch.json missing or unusable at start: the production service exits."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, handler, on_error: Callable[[str], None]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._on_error = on_error
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:  # noqa: D401 - stdlib override
        import sys

        exc = sys.exc_info()[1]
        self._on_error(f"handler error client={client_address!r}: {exc!r}")


class Dispatch:
    """The dispatch stand-in: a threaded HTTP server on a daemon thread."""

    def __init__(
        self,
        dispatch_json: Path,
        mint_helper: Path | str,
        *,
        cookie_name: str = "t3_session",
        host: str = "127.0.0.1",
        port: int = 0,
        mint_timeout: float = 120.0,
        upstream_host: str = "127.0.0.1",
        upstream_timeout: float = 30.0,
        session_check_timeout: float = 5.0,
        map_reload_interval: float = 60.0,
        mint_env: dict[str, str] | None = None,
    ) -> None:
        self.dispatch_json = Path(dispatch_json)
        self.mint_helper = os.fspath(mint_helper)
        self.cookie_name = cookie_name
        self.host = host
        self.requested_port = port
        # Production has no mint timeout; a test needs a deadline all the same.
        self.mint_timeout = mint_timeout
        self.upstream_host = upstream_host
        self.upstream_timeout = upstream_timeout
        self.session_check_timeout = session_check_timeout
        self.map_reload_interval = map_reload_interval
        self.mint_env = dict(SUDO_ENV if mint_env is None else mint_env)
        self.log: list[str] = []
        self.errors: list[str] = []  # unexpected handler exceptions (should stay empty)
        self._lock = threading.Lock()
        self._map: dict = {}
        self._map_loaded_at = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "Dispatch":
        if self._server is not None:
            raise RuntimeError("dispatch already started")
        try:
            self._map = self._read_map()
        except (OSError, ValueError) as exc:
            raise DispatchConfigError(f"dispatch: cannot read {self.dispatch_json}: {exc}") from None
        self._map_loaded_at = time.monotonic()
        handler = type("DispatchHandler", (_Handler,), {"dispatch": self})
        self._server = _Server((self.host, self.requested_port), handler, self._error)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dispatch:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "Dispatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("dispatch not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- log ---------------------------------------------------------------------
    def _record(self, line: str) -> None:
        with self._lock:
            self.log.append(line)

    def _error(self, line: str) -> None:
        with self._lock:
            self.errors.append(line)

    def log_snapshot(self) -> list[str]:
        with self._lock:
            return list(self.log)

    def wait_for_log(self, predicate: Callable[[str], bool] | str, timeout: float = 5.0) -> str:
        """The first log line matching `predicate` (a callable or a substring); poll until `timeout`."""
        match = predicate if callable(predicate) else (lambda line: predicate in line)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_snapshot():
                if match(line):
                    return line
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no dispatch log line matched within {timeout}s: {self.log_snapshot()!r}")
            threading.Event().wait(0.02)

    # -- configuration -------------------------------------------------------------
    def _read_map(self) -> dict:
        users = json.loads(self.dispatch_json.read_text(encoding="utf-8"))
        if not isinstance(users, dict):
            raise ValueError("dispatch.json is not an object")
        return users

    def _current_map(self) -> dict:
        """The map, re-read once `map_reload_interval` has passed; a failed re-read keeps the old one."""
        with self._lock:
            due = time.monotonic() - self._map_loaded_at >= self.map_reload_interval
            if due:
                self._map_loaded_at = time.monotonic()
        if due:
            try:
                users = self._read_map()
            except (OSError, ValueError) as exc:
                self._record(f"config reload failed reason={_one_line(exc)}")
            else:
                with self._lock:
                    self._map = users
        with self._lock:
            return self._map

    def _lookup(self, sso: str) -> tuple[str, int] | None:
        entry = self._current_map().get(sso)
        if entry is None:
            return None
        os_user = entry.get("os_user") if isinstance(entry, dict) else None
        port = entry.get("port") if isinstance(entry, dict) else None
        if not isinstance(os_user, str) or not os_user or not isinstance(port, int) or isinstance(port, bool):
            raise _Reply(500, f"config error reason=bad entry for {sso!r}: {_one_line(entry)}")
        return os_user, port

    # -- minting -----------------------------------------------------------------
    def _mint(self, os_user: str) -> tuple[str | None, str, str]:
        """(credential, "", "") or (None, production answer text, detail for the log)."""
        argv = [self.mint_helper, os_user]  # `sudo -n <helper> <os_user>`: by path, no shell
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # dropped, as production does
                env=self.mint_env,
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            return None, MINT_FAILED, f"cannot run {argv[0]}: {exc.strerror}"
        try:
            out, _ = proc.communicate(timeout=self.mint_timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.communicate()
            return None, MINT_FAILED, f"no answer within the test's {self.mint_timeout:g}s"
        if proc.returncode != 0:
            return None, MINT_FAILED, f"exit {proc.returncode}"
        try:
            doc = json.loads(out.decode("utf-8"))
        except ValueError as exc:
            return None, UNPARSEABLE, _one_line(exc)
        credential = doc.get("credential") if isinstance(doc, dict) else None
        if not isinstance(credential, str) or not credential:
            return None, UNPARSEABLE, "no credential"
        return credential, "", ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "t3-dispatch-sim"
    timeout = 30
    dispatch: Dispatch  # set on the per-instance subclass

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- plumbing ----------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"", *,
              head_length: str | None = None) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            self.send_header("Content-Length", head_length if head_length is not None else str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body and not no_body and self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _plain(self, status: int, text: str) -> None:
        self._send(status, [
            ("Date", formatdate(usegmt=True)),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Cache-Control", "no-store"),
        ], (text + "\n").encode())

    def _upstream(self, port: int, timeout: float | None = None) -> http.client.HTTPConnection:
        """A connection to the instance, made once: a refusal raises at once (no retry)."""
        d = self.dispatch
        conn = http.client.HTTPConnection(d.upstream_host, port, timeout=timeout or d.upstream_timeout)
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise
        return conn

    def _is_upgrade(self) -> bool:
        tokens = {t.strip().lower() for v in self.headers.get_all("Connection") or [] for t in v.split(",")}
        return "upgrade" in tokens and bool(self.headers.get("Upgrade"))

    # -- the request -------------------------------------------------------------
    def _handle(self) -> None:
        d = self.dispatch
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._plain(400, "bad request body")
            return
        try:
            try:
                sso = sso_local_part(self.headers.get(USER_HEADER))
            except ValueError:
                raise _Reply(403, "forbidden user=- reason=missing header") from None
            found = d._lookup(sso)
            if found is None:
                raise _Reply(403, f"forbidden user={sso} reason=unknown user")
            os_user, port = found
            cookie = self._session_cookie()
            if cookie is None:
                self._pair(sso, os_user, port)
            elif (self.headers.get("Sec-Fetch-Dest", "").strip().lower() == "document"
                  and not self._alive(sso, os_user, port, cookie)):
                d._record(f"dead cookie user={sso} os_user={os_user}")
                self._pair(sso, os_user, port)
            else:
                self._proxy(sso, os_user, port, body)
        except _Reply as reply:
            d._record(reply.log_line)
            self._plain(reply.status, reply.body if reply.body is not None else f"dispatch: {reply.log_line}")

    def _session_cookie(self) -> str | None:
        for name, value in parse_cookie_header(self.headers.get_all("Cookie") or []):
            if name == self.dispatch.cookie_name:  # literal on purpose (see module docstring)
                return value
        return None

    def _alive(self, sso: str, os_user: str, port: int, cookie: str) -> bool:
        """False only when the instance says so; any doubt FAILS OPEN (True), as production does."""
        d = self.dispatch
        try:
            conn = self._upstream(port, timeout=d.session_check_timeout)
            try:
                conn.request("GET", SESSION_PATH, headers={
                    "Cookie": f"{d.cookie_name}={cookie}",
                    "Accept": "application/json",
                    "Connection": "close",
                })
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            if resp.status != 200:
                raise ValueError(f"status {resp.status}")
            doc = json.loads(data)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            d._record(f"session check failed open user={sso} os_user={os_user} reason={_one_line(exc)}")
            return True
        return not (isinstance(doc, dict) and doc.get("authenticated") is False)

    def _exchange(self, port: int, endpoint: str, credential: str) -> tuple[int, list[str]]:
        conn = self._upstream(port)
        try:
            conn.request("POST", endpoint, body=json.dumps({"credential": credential}).encode(), headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Connection": "close",
            })
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.headers.get_all("Set-Cookie") or []
        finally:
            conn.close()

    def _pair(self, sso: str, os_user: str, port: int) -> None:
        d = self.dispatch
        credential, answer, detail = d._mint(os_user)
        if credential is None:
            raise _Reply(500, f"mint failed user={sso} os_user={os_user} reason={answer!r} detail={detail!r}",
                         body=answer)
        endpoint, fallback = NEW_EXCHANGE, False
        try:
            status, cookies = self._exchange(port, endpoint, credential)
            if status == 404:
                endpoint, fallback = OLD_EXCHANGE, True
                status, cookies = self._exchange(port, endpoint, credential)
        except (OSError, http.client.HTTPException) as exc:
            raise _Reply(502, f"pairing failed user={sso} os_user={os_user} endpoint={endpoint} "
                              f"status=error reason={_one_line(exc)}", body=EXCHANGE_UNREACHABLE) from None
        if status != 200:
            raise _Reply(502, f"pairing failed user={sso} os_user={os_user} endpoint={endpoint} status={status}")
        names = ",".join(c.split("=", 1)[0].strip() for c in cookies) or "-"
        d._record(f"paired user={sso} os_user={os_user} endpoint={endpoint} "
                  f"fallback={'true' if fallback else 'false'} cookies={names}")
        headers = [("Date", formatdate(usegmt=True)), ("Location", "/"), ("Cache-Control", "no-store")]
        headers += [("Set-Cookie", c) for c in cookies]
        self._send(302, headers)

    def _proxy(self, sso: str, os_user: str, port: int, body: bytes) -> None:
        d = self.dispatch
        listed = {t.strip().lower() for v in self.headers.get_all("Connection") or [] for t in v.split(",")}
        try:
            conn = self._upstream(port)
        except OSError as exc:
            if self._is_upgrade():  # production answers a failed upgrade with an empty 200
                d._record(f"upgrade failed user={sso} os_user={os_user} reason={_one_line(exc)}")
                self._send(200, [("Date", formatdate(usegmt=True))])
                return
            raise _Reply(502, f"proxy failed user={sso} os_user={os_user} reason={_one_line(exc)}") from None
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            has_host = False
            for name, value in self.headers.items():
                low = name.lower()
                if low in _HOP_BY_HOP or low in listed or low == "content-length":
                    continue
                has_host = has_host or low == "host"
                conn.putheader(name, value)
            if not has_host:
                conn.putheader("Host", f"{d.upstream_host}:{port}")
            if body or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            upstream_headers = resp.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            raise _Reply(502, f"proxy failed user={sso} os_user={os_user} reason={_one_line(exc)}") from None
        finally:
            conn.close()
        relayed = [(n, v) for n, v in upstream_headers if n.lower() not in _HOP_BY_HOP and n.lower() != "content-length"]
        head_length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        d._record(f"proxied user={sso} os_user={os_user} method={self.command} path={self.path} status={resp.status}")
        self._send(resp.status, relayed, data, head_length=head_length)
