"""The project's own systemd unit files: load the shipped templates and fill them in.

Pure functions, no I/O beyond reading the templates shipped in ``runner/units/``.
A template names what the installer must supply as ``@NAME@`` placeholders
(``@ACTIVE_DIR@``, ``@HOME_ROOT@``, ``@SERVE_ENV_DIR@``, ``@SERVE_HOST@``, ``@BIN@``);
systemd's own specifiers (``%i``) and variables (``${T3_PORT}``) are left for systemd.

A host that already has a ``t3-serve@.service`` keeps it: only the drop-in
``t3-serve@.service.d/t3-autoupdate.conf`` (ExecStart reset to the user's link) is
installed over it (`units_for_host`).
"""
from __future__ import annotations

import re
from pathlib import Path

from .usermap import OS_USER_RE

UNITS_DIR = Path(__file__).resolve().parent / "units"
SERVE_TEMPLATE = "t3-serve@.service"
SERVE_DROPIN_TEMPLATE = "t3-serve-dropin.conf"
SERVE_DROPIN_PATH = "t3-serve@.service.d/t3-autoupdate.conf"  # where the drop-in is installed
OWN_UNITS = ("t3-autoupdate.service", "t3-autoupdate.timer", "t3-autoupdate-drain.service",
             "t3-autoupdate-drain.timer", "t3-autoupdate-backup.service", "t3-autoupdate-backup.timer")
UNIT_FILES = (SERVE_TEMPLATE, *OWN_UNITS)
TIMERS = tuple(name for name in OWN_UNITS if name.endswith(".timer"))
# The first line of the shipped serve template: a unit file that starts with it is ours
# (an earlier install-units), any other is the host's own and is never replaced.
OWN_SERVE_MARKER = "# One `t3 serve` instance per OS user; the instance name (%i) is the OS user."

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
# A value lands inside ExecStart=/EnvironmentFile=/WorkingDirectory= lines, where systemd
# would split it at whitespace, read % as a specifier, $ as a variable, quotes and
# backslashes as quoting, and a newline as a new directive. Refuse all of them.
_UNSAFE_VALUE = re.compile(r"[\s%$\"'\\;\x00-\x1f\x7f]")


def placeholders(template_text: str) -> set[str]:
    """The ``@NAME@`` placeholder names a template uses."""
    return set(_PLACEHOLDER.findall(template_text))


def render_unit(template_text: str, values: dict[str, str]) -> str:
    """Replace every ``@NAME@`` in ``template_text`` with ``values[NAME]``.

    Raises ValueError naming every placeholder left without a value, every key the
    template does not use, and every value systemd would not read back verbatim.
    Replacement is a single pass: a value is never itself searched for placeholders.
    """
    wanted = placeholders(template_text)
    problems = []
    missing = sorted(wanted - values.keys())
    unknown = sorted(values.keys() - wanted)
    if missing:
        problems.append("no value for placeholder(s) " + ", ".join(f"@{k}@" for k in missing))
    if unknown:
        problems.append("unknown key(s) " + ", ".join(unknown) + " (the template does not use them)")
    for key in sorted(values.keys() & wanted):
        value = values[key]
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: value must be a non-empty string, got {value!r}")
        elif _UNSAFE_VALUE.search(value):
            problems.append(
                f"{key}: value {value!r} has whitespace, a control character or one of % $ \" ' \\ ;"
            )
    if problems:
        raise ValueError("cannot render unit: " + "; ".join(problems))
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template_text)


def load_template(name: str) -> str:
    """The text of a shipped unit template, by file name (one of ``UNIT_FILES``)."""
    if name not in UNIT_FILES and name != SERVE_DROPIN_TEMPLATE:
        raise ValueError(f"unknown unit template {name!r}; shipped: {', '.join(UNIT_FILES)}, {SERVE_DROPIN_TEMPLATE}")
    return (UNITS_DIR / name).read_text(encoding="utf-8")


def render_all(values: dict[str, str], names: tuple[str, ...] = UNIT_FILES) -> dict[str, str]:
    """Every shipped unit file (or those `names`) rendered, by file name; each template takes
    the keys it uses.

    Raises ValueError for a key no template uses, or as ``render_unit`` does.
    """
    templates = {name: load_template(name) for name in names}
    used = set().union(*(placeholders(text) for text in templates.values()))
    unknown = sorted(values.keys() - used)
    if unknown:
        raise ValueError("cannot render units: unknown key(s) " + ", ".join(unknown))
    return {
        name: render_unit(text, {k: v for k, v in values.items() if k in placeholders(text)})
        for name, text in templates.items()
    }


def is_own_serve_unit(text: str) -> bool:
    """Whether a ``t3-serve@.service`` on disk is the project's template (else the host's own)."""
    return text.startswith(OWN_SERVE_MARKER)


def units_for_host(values: dict[str, str], *, host_serve_unit: bool) -> dict[str, str]:
    """What install-units writes, by path relative to the unit directory: the project's own
    units, and either the serve drop-in (the host has its own ``t3-serve@.service``) or
    the full serve template (it has none)."""
    serve = SERVE_DROPIN_TEMPLATE if host_serve_unit else SERVE_TEMPLATE
    if host_serve_unit:  # the host's unit names its own env files: the drop-in needs no dir
        values = {k: v for k, v in values.items() if k != "SERVE_ENV_DIR"}
    rendered = render_all(values, (serve, *OWN_UNITS))
    if host_serve_unit:
        rendered[SERVE_DROPIN_PATH] = rendered.pop(SERVE_DROPIN_TEMPLATE)
    return rendered


def serve_unit_name(os_user: str) -> str:
    """The unit of one user's serve instance: ``t3-serve@<os_user>.service``."""
    if not isinstance(os_user, str) or not OS_USER_RE.fullmatch(os_user):
        raise ValueError(f"invalid OS user name {os_user!r} (must match {OS_USER_RE.pattern})")
    return f"t3-serve@{os_user}.service"
