"""Taking the tarball an install fetched out of npm's cache (runner/staging/npmcache.py), on
caches laid out as npm 11 writes them (tests/integration/test_release_npm.py stages through
real npm)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat

import pytest

from runner.staging.npmcache import (CacheError, copy_cached_tarball, entry_integrity, find_integrity, sha512_part,
                                     tarball_name, tarball_url_suffix)

TARBALL = b"\x1f\x8b" + b"a simulated tarball" * 100
URL = "http://127.0.0.1:4873/t3/-/t3-0.0.46.tgz"


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def index_line(key: str, integrity: str, **extra) -> str:
    body = json.dumps({"key": key, "integrity": integrity, "time": 1, "size": 1, **extra})
    return f"\n{hashlib.sha1(body.encode()).hexdigest()}\t{body}"


def make_cache(root, entries, contents):
    """A cacache under `root/npm-cache`: index lines spread over buckets, content by sha512."""
    cache = root / "npm-cache"
    for i, line in enumerate(entries):
        bucket = cache / "_cacache" / "index-v5" / f"{i:02x}" / "ab"
        bucket.mkdir(parents=True, exist_ok=True)
        (bucket / "cdef").write_text(line)
    for data in contents:
        hexdigest = hashlib.sha512(data).hexdigest()
        where = cache / "_cacache" / "content-v2" / "sha512" / hexdigest[:2] / hexdigest[2:4]
        where.mkdir(parents=True, exist_ok=True)
        (where / hexdigest[4:]).write_bytes(data)
    return cache


def open_index(cache):
    return os.open(cache / "_cacache" / "index-v5", os.O_RDONLY | os.O_DIRECTORY)


def test_names_follow_npm_pack_and_the_registry_urls():
    assert tarball_name("t3", "0.0.46") == "t3-0.0.46.tgz"
    assert tarball_name("@acme/t3", "1.0.0") == "acme-t3-1.0.0.tgz"
    assert tarball_url_suffix("t3", "0.0.46") == "/t3/-/t3-0.0.46.tgz"
    assert tarball_url_suffix("@acme/t3", "1.0.0") == "/@acme/t3/-/t3-1.0.0.tgz"


def test_an_index_line_counts_only_for_its_own_tarball_and_only_when_whole():
    suffix = tarball_url_suffix("t3", "0.0.46")
    line = index_line("make-fetch-happen:request-cache:" + URL, sri(TARBALL)).lstrip("\n")
    assert entry_integrity(line, suffix) == sri(TARBALL)
    assert entry_integrity(line, tarball_url_suffix("t3", "0.0.45")) is None
    assert entry_integrity(line.replace("0.0.46", "0.0.47"), suffix) is None  # its sha1 no longer matches
    packument = index_line("make-fetch-happen:request-cache:http://127.0.0.1:4873/t3", sri(b"{}")).lstrip("\n")
    assert entry_integrity(packument, suffix) is None
    scoped = index_line("make-fetch-happen:request-cache:https://r.example/@acme%2ft3/-/t3-1.0.0.tgz",
                        sri(TARBALL)).lstrip("\n")
    assert entry_integrity(scoped, tarball_url_suffix("@acme/t3", "1.0.0")) == sri(TARBALL)
    assert entry_integrity("not a line", suffix) is None


def test_the_one_integrity_of_the_version_is_found_and_anything_else_is_an_error(tmp_path):
    key = "make-fetch-happen:request-cache:" + URL
    cache = make_cache(tmp_path / "a", [index_line(key, sri(TARBALL)), index_line(key, sri(TARBALL))], [])
    fd = open_index(cache)
    try:
        assert find_integrity(fd, "t3", "0.0.46") == sri(TARBALL)  # the same tarball twice is one
        with pytest.raises(CacheError, match="records no entry for t3@0.0.45"):
            find_integrity(fd, "t3", "0.0.45")
    finally:
        os.close(fd)
    cache = make_cache(tmp_path / "b", [index_line(key, sri(TARBALL)), index_line(key, sri(b"other"))], [])
    fd = open_index(cache)
    try:
        with pytest.raises(CacheError, match="2 different tarballs"):
            find_integrity(fd, "t3", "0.0.46")
    finally:
        os.close(fd)


def test_an_integrity_must_hold_exactly_one_sha512():
    assert sha512_part(f"{sri(TARBALL)} sha1-abc=")[0] == sri(TARBALL)
    for bad in ("sha1-AAAA", "sha512-not base64!", f"{sri(TARBALL)} {sri(b'x')}", "sha512-" + "A" * 10):
        with pytest.raises(CacheError, match="not one sha512"):
            sha512_part(bad)


def test_the_tarball_is_copied_with_its_sha512(tmp_path):
    cache = make_cache(tmp_path, [index_line("make-fetch-happen:request-cache:" + URL, sri(TARBALL))],
                       [TARBALL, b"{}"])
    dest = tmp_path / "kept.tgz"
    assert copy_cached_tarball(tmp_path, cache, "t3", "0.0.46", dest) == sri(TARBALL)
    assert dest.read_bytes() == TARBALL and stat.S_IMODE(dest.stat().st_mode) == 0o644
    with pytest.raises(FileExistsError):  # never over an existing file
        copy_cached_tarball(tmp_path, cache, "t3", "0.0.46", dest)


def test_content_that_does_not_match_its_entry_is_refused_and_not_kept(tmp_path):
    cache = make_cache(tmp_path, [index_line("make-fetch-happen:request-cache:" + URL, sri(TARBALL))], [TARBALL])
    hexdigest = hashlib.sha512(TARBALL).hexdigest()
    content = cache / "_cacache/content-v2/sha512" / hexdigest[:2] / hexdigest[2:4] / hexdigest[4:]
    content.write_bytes(TARBALL + b"changed")
    dest = tmp_path / "kept.tgz"
    with pytest.raises(CacheError, match="hashes to"):
        copy_cached_tarball(tmp_path, cache, "t3", "0.0.46", dest)
    assert not dest.exists()


def test_symlinks_in_the_cache_are_refused_not_followed(tmp_path):
    """The gate user wrote the cache: a link to a file root can read must not be copied."""
    secret = tmp_path / "secret"
    secret.write_bytes(TARBALL)  # even with the very bytes the entry names
    cache = make_cache(tmp_path / "w", [index_line("make-fetch-happen:request-cache:" + URL, sri(TARBALL))], [])
    hexdigest = hashlib.sha512(TARBALL).hexdigest()
    where = cache / "_cacache/content-v2/sha512" / hexdigest[:2] / hexdigest[2:4]
    where.mkdir(parents=True)
    (where / hexdigest[4:]).symlink_to(secret)
    with pytest.raises(CacheError, match="refusing symlink"):
        copy_cached_tarball(tmp_path / "w", cache, "t3", "0.0.46", tmp_path / "a.tgz")
    # A linked directory on the way down, and a linked index bucket (ignored: no entry is left).
    (where / hexdigest[4:]).unlink()
    (where / hexdigest[4:]).write_bytes(TARBALL)
    elsewhere = tmp_path / "elsewhere"
    os.rename(cache / "_cacache", elsewhere)
    (cache / "_cacache").symlink_to(elsewhere)
    with pytest.raises(CacheError, match="refusing symlink"):
        copy_cached_tarball(tmp_path / "w", cache, "t3", "0.0.46", tmp_path / "b.tgz")
    (cache / "_cacache").unlink()
    os.rename(elsewhere, cache / "_cacache")
    bucket = next((cache / "_cacache/index-v5").rglob("cdef"))
    bucket.rename(tmp_path / "bucket")
    bucket.symlink_to(tmp_path / "bucket")
    with pytest.raises(CacheError, match="no entry"):
        copy_cached_tarball(tmp_path / "w", cache, "t3", "0.0.46", tmp_path / "c.tgz")
    assert not any((tmp_path / name).exists() for name in ("a.tgz", "b.tgz", "c.tgz"))
