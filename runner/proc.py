"""The one place the runner starts processes.

Every command goes through `run` (or `spawn` for a long-lived one): argv lists
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

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

log = logging.getLogger("t3-autoupdate.proc")


@dataclass(frozen=True)
class UserIds:
    uid: int
    gid: int
    name: str = ""

    @classmethod
    def owner_of(cls, st: os.stat_result) -> "UserIds":
        return cls(st.st_uid, st.st_gid)


@dataclass(frozen=True)
class Completed:
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


def _drop_privileges(user: UserIds | None):
    if user is None or os.geteuid() != 0 or user.uid == 0:
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
    import signal

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


def _kill_at_deadline(process, expired: threading.Event) -> None:
    """SIGKILL a command still running at its deadline (never a pid already reaped)."""
    import signal

    if process.exit_code is None:
        expired.set()
        try:
            process.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass


def _decode(data) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


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
    None means `child_env()`, never the runner's own environment."""
    argv = tuple(str(a) for a in argv)
    if not argv or not argv[0]:
        raise ValueError("run: empty command")
    log.debug("run: %s%s", format_argv(argv), f" (as uid {as_user.uid})" if as_user else "")
    started = time.monotonic()
    # The deadline is ours, not sh's `_timeout`: with it, sh's watcher thread wakes every
    # 0.1 s and the wait joins it, so every command cost up to 0.1 s more than it ran (a
    # backup of one database, five short commands, paid 0.5 s for nothing).
    kwargs = dict(
        _tty_out=False,
        _return_cmd=True,
        _ok_code=list(range(256)),
        _bg=True,
        _bg_exc=False,
        _env=dict(env) if env is not None else child_env(),
        _cwd=str(cwd) if cwd is not None else None,
        _in=input,
    )
    preexec = _drop_privileges(as_user)
    if preexec is not None:
        kwargs["_preexec_fn"] = preexec
    import sh  # here, not at the top: `run_light` callers (the mint) never pay for it

    try:
        cmd = sh.Command(argv[0])
    except sh.CommandNotFound as exc:
        raise CommandError(argv, 127, reason="program not found") from exc
    try:
        running = cmd(*argv[1:], **kwargs)
    except (OSError, sh.ForkException) as exc:
        raise CommandError(argv, 126, reason=f"could not start: {exc}") from exc
    expired = threading.Event()
    deadline = threading.Timer(timeout, _kill_at_deadline, (running.process, expired))
    deadline.daemon = True
    deadline.start()
    try:
        result = running.wait()
    except sh.SignalException as exc:
        reason = f"timed out after {timeout:g}s" if expired.is_set() else f"killed by signal {-exc.exit_code}"
        raise CommandError(argv, exc.exit_code, _decode(exc.stdout), _decode(exc.stderr), reason=reason) from exc
    finally:
        deadline.cancel()
    done = Completed(argv, result.exit_code, _decode(result.stdout), _decode(result.stderr),
                     time.monotonic() - started)
    log.debug("exit %d after %.2fs: %s", done.exit_code, done.seconds, argv[0])
    if done.exit_code not in ok_codes:
        raise CommandError(argv, done.exit_code, done.stdout, done.stderr)
    return done


def run_light(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 120.0,
    as_user: UserIds | None = None,
    ok_codes: Sequence[int] = (0,),
) -> Completed:
    """`run`'s contract (argv only, logged, CommandError unless the exit code is in ok_codes,
    `as_user` dropped to before exec) for a short command whose latency users feel: the
    mint, run on every login. Built on subprocess, so the caller never imports `sh`
    (the largest part of the mint's start-up). No stdin."""
    import subprocess

    argv = tuple(str(a) for a in argv)
    if not argv or not argv[0]:
        raise ValueError("run_light: empty command")
    log.debug("run: %s%s", format_argv(argv), f" (as uid {as_user.uid})" if as_user else "")
    started = time.monotonic()
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                env=dict(env) if env is not None else None, cwd=cwd,
                                preexec_fn=_drop_privileges(as_user))
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, reason="program not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -9, _decode(exc.stdout), _decode(exc.stderr),
                           reason=f"timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise CommandError(argv, 126, reason=f"could not start: {exc}") from exc
    done = Completed(argv, result.returncode, _decode(result.stdout), _decode(result.stderr),
                     time.monotonic() - started)
    log.debug("exit %d after %.2fs: %s", done.exit_code, done.seconds, argv[0])
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
    import subprocess

    argv = tuple(str(a) for a in argv)
    log.debug("spawn: %s", format_argv(argv))
    with open(log_path, "ab") as out:
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else child_env(), cwd=cwd,
                start_new_session=True, preexec_fn=_die_with_parent(as_user),
            )
        except OSError as exc:
            raise CommandError(argv, 126, reason=f"could not start: {exc}") from exc


def terminate(popen, timeout: float = 10.0) -> int:
    """SIGTERM the process group, SIGKILL after `timeout`; returns the exit code."""
    import signal
    import subprocess

    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait(timeout)
    return popen.returncode
