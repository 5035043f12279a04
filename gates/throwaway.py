"""Throwaway `t3 serve` processes on copies of real data, started exactly as production
starts them, several at once.

Exactly as production: same `--host` (0.0.0.0 by default). A loopback-bound server names
its session cookie after its port and state path, and a gate that started one rejected
every good build for 17 days.

Several at once: the health gate runs one server per seed (every user's own database)
plus one on an empty base dir; `ServerPool` starts them ahead of the checks that use them,
at most `bound` alive at a time, each on its own port, so a build that never becomes ready
costs one ready timeout, not one per case. Everything happens in the calling (main)
thread: a server's readiness is a poll, and `proc.spawn` arranges for a child to die with
the thread that started it, so servers must not be started from short-lived threads.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import stat
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Hashable

import requests

from runner import proc
from runner.dbfacts import live_database_in
from runner.livedb import V1_NAME, V2_NAME

from runner.t3client import GateFailure, Instance

POLL_SECONDS = 0.05
STOP_SECONDS = 10.0  # a server's graceful stop, before it is killed
PROBE_TIMEOUT = 0.5  # one readiness probe; short, so one hung server never stalls the others' polls


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
    """One `t3 serve`: `as_user`/`env`/`cwd` are those of the gate user (gates/test_health.py
    hands the base dir over to it before `start`); its log is written by root beside the
    base dir, so the server can append to it but never swap it."""

    def __init__(self, t3_bin: str, scratch: Path, *, host: str, port: int = 0, ready_timeout: float = 30.0,
                 as_user: proc.UserIds | None = None, env: dict | None = None, cwd: Path | None = None):
        self.t3_bin = t3_bin
        self.as_user, self.env, self.cwd = as_user, env, cwd
        self.base_dir = scratch / ".t3"
        self.userdata = self.base_dir / "userdata"
        self.log_path = scratch / "server.log"
        self.host = host
        self.port = port or free_port()
        self.ready_timeout = ready_timeout
        self.popen = None
        self.started_at: float | None = None
        self.ready_seconds: float | None = None

    @property
    def instance(self) -> Instance:
        return Instance(f"http://127.0.0.1:{self.port}")

    def live_db(self) -> Path:
        """The database the build opened, judged after start: statev2.sqlite once it exists,
        else state.sqlite (never assumed from the layout of the seed)."""
        __tracebackhide__ = True
        db = live_database_in(self.userdata) if self.userdata.is_dir() else None
        if db is None:
            raise GateFailure(f"after start, no {V2_NAME} or {V1_NAME} in the base dir {self.base_dir}")
        if not stat.S_ISREG(os.lstat(db).st_mode):  # the candidate owns the dir: never follow its links
            raise GateFailure(f"after start, {db} is not a regular file")
        return db

    def pid_uid(self) -> int:
        """The server's real uid from the process table (/proc/<pid>/status), not from what we asked for."""
        __tracebackhide__ = True
        try:
            status = Path(f"/proc/{self.popen.pid}/status").read_text()
        except OSError as exc:
            raise GateFailure(f"cannot read the throwaway server's process status: {exc}") from None
        uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
        if len(set(uids)) != 1:  # real, effective, saved and filesystem uid are one and the same
            raise GateFailure(f"throwaway server pid {self.popen.pid} has uids {uids}")
        return int(uids[0])

    def start(self) -> "ThrowawayServer":
        self.userdata.mkdir(parents=True, exist_ok=True)
        argv = [self.t3_bin, "serve", "--host", self.host, "--port", str(self.port), "--base-dir", str(self.base_dir)]
        self.started_at = time.monotonic()
        self.popen = proc.spawn(argv, log_path=self.log_path, as_user=self.as_user, env=self.env, cwd=self.cwd)
        return self

    def check_ready(self) -> bool:
        """One poll: True once the server answers; a process that exited, or the ready
        timeout passing, is a verdict at once (GateFailure)."""
        __tracebackhide__ = True
        code = self.popen.poll()
        if code is not None:
            raise GateFailure(f"t3 serve exited with code {code} before becoming ready; log: {self.log_tail()}")
        try:
            answered = requests.get(f"{self.instance.base_url}/.well-known/t3/environment",
                                    timeout=PROBE_TIMEOUT).status_code == 200
        except requests.RequestException:
            answered = False
        elapsed = time.monotonic() - self.started_at
        if answered:
            self.ready_seconds = elapsed
            return True
        if elapsed >= self.ready_timeout:
            raise GateFailure(f"t3 serve did not become ready within {self.ready_timeout:g}s "
                              f"(process still running); log: {self.log_tail()}")
        return False

    def wait_ready(self) -> None:
        """Poll until the server answers (or a verdict)."""
        __tracebackhide__ = True
        pause = threading.Event()
        while not self.check_ready():
            pause.wait(POLL_SECONDS)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        tail = self.log_text().strip().splitlines()[-lines:]
        return " | ".join(tail) if tail else "(empty)"

    def stop_soon(self) -> None:
        """Ask the server to stop and go on: `stop` later waits for it (and kills it if need be)."""
        if self.popen is not None:
            proc.ask_to_stop(self.popen)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop the server and wait for it: SIGTERM, SIGKILL after `timeout`."""
        if self.popen is not None:
            proc.terminate(self.popen, timeout=timeout)


class _Entry:
    def __init__(self):
        self.value = None        # what `launch` returned; has `.server`
        self.error: BaseException | None = None
        self.ready = False
        self.released = False


class ServerPool:
    """Throwaway servers for a list of cases, started in the order the cases will be used,
    at most `bound` alive at once (started and not yet released), ready-polled together.

    `launch(key, port)` prepares a case and returns an object whose `.server` is a started
    ThrowawayServer (or raises: that error is the case's verdict). `get(key)` returns it
    once ready, or raises its verdict; `release(key)` asks it to stop, which lets the next case
    start (the checks go on while it exits: a server's graceful stop took ~0.17 s, one after
    each case); `close()` waits until every server has exited. A case asked for out of order is started at once, whatever the bound: the pool
    never waits on itself. The first server gets `first_port` (the configured smoke port,
    if any), every other a free port of its own. `on_ready(value)` is called once per case,
    when its server is first seen ready (the health gate starts the case's mint then, so
    the cases' mints run beside each other, not one after another).
    """

    def __init__(self, keys: list[Hashable], launch: Callable[[Hashable, int], object], *, bound: int,
                 first_port: int = 0, on_ready: Callable[[object], None] | None = None):
        if bound < 1:
            raise ValueError(f"at most {bound} throwaway servers at once: need at least 1")
        self._pending = list(keys)
        self._launch = launch
        self._on_ready = on_ready
        self._bound = bound
        self._first_port = first_port
        self._ports: set[int] = set()
        self._entries: dict[Hashable, _Entry] = {}

    def _alive(self) -> list[_Entry]:
        return [e for e in self._entries.values() if e.error is None and not e.released]

    def _port(self) -> int:
        if self._first_port and not self._ports:
            port = self._first_port
        else:
            port = free_port()
            while port in self._ports:  # the kernel may hand a just-closed port out again
                port = free_port()
        self._ports.add(port)
        return port

    def _start(self, key) -> None:
        self._pending.remove(key)
        entry = self._entries[key] = _Entry()
        try:
            entry.value = self._launch(key, self._port())
        except Exception as exc:  # noqa: BLE001 (any failure to prepare or start is this case's verdict)
            entry.error = exc

    def _fill(self) -> None:
        while self._pending and len(self._alive()) < self._bound:
            self._start(self._pending[0])

    def _poll(self) -> None:
        for entry in self._alive():
            if entry.ready:
                continue
            try:
                entry.ready = entry.value.server.check_ready()
                if entry.ready and self._on_ready is not None:
                    self._on_ready(entry.value)
            except Exception as exc:  # noqa: BLE001 (exited, timed out, or unreadable: the verdict)
                entry.error = exc
                entry.value.server.stop()

    def get(self, key):
        __tracebackhide__ = True
        pause = threading.Event()
        while True:
            if key not in self._entries:
                if key not in self._pending:
                    raise KeyError(f"no health case {key!r}")
                self._start(key)
            self._fill()
            self._poll()
            entry = self._entries[key]
            if entry.error is not None:
                raise entry.error
            if entry.ready:
                return entry.value
            pause.wait(POLL_SECONDS)  # every server has its own deadline (its ready timeout)

    def release(self, key) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.released:
            return
        entry.released = True
        if entry.value is not None:
            entry.value.server.stop_soon()
        self._fill()

    def close(self) -> None:
        self._pending.clear()
        for key in list(self._entries):
            self.release(key)
        # One deadline for all: they were all asked to stop already, so a build that ignores
        # SIGTERM costs one graceful-stop wait, not one per case.
        deadline = time.monotonic() + STOP_SECONDS
        for entry in self._entries.values():
            if entry.value is not None:
                entry.value.server.stop(timeout=max(0.1, deadline - time.monotonic()))
