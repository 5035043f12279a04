"""A background login prober: a browser logging in through the dispatch, over and over.

Every `interval` seconds it performs one full login with a fresh cookie jar, exactly as
the contract defines "healthy":

1. step ``pair``: ``GET /`` with ``X-authentik-username: <user>`` and
   ``Sec-Fetch-Dest: document``, redirects not followed: expect 302 carrying a
   ``Set-Cookie`` named `cookie_name` (default ``t3_session``; ``None`` accepts the first
   cookie set, whatever its name, so a renamed cookie shows up as a re-pair in step 2);
2. step ``proxy``: ``GET /`` again with that cookie (still a document navigation, so the
   dispatch also asks the instance whether the session is alive): expect 200, proxied,
   not a 302 re-pair.

Every attempt is recorded as a `ProbeEvent` ``(monotonic, wall, step, detail, ok)``
where ``monotonic``/``wall`` are the attempt's start (``time.monotonic()`` and
``time.time()``), ``ended`` its end (``time.time()``), ``step`` is the step that failed (``"pair"`` or ``"proxy"``; ``"login"``
for a success) and ``detail`` the status or exception text. Failures are also collected
separately. Several probers can run at once; `stop()` returns within about a second.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import requests

__all__ = ["LoginProber", "ProbeEvent", "ProbeReport", "RequestProber", "overlaps", "session_cookie", "set_cookie_pairs"]

USER_HEADER = "X-authentik-username"


class ProbeEvent(NamedTuple):
    monotonic: float  # time.monotonic() at the attempt's start
    wall: float  # time.time() at the attempt's start
    step: str  # "login" on success, else the failing step: "pair" or "proxy"
    detail: str  # "ok", a status description, or the exception text
    ok: bool
    ended: float = 0.0  # time.time() at the attempt's end


def overlaps(event: ProbeEvent, windows: list[tuple[float, float]]) -> bool:
    """Whether the attempt [wall, ended] overlaps one of the wall-clock `windows`."""
    return any(event.wall <= end and event.ended >= start for start, end in windows)


@dataclass
class ProbeReport:
    sso_user: str
    attempts: list[ProbeEvent] = field(default_factory=list)
    failures: list[ProbeEvent] = field(default_factory=list)
    stopped_cleanly: bool = True  # False if an attempt was still running when stop() gave up waiting

    @property
    def ok(self) -> bool:
        """At least one attempt, and none failed."""
        return bool(self.attempts) and not self.failures

    @property
    def successes(self) -> list[ProbeEvent]:
        return [a for a in self.attempts if a.ok]

    def failure_windows(self) -> list[tuple[float, float, int]]:
        """Runs of consecutive failed attempts: ``(first start, last start, count)`` (monotonic)."""
        windows: list[tuple[float, float, int]] = []
        run: list[ProbeEvent] = []
        for attempt in self.attempts + [None]:  # type: ignore[list-item]
            if attempt is not None and not attempt.ok:
                run.append(attempt)
                continue
            if run:
                windows.append((run[0].monotonic, run[-1].monotonic, len(run)))
                run = []
        return windows

    def failures_outside(self, windows: list[tuple[float, float]]) -> list[ProbeEvent]:
        """Failed attempts that overlap none of the wall-clock `windows` (e.g. the user's restarts)."""
        return [f for f in self.failures if not overlaps(f, windows)]

    def summary(self) -> str:
        text = f"prober user={self.sso_user}: {len(self.attempts)} attempts, {len(self.failures)} failures"
        for f in self.failures[:5]:
            stamp = time.strftime("%H:%M:%S", time.localtime(f.wall)) + f".{int(f.wall % 1 * 1000):03d}"
            text += f"\n  {stamp} step={f.step} {f.detail}"
        if len(self.failures) > 5:
            text += f"\n  ... {len(self.failures) - 5} more"
        return text


def set_cookie_pairs(response: requests.Response) -> list[tuple[str, str]]:
    """``(name, value)`` of every raw ``Set-Cookie`` header of `response`, in order."""
    raw = response.raw.headers.getlist("Set-Cookie") if response.raw is not None else []
    pairs = []
    for header in raw:
        name, eq, value = header.split(";", 1)[0].partition("=")
        if eq:
            pairs.append((name.strip(), value.strip()))
    return pairs


class LoginProber:
    def __init__(
        self,
        dispatch_url: str,
        sso_user: str,
        *,
        interval: float = 0.5,
        timeout: float = 5.0,
        cookie_name: str | None = "t3_session",
        stop_timeout: float = 1.0,
    ) -> None:
        self.dispatch_url = dispatch_url.rstrip("/")
        self.sso_user = sso_user
        self.interval = interval
        self.timeout = timeout
        self.cookie_name = cookie_name
        self.stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts: list[ProbeEvent] = []
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "LoginProber":
        if self._thread is not None:
            raise RuntimeError("prober already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"prober:{self.sso_user}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> ProbeReport:
        self._stop.set()
        clean = True
        if self._thread is not None:
            self._thread.join(timeout=self.stop_timeout)
            clean = not self._thread.is_alive()
        report = self.report()
        report.stopped_cleanly = clean
        return report

    def __enter__(self) -> "LoginProber":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def report(self) -> ProbeReport:
        """A snapshot; safe to call while the prober runs."""
        with self._lock:
            attempts = list(self._attempts)
        return ProbeReport(self.sso_user, attempts, [a for a in attempts if not a.ok])

    # -- probing -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            mono, wall = time.monotonic(), time.time()
            step, detail = self.probe_once()
            event = ProbeEvent(mono, wall, step, detail, step == "login", time.time())
            with self._lock:
                self._attempts.append(event)
            if self._stop.wait(self.interval):
                break

    def probe_once(self) -> tuple[str, str]:
        """One full login; ``("login", "ok")`` or ``(failing step, detail)``."""
        headers = {USER_HEADER: self.sso_user, "Sec-Fetch-Dest": "document"}
        timeout = self.timeout
        with requests.Session() as session:  # a fresh cookie jar per attempt
            session.trust_env = False  # no proxies from the environment: loopback only
            step = "pair"
            try:
                first = session.get(self.dispatch_url + "/", headers=headers, allow_redirects=False, timeout=timeout)
                first.close()
                if first.status_code != 302:
                    return step, f"status {first.status_code}, expected 302"
                cookies = set_cookie_pairs(first)
                wanted = self.cookie_name
                found = next(((n, v) for n, v in cookies if wanted is None or n == wanted), None)
                if found is None:
                    got = ",".join(n for n, _ in cookies) or "none"
                    return step, f"302 without a {wanted or 'session'} cookie (Set-Cookie names: {got})"
                step = "proxy"
                session.cookies.clear()  # send exactly the one cookie, as an explicit header
                second = session.get(
                    self.dispatch_url + "/",
                    headers={**headers, "Cookie": f"{found[0]}={found[1]}"},
                    allow_redirects=False,
                    timeout=timeout,
                )
                second.close()
                if second.status_code == 302:
                    return step, "status 302: re-paired, the session cookie was not accepted"
                if second.status_code != 200:
                    return step, f"status {second.status_code}, expected 200"
                return "login", "ok"
            except requests.RequestException as exc:
                return step, f"{type(exc).__name__}: {exc}"


class RequestProber:
    """An open browser tab: the same request with a valid session cookie every `interval`
    seconds (20 ms, as the contract's measurement), never a document navigation, so the
    dispatch proxies it straight to the instance. Records ``ProbeEvent``s (step
    ``"request"``, detail the status); ``report()`` as `LoginProber`'s."""

    def __init__(self, dispatch_url: str, sso_user: str, cookie: tuple[str, str], *, path: str = "/",
                 interval: float = 0.02, timeout: float = 5.0) -> None:
        self.dispatch_url = dispatch_url.rstrip("/")
        self.sso_user = sso_user
        self.cookie = cookie
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts: list[ProbeEvent] = []
        self._thread: threading.Thread | None = None

    def start(self) -> "RequestProber":
        self._thread = threading.Thread(target=self._run, name=f"requests:{self.sso_user}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> ProbeReport:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
        return self.report()

    def report(self) -> ProbeReport:
        with self._lock:
            attempts = list(self._attempts)
        return ProbeReport(self.sso_user, attempts, [a for a in attempts if not a.ok])

    def _run(self) -> None:
        headers = {USER_HEADER: self.sso_user, "Cookie": f"{self.cookie[0]}={self.cookie[1]}"}
        with requests.Session() as session:
            session.trust_env = False
            while not self._stop.is_set():
                mono, wall = time.monotonic(), time.time()
                try:
                    response = session.get(self.dispatch_url + self.path, headers=headers, allow_redirects=False,
                                           timeout=self.timeout)
                    response.close()
                    ok, detail = response.status_code == 200, f"status {response.status_code}"
                except requests.RequestException as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._attempts.append(ProbeEvent(mono, wall, "request", detail, ok, time.time()))
                if self._stop.wait(self.interval):
                    break


def session_cookie(dispatch_url: str, sso_user: str, cookie_name: str = "t3_session") -> tuple[str, str]:
    """Log in once through the dispatch; the session cookie it set (name, value)."""
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(dispatch_url.rstrip("/") + "/", allow_redirects=False, timeout=60,
                               headers={USER_HEADER: sso_user, "Sec-Fetch-Dest": "document"})
        response.close()
        found = [(n, v) for n, v in set_cookie_pairs(response) if n == cookie_name]
        if response.status_code != 302 or not found:
            raise RuntimeError(f"login for {sso_user} failed: {response.status_code} {set_cookie_pairs(response)}")
        return found[0]
