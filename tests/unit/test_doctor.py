"""The doctor's pure checks, with what they read handed in (runner/doctor.py)."""
from __future__ import annotations

from types import SimpleNamespace
from pathlib import Path

import pytest

from runner import doctor, unitshow
from runner.doctor import Check

ACTIVE = Path("/var/lib/t3-autoupdate/active")
CFG = SimpleNamespace(active_link=lambda u: ACTIVE / u, serve_host="0.0.0.0", home_root=Path("/home"),
                      dispatch_map=Path("/etc/t3-dispatch/dispatch.json"), cookie_name="t3_session",
                      dispatch="http://127.0.0.1:3780", users={"vbarzin": "wizard"}, mint_helper="/usr/local/bin/t3-mint",
                      os_users=("wizard",), backup_dest=Path("/var/backups/t3-state"),
                      userdata_dir=lambda u: Path(f"/home/{u}/.t3/userdata"))
REAL_SHOW = (  # what systemd 252 prints (ExecStart's full form, EnvironmentFiles repeated)
    "LoadState=loaded\nNeedDaemonReload=no\nFragmentPath=/etc/systemd/system/t3-serve@.service\n"
    "DropInPaths=/etc/systemd/system/t3-serve@.service.d/t3-autoupdate.conf\n"
    "ExecStart={ path=/var/lib/t3-autoupdate/active/wizard/bin/t3 ; argv[]=/var/lib/t3-autoupdate/active/wizard/bin/t3 "
    "serve --host 0.0.0.0 --port ${T3_PORT} --base-dir /home/wizard/.t3 ; ignore_errors=no ; start_time=[n/a] ; "
    "stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n"
    'Environment="HOME=/home/wizard" NODE_ENV=production\n'
    "EnvironmentFiles=/etc/t3-serve/wizard.env (ignore_errors=no)\n"
    "EnvironmentFiles=/home/wizard/.config/claude-auth-sync/claude-oauth.env (ignore_errors=yes)\n")


def serve_check(show_text=REAL_SHOW, env_files=None, port=3781):
    files = {"/etc/t3-serve/wizard.env": "T3_PORT=3781\n"} if env_files is None else env_files
    read = []

    def read_env_file(path):
        read.append(str(path))
        return files.get(str(path))

    check = doctor.check_serve_unit(CFG, "wizard", port, show=lambda unit, props: show_text,
                                    read_env_file=read_env_file)
    return check, read


def test_exec_argv_reads_systemds_show_form():
    assert unitshow.exec_argv("{ path=/x ; argv[]=/x serve --port ${T3_PORT} ; ignore_errors=no }") == [
        "/x", "serve", "--port", "${T3_PORT}"]
    assert unitshow.exec_argv("{ path=/x ; argv[]=/x a b }") == ["/x", "a", "b"]
    assert unitshow.exec_argv("") == []


def test_unit_variables_and_env_assignments():
    assert unitshow.unit_variables(["--port", "${T3_PORT}", "$HOME", "plain"]) == {"T3_PORT", "HOME"}
    assert unitshow.env_assignments("# c\n; c\nT3_PORT=3781\nA='x y'\n\n") == {"T3_PORT": "3781", "A": "x y"}


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                       ("0.0.0.0", False), ("::", False), ("10.0.0.5", False)])
def test_is_loopback(host, loop):
    assert unitshow.is_loopback(host) is loop


def test_serve_unit_as_installed_is_ok_and_the_users_own_env_file_is_never_read():
    check, read = serve_check()
    assert check.ok, check.line()
    assert read == ["/etc/t3-serve/wizard.env"]  # not the file under /home (the user's)


@pytest.mark.parametrize("change,words", [
    (("active/wizard/bin/t3 serve", "active/wizard/bin/t3x serve"), "not the user's link"),
    (("argv[]=/var/lib/t3-autoupdate/active/wizard/bin/t3", "argv[]=/usr/bin/t3"), "runs /usr/bin/t3 serve"),
    (("--host 0.0.0.0", "--host 127.0.0.1"), "binds 127.0.0.1"),
    (("--host 0.0.0.0 ", ""), "binds (no --host)"),
    (("NeedDaemonReload=no", "NeedDaemonReload=yes"), "changed on disk"),
    (("LoadState=loaded", "LoadState=not-found"), "is not loaded"),
])
def test_serve_unit_problems(change, words):
    check, _ = serve_check(REAL_SHOW.replace(*change))
    assert not check.ok and words in check.what, check.line()


def test_a_variable_only_the_users_file_could_set_is_unset():
    check, _ = serve_check(env_files={"/etc/t3-serve/wizard.env": "# nothing\n",
                                      "/home/wizard/.config/claude-auth-sync/claude-oauth.env": "T3_PORT=3781\n"})
    assert not check.ok and "uses ${T3_PORT}" in check.what and "set T3_PORT in /etc/t3-serve/wizard.env" in check.fix


def test_a_missing_required_env_file_and_a_port_the_dispatch_does_not_use():
    check, _ = serve_check(env_files={})
    assert "EnvironmentFile /etc/t3-serve/wizard.env is missing" in check.what
    check, _ = serve_check(port=4000)
    assert "T3_PORT=3781, but the dispatch sends wizard to port 4000" in check.what


class Response:
    def __init__(self, status, cookies=()):
        self.status_code, self.cookies = status, list(cookies)


def dispatch_check(*answers, not_tried=None):
    answers = list(answers)

    def visit(sso, cookies):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return doctor.check_dispatch(CFG, "vbarzin", visit=visit, cookies_of=lambda r: r.cookies, not_tried=not_tried)


def test_dispatch_check_is_a_real_login():
    assert dispatch_check(Response(302, [("t3_session", "abc")]), Response(200)).ok
    paired_again = dispatch_check(Response(302, [("t3_session", "abc")]), Response(302, [("t3_session", "x")]))
    assert not paired_again.ok and "paired again" in paired_again.what
    renamed = dispatch_check(Response(302, [("t3_session_1a2b", "abc")]))
    assert not renamed.ok and "['t3_session_1a2b']" in renamed.what
    assert "add vbarzin to the dispatch's map" in dispatch_check(Response(403)).fix
    assert "/usr/local/bin/t3-mint wizard" in dispatch_check(Response(500)).fix
    assert "does not answer" in dispatch_check(ConnectionRefusedError()).what
    skipped = dispatch_check(not_tried="the mint helper is not the project's")
    assert not skipped.ok and "login not tried" in skipped.what


def test_timers():
    states = {"t3-autoupdate.timer": "enabled", "t3-autoupdate-drain.timer": "enabled",
              "t3-autoupdate-backup.timer": "enabled", "t3-migrate-idle.timer": "disabled"}
    assert doctor.check_timers(is_enabled=lambda t: states.get(t, "")).ok
    states.update({"t3-autoupdate-backup.timer": "", "t3-backup-state.timer": "enabled"})
    check = doctor.check_timers(is_enabled=lambda t: states.get(t, ""))
    assert "t3-autoupdate-backup.timer is missing" in check.what and "old t3-backup-state.timer" in check.what
    assert "systemctl disable --now t3-backup-state.timer" in check.fix


def test_backup_space():
    ok = doctor.check_backup_space(CFG, bytes_needed=lambda u: 100, free_bytes=lambda p: 150, margin=1.5)
    assert ok.ok, ok.line()
    short = doctor.check_backup_space(CFG, bytes_needed=lambda u: 100, free_bytes=lambda p: 149, margin=1.5)
    assert not short.ok and "needs 0.0 MB (0.0 MB x 1.5)" in short.what

    def refuse(os_user):
        raise OSError("userdata/state.sqlite is a symlink")

    unreadable = doctor.check_backup_space(CFG, bytes_needed=refuse, free_bytes=lambda p: 10**9, margin=1.5)
    assert not unreadable.ok and "is a symlink" in unreadable.what and "deferred" in unreadable.fix


def test_lines_and_exit_codes():
    good, bad = Check("timers", True, "all enabled"), Check("gate-user", False, "missing", "install-units")
    assert good.line() == "ok timers: all enabled"
    assert bad.line() == "PROBLEM gate-user: missing -> install-units"
    assert doctor.exit_code([good]) == 0
    assert doctor.exit_code([good, bad]) == 1
    assert doctor.exit_code([bad, Check("maps", False, "no entry", "fix it")]) == 2
    assert '"ok": false' in doctor.report([good, bad], as_json=True)


def test_a_check_that_cannot_be_done_is_a_problem_not_a_crash():
    def broken(cfg):
        raise RuntimeError("systemctl answered nonsense\nmore")

    check = doctor.guarded("instance wizard", broken, CFG)
    assert not check.ok and check.what == "could not check: RuntimeError: systemctl answered nonsense"
