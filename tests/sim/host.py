"""A replica of the host this tracker takes over (docs: the contract's "The deployment this
tracker takes over"), inside one temporary root, before the takeover:

    <root>/usr/bin/t3                         the global binary (npm -g), what every unit runs
    <root>/usr/local/bin/t3-mint              the deployment's own helper: validates the user
                                              against the user map, runs the GLOBAL t3's pairing
    <root>/etc/systemd/system/t3-serve@.service   the host's unit: containment, credentials
                                              EnvironmentFile, HOME/PATH/NODE_ENV, Restart
    <root>/etc/systemd/system/t3-migrate-idle.*, t3-backup-state.*   the old jobs, enabled
    <root>/etc/systemd/system/t3-autoupdate.{service,timer}   the bash tracker's own units
    <root>/etc/t3-serve/<u>.env               T3_PORT only
    <root>/var/lib/t3-autoupdate/last-good, deferred/<u>   the bash tracker's state
    <root>/var/backups/t3-state/<u>/state-<ts>.sqlite, state-prebump-<v>-<ts>.sqlite

No releases, no links, no project units, no project-owned state. The dispatch stand-in
calls `<root>/usr/local/bin/t3-mint` by path, as production does. Everything else (the
registry, the systemctl stand-in, users' populated databases) is the simulated world's.
"""
from __future__ import annotations

import shutil

from runner.units import serve_unit_name

from . import dbgen
from .dispatch import Dispatch
from .systemctl import install_systemctl
from .world import SCHEMA_OF, World

OLD_JOBS = {"t3-migrate-idle": "*-*-* 01..05:00/20", "t3-backup-state": "*-*-* 03:30:00"}
LEGACY_DAILY = "state-20260601-033000.sqlite"  # the bash tracker's own stamp format
LEGACY_PREBUMP = "state-prebump-0.0.23-20260531-040012.sqlite"
CREDENTIALS = "claude-auth-sync/claude-oauth.env"
BASH_TRACKER_UNITS = {  # same names as the project's: replaced, and kept aside
    "service": "[Unit]\nDescription=t3 nightly (bash)\n\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/t3-update\n",
    "timer": "[Timer]\nOnCalendar=*-*-* 04:00:00\n\n[Install]\nWantedBy=timers.target\n",
}


class OriginalHost(World):
    def __init__(self, root, *, deferred: dict[str, str] | None = None, **options):
        super().__init__(root, **options)
        self.global_prefix = self.root / "usr"
        self.global_t3 = self.global_prefix / "bin" / "t3"
        # The bash tracker's one-line markers: os_user -> line.
        self.legacy_deferred = deferred if deferred is not None else {"emo": f"{self.installed} busy: claude child"}

    def host_serve_unit(self) -> str:
        home = self.home_root
        return (
            "[Unit]\nDescription=T3 Code server for %i\nAfter=network-online.target\n\n"
            "[Service]\nType=simple\nUser=%i\n"
            f"EnvironmentFile={self.serve_env_dir}/%i.env\n"
            f"EnvironmentFile=-{home}/%i/.config/{CREDENTIALS}\n"
            f"Environment=HOME={home}/%i\nEnvironment=PATH=/usr/local/bin:/usr/bin:/bin\n"
            "Environment=NODE_ENV=production\n"
            f"ExecStart={self.global_t3} serve --host 0.0.0.0 --port ${{T3_PORT}} --base-dir {home}/%i/.t3\n"
            "Restart=on-failure\nRestartSec=5\n"
            "MemoryHigh=infinity\nMemoryMax=24G\nMemorySwapMax=0\nOOMPolicy=continue\n\n"
            "[Install]\nWantedBy=multi-user.target\n")

    def old_mint_helper(self) -> str:
        """The deployment's helper, `setpriv` to the user's uid standing in for `runuser -u <user>`
        (simulated users have no passwd entry)."""
        uids = "".join(f"    {name}) uid={uid} ;;\n" for name, uid in self.uids.items())
        return ("#!/bin/bash\n# /usr/local/bin/t3-mint: mint a pairing credential for an OS user\nset -euo pipefail\n"
                'u="${1:-}"\n'
                f'grep -Eq "^[^#=]+=[[:space:]]*${{u}}[[:space:]]*$" "{self.user_map}" '
                '|| { echo "unknown user: $u" >&2; exit 1; }\n'
                f'case "$u" in\n{uids}    *) echo "no uid for $u" >&2; exit 1 ;;\nesac\n'
                'exec setpriv --reuid="$uid" --regid="$uid" --clear-groups -- '
                f'"{self.global_t3}" auth pairing create --base-dir "{self.home_root}/$u/.t3" --ttl 5m --json\n')

    def build(self) -> "OriginalHost":
        for d in (self.etc, self.serve_env_dir, self.unit_dir, self.home_root, self.state_dir, self.backup_dest,
                  self.scratch, self.mint_helper.parent, self.config_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        self._publish_catalogue()
        self._write_maps()
        self.npm_install(self.installed, self.global_prefix)
        (self.unit_dir / "t3-serve@.service").write_text(self.host_serve_unit())
        for suffix, text in BASH_TRACKER_UNITS.items():
            (self.unit_dir / f"t3-autoupdate.{suffix}").write_text(text)
        for name, calendar in OLD_JOBS.items():
            (self.unit_dir / f"{name}.service").write_text(
                f"[Unit]\nDescription=old {name}\n\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/{name}\n")
            (self.unit_dir / f"{name}.timer").write_text(
                f"[Timer]\nOnCalendar={calendar}\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n")
        self.systemctl = install_systemctl(self.root / "sim", self.unit_dir, user_map_file=self._write_users_file())
        for name in OLD_JOBS:
            self.systemctl_run("enable", "--now", f"{name}.timer")
        self.mint_helper.write_text(self.old_mint_helper())
        self.mint_helper.chmod(0o755)
        self._write_config()
        (self.state_dir / "last-good").write_text(self.installed + "\n")
        (self.state_dir / "deferred").mkdir()
        for os_user, line in self.legacy_deferred.items():
            (self.state_dir / "deferred" / os_user).write_text(line + "\n")
        for user in self.users:
            options = {"threads": self.threads, "messages_per_thread": self.messages_per_thread,
                       **self.db_options.get(user.os_user, {})}
            dbgen.make_database(self.database(user.os_user), SCHEMA_OF[self.installed], **options)
            credentials = self.home_root / user.os_user / ".config" / CREDENTIALS
            credentials.parent.mkdir(parents=True)
            credentials.write_text(f"CLAUDE_CODE_OAUTH_TOKEN=sim-{user.os_user}\n")
            self._own_home(user.os_user)  # as on the host: the home and all in it are the user's
            backups = self.backup_dest / user.os_user
            backups.mkdir(parents=True)
            for name in (LEGACY_DAILY, LEGACY_PREBUMP):
                shutil.copyfile(self.database(user.os_user), backups / name)
        for user in self.users:
            self.systemctl_run("start", serve_unit_name(user.os_user))
        for user in self.users:
            self.wait_instance_ready(user.sso)
        self.dispatch = Dispatch(self.dispatch_map, self.mint_helper, port=self.dispatch_port).start()
        return self

    def legacy_backups(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.backup_dest)): p.read_bytes()
                for u in self.users for p in sorted((self.backup_dest / u.os_user).glob("state-*.sqlite"))
                if p.name in (LEGACY_DAILY, LEGACY_PREBUMP)}
