"""Talking to t3 the way a browser and the dispatch do, as small readable checks.

Helpers raise `GateFailure` with the cause in plain words and hide their own
frames from pytest tracebacks (`__tracebackhide__`), so a failed gate reads as
"200 from /api/auth/browser-session but no Set-Cookie", not as a stack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import requests

from . import proc
from .mint import pairing_argv

# Newest first: a client tries the current path and falls back on 404 (docs/t3-contract.md).
PAIRING_ENDPOINTS = ("/api/auth/browser-session", "/api/auth/bootstrap")
HTTP_TIMEOUT = 10.0


class GateFailure(AssertionError):
    """A gate check failed; the message names the cause."""


def set_cookies(response: requests.Response) -> list[tuple[str, str]]:
    """Every Set-Cookie as (name, value); requests folds them into one header otherwise."""
    headers = response.raw.headers.getlist("Set-Cookie") if response.raw is not None else []
    cookies = []
    for header in headers:
        pair = header.split(";", 1)[0]
        if "=" in pair:
            name, value = pair.split("=", 1)
            cookies.append((name.strip(), value.strip()))
    return cookies


@dataclass
class Exchange:
    endpoint: str
    fallback: bool
    status: int
    cookies: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""


class Instance:
    """One running `t3 serve`, addressed over loopback."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base_url + path, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs)

    def environment(self) -> dict:
        __tracebackhide__ = True
        response = self.get("/.well-known/t3/environment")
        if response.status_code != 200:
            raise GateFailure(f"/.well-known/t3/environment answered {response.status_code}")
        return _json(response, "/.well-known/t3/environment")

    def server_version(self) -> str:
        __tracebackhide__ = True
        version = self.environment().get("serverVersion")
        if not isinstance(version, str) or not version:
            raise GateFailure("/.well-known/t3/environment has no serverVersion")
        return version

    def session(self, cookies: dict[str, str] | None = None) -> dict:
        __tracebackhide__ = True
        response = self.get("/api/auth/session", cookies=cookies or {})
        if response.status_code != 200:
            raise GateFailure(f"/api/auth/session answered {response.status_code}: {response.text[:200]}")
        return _json(response, "/api/auth/session")

    def session_cookie_name(self) -> str:
        __tracebackhide__ = True
        name = (self.session().get("auth") or {}).get("sessionCookieName")
        if not isinstance(name, str) or not name:
            raise GateFailure("/api/auth/session does not name auth.sessionCookieName")
        return name

    def exchange(self, credential: str) -> Exchange:
        """POST the credential to the newest pairing endpoint, falling back on 404."""
        last = None
        for index, endpoint in enumerate(PAIRING_ENDPOINTS):
            response = requests.post(self.base_url + endpoint, json={"credential": credential},
                                     timeout=HTTP_TIMEOUT, allow_redirects=False)
            last = Exchange(endpoint, index > 0, response.status_code, set_cookies(response), response.text[:500])
            if response.status_code != 404:
                return last
        return last


def mint_credential(t3_bin: str, base_dir: Path, *, env=None, as_user=None, cwd=None, timeout=60.0) -> str:
    """`t3 auth pairing create --json` (it migrates the database itself: run it only on the build under
    test), with exactly the command line of a login's mint (runner.mint)."""
    __tracebackhide__ = True
    argv = pairing_argv(t3_bin, base_dir)
    try:
        done = proc.run(argv, env=env, timeout=timeout, as_user=as_user, cwd=cwd)
    except proc.CommandError as exc:
        said = " | ".join((exc.stderr or exc.stdout).strip().splitlines()[-3:]) or exc.reason
        raise GateFailure(f"`t3 auth pairing create` failed ({exc.reason}): {said}") from None
    try:
        credential = json.loads(done.stdout)["credential"]
    except (ValueError, KeyError, TypeError):
        raise GateFailure(f"`t3 auth pairing create --json` printed no credential: {done.stdout[:200]!r}") from None
    if not isinstance(credential, str) or not credential:
        raise GateFailure("`t3 auth pairing create --json` printed an empty credential")
    return credential


def _json(response: requests.Response, what: str) -> dict:
    __tracebackhide__ = True
    try:
        data = response.json()
    except ValueError:
        raise GateFailure(f"{what} did not answer JSON: {response.text[:200]!r}") from None
    if not isinstance(data, dict):
        raise GateFailure(f"{what} answered {type(data).__name__}, not an object")
    return data


class DispatchClient:
    """The per-user dispatch as a browser behind SSO sees it."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def visit(self, sso_user: str, cookies: dict[str, str] | None = None) -> requests.Response:
        return requests.get(self.url + "/", timeout=HTTP_TIMEOUT, allow_redirects=False, cookies=cookies or {},
                            headers={"X-authentik-username": sso_user, "Sec-Fetch-Dest": "document"})


def package_version_of(t3_bin) -> str:
    """The build's own package.json, found from its (symlinked) bin; independent of `--version`."""
    __tracebackhide__ = True
    for parent in Path(t3_bin).resolve().parents:
        manifest = parent / "package.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())["version"]
    raise GateFailure(f"no package.json above {t3_bin}; pass the expected version explicitly")
