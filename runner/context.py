"""What every phase of a run needs, built once: config, environment, services, log."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .config import Config
from .events import EventLog
from .services import Services
from .state import utc_now


def instance_ports(dispatch_map: Path) -> dict[str, int]:
    """OS user -> port of their instance, from the dispatch's own map."""
    data = json.loads(Path(dispatch_map).read_text())
    return {str(entry["os_user"]): int(entry["port"]) for entry in data.values()}


@dataclass
class RunContext:
    cfg: Config
    env: dict[str, str]
    events: EventLog
    services: Services
    run_id: str = ""
    run_dir: Path | None = None
    now: callable = utc_now
    outcome: dict = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: Config, *, env=None, events=None) -> "RunContext":
        env = dict(os.environ if env is None else env)
        return cls(cfg=cfg, env=env, events=events or EventLog(), services=Services(cfg.systemctl))

    def ports(self) -> dict[str, int]:
        return instance_ports(self.cfg.dispatch_map)

    def sso_names(self, os_user: str) -> list[str]:
        return sorted(sso for sso, user in self.cfg.users.items() if user == os_user)

    def stamp(self) -> datetime:
        return self.now()
