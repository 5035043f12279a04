"""The CLI's operations, one module per group; `runner.cli` parses and dispatches.

Every command is `cmd_<name>(cfg, args, events) -> int` and returns an exit code below
(3, a bug, is `runner.cli`'s: it catches what a command did not expect).

* `run`: the gated run (the timer's job) and the dry run;
* `users`: what acts on users' builds and databases: rollback, drain-deferred, recover,
  adopt, verify, mint;
* `hold`: freeze, unfreeze, quarantine;
* `inspect`: status, history, config check (and the place for `doctor`);
* `install`: install-units, install-mint, the daily backup.
"""

OK, FAILED, USAGE, BUG = 0, 1, 2, 3
