"""The user map parser (`/etc/ttyd-user-map`) and the SSO header's local part."""
import pytest

from runner.usermap import UserMapError, load_user_map, parse_user_map, sso_local_part


def test_parses_entries_comments_blank_lines_and_spaces():
    text = (
        "# the users\n"
        "\n"
        "vbarzin=wizard\n"
        "  alice = alice  \n"
        "\t# indented comment\n"
        "bob\t=\t_svc-bob_2\n"
        "   \n"
    )
    assert parse_user_map(text) == {"vbarzin": "wizard", "alice": "alice", "bob": "_svc-bob_2"}


def test_empty_map_is_empty():
    assert parse_user_map("") == {}
    assert parse_user_map("# nothing yet\n\n") == {}


def test_several_sso_names_may_share_one_os_user():
    assert parse_user_map("vbarzin=wizard\nviktor=wizard\n") == {"vbarzin": "wizard", "viktor": "wizard"}


def test_crlf_line_endings():
    assert parse_user_map("a=alice\r\nb=bob\r\n") == {"a": "alice", "b": "bob"}


def test_os_user_name_length_limit():
    ok = "a" + "b" * 31  # 32 characters
    assert parse_user_map(f"x={ok}") == {"x": ok}
    with pytest.raises(UserMapError) as err:
        parse_user_map(f"x={ok}b")
    assert err.value.problems == [
        f"<user map>:1: invalid OS user name '{ok}b' (must match ^[a-z_][a-z0-9_-]{{0,31}}$)"
    ]


@pytest.mark.parametrize("bad", ["Wizard", "1wizard", "-wizard", "wiz.ard", "wiz$", "wiz ard", "wïzard"])
def test_invalid_os_user_names_are_rejected(bad):
    with pytest.raises(UserMapError) as err:
        parse_user_map(f"vbarzin={bad}\n", source="/etc/ttyd-user-map")
    assert str(err.value) == (
        f"/etc/ttyd-user-map:1: invalid OS user name {bad!r} (must match ^[a-z_][a-z0-9_-]{{0,31}}$)"
    )


def test_all_problems_are_collected_each_naming_its_line():
    text = (
        "# users\n"              # 1
        "vbarzin=wizard\n"       # 2
        "no equals sign\n"       # 3
        "=orphan\n"              # 4
        "carol=\n"               # 5
        "dave=Dave\n"            # 6
        "vbarzin=other\n"        # 7
        "eve@example.org=eve\n"  # 8
        "fr ank=frank\n"         # 9
        "ok=fine\n"              # 10
    )
    with pytest.raises(UserMapError) as err:
        parse_user_map(text, source="map.txt")
    expected = [
        "map.txt:3: expected sso_name=os_user, got 'no equals sign'",
        "map.txt:4: empty SSO name in '=orphan'",
        "map.txt:5: empty OS user name in 'carol='",
        "map.txt:6: invalid OS user name 'Dave' (must match ^[a-z_][a-z0-9_-]{0,31}$)",
        "map.txt:7: duplicate SSO name 'vbarzin' (first on line 2)",
        "map.txt:8: SSO name 'eve@example.org' must be the email's local part (no '@')",
        "map.txt:9: SSO name 'fr ank' contains whitespace",
    ]
    assert err.value.problems == expected
    assert str(err.value) == "\n".join(expected)
    assert isinstance(err.value, ValueError)


def test_duplicate_is_an_error_even_with_the_same_os_user():
    with pytest.raises(UserMapError) as err:
        parse_user_map("a=alice\n a = alice\n")
    assert err.value.problems == ["<user map>:2: duplicate SSO name 'a' (first on line 1)"]


def test_second_equals_sign_belongs_to_the_os_user_and_is_rejected():
    with pytest.raises(UserMapError) as err:
        parse_user_map("a=b=c")
    assert err.value.problems == [
        "<user map>:1: invalid OS user name 'b=c' (must match ^[a-z_][a-z0-9_-]{0,31}$)"
    ]


def test_load_user_map_names_the_file(tmp_path):
    good = tmp_path / "ttyd-user-map"
    good.write_text("# map\nvbarzin = wizard\n")
    assert load_user_map(good) == {"vbarzin": "wizard"}
    bad = tmp_path / "bad-map"
    bad.write_text("vbarzin=wizard\nx=ROOT\n")
    with pytest.raises(UserMapError) as err:
        load_user_map(str(bad))
    assert str(err.value) == f"{bad}:2: invalid OS user name 'ROOT' (must match ^[a-z_][a-z0-9_-]{{0,31}}$)"


def test_load_user_map_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_user_map(tmp_path / "absent")


@pytest.mark.parametrize(
    "header, expected",
    [
        ("vbarzin@example.org", "vbarzin"),
        ("vbarzin", "vbarzin"),
        ("  vbarzin@example.org ", "vbarzin"),
        ("first.last@sub.example.org", "first.last"),
        ('"odd@local"@example.org', '"odd@local"'),
    ],
)
def test_sso_local_part(header, expected):
    assert sso_local_part(header) == expected


@pytest.mark.parametrize("header", [None, "", "   ", "@example.org"])
def test_sso_local_part_rejects_empty(header):
    with pytest.raises(ValueError):
        sso_local_part(header)
