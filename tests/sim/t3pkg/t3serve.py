"""The server half of the simulated t3 (`t3 serve`), copied into every simulated npm tarball
as `lib/t3serve.py` beside t3sim.py; t3sim's `serve` command imports it. Apart because a
CLI call of the build (`auth pairing create`: every login's mint) must not pay for
http.server, email and socketserver: the real t3 CLI does not start its server either.
Behaviour is t3sim's module docstring."""
from __future__ import annotations

import argparse
import email.utils
import json
import os
import secrets
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from t3sim import (SESSION_METHOD, Build, Log, MigrationError, StateDir, connect_state_db, consume_credential,
                   describe_sql_error, in_transaction, is_remote_reachable, iso_z, live_session, migrate_state,
                   parse_cookie_header, parse_iso_z, session_cookie_names, utc_now, v1_complete_turn,
                   v1_start_turn, v2_complete_run, v2_create_thread, v2_start_run)

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>T3 Code</title></head>
<body><div id="root"></div><script type="module">/* t3 v{version} */</script></body></html>
"""


class T3HTTPServer(ThreadingHTTPServer):
    # On SIGTERM, requests already being handled are finished (server_close joins them),
    # as a real server drains before it exits.
    daemon_threads = False
    block_on_close = True

    def __init__(self, host: str, port: int, app: "ServerApp") -> None:
        self.app = app
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), T3RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(host), a reverse DNS lookup that can
        # stall for seconds on an offline machine; t3 never needs the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ServerApp:
    """What the request handlers share: the build, the state dir and the cookie rule."""

    def __init__(self, build: Build, state: StateDir, host: str | None, port: int, log: Log) -> None:
        self.build = build
        self.state = state
        self.host = host
        self.port = port
        self.log = log
        self.environment_id = state.environment_id()
        self.cookie_names = session_cookie_names(build.cookie_mode, host, port, state.path, self.environment_id)

    @property
    def cookie_name(self) -> str:
        return self.cookie_names[0]

    def authenticated_session(self, cookie_headers: list[str]) -> sqlite3.Row | None:
        cookies = parse_cookie_header(cookie_headers)
        candidates = [value for name in self.cookie_names for value in cookies.get(name, [])]
        if not candidates:
            return None
        conn = self.state.connect()
        try:
            for token in candidates:
                session = live_session(conn, token)
                if session is not None:
                    return session
        finally:
            conn.close()
        return None


ANSWERED = object()  # authenticated_work's "an error answer was already sent"


class T3RequestHandler(BaseHTTPRequestHandler):
    server: T3HTTPServer

    def version_string(self) -> str:
        return "t3"

    @property
    def app(self) -> ServerApp:
        return self.server.app

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib's signature)
        self.app.log("DEBUG", "http " + (format % args))

    # -- routing
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        routes = {
            "/api/auth/session": self.handle_session,
            "/.well-known/t3/environment": self.handle_environment,
            "/api/threads": self.handle_threads,
        }
        if path in routes:
            return routes[path]()
        if path in self.post_routes():
            return self.send_json(405, {"error": "Method Not Allowed"})
        if path.startswith("/api/"):
            return self.send_json(404, {"error": "Not Found"})
        # Everything else is the web app (a single-page app answers every path).
        self.send_body(200, INDEX_HTML.format(version=self.app.build.version).encode(), "text/html; charset=utf-8")

    def do_HEAD(self) -> None:
        path = self.path.split("?", 1)[0]
        status = 404 if path.startswith("/api/") else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        handler = self.post_routes().get(path)
        parts = path.split("/")  # /api/threads/<id>/complete
        if handler is None and len(parts) == 5 and parts[1:3] == ["api", "threads"] and parts[4] == "complete":
            handler = lambda: self.handle_complete(parts[3])  # noqa: E731 (a route bound to its id)
        if handler is None:
            return self.send_json(404, {"error": "Not Found"})
        handler()

    def post_routes(self) -> dict:
        # Only the build's own exchange path exists: 0.0.24 has /api/auth/bootstrap,
        # 0.0.25+ /api/auth/browser-session, a bad build something else again.
        return {self.app.build.exchange_path: self.handle_exchange, "/api/threads": self.handle_start_thread}

    # -- endpoints
    def handle_exchange(self) -> None:
        try:
            body = json.loads(self.read_body() or b"")
        except (ValueError, UnicodeDecodeError):
            return self.send_json(400, {"error": "Malformed JSON body"})
        credential = body.get("credential") if isinstance(body, dict) else None
        if not isinstance(credential, str) or not credential:
            return self.send_json(400, {"error": "Expected a JSON body with a credential"})
        build = self.app.build
        try:
            conn = self.app.state.connect()
            try:
                session = consume_credential(conn, build, credential, self.headers.get("User-Agent"))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            message = describe_sql_error(exc, build.sql_error_style)
            self.app.log("ERROR", f"pairing exchange failed: {message}")
            return self.send_json(500, {"error": message})
        if session is None:
            return self.send_json(401, {"error": "Invalid, expired or already used credential"})
        headers = []
        if build.sets_cookie:  # the `pairing-no-cookie` profile is the 200-without-cookie bug
            headers.append(("Set-Cookie", self.session_cookie(session)))
        grant_column, grant_json = session["grant"]
        if grant_column == "scopes":
            payload = {"authenticated": True, "scopes": grant_json, "sessionMethod": SESSION_METHOD,
                       "expiresAt": session["expires_at"]}
        else:
            payload = {"ok": True}  # old builds answered no session details
        self.send_json(200, payload, headers)

    def session_cookie(self, session: dict) -> str:
        expires = email.utils.format_datetime(parse_iso_z(session["expires_at"]), usegmt=True)
        return f"{self.app.cookie_name}={session['session_id']}; HttpOnly; Path=/; SameSite=Lax; Expires={expires}"

    def handle_session(self) -> None:
        try:
            session = self.app.authenticated_session(self.headers.get_all("Cookie") or [])
        except sqlite3.Error as exc:
            return self.send_json(500, {"error": describe_sql_error(exc, self.app.build.sql_error_style)})
        payload: dict = {
            "authenticated": session is not None,
            "auth": {
                "sessionCookieName": self.app.cookie_name,
                "policy": "remote-reachable" if is_remote_reachable(self.app.host) else "loopback-browser",
                "bootstrapMethods": ["one-time-token"],
            },
        }
        if session is not None:
            payload["sessionMethod"] = SESSION_METHOD
            payload["expiresAt"] = session["expires_at"]
            if "scopes" in session.keys():
                payload["scopes"] = json.loads(session["scopes"])
            else:
                payload["role"] = session["role"]
        self.send_json(200, payload)

    def handle_environment(self) -> None:
        # The real version of the running code, even when `--version` lies.
        self.send_json(200, {"environmentId": self.app.environment_id, "serverVersion": self.app.build.version})

    def handle_threads(self) -> None:
        """An authenticated read of the precious history (what a proxied request sees)."""
        v2 = self.app.build.layout == "v2"
        sql = ("SELECT t.thread_id, t.title, t.updated_at, (SELECT COUNT(*) FROM orchestration_v2_projection_messages m"
               " WHERE m.thread_id = t.thread_id) AS messages FROM orchestration_v2_projection_threads t"
               " WHERE t.deleted_at IS NULL ORDER BY t.updated_at DESC, t.thread_id" if v2 else
               "SELECT t.thread_id, t.title, t.updated_at, COUNT(m.message_id) AS messages"
               " FROM projection_threads t LEFT JOIN projection_thread_messages m USING (thread_id)"
               " WHERE t.deleted_at IS NULL GROUP BY t.thread_id ORDER BY t.updated_at DESC")
        rows = self.authenticated_work(lambda conn: conn.execute(sql).fetchall())
        if rows is not ANSWERED:
            self.send_json(200, {"threads": [
                {"threadId": r["thread_id"], "title": r["title"], "updatedAt": r["updated_at"],
                 "messageCount": r["messages"]} for r in rows]})

    def handle_start_thread(self) -> None:
        """POST {"title", "text"[, "projectId"]}: a new thread whose agent run is now in flight."""
        try:
            body = json.loads(self.read_body() or b"")
        except (ValueError, UnicodeDecodeError):
            return self.send_json(400, {"error": "Malformed JSON body"})
        if not (isinstance(body, dict) and isinstance(body.get("title"), str) and isinstance(body.get("text"), str)):
            return self.send_json(400, {"error": "Expected a JSON body with title and text"})
        thread_id, now = f"thread-{secrets.token_hex(6)}", iso_z(utc_now())
        project_id = str(body.get("projectId") or "project-000")

        def v1(conn):
            return in_transaction(conn, lambda: v1_start_turn(conn, thread_id, body["title"], project_id,
                                                              body["text"], now))

        def v2(conn):
            def work():
                v2_create_thread(conn, thread_id, body["title"], project_id, now)
                return v2_start_run(conn, thread_id, body["text"], now)
            return in_transaction(conn, work)

        result = self.authenticated_work(v2 if self.app.build.layout == "v2" else v1, mirror=v1)
        if result is not ANSWERED:
            self.send_json(201, {"threadId": thread_id, "inFlight": result})

    def handle_complete(self, thread_id: str) -> None:
        """POST /api/threads/<id>/complete: the agent answers; the run (turn) in flight ends."""
        now, reply = iso_z(utc_now()), "Done."

        def v1(conn):
            return in_transaction(conn, lambda: v1_complete_turn(conn, thread_id, reply, now))

        def v2(conn):
            return in_transaction(conn, lambda: v2_complete_run(conn, thread_id, reply, now))

        result = self.authenticated_work(v2 if self.app.build.layout == "v2" else v1, mirror=v1)
        if result is ANSWERED:
            return
        if result is not None:
            self.send_json(200, {"threadId": thread_id, "completed": result})
        else:
            self.send_json(404, {"error": f"no run in flight in thread {thread_id!r}"})

    def authenticated_work(self, work, mirror=None):
        """work(conn) on the live database for an authenticated request; its result, or
        ANSWERED once an error answer (401, 500) has been sent. `mirror` is what the
        `writes_v1_state` bug also does to state.sqlite."""
        build = self.app.build
        try:
            if self.app.authenticated_session(self.headers.get_all("Cookie") or []) is None:
                self.send_json(401, {"error": "Unauthorized"})
                return ANSWERED
            conn = self.app.state.connect()
            try:
                result = work(conn)
            finally:
                conn.close()
            if mirror is not None and build.writes_v1_state and os.path.exists(self.app.state.v1_path):
                conn = connect_state_db(self.app.state.v1_path)
                try:
                    mirror(conn)
                finally:
                    conn.close()
        except sqlite3.Error as exc:
            self.send_json(500, {"error": describe_sql_error(exc, build.sql_error_style)})
            return ANSWERED
        return result

    # -- plumbing
    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status: int, payload: dict, headers: list[tuple[str, str]] = ()) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json", headers)

    def send_body(self, status: int, body: bytes, content_type: str,
                  headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)




def serve(build: Build, args: argparse.Namespace) -> int:
    stop = threading.Event()
    # SIGTERM/SIGINT only set a flag: the main thread owns shutdown, so a signal
    # arriving mid-migration cannot leave a half transaction behind.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    if build.crash_at_start:
        print("Error: t3 failed to start: Cannot find module '@t3tools/server-runtime'", file=sys.stderr)
        return 1

    state = StateDir(args.base_dir, build.layout)
    state.prepare()
    log = Log(state.log_path)
    log("INFO", f"t3 v{build.version} starting (base dir {state.base_dir})")
    try:
        migrate_state(build, state, log)
    except MigrationError as exc:
        log("ERROR", str(exc))
        return 1
    except sqlite3.Error as exc:
        log("ERROR", f"Failed to open {state.db_path}: {describe_sql_error(exc, build.sql_error_style)}")
        return 1

    if build.ready_delay and stop.wait(float(build.ready_delay)):
        return 0  # stopped while still starting up: nothing was listening yet

    if build.never_ready:
        # The bad build hangs after migrating: alive, never listening.
        log("INFO", "Starting server...")
        while not stop.wait(1.0):
            pass
        return 0

    host = args.host if args.host is not None else "127.0.0.1"
    try:
        httpd = T3HTTPServer(host, args.port, None)  # the app needs the bound port first
    except OSError as exc:
        log("ERROR", f"Failed to listen on {host}:{args.port}: {exc}")
        return 1
    port = httpd.server_address[1]
    httpd.app = ServerApp(build, state, args.host, port, log)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    shown_host = f"[{host}]" if ":" in host else host
    log("INFO", f"Listening on http://{shown_host}:{port}")
    while not stop.wait(1.0):
        pass
    log("INFO", "Shutting down")
    httpd.shutdown()
    httpd.server_close()
    return 0


