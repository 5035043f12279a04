"""A local npm registry on loopback that the real `npm` client can `view` and `install` from.

Part of the simulated world (docs/architecture.md): mutable dist-tags (they may move backward), a
packument `time` map with chosen publish times, and switchable outages.

    reg = NpmRegistry(tmp_path / "registry")       # state lives in that directory
    with reg:                                      # start() ... stop()
        reg.publish(tgz, tags=["nightly"], published_at=datetime(2026, 6, 8, 3, 0, tzinfo=UTC))
        reg.set_tag("nightly", "0.0.24")           # any direction, including backward
        env = {**os.environ, **reg.npm_env(tmp_path / "npm-cache")}
        subprocess.run(["npm", "view", "t3@nightly", "version"], env=env, timeout=30)

The state (packuments and tarballs) is kept under `storage_dir` and re-read on every
request, so it survives `stop()`/`start()` (even on another port: tarball URLs are built
from the request's Host header, never stored) and can be edited while serving.

HTTP surface
------------
* `GET /<name>` (scoped: `/@scope%2fname`): the packument, full JSON, or the abbreviated
  ("corgi") form when `Accept` asks for `application/vnd.npm.install-v1+json`.
* `GET /<name>/-/<basename>-<version>.tgz`: the tarball (as stored: `tamper()` edits it).
* `PUT /<name>`: `npm publish` (any bearer token is accepted).
* `/-/ping`, `/-/npm/v1/security/*`: harmless `200 {}` at once.
* Anything else: `404 {"error": "not found"}`.
Requests are recorded in `.requests` (list of `Request`), nothing is printed.

Freshness: what the tracker must use (measured with npm 11.19.1 / Node 20.20)
----------------------------------------------------------------------------
Packuments are served with `Cache-Control: no-cache` and an `ETag` (a revalidation gets
`304`); `max_age=300` makes them `public, max-age=300` like registry.npmjs.org.

* `npm view` revalidates its packument on every run whatever the headers say, so a
  dist-tag moved backward is seen by the very next `npm view t3@nightly version`.
* `npm install t3@<tag or version>` answers from its cache while the server allows it:
  against npmjs-like `max-age=300` it installs the old tag target without a single request,
  and a version published since the cache was filled fails `ETARGET` (npm does not retry
  online). **`--prefer-online`** (env `npm_config_prefer_online=true`) fixes both.
* A network error (refused, reset, timeout; not an HTTP 5xx) makes npm fall back to its
  cached packument: `npm view` then exits 0 and prints the stale answer, with nothing on
  stderr at the default log level (`--loglevel=http` shows `(cache stale)`).
  `--prefer-online` does not prevent that, and npm has no "online only" switch.

So the resolve phase must run `npm view t3@nightly version --json` (and `time --json`)
with `--prefer-online` AND an empty, per-run cache (`--cache <fresh tmp dir>`), so an outage
is an error and never a stale answer. Ask for `t3@nightly` explicitly: `npm view t3 <field>`
means `t3@latest` and prints nothing, exit 0, if the package has no `latest` tag.
Install an exact version (`t3@<resolved>`, never `t3@nightly`), also with `--prefer-online`.

Failing fast: **`--fetch-retries=0 --fetch-timeout=<ms>`** (env `npm_config_fetch_retries=0`,
`npm_config_fetch_timeout=5000` by default here). npm's defaults are 2 retries with 10-60 s
back-off and a 300 s timeout. Refused / reset / 503 then fail in one npm start-up
(~0.3 s, codes `ECONNREFUSED`, `ECONNRESET`, `E503`); a server that accepts and never
answers fails after fetch-timeout (+0.3 s) with `FETCH_ERROR` "network timeout at: <url>".

Offline install of a saved tarball (rollback): `npm pack t3@<v> --pack-destination <dir>`
while the registry is up (the file is byte-identical to the registry's tarball), later
`npm install --global --prefix <prefix> --offline <dir>/t3-<v>.tgz` with nothing listening
and an empty cache. `--offline` guarantees no network attempt; without it the
dependency-free tarball installs too, but any dependency would be fetched. npm checks no
integrity for a local file: record the sha512 at pack time and compare before installing.

Config files: `npm_env()` points npm's user and global npmrc at two files of its own. Both
must differ: npm 11 refuses to start ("double-loading config ... as global, previously
loaded as user") when `npm_config_userconfig` and `npm_config_globalconfig` name the same
file, which the test guard in conftest.py does.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import struct
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable

__all__ = ["NpmRegistry", "Request", "OUTAGE_MODES", "iso_time", "read_package_json"]

#: `set_unreachable(mode)`: "503" answers 503 to everything, "reset" closes the connection
#: with a TCP RST before answering, "hang" accepts and never answers (until `stop()` or
#: `set_unreachable(False)`).
OUTAGE_MODES = ("503", "reset", "hang")

CORGI = "application/vnd.npm.install-v1+json"
# Fields of a version manifest kept in the abbreviated packument (as registry.npmjs.org does).
_CORGI_VERSION_FIELDS = (
    "name", "version", "bin", "directories", "dependencies", "devDependencies",
    "optionalDependencies", "peerDependencies", "peerDependenciesMeta", "bundleDependencies",
    "acceptDependencies", "engines", "os", "cpu", "deprecated", "hasInstallScript",
    "funding", "libc", "_hasShrinkwrap", "dist",
)


@dataclass(frozen=True)
class Request:
    """One request the registry saw; status 0: dropped by a "reset"/"hang" outage."""

    method: str
    path: str
    status: int
    accept: str = ""
    headers: dict = field(default_factory=dict)
    at: float = 0.0


def iso_time(moment: datetime | None = None) -> str:
    """npm's time format: `2026-06-08T03:14:15.123Z` (UTC; naive datetimes are taken as UTC)."""
    moment = moment or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def read_package_json(tarball: Path | bytes) -> dict:
    """The `package.json` of an npm tarball (first `*/package.json` at depth one)."""
    data = tarball if isinstance(tarball, bytes) else Path(tarball).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.lstrip("./").split("/")
            if len(parts) == 2 and parts[1] == "package.json" and member.isfile():
                return json.loads(tar.extractfile(member).read().decode("utf-8"))
    raise ValueError(f"{tarball!r}: no package/package.json in the tarball")


def _integrity(data: bytes) -> tuple[str, str]:
    return hashlib.sha1(data).hexdigest(), "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _dir_name(package: str) -> str:
    return package.replace("/", "%2f")


def _tarball_basename(package: str, version: str) -> str:
    return f"{package.rsplit('/', 1)[-1]}-{version}.tgz"


class NpmRegistry:
    """A loopback npm registry; see the module docstring."""

    def __init__(self, storage_dir: Path, host: str = "127.0.0.1", port: int = 0, *,
                 max_age: int | None = None, default_package: str = "t3") -> None:
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._want_port = port
        #: None: `Cache-Control: no-cache` on packuments; an int: `public, max-age=N`
        #: like registry.npmjs.org (300).
        self.max_age = max_age
        self.default_package = default_package
        self.requests: list[Request] = []
        self._outage: str | None = None
        self._release = threading.Event()  # wakes "hang" handlers
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "NpmRegistry":
        if self._server is not None:
            return self
        registry = self

        class Handler(_Handler):
            pass

        Handler.registry = registry
        server = ThreadingHTTPServer((self.host, self._want_port), Handler)
        server.daemon_threads = True
        self._server = server
        self._release.clear()
        # Keep the same port across restarts when the caller did not choose one.
        self._want_port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"npm-registry:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:  # idle keep-alive and hung connections: nothing listens any more
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "NpmRegistry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._want_port

    @property
    def url(self) -> str:
        if not self._want_port:
            raise RuntimeError("NpmRegistry: start() it first, the port is not chosen yet")
        return f"http://{self.host}:{self._want_port}/"

    # ------------------------------------------------------------------ outages
    def set_unreachable(self, flag: bool | str = True) -> None:
        """Simulate an outage: True or "503" (503 to everything), "reset" (TCP RST before any
        answer), "hang" (never answer); False ends it. `stop()` gives "connection refused"."""
        mode = "503" if flag is True else (None if not flag else str(flag))
        if mode is not None and mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode {flag!r}: expected one of {OUTAGE_MODES}")
        self._outage = mode
        if mode != "hang":
            self._release.set()
        else:
            self._release.clear()

    @property
    def outage(self) -> str | None:
        return self._outage

    # ------------------------------------------------------------------ npm environment
    def npm_env(self, cache_dir: Path, *, prefer_online: bool = True, fetch_timeout_ms: int = 5000,
                isolate_config: bool = True) -> dict[str, str]:
        """Environment variables that run the real npm against this registry, failing fast.

        `prefer_online`: revalidate every packument (what the tracker must do, see the module
        docstring). `isolate_config`: point npm's user and global npmrc at two files of its own
        in `cache_dir` (the user one holds a token for this registry, so `npm publish` works),
        so no npmrc of the machine or of the test guard applies. Run npm with a `cwd` inside
        the test root too: npm also reads `<cwd>/.npmrc`.
        """
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "npm_config_registry": self.url,
            "npm_config_cache": str(cache_dir),
            "npm_config_update_notifier": "false",
            "npm_config_audit": "false",
            "npm_config_fund": "false",
            "npm_config_fetch_retries": "0",
            "npm_config_fetch_timeout": str(fetch_timeout_ms),
            "npm_config_loglevel": "warn",
            "npm_config_progress": "false",
            "npm_config_prefer_online": "true" if prefer_online else "false",
        }
        if isolate_config:
            user, glob = cache_dir / "sim-user.npmrc", cache_dir / "sim-global.npmrc"
            netloc = self.url.split("://", 1)[1]
            user.write_text(f"//{netloc}:_authToken=sim-token\n")
            glob.write_text("")
            env["npm_config_userconfig"] = str(user)
            env["npm_config_globalconfig"] = str(glob)
        return env

    # ------------------------------------------------------------------ publishing
    def publish(self, tarball: Path, *, tags: Iterable[str] = (), published_at: datetime | None = None) -> str:
        """Add a tarball (name and version from its package/package.json); returns the version.

        `tags` are pointed at it; a package's first publish also gets `latest` (as on
        npmjs.org). `published_at` (default now; naive = UTC) becomes `time[version]`.
        Publishing an existing version raises ValueError."""
        data = Path(tarball).read_bytes()
        return self.publish_bytes(data, tags=tags, published_at=published_at)

    def publish_bytes(self, data: bytes, *, tags: Iterable[str] = (), published_at: datetime | None = None,
                      manifest: dict | None = None) -> str:
        pkg = read_package_json(data)
        name, version = pkg["name"], pkg["version"]
        if manifest:
            pkg = {**pkg, **{k: v for k, v in manifest.items() if not k.startswith("_") and k != "dist"}}
        shasum, integrity = _integrity(data)
        when = iso_time(published_at)
        with self._lock:
            doc = self._load(name) or {"_id": name, "name": name, "dist-tags": {}, "versions": {}, "time": {}}
            if version in doc["versions"]:
                raise ValueError(f"{name}@{version} is already published")
            base = _tarball_basename(name, version)
            self._tarball_file(name, base).parent.mkdir(parents=True, exist_ok=True)
            self._atomic_write(self._tarball_file(name, base), data)
            entry = dict(pkg)
            entry["_id"] = f"{name}@{version}"
            if entry.get("scripts", {}).keys() & {"preinstall", "install", "postinstall"}:
                entry["hasInstallScript"] = True
            entry["dist"] = {"shasum": shasum, "integrity": integrity, "tarball": f"{name}/-/{base}"}
            doc["versions"][version] = entry
            doc["time"][version] = when
            doc["time"]["created"] = min(t for k, t in doc["time"].items() if k not in ("created", "modified"))
            doc["time"]["modified"] = iso_time()
            for tag in tags:
                doc["dist-tags"][tag] = version
            if "latest" not in doc["dist-tags"]:
                # Like registry.npmjs.org, a package always has `latest` (its first publish gets
                # it whatever `--tag` said): without it a bare `npm view t3 <field>` prints
                # nothing and exits 0. Move it with set_tag().
                doc["dist-tags"]["latest"] = version
            self._save(name, doc)
        return version

    def set_tag(self, tag: str, version: str, package: str | None = None) -> None:
        """Point a dist-tag at a published version (any direction, including backward)."""
        package = package or self.default_package
        with self._lock:
            doc = self._require(package)
            if version not in doc["versions"]:
                raise KeyError(f"{package}@{version} is not published")
            doc["dist-tags"][tag] = version
            doc["time"]["modified"] = iso_time()
            self._save(package, doc)

    def remove_tag(self, tag: str, package: str | None = None) -> None:
        package = package or self.default_package
        with self._lock:
            doc = self._require(package)
            doc["dist-tags"].pop(tag, None)
            doc["time"]["modified"] = iso_time()
            self._save(package, doc)

    def remove_version(self, version: str, package: str | None = None) -> None:
        """Unpublish one version (its tarball too); dist-tags pointing at it are dropped."""
        package = package or self.default_package
        with self._lock:
            doc = self._require(package)
            entry = doc["versions"].pop(version, None)
            if entry is None:
                raise KeyError(f"{package}@{version} is not published")
            doc["time"].pop(version, None)
            doc["dist-tags"] = {t: v for t, v in doc["dist-tags"].items() if v != version}
            doc["time"]["modified"] = iso_time()
            self._save(package, doc)
            self._tarball_file(package, _tarball_basename(package, version)).unlink(missing_ok=True)

    def set_time(self, version: str, published_at: datetime, package: str | None = None) -> None:
        package = package or self.default_package
        with self._lock:
            doc = self._require(package)
            if version not in doc["versions"]:
                raise KeyError(f"{package}@{version} is not published")
            doc["time"][version] = iso_time(published_at)
            doc["time"]["created"] = min(t for k, t in doc["time"].items() if k not in ("created", "modified"))
            doc["time"]["modified"] = iso_time()
            self._save(package, doc)

    def tags(self, package: str | None = None) -> dict[str, str]:
        doc = self._load(package or self.default_package)
        return dict(doc["dist-tags"]) if doc else {}

    def versions(self, package: str | None = None) -> list[str]:
        doc = self._load(package or self.default_package)
        return list(doc["versions"]) if doc else []

    def packument(self, package: str | None = None) -> dict | None:
        """The stored packument (tarball URLs relative), or None."""
        return self._load(package or self.default_package)

    def tarball_path(self, version: str, package: str | None = None) -> Path:
        package = package or self.default_package
        return self._tarball_file(package, _tarball_basename(package, version))

    def tamper(self, version: str, package: str | None = None) -> None:
        """Replace the stored tarball by a different, valid one (same package.json plus an extra
        file): the packument's shasum/integrity no longer match, npm must fail EINTEGRITY."""
        path = self.tarball_path(version, package)
        original = path.read_bytes()
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(original), mode="r:gz") as src, \
                tarfile.open(fileobj=out, mode="w:gz") as dst:
            for member in src.getmembers():
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            extra = b"tampered\n"
            info = tarfile.TarInfo("package/TAMPERED")
            info.size = len(extra)
            dst.addfile(info, io.BytesIO(extra))
        self._atomic_write(path, out.getvalue())

    # ------------------------------------------------------------------ storage
    def _pkg_dir(self, package: str) -> Path:
        return self.storage_dir / _dir_name(package)

    def _tarball_file(self, package: str, basename: str) -> Path:
        return self._pkg_dir(package) / "tarballs" / basename

    def _load(self, package: str) -> dict | None:
        path = self._pkg_dir(package) / "packument.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def _require(self, package: str) -> dict:
        doc = self._load(package)
        if doc is None:
            raise KeyError(f"package {package!r} is not published")
        return doc

    def _save(self, package: str, doc: dict) -> None:
        path = self._pkg_dir(package) / "packument.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(path, json.dumps(doc, indent=1, sort_keys=True).encode())

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ serving helpers
    def _render(self, doc: dict, base_url: str, corgi: bool) -> dict:
        versions = {}
        for version, manifest in doc["versions"].items():
            m = json.loads(json.dumps(manifest))
            m["dist"]["tarball"] = base_url + m["dist"]["tarball"]
            if corgi:
                m = {k: m[k] for k in _CORGI_VERSION_FIELDS if k in m}
            versions[version] = m
        if corgi:
            return {"name": doc["name"], "dist-tags": doc["dist-tags"], "modified": doc["time"].get("modified"),
                    "versions": versions}
        out = {k: v for k, v in doc.items() if k != "versions"}
        out["versions"] = versions
        latest = doc["dist-tags"].get("latest")
        if latest in doc["versions"]:
            for key in ("description", "readme", "license", "homepage", "repository"):
                if key in doc["versions"][latest]:
                    out.setdefault(key, doc["versions"][latest][key])
        return out

    def _accept_put(self, package: str, body: dict) -> tuple[int, dict]:
        attachments = body.get("_attachments") or {}
        if not attachments:
            return 400, {"error": "no tarball attached"}
        tags = body.get("dist-tags") or {}
        published = []
        for version, manifest in (body.get("versions") or {}).items():
            for attachment in attachments.values():
                data = base64.b64decode(attachment["data"])
                pkg = read_package_json(data)
                if pkg["version"] != version or pkg["name"] != package:
                    continue
                try:
                    self.publish_bytes(data, tags=[t for t, v in tags.items() if v == version], manifest=manifest)
                except ValueError as exc:
                    return 403, {"error": str(exc)}
                published.append(version)
        if not published:
            return 400, {"error": "attachment does not match versions"}
        return 200, {"ok": True, "id": package}


class _Handler(BaseHTTPRequestHandler):
    registry: NpmRegistry
    protocol_version = "HTTP/1.1"
    server_version = "t3-sim-registry/1"

    def log_message(self, format, *args) -> None:  # no stderr noise
        pass

    def setup(self) -> None:
        super().setup()
        with self.registry._conns_lock:
            self.registry._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.registry._conns_lock:
                self.registry._conns.discard(self.connection)

    # -------------------------------------------------------------- plumbing
    def _record(self, status: int) -> None:
        self.registry.requests.append(Request(
            method=self.command, path=self.path, status=status, accept=self.headers.get("Accept", ""),
            headers={k.lower(): v for k, v in self.headers.items()}, at=time.time()))

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), content_type, headers)

    def _outage(self) -> bool:
        mode = self.registry._outage
        if mode is None:
            return False
        if mode == "503":
            self.close_connection = True
            self._json(503, {"error": "service unavailable (simulated outage)"}, {"Connection": "close"})
            return True
        if mode == "hang":
            self._record(0)
            deadline = time.monotonic() + 600
            while (self.registry._outage == "hang" and self.registry.running
                   and time.monotonic() < deadline):
                self.registry._release.wait(0.05)
        # "reset", and a released hang: drop the connection without a word
        if mode == "reset":
            self._record(0)
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        return True

    # -------------------------------------------------------------- methods
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self._outage():
            return
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/-/"):
            return self._json(200, {})
        segments = [urllib.parse.unquote(s) for s in path.strip("/").split("/") if s]
        # /@scope%2fname, /@scope/name, /name ; tarballs: .../-/<file>.tgz
        if "-" in segments:
            idx = segments.index("-")
            package = "/".join(segments[:idx])
            rest = segments[idx + 1:]
            if len(rest) == 1 and rest[0].endswith(".tgz"):
                return self._tarball(package, rest[0])
            return self._json(404, {"error": "not found"})
        package = "/".join(segments)
        if not package:
            return self._json(200, {"db_name": "registry", "doc_count": 0})
        return self._packument(package)

    def do_POST(self) -> None:
        if self._outage():
            return
        self._drain()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/-/"):
            return self._json(200, {})
        return self._json(404, {"error": "not found"})

    def do_PUT(self) -> None:
        if self._outage():
            return
        body = self._drain()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/-/user/"):  # npm adduser/login: hand out a dummy token
            return self._json(201, {"ok": True, "token": "sim-token"})
        package = "/".join(urllib.parse.unquote(s) for s in path.strip("/").split("/") if s)
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return self._json(400, {"error": "bad json"})
        status, reply = self.registry._accept_put(package, doc)
        return self._json(status, reply)

    def _drain(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _packument(self, package: str) -> None:
        doc = self.registry._load(package)
        if doc is None:
            return self._json(404, {"error": "not found"})
        accept = self.headers.get("Accept", "")
        corgi = CORGI in accept and "application/json" not in accept.split(CORGI)[0]
        host = self.headers.get("Host") or f"{self.registry.host}:{self.registry.port}"
        body = json.dumps(self.registry._render(doc, f"http://{host}/", corgi)).encode()
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        max_age = self.registry.max_age
        headers = {
            "ETag": etag,
            "Cache-Control": "no-cache" if max_age is None else f"public, max-age={max_age}",
            "Vary": "Accept",
            "Last-Modified": _http_date(doc["time"].get("modified")),
        }
        inm = self.headers.get("If-None-Match")
        if inm and etag in [t.strip() for t in inm.split(",")]:
            self._record(304)
            self.send_response(304)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(200, body, CORGI if corgi else "application/json", headers)

    def _tarball(self, package: str, basename: str) -> None:
        path = self.registry._tarball_file(package, basename)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return self._json(404, {"error": "not found"})
        self._send(200, data, "application/octet-stream", {"Cache-Control": "public, max-age=31536000, immutable"})


def _http_date(iso: str | None) -> str:
    moment = datetime.now(timezone.utc)
    if iso:
        try:
            moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return format_datetime(moment, usegmt=True)
