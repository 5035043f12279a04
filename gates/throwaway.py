"""A throwaway `t3 serve` on a copy of real data, started exactly as production starts it.

Exactly as production: same `--host` (0.0.0.0 by default). A loopback-bound
server names its session cookie after its port and state path, and a gate that
started one rejected every good build for 17 days (lessons.md).
"""
from __future__ import annotations

import socket
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import requests

from runner import proc

from .t3client import GateFailure, Instance

POLL_SECONDS = 0.05


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_database(source: Path, dest: Path) -> None:
    """Consistent copy through SQLite's backup API (the source may be live, in WAL mode)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=5.0)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


class ThrowawayServer:
    def __init__(self, t3_bin: str, scratch: Path, *, host: str, port: int = 0, ready_timeout: float = 30.0):
        self.t3_bin = t3_bin
        self.base_dir = scratch / ".t3"
        self.userdata = self.base_dir / "userdata"
        self.db = self.userdata / "state.sqlite"
        self.log_path = scratch / "server.log"
        self.host = host
        self.port = port or free_port()
        self.ready_timeout = ready_timeout
        self.popen = None
        self.ready_seconds: float | None = None

    @property
    def instance(self) -> Instance:
        return Instance(f"http://127.0.0.1:{self.port}")

    def seed_from(self, database: Path) -> None:
        copy_database(database, self.db)

    def start(self) -> "ThrowawayServer":
        self.userdata.mkdir(parents=True, exist_ok=True)
        argv = [self.t3_bin, "serve", "--host", self.host, "--port", str(self.port), "--base-dir", str(self.base_dir)]
        self.popen = proc.spawn(argv, log_path=self.log_path)
        return self

    def wait_ready(self) -> None:
        """Poll until the server answers; a process that exits is a verdict at once."""
        __tracebackhide__ = True
        started = time.monotonic()
        deadline = started + self.ready_timeout
        pause = threading.Event()
        while True:
            code = self.popen.poll()
            if code is not None:
                raise GateFailure(f"t3 serve exited with code {code} before becoming ready; log: {self.log_tail()}")
            try:
                if requests.get(f"{self.instance.base_url}/.well-known/t3/environment", timeout=1.0).status_code == 200:
                    self.ready_seconds = time.monotonic() - started
                    return
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise GateFailure(f"t3 serve did not become ready within {self.ready_timeout:g}s "
                                  f"(process still running); log: {self.log_tail()}")
            pause.wait(POLL_SECONDS)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        tail = self.log_text().strip().splitlines()[-lines:]
        return " | ".join(tail) if tail else "(empty)"

    def stop(self) -> None:
        if self.popen is not None:
            proc.terminate(self.popen, timeout=10)
