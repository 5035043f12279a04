"""Reading what `systemctl show` prints about a unit (pure functions), and the variables its
command line uses: the serve unit's *effective* settings, drop-ins applied, as systemd has
them loaded (`t3-autoupdate doctor`)."""
from __future__ import annotations

import ipaddress
import re
import shlex

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# One `EnvironmentFiles=` value: `<path> (ignore_errors=yes|no)` (systemd repeats the key per file).
ENV_FILE = re.compile(r"(\S+) \(ignore_errors=(yes|no)\)")


def parse_show(text: str) -> dict[str, list[str]]:
    """`systemctl show -p A -p B unit` output: key -> every value (systemd repeats some keys)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key, []).append(value)
    return found


def exec_argv(value: str) -> list[str]:
    """The argv of one `ExecStart={ path=... ; argv[]=... ; ... }` value (systemd's show form)."""
    match = re.search(r"argv\[\]=(.*?)(?: ; | ?\}$)", value.strip())
    return match.group(1).split() if match else []


def unit_variables(argv: list[str]) -> set[str]:
    return {a or b for word in argv for a, b in _VARIABLE.findall(word)}


def env_assignments(text: str) -> dict[str, str]:
    """KEY=VALUE lines of an Environment= value or an EnvironmentFile (# and ; comments)."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            found.update(w.split("=", 1) for w in words if "=" in w)
    return found


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") in ("localhost", "localhost.localdomain")
