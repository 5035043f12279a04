"""A loopback HTTP receiver for apprise's JSON webhook (`json://127.0.0.1:<port>/<path>`).

`mode` says how it answers: "ok" (200), "error" (500), or "hang" (reads the request, then
answers nothing until `stop()`, like a receiver whose backend is stuck). Every request
body it read is kept in `received` (parsed JSON), whatever it answered.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.received: list[dict] = []
        self.released = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.received.append({"path": self.path, **json.loads(body or b"{}")})
                if hook.mode == "hang":
                    hook.released.wait(60)  # bounded: stop() releases it at once
                    return
                status = 200 if hook.mode == "ok" else 500
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> "Webhook":
        self.thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "Webhook":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
