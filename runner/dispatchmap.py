"""The dispatch's own map, `dispatch.json`: which port each OS user's instance listens on.

`{"<sso name>": {"os_user": "<os user>", "port": <port>}, ...}`, the file the production
dispatch reads. It is validated whole when a command that needs it starts (every problem
reported at once, naming the file and the entry), and a run reads it once, before anyone
is moved: a map edited badly in the middle of a run must never stop a rollback.
"""
from __future__ import annotations

import json
from pathlib import Path

from .usermap import OS_USER_RE


class DispatchMapError(ValueError):
    def __init__(self, path: Path, problems: list[str]):
        self.problems = [f"{path}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))


def parse_ports(path: Path, text: str, os_users=()) -> dict[str, int]:
    """OS user -> port from the map's text; DispatchMapError with every problem found.

    Each OS user in `os_users` (the user map's) must have a port: the canary and the
    rollback reach an instance by it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DispatchMapError(path, [f"not valid JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise DispatchMapError(path, [f"must be a JSON object of sso name -> {{os_user, port}}, "
                                      f"not {type(data).__name__}"])
    problems, ports, owner_of_port = [], {}, {}
    for sso, entry in data.items():
        if not isinstance(entry, dict):
            problems.append(f"{sso}: must be an object with os_user and port")
            continue
        os_user, port = entry.get("os_user"), entry.get("port")
        if not isinstance(os_user, str) or not OS_USER_RE.fullmatch(os_user):
            problems.append(f"{sso}: os_user {os_user!r} is not a valid OS user name")
            continue
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.append(f"{sso}: port {port!r} is not a port number (1-65535)")
            continue
        if ports.get(os_user, port) != port:
            problems.append(f"{sso}: {os_user} has two ports ({ports[os_user]} and {port})")
        elif owner_of_port.get(port, os_user) != os_user:
            problems.append(f"{sso}: port {port} is already {owner_of_port[port]}'s")
        ports[os_user], owner_of_port[port] = port, os_user
    if not problems:  # a broken entry may be the missing user's: report that one only
        problems = [f"no entry for OS user {u} of the user map" for u in os_users if u not in ports]
    if problems:
        raise DispatchMapError(path, problems)
    return ports


def load_ports(path: Path, os_users=()) -> dict[str, int]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DispatchMapError(path, [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    return parse_ports(Path(path), text, os_users)
