"""The one place the runner starts processes.

Every command goes through `run` (or `spawn` for a long-lived one), on subprocess: argv lists
only, never a shell string; each command is logged; any failure raises
`CommandError` carrying the command, exit code and output, so callers never
parse half-failed output. Commands that touch a user's files run *as that user*
(`as_user`), which is how root avoids following a user's symlinks into files
the user could not reach.

Every child gets an explicit, minimal environment (`child_env`): PATH, LANG, LC_* and
TZ of the runner's, plus whatever the caller names. Nothing else of root's environment
(an NPM_TOKEN, a cloud credential, SSH_AUTH_SOCK) reaches a child by default.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Mapping, NamedTuple, Sequence



def _debug(message: str, argv: Sequence[str], *detail) -> None:
    """A debug record of a command. `logging` is looked up, not imported: a process that
    never imported it (the mint, on every login) has no handler a record could reach, and
    the import would cost it 8 ms."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("t3-autoupdate.proc").debug(message, format_argv(argv), *detail)


# NamedTuples, not dataclasses: importing dataclasses costs the mint 15 ms on every login.
class UserIds(NamedTuple):
    uid: int
    gid: int
    name: str = ""

    @classmethod
    def owner_of(cls, st: os.stat_result) -> "UserIds":
        return cls(st.st_uid, st.st_gid)


class Completed(NamedTuple):
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


class CommandError(Exception):
    def __init__(self, argv, exit_code, stdout="", stderr="", *, reason=""):
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason or f"exit code {exit_code}"
        tail = (stderr or stdout).strip().splitlines()[-5:]
        detail = (": " + " | ".join(tail)) if tail else ""
        super().__init__(f"command failed ({self.reason}): {format_argv(self.argv)}{detail}")


def format_argv(argv: Sequence[str]) -> str:
    """A readable, unambiguous rendering for logs (not for execution)."""
    import shlex

    return " ".join(shlex.quote(str(a)) for a in argv)


#: What every child inherits from the runner's environment; the rest must be passed explicitly.
INHERITED_ENV = ("PATH", "LANG", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: PATH, LANG, LC_* and TZ from `base` (default: the runner's),
    then `extra`. Pure apart from reading os.environ when `base` is None."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k in INHERITED_ENV or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra or {})
    return env


def _dropping(user: UserIds | None) -> bool:
    return user is not None and os.geteuid() == 0 and user.uid != 0


def _drop_privileges_kwargs(user: UserIds | None) -> dict:
    """Popen's own privilege drop (setgroups, setgid, setuid in the child, the same order as
    `_drop_privileges`), done in C: no Python runs between fork and exec."""
    if not _dropping(user):
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": [user.gid]}


def _drop_privileges(user: UserIds | None):
    if not _dropping(user):
        return None

    def preexec():
        os.setgroups([user.gid])
        os.setgid(user.gid)
        os.setuid(user.uid)

    return preexec


def _die_with_parent(user: UserIds | None):
    """preexec for a long-lived child: drop privileges, then ask the kernel to SIGKILL it
    when its parent dies, so a killed runner or gate never leaves a throwaway server running.
    (PR_SET_PDEATHSIG is cleared by a change of credentials, so it is set after the drop.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
    parent = os.getpid()
    drop = _drop_privileges(user)
    pr_set_pdeathsig = 1

    def preexec():
        if drop is not None:
            drop()
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(126)

    return preexec


def _decode(data) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _kill_group(popen: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (its own session): a grandchild holding the
    output pipes open would otherwise outlive the timeout."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 120.0,
    as_user: UserIds | None = None,
    input: str | bytes | None = None,
    ok_codes: Sequence[int] = (0,),
) -> Completed:
    """Run argv to completion; raise CommandError unless its exit code is in ok_codes.

    `env` is the child's whole environment when given (build it with `child_env`);
    None means `child_env()`, never the runner's own environment. The child runs in a
    session of its own, privileges dropped to `as_user` before exec, stdin `input` (else
    /dev/null); at `timeout` its whole process group is killed and what it wrote so far is
    kept in the CommandError."""
    argv = tuple(str(a) for a in argv)
    if not argv or not argv[0]:
        raise ValueError("run: empty command")
    _debug("run: %s%s", argv, f" (as uid {as_user.uid})" if as_user else "")
    if isinstance(input, str):
        input = input.encode()
    started = time.monotonic()
    try:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=dict(env) if env is not None else child_env(), cwd=cwd,
                                 start_new_session=True, **_drop_privileges_kwargs(as_user))
    except FileNotFoundError as exc:
        if cwd is not None and exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd):
            raise CommandError(argv, 126, reason=f"could not start: no directory {cwd}") from exc
        raise CommandError(argv, 127, reason="program not found") from exc
    except OSError as exc:
        raise CommandError(argv, 126, reason=f"could not start: {exc}") from exc
    with popen:
        try:
            out, err = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(popen)
            try:  # what it wrote before the timeout; a pipe held by an escaped grandchild is abandoned
                out, err = popen.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
            raise CommandError(argv, -signal.SIGKILL, _decode(out), _decode(err),
                               reason=f"timed out after {timeout:g}s") from None
        except BaseException:
            _kill_group(popen)
            raise
    done = Completed(argv, popen.returncode, _decode(out), _decode(err), time.monotonic() - started)
    _debug("%s: exit %d after %.2fs", argv[:1], done.exit_code, done.seconds)
    if done.exit_code < 0:
        raise CommandError(argv, done.exit_code, done.stdout, done.stderr,
                           reason=f"killed by signal {-done.exit_code}")
    if done.exit_code not in ok_codes:
        raise CommandError(argv, done.exit_code, done.stdout, done.stderr)
    return done


def spawn(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    as_user: UserIds | None = None,
):
    """Start a long-lived process (a throwaway server) in its own session.

    Output goes to log_path so a failure can quote it. Returns the Popen; stop it
    with `terminate`. It is SIGKILLed by the kernel if this process dies first.
    """
    argv = tuple(str(a) for a in argv)
    _debug("spawn: %s", argv)
    with open(log_path, "ab") as out:
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else child_env(), cwd=cwd,
                start_new_session=True, preexec_fn=_die_with_parent(as_user),
            )
        except OSError as exc:
            raise CommandError(argv, 126, reason=f"could not start: {exc}") from exc


def ask_to_stop(popen) -> None:
    """SIGTERM the process group of a `spawn`ed process still running; no wait (`terminate` waits)."""
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def terminate(popen, timeout: float = 10.0) -> int:
    """SIGTERM the process group, SIGKILL after `timeout`; returns the exit code."""
    if popen.poll() is None:
        ask_to_stop(popen)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait(timeout)
    return popen.returncode
