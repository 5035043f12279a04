"""End-to-end tests: real tracker runs on a whole simulated world."""
from __future__ import annotations

import pytest

from tests.e2e.killable import STARTED


@pytest.fixture(autouse=True)
def _no_tracker_outlives_its_test():
    """A test that fails before its kill must not leave a (stopped) tracker behind."""
    yield
    while STARTED:
        tracker = STARTED.pop()
        if tracker.alive():
            tracker.kill()
