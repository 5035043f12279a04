import pytest

from runner import livedb


@pytest.mark.parametrize("names, expected", [
    ({"state.sqlite"}, "state.sqlite"),
    ({"state.sqlite", "statev2.sqlite"}, "statev2.sqlite"),
    ({"statev2.sqlite"}, "statev2.sqlite"),
    ({"state.sqlite-wal", "notes.db", "settings.json"}, None),
    (set(), None),
])
def test_live_database_is_statev2_once_it_exists(names, expected):
    assert livedb.live_database_name(names) == expected


def test_layout_names():
    assert livedb.layout_of("state.sqlite") == "v1"
    assert livedb.layout_of("statev2.sqlite") == "v2"
    assert livedb.layout_of("notes.db") is None
