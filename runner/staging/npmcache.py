"""The tarball `npm install <pkg>@<version>` fetched, taken out of the npm cache it filled.

Staging installs the candidate from the registry in ONE npm start-up and keeps the exact
bytes npm fetched and checked, so a rollback reinstalls offline. Those bytes are in npm's
content-addressed cache (cacache, the format of every npm since 5):

    <cache>/_cacache/index-v5/<2 hex>/<2 hex>/<rest>     lines "<sha1 of json>\\t<json>"; the
                                                         json's `key` names the request (for a
                                                         tarball: make-fetch-happen:request-cache:
                                                         <url>), `integrity` its content's hash
    <cache>/_cacache/content-v2/sha512/<2 hex>/<2 hex>/<rest of the hex digest>

Why not `npm pack` first and an offline install of its file: that is a second npm start-up
(~0.5 s of every bump, docs/performance.md) for the same bytes.

The cache was written by the gate user, so root reads it by descriptor from a trusted
directory down, no-follow, regular files only, sizes bounded; the copy's sha512 is taken
over exactly the bytes copied and must equal the integrity npm recorded (npm checked those
bytes against the registry's packument when it fetched them). Anything unexpected (no
entry, two different tarballs for the version, a missing or changed content file) is a
`CacheError`: staging fails, it never guesses.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runner.userfiles import (UserFileError, close_quietly, copy_to_new_file, open_dir_at, open_file_at,
                             open_trusted_dir)

REQUEST_KEY = "make-fetch-happen:request-cache:"
MAX_BUCKET_BYTES = 4 << 20  # an index bucket holds a few lines; anything larger is not npm's


class CacheError(Exception):
    """The fetched tarball could not be taken from the npm cache (the message says why)."""


def tarball_name(package: str, version: str) -> str:
    """The file name `npm pack` gives a package's tarball: `t3-0.0.46.tgz`, `scope-name-1.0.0.tgz`."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def tarball_url_suffix(package: str, version: str) -> str:
    """How a registry's tarball URL path ends: `/t3/-/t3-0.0.46.tgz`, `/@scope/name/-/name-1.0.0.tgz`."""
    return f"/{package}/-/{package.rsplit('/', 1)[-1]}-{version}.tgz"


def entry_integrity(line: str, suffix: str) -> str | None:
    """The sha512 integrity of one index line if it records the tarball whose URL ends in
    `suffix`; None for any other line (other requests, lines cacache itself would skip:
    torn or not matching their own sha1)."""
    digest, tab, body = line.partition("\t")
    if not tab or hashlib.sha1(body.encode()).hexdigest() != digest:
        return None
    try:
        entry = json.loads(body)
    except ValueError:
        return None
    key, integrity = (entry.get("key"), entry.get("integrity")) if isinstance(entry, dict) else (None, None)
    if not (isinstance(key, str) and key.startswith(REQUEST_KEY) and isinstance(integrity, str)):
        return None
    if not unquote(urlsplit(key[len(REQUEST_KEY):]).path).endswith(suffix):
        return None
    return integrity


def find_integrity(index_fd: int, package: str, version: str) -> str:
    """The one sha512 integrity the index records for `package@version`'s tarball."""
    suffix = tarball_url_suffix(package, version)
    found: set[str] = set()
    for _dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=index_fd, follow_symlinks=False):
        for name in files:
            try:
                fd = open_file_at(dir_fd, name, name)
            except UserFileError:
                continue  # a symlink or special file is no bucket npm wrote
            try:
                data = os.read(fd, MAX_BUCKET_BYTES + 1) if os.fstat(fd).st_size <= MAX_BUCKET_BYTES else b""
            finally:
                os.close(fd)
            for line in data.decode("utf-8", "replace").splitlines():
                integrity = entry_integrity(line, suffix)
                if integrity is not None:
                    found.add(integrity)
    if len(found) != 1:
        what = "no entry" if not found else f"{len(found)} different tarballs ({', '.join(sorted(found))})"
        raise CacheError(f"npm's cache records {what} for {package}@{version}")
    return found.pop()


def sha512_part(integrity: str) -> tuple[str, str]:
    """(the sha512 of an integrity string, SRI form; its hex digest). An integrity may list
    several hashes; exactly one must be a well-formed sha512 (the cache is keyed by it)."""
    sha512s = [part.split("?", 1)[0] for part in integrity.split() if part.startswith("sha512-")]
    try:
        hexdigest = base64.b64decode(sha512s[0][len("sha512-"):], validate=True).hex() if len(sha512s) == 1 else ""
    except (binascii.Error, ValueError):
        hexdigest = ""
    if len(hexdigest) != 128:
        raise CacheError(f"npm's cache records integrity {integrity!r}, not one sha512")
    return sha512s[0], hexdigest


def copy_cached_tarball(trusted: Path, cache_dir: Path, package: str, version: str, dest: Path) -> str:
    """Copy `package@version`'s tarball out of the npm cache at `cache_dir` (below the trusted,
    root-owned directory `trusted`) to `dest` (a new 0644 file); return its sha512 (SRI form)."""
    fds: list[int] = []
    try:
        fds.append(open_trusted_dir(trusted)[0])
        for name in [*cache_dir.relative_to(trusted).parts, "_cacache"]:
            fds.append(open_dir_at(fds[-1], name, cache_dir / name))
        cacache = fds[-1]
        fds.append(open_dir_at(cacache, "index-v5", cache_dir / "_cacache/index-v5"))
        integrity, hexdigest = sha512_part(find_integrity(fds[-1], package, version))
        *dirs, leaf = ["content-v2", "sha512", hexdigest[:2], hexdigest[2:4], hexdigest[4:]]
        fds.append(cacache)  # the walk down starts from _cacache again
        for name in dirs:
            fds.append(open_dir_at(fds[-1], name, cache_dir / "_cacache" / name))
        fds.append(open_file_at(fds[-1], leaf, cache_dir / "_cacache" / "/".join(dirs) / leaf))
        digest = hashlib.sha512()
        # 0644: the gate user installs from it later, and the run's umask is 0077
        copy_to_new_file(fds[-1], dest, 0o644, digest)
        sha512 = "sha512-" + base64.b64encode(digest.digest()).decode()
    except UserFileError as exc:
        raise CacheError(f"reading npm's cache: {exc}") from None
    finally:
        for fd in set(fds):
            close_quietly(fd)
    if sha512 != integrity:
        os.unlink(dest)
        raise CacheError(f"the cached tarball of {package}@{version} hashes to {sha512}, its entry says {integrity}")
    return sha512
