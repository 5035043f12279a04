"""What every phase of a run needs, built once: config, environment, services, log."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .dispatchmap import load_ports
from .events import EventLog
from .services import Services
from .state import new_run_id, utc_now


@dataclass
class RunContext:
    cfg: Config
    env: dict[str, str]
    events: EventLog
    services: Services
    run_id: str = ""
    run_dir: Path | None = None
    now: callable = utc_now
    port_map: dict[str, int] | None = None  # read once: see ports()

    @classmethod
    def build(cls, cfg: Config, *, env=None, events=None) -> "RunContext":
        env = dict(os.environ if env is None else env)
        return cls(cfg=cfg, env=env, events=events or EventLog(), services=Services(cfg.systemctl))

    def ports(self) -> dict[str, int]:
        """OS user -> instance port, from the dispatch map as first read in this command (its
        start validates it): a map edited badly mid-run never stops a move back."""
        if self.port_map is None:
            self.port_map = load_ports(self.cfg.dispatch_map, self.cfg.os_users)
        return dict(self.port_map)

    def sso_names(self, os_user: str) -> list[str]:
        return sorted(sso for sso, user in self.cfg.users.items() if user == os_user)

    def open_run_dir(self, kind: str = "") -> Path:
        """This command's own directory under runs/ (`<kind>-<run id>`; a bump's is the bare run
        id, the only kind `history` lists): its events.log, gate reports and details files."""
        self.run_id = f"{kind}-{new_run_id(self.now())}" if kind else new_run_id(self.now())
        self.run_dir = self.cfg.runs_dir / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events.also_to(self.run_dir / "events.log")
        return self.run_dir
