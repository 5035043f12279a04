"""The SSO-to-OS user map (`/etc/ttyd-user-map`) and the SSO header's user name.

Format, one mapping a line::

    # comment
    vbarzin = wizard
    alice=alice

Blank lines and lines whose first non-blank character is `#` are ignored; spaces around
`=` are allowed. An OS user name must match ``^[a-z_][a-z0-9_-]{0,31}$``. Several SSO
names may map to one OS user; an SSO name may appear only once. Every problem in the
file is collected and reported at once, each as ``<source>:<lineno>: <problem>``.

This module is pure (no I/O except `load_user_map`) and is shared by the production
runner and the test simulators.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["OS_USER", "OS_USER_RE", "UserMapError", "parse_user_map", "load_user_map", "sso_local_part"]

OS_USER = r"[a-z_][a-z0-9_-]{0,31}"  # the one OS user name pattern (gates/seeds.py builds on it too)
# Always used with fullmatch: `$` alone would also match before a trailing newline.
OS_USER_RE = re.compile(rf"^{OS_USER}$")
_WHITESPACE = re.compile(r"\s")


class UserMapError(ValueError):
    """The user map is malformed. `problems` holds one `<source>:<lineno>: <problem>` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def parse_user_map(text: str, source: str = "<user map>") -> dict[str, str]:
    """Parse the user map text into ``{sso_name: os_user}``; raise `UserMapError` on any problem."""
    mapping: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    problems: list[str] = []

    def bad(lineno: int, problem: str) -> None:
        problems.append(f"{source}:{lineno}: {problem}")

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            bad(lineno, f"expected sso_name=os_user, got {line!r}")
            continue
        sso, _, os_user = (part.strip() for part in line.partition("="))
        line_ok = True
        if not sso:
            bad(lineno, f"empty SSO name in {line!r}")
            line_ok = False
        elif _WHITESPACE.search(sso):
            bad(lineno, f"SSO name {sso!r} contains whitespace")
            line_ok = False
        elif "@" in sso:
            bad(lineno, f"SSO name {sso!r} must be the email's local part (no '@')")
            line_ok = False
        if not os_user:
            bad(lineno, f"empty OS user name in {line!r}")
            line_ok = False
        elif not OS_USER_RE.fullmatch(os_user):
            bad(lineno, f"invalid OS user name {os_user!r} (must match {OS_USER_RE.pattern})")
            line_ok = False
        if sso and sso in first_seen:
            bad(lineno, f"duplicate SSO name {sso!r} (first on line {first_seen[sso]})")
            continue
        if sso:
            first_seen[sso] = lineno
        if line_ok:
            mapping[sso] = os_user
    if problems:
        raise UserMapError(problems)
    return mapping


def load_user_map(path: str | Path) -> dict[str, str]:
    """Read and parse the user map at `path` (errors name the path). OSError propagates."""
    path = Path(path)
    return parse_user_map(path.read_text(encoding="utf-8"), source=str(path))


def sso_local_part(header_value: str | None) -> str:
    """The user name the dispatch uses from `X-authentik-username`: an email's local part.

    ``vbarzin@example.org`` -> ``vbarzin``; a bare ``vbarzin`` stays as is. Raise
    `ValueError` if the header is missing or yields an empty name.
    """
    if header_value is None:
        raise ValueError("no SSO user name")
    value = header_value.strip()
    local = value.rpartition("@")[0] if "@" in value else value
    local = local.strip()
    if not local:
        raise ValueError(f"empty SSO user name in {header_value!r}")
    return local
