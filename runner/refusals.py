"""The refusals a command reports as `REFUSED` (exit 1): raised deep inside a run, mapped to
their exit code by `runner.cli`. They live here, apart from the phases that raise them, so
the CLI can catch them without importing the run machinery at start-up (a run with nothing
to do pays for every module it imports)."""


class RunRefused(Exception):
    """Stopped before touching anything a user runs (exit 1)."""


class RecoveryFailed(RuntimeError):
    """An unfinished run could not be undone; nothing else may run until a person looks."""
