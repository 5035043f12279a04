"""A simulated systemd: the `systemctl` stand-in (tests/sim/systemctl.py) that runs real
processes from real unit files.

The parts: `syntax` (the unit-file language), `units` (a unit's definition), `procs`
(processes as /proc shows them), `execution` (the process a unit runs, as its user),
`manager` (state on disk, loading, jobs), `supervisor` (a running unit's supervisor), `cli`
(systemctl's command line); `common` holds what they share.

Unit files come from ``--unit-dir`` (default
``ROOT/etc/systemd/system``); ``NAME@INSTANCE.service`` instantiates ``NAME@.service``,
and drop-ins (``NAME@.service.d/*.conf``, ``NAME@INSTANCE.service.d/*.conf``) apply.

There is no daemon. ``start`` launches a small supervisor (the program, verb
``__supervise``) in its own session; the supervisor starts the service's main process in
a session of its own (standing in for the unit's cgroup), waits for it, records its exit
status, kills what is left of the session as KillMode= says, and applies Restart=. All
state lives under ``ROOT/run/simctl/``: ``<unit>.json`` (atomic writes: temp file, fsync,
rename), ``<unit>.log`` (the process's stdout/stderr and the manager's own lines, like
the journal), ``loaded/<unit>.json`` (the unit definition as last loaded).

Faithful to systemd where the tracker can tell the difference:
* a main process that exited or is a zombie is never reported active (checked in
  /proc/<pid>/stat, with its start time, so a reused pid is not mistaken for it);
* ``start`` of a Type=simple unit returns 0 once the process is forked, even if it dies
  at once; a oneshot ``start`` waits for the command and fails with it;
* exit 0 or death by SIGTERM/SIGINT/SIGHUP/SIGPIPE is clean (inactive); anything else,
  a stop that needed SIGKILL included, leaves the unit failed; Restart=, RestartSec=,
  StartLimitBurst=/StartLimitIntervalSec= (manual starts count too) apply;
* a loaded unit keeps its old definition until ``daemon-reload`` while it is running,
  failed or enabled (a warning is printed, ``NeedDaemonReload=yes``), as systemd does;
  an inactive, not enabled unit is loaded afresh (systemd unloads those);
* ActiveEnterTimestamp keeps the last activation after the unit stops, as systemd does;
  it is empty only for a unit never started.
* User= names a *simulated* user: the process runs as the caller and the unit log says so;
  HOME is then WorkingDirectory=. The machine's passwd database is never consulted for it
  (a real account that happens to share a world user's name, as on a host with users
  wizard, emo and ancamilea, must never run the world's processes), unless the stand-in
  was started with ``--host-users`` (``install_systemctl(..., host_users=True)``): then
  User= switches to that account when running as root and the account exists.
  ``--user-map-file FILE`` (``install_systemctl(..., user_map_file=...)``) names the
  simulated world's own accounts: a JSON object ``{"<name>": {"uid": N, "gid": N, "home":
  "/path"}}``. A User= found there runs as that uid/gid (when the stand-in runs as root)
  with HOME, USER and LOGNAME set, as systemd does for a real account: the world's users
  are real unprivileged uids with no passwd entry. The map wins over --host-users.
Deliberate differences: the child environment is systemd's (USER, LOGNAME, HOME, SHELL,
INVOCATION_ID, the unit's Environment=/EnvironmentFile=) on top of a pass-through of the
caller's PATH, LANG/LC_*, TMPDIR and PYTHON* (so the sandboxed test environment
holds); TimeoutStopSec defaults to 10 s (systemd: 90 s); Type=notify/forking/exec are
run as simple; processes that leave the main process's session escape KillMode; timers
are only recorded (start/stop/enable), never fired; Memory*=/OOMPolicy= are parsed and
reported by ``show`` (drop-ins applied, as ``cat`` shows them) but not enforced.
"""
