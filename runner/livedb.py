"""Which of a user's databases is the live one: the file the running t3 build opens.

t3 up to 0.0.45 keeps its history in `userdata/state.sqlite` (layout V1). From the 0.0.46
nightlies on, a build imports `state.sqlite` one way into `userdata/statev2.sqlite` on its
first start, keeps the V1 tables frozen inside it, writes new history to
`orchestration_v2_*` tables, and from then on opens only `statev2.sqlite` (layout V2);
`state.sqlite` stays on disk, frozen at the import. A fresh base dir under a V2 build gets
only `statev2.sqlite`. An older (pre-V2) build ignores `statev2.sqlite` entirely, which is
why going back across the import sets `statev2.sqlite` aside (the tracker never leaves one
beside a pre-V2 build).

So the live database is `statev2.sqlite` once it exists, else `state.sqlite`: every phase
that reads, gates or guards a user's history asks this module, never a literal name.
Backups and restores still cover every SQLite database under `userdata/`.
"""
from __future__ import annotations

from typing import Iterable

V1_NAME = "state.sqlite"
V2_NAME = "statev2.sqlite"
# Newest layout first: the first present name is the one the build opens.
LIVE_NAMES = (V2_NAME, V1_NAME)
LAYOUT_OF = {V1_NAME: "v1", V2_NAME: "v2"}


def live_database_name(names: Iterable[str]) -> str | None:
    """The live database among the file names present in a `userdata/` directory, or None
    when there is none (a base dir no build has started on yet)."""
    present = set(names)
    return next((name for name in LIVE_NAMES if name in present), None)


def layout_of(name: str) -> str | None:
    """'v1' or 'v2' for a live database name; None for any other database."""
    return LAYOUT_OF.get(name)
