"""runner.versions: strict validation, npm semver precedence, channels, `t3 --version`."""
import itertools
import random

import pytest

from runner.versions import (
    MAX_LENGTH, VersionError, channel_of, compare, is_newer, is_nightly, matches_track,
    parse_t3_version_output, sort_versions, validate_version,
)

# Real versions in ascending npm precedence. Nightlies are the next patch after the current
# stable; the stable is cut later; run numbers compare numerically; several runs a day.
ASCENDING = [
    "0.0.24",
    "0.0.25-nightly.20260608.497",
    "0.0.25-nightly.20260608.498",
    "0.0.25-nightly.20260608.999",
    "0.0.25-nightly.20260608.1000",
    "0.0.25-nightly.20260609.2",
    "0.0.25",
    "0.0.26-nightly.20260609.498",
    "0.0.26",
    "0.0.100-nightly.20260701.1",
    "0.0.100",
    "0.1.0-nightly.20260801.5",
    "0.1.0-preview.1",
    "0.1.0",
    "1.0.0",
]

# (a, b, expected compare(a, b)): each pair stated by hand.
PAIRS = [
    ("0.0.24", "0.0.25-nightly.20260608.497", -1),
    ("0.0.25-nightly.20260608.497", "0.0.25", -1),
    ("0.0.25", "0.0.26-nightly.20260609.498", -1),
    # the replay's `sort -V` bug: stable 0.0.26 was "upgraded" to its own earlier nightly
    ("0.0.26", "0.0.26-nightly.20260609.498", 1),
    ("0.0.25-nightly.20260608.999", "0.0.25-nightly.20260608.1000", -1),
    ("0.0.25-nightly.20260608.1000", "0.0.25-nightly.20260608.999", 1),
    ("0.0.25-nightly.20260608.9", "0.0.25-nightly.20260608.10", -1),
    # same date, several runs
    ("0.0.25-nightly.20260608.497", "0.0.25-nightly.20260608.498", -1),
    ("0.0.25-nightly.20260608.498", "0.0.25-nightly.20260608.497", 1),
    # a later date beats a higher run number
    ("0.0.25-nightly.20260609.1", "0.0.25-nightly.20260608.1000", 1),
    ("0.0.9", "0.0.10", -1),
    ("0.0.99", "0.0.100", -1),
    ("0.9.0", "0.10.0", -1),
    ("1.0.0-alpha", "1.0.0-alpha.1", -1),
    ("1.0.0-alpha.1", "1.0.0-alpha.beta", -1),   # numeric < alphanumeric
    ("1.0.0-beta.11", "1.0.0-rc.1", -1),
    ("1.0.0-rc.1", "1.0.0", -1),
    ("0.0.24", "0.0.24", 0),
    ("0.0.25-nightly.20260608.497", "0.0.25-nightly.20260608.497", 0),
]


@pytest.mark.parametrize("a,b,expected", PAIRS)
def test_compare_table(a, b, expected):
    assert compare(a, b) == expected
    assert compare(b, a) == -expected
    assert is_newer(a, b) == (expected > 0)


def test_ascending_chain_every_pair():
    for (i, a), (j, b) in itertools.product(enumerate(ASCENDING), repeat=2):
        assert compare(a, b) == (i > j) - (i < j), (a, b)


def test_sort_versions_restores_the_chain():
    shuffled = ASCENDING[:]
    random.Random(7).shuffle(shuffled)
    assert sort_versions(shuffled) == ASCENDING
    assert sort_versions(shuffled, reverse=True) == ASCENDING[::-1]


@pytest.mark.parametrize("version", ["0.0.24", "0.0.25-nightly.20260608.497"])
def test_equal_versions_are_not_newer(version):
    assert not is_newer(version, version)


def test_a_backward_tag_is_not_newer():
    assert not is_newer("0.0.25-nightly.20260608.497", "0.0.25-nightly.20260609.2")
    assert not is_newer("0.0.26-nightly.20260609.498", "0.0.26")


GOOD = [
    "0.0.0", "0.0.24", "10.20.30", "0.0.25-nightly.20260608.497", "1.0.0-alpha", "1.0.0-0",
    "1.0.0-0a", "1.0.0-x-y.z.0", "1.0.0--", "1.0.0-rc.1", "0.1.0-preview.3",
    "1.0.0-" + "a" * (MAX_LENGTH - 6),
]


@pytest.mark.parametrize("text", GOOD)
def test_valid_versions_pass_unchanged(text):
    assert validate_version(text) == text


BAD = [
    "", " ", "latest", "nightly", "next", "*", "x", "1", "1.0", "1.0.0.0", "1.0.x",
    "v0.0.24", "V0.0.24", "=0.0.24", "^0.0.24", "~0.0.24", ">=0.0.24", "0.0.24 || 1.0.0",
    " 0.0.24", "0.0.24 ", "0.0.24\n", "0.0.24\r", "0.0.24\t", "0.0.24\x00", "0.0.24\n--foo",
    "--foo", "-1.0.0", "--registry=http://evil", "0.0.1; rm -rf /", "0.0.1 && reboot",
    "$(reboot)", "`id`", "0.0.1|sh", "../../etc/passwd", "0.0.24/../x",
    "01.0.0", "0.01.0", "0.0.01", "1.0.0-01", "0.0.25-nightly.20260608.0497",
    "1.0.0-", "1.0.0-a..b", "1.0.0-a.", "1.0.0-.a", "1.0.0-a_b", "1.0.0-a b", "1.0.0-ä",
    "１.0.0", "1.0.0-nightly.٣",
    "1.0.0+build", "1.0.0-a+b", "1.0.0+", "1.0.0-" + "a" * (MAX_LENGTH - 5),
    "9007199254740992.0.0", "-0.0.0", "0.-1.0",
]


@pytest.mark.parametrize("text", BAD)
def test_bad_versions_rejected(text):
    with pytest.raises(VersionError) as info:
        validate_version(text, "registry nightly tag")
    message = str(info.value)
    assert "registry nightly tag" in message and repr(text) in message
    assert info.value.value == text and info.value.reason


@pytest.mark.parametrize("value", [None, 24, 0.24, b"0.0.24", ["0.0.24"]])
def test_non_strings_rejected(value):
    with pytest.raises(VersionError, match="expected a string"):
        validate_version(value)


def test_version_error_is_a_value_error():
    assert issubclass(VersionError, ValueError)


@pytest.mark.parametrize("a,b", [("0.0.24", "latest"), ("--foo", "0.0.24"), ("v1.0.0", "1.0.0")])
def test_compare_validates_both_sides(a, b):
    with pytest.raises(VersionError):
        compare(a, b)
    with pytest.raises(VersionError):
        is_newer(a, b)


NIGHTLY = [
    ("0.0.25-nightly.20260608.497", True),
    ("0.0.25-nightly.20260608.0", True),
    ("0.0.25-nightly.20240229.1", True),       # leap day
    ("0.0.25", False),
    ("0.0.25-nightly", False),
    ("0.0.25-nightly.20260608", False),
    ("0.0.25-nightly.2026068.1", False),
    ("0.0.25-nightly.202606080.1", False),
    ("0.0.25-nightly.20261308.1", False),      # month 13
    ("0.0.25-nightly.20260230.1", False),      # 30 February
    ("0.0.25-nightly.20250229.1", False),      # not a leap year
    ("0.0.25-nightly.20260608.497.1", False),
    ("0.0.25-nightly.20260608.x", False),
    ("0.0.25-Nightly.20260608.1", False),
    ("0.0.25-nightlyx.20260608.1", False),
    ("0.0.25-preview.1", False),
    ("0.0.25-rc.1", False),
]


@pytest.mark.parametrize("version,expected", NIGHTLY)
def test_is_nightly(version, expected):
    assert is_nightly(version) is expected


@pytest.mark.parametrize("version,channel", [
    ("0.0.25", "stable"), ("1.2.3", "stable"),
    ("0.0.25-nightly.20260608.497", "nightly"),
    ("0.0.25-preview.1", "other"), ("0.0.25-rc.1", "other"), ("0.0.25-nightly.20261308.1", "other"),
])
def test_channel_of(version, channel):
    assert channel_of(version) == channel


@pytest.mark.parametrize("version,track,expected", [
    ("0.0.25-nightly.20260608.497", "nightly", True),
    ("0.0.25", "nightly", False),
    ("0.0.25-preview.1", "nightly", False),
    ("0.0.25", "latest", True),
    ("0.0.25-nightly.20260608.497", "latest", False),
    ("0.0.25-preview.1", "latest", False),
    ("0.0.25-preview.1", "preview", True),
    ("0.0.25-preview.20260608.3", "preview", True),
    ("0.0.25-preview", "preview", False),
    ("0.0.25-previewx.1", "preview", False),
    ("0.0.25", "preview", False),
    ("0.0.25-nightly.20260608.497", "preview", False),
])
def test_matches_track(version, track, expected):
    assert matches_track(version, track) is expected


@pytest.mark.parametrize("track", ["stable", "Nightly", "", "next"])
def test_unknown_track_raises(track):
    with pytest.raises(ValueError, match="unknown track"):
        matches_track("0.0.25", track)


def test_channel_functions_validate_input():
    for fn in (is_nightly, channel_of):
        with pytest.raises(VersionError):
            fn("0.0.25-nightly.20260608.497; rm -rf /")
    with pytest.raises(VersionError):
        matches_track("latest", "latest")


@pytest.mark.parametrize("stdout,expected", [
    ("t3 v0.0.24\n", "0.0.24"),
    ("t3 v0.0.24", "0.0.24"),
    ("t3 v0.0.25-nightly.20260608.497\r\n", "0.0.25-nightly.20260608.497"),
    ("\n\nt3 v0.0.24\n\n", "0.0.24"),
    ("\x1b[32mt3 v0.0.24\x1b[0m\n", "0.0.24"),
    ("\x1b[1m\x1b[36mt3\x1b[39m v0.0.24\x1b[22m\n", "0.0.24"),
    ("\x1b]8;;http://x\x07t3 v0.0.24\x1b]8;;\x07\n", "0.0.24"),
    ("\x1b(B\x1b[mt3 v0.0.24\x1b[0m\n", "0.0.24"),
])
def test_parse_t3_version_output(stdout, expected):
    assert parse_t3_version_output(stdout) == expected


@pytest.mark.parametrize("stdout", [
    "", "\n", "   \n",
    "t3 v0.0.24\nt3 v0.0.25\n",
    "warning: something\nt3 v0.0.24\n",
    "t3 v0.0.24\n(node:1) ExperimentalWarning\n",
    "0.0.24\n", "v0.0.24\n", "t3 0.0.24\n", "T3 v0.0.24\n", "t3  v0.0.24\n", "t3 vv0.0.24\n",
    "t3 v0.0.24 extra\n", "t3 v0.0.24-\n", "t3 vlatest\n", "t3 v--foo\n", "t3 v0.0.24;rm -rf /\n",
    "t3 v0.0.24+build\n", "t3 v\n", "t3 v0.0.24\x00\n",
])
def test_bad_t3_version_output_fails_closed(stdout):
    with pytest.raises(VersionError) as info:
        parse_t3_version_output(stdout)
    assert "t3 --version output" in str(info.value)


def test_t3_version_output_must_be_text():
    with pytest.raises(VersionError):
        parse_t3_version_output(b"t3 v0.0.24\n")
