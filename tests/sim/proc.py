"""Running a (simulated or real) `t3` as a child process, for tests and gates.

    with ServeProcess(bin_t3, base_dir, host="0.0.0.0") as serve:
        serve.wait_ready(timeout=30)
        requests.get(serve.url + "/api/auth/session")

Readiness is polled (every 50 ms) with a real HTTP request, never a fixed sleep,
and a process that has exited is a verdict at once: wait_ready raises ServeExited
with the process's output instead of polling a dead server until the deadline.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

POLL_INTERVAL = 0.05


class ServeExited(RuntimeError):
    """The server process ended (before it was ready, or while being waited on)."""

    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(f"t3 serve exited with code {returncode} before it was ready:\n{output}")
        self.returncode = returncode
        self.output = output


class ServeNotReady(TimeoutError):
    """The server process is alive but did not answer HTTP within the timeout."""

    def __init__(self, timeout: float, output: str) -> None:
        super().__init__(f"t3 serve did not answer HTTP within {timeout:.1f} s:\n{output}")
        self.output = output


# The simulated world's servers get ports from below the kernel's ephemeral range (32768-60999
# by default): a port picked by bind(0) and released comes from that range, where the kernel
# hands it out again as some connection's source port (the suite makes thousands: npm, HTTP
# checks) before the server binds it, and the world then failed with EADDRINUSE. Each xdist
# worker scans its own slice of PORT_BASE.., so two workers never pick the same port.
PORT_BASE, PORT_SLICE, PORT_SLICES = 20000, 2500, 5
_next_port: int | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, from this worker's slice below the ephemeral range
    (successive calls go on through the slice, wrapping round)."""
    global _next_port
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    start = PORT_BASE + (int(worker) % PORT_SLICES if worker.isdigit() else 0) * PORT_SLICE
    if _next_port is None or not start <= _next_port < start + PORT_SLICE:
        _next_port = start
    for _ in range(PORT_SLICE):
        port, _next_port = _next_port, start + (_next_port + 1 - start) % PORT_SLICE
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # in use (another program of the machine): the next one
            return port
    raise RuntimeError(f"no free port in {start}-{start + PORT_SLICE - 1}")


def http_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something at host:port answers an HTTP request to `/` (any status)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class ServeProcess:
    """One `t3 serve --host H --port P --base-dir D` child process.

    host is what the server binds (production binds 0.0.0.0); connect_host is where
    this side connects (loopback). Output (stdout and stderr) goes to log_path,
    default `<base_dir>/serve-<port>.log`, so a chatty server can never block on a
    full pipe and the log outlives the process.
    """

    def __init__(self, bin_path: Path | str, base_dir: Path | str, host: str = "0.0.0.0", port: int | None = None,
                 *, connect_host: str = "127.0.0.1", log_path: Path | str | None = None,
                 env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.bin_path = str(bin_path)
        self.base_dir = Path(base_dir)
        self.host = host
        self.port = port if port is not None else free_port()
        self.connect_host = connect_host
        self.log_path = Path(log_path) if log_path else self.base_dir / f"serve-{self.port}.log"
        self.env = env
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [self.bin_path, "serve", "--host", self.host, "--port", str(self.port),
                "--base-dir", str(self.base_dir), *self.extra_args]

    def start(self) -> "ServeProcess":
        if self.process is not None:
            raise RuntimeError("already started")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def answers_http(self) -> bool:
        return http_answers(self.connect_host, self.port)

    def wait_ready(self, timeout: float = 30.0) -> "ServeProcess":
        """Poll until the server answers HTTP; `timeout` is in seconds.

        Raises ServeExited as soon as the process is found dead (its output in the
        message), ServeNotReady when it is alive but silent at the deadline.
        """
        if self.process is None:
            raise RuntimeError("not started")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServeExited(self.process.returncode, self.output())
            if self.answers_http():
                return self
            if time.monotonic() >= deadline:
                raise ServeNotReady(timeout, self.output())
            time.sleep(POLL_INTERVAL)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end by itself; returns its exit code (TimeoutExpired if it does not)."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "ServeProcess":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def run_t3(bin_path: Path | str, *args: str, timeout: float = 30.0,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a one-shot t3 command (`--version`, `auth pairing create ...`), capturing text output."""
    return subprocess.run([str(bin_path), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env if env is not None else dict(os.environ))


def t3_version(bin_path: Path | str) -> str:
    """What `<bin> --version` prints (`t3 v0.0.24`); RuntimeError with stderr on failure."""
    result = run_t3(bin_path, "--version")
    if result.returncode != 0:
        raise RuntimeError(f"{bin_path} --version failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def pairing_create(bin_path: Path | str, base_dir: Path | str, ttl: str | None = "5m",
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `t3 auth pairing create --base-dir BASE [--ttl TTL] --json`: the mint's command line
    (ttl None: the CLI's own default)."""
    return run_t3(bin_path, "auth", "pairing", "create", "--base-dir", base_dir, *(["--ttl", ttl] if ttl else []),
                  "--json", env=env)


def mint_credential(bin_path: Path | str, base_dir: Path | str, ttl: str = "5m",
                    env: dict[str, str] | None = None) -> dict:
    """`t3 auth pairing create --json` -> its parsed JSON; RuntimeError with stderr on failure.

    Note that this migrates the database, like the real CLI does.
    """
    result = pairing_create(bin_path, base_dir, ttl, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"t3 auth pairing create failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)
