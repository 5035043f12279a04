"""The unit-file language: word splitting and quoting, [Section] Key=value with drop-ins,
EnvironmentFile= lines, $VAR expansion in ExecStart=, time spans, signal names."""
from __future__ import annotations

import re
import signal

from .common import UnitSettingError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_timespan(text: str) -> float | None:
    """systemd time span (``30``, ``1min 30s``, ``500ms``, ``infinity``) in seconds; None = infinity."""
    text = text.strip()
    if text in ("infinity", ""):
        return None
    units = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1,
             "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600,
             "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        if m.start() != pos:
            raise UnitSettingError(f"invalid time span {text!r}")
        unit = m.group(2) or "s"
        if unit not in units:
            raise UnitSettingError(f"invalid time unit in {text!r}")
        total += float(m.group(1)) * units[unit]
        pos = m.end()
    if pos != len(text):
        raise UnitSettingError(f"invalid time span {text!r}")
    return total


def format_timespan(seconds: float | None) -> str:
    if seconds is None:
        return "infinity"
    usec = round(seconds * 1_000_000)
    if usec == 0:
        return "0"
    parts = []
    for name, size in (("d", 86400_000_000), ("h", 3600_000_000), ("min", 60_000_000), ("s", 1_000_000), ("ms", 1000), ("us", 1)):
        if usec >= size:
            parts.append(f"{usec // size}{name}")
            usec %= size
    return " ".join(parts)


def signal_number(name: str) -> int:
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals(name if name.startswith("SIG") else "SIG" + name))
    except KeyError:
        raise UnitSettingError(f"unknown signal {name!r}") from None


def split_words(text: str) -> list[str]:
    """systemd's word splitting: whitespace, '...' and "..." quoting, C-style escapes."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = None
    i, n = 0, len(text)
    escapes = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
               "\\": "\\", '"': '"', "'": "'", "s": " ", " ": " ", "\t": "\t"}
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                cur.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
            else:
                cur.append(escapes.get(nxt, "\\" + nxt))
                i += 2
            in_word = True
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                cur.append(c)
        elif c in "\"'":
            quote = c
            in_word = True
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quote:
        raise UnitSettingError(f"unbalanced quoting in {text!r}")
    if in_word:
        words.append("".join(cur))
    return words


def parse_unit_text(fragments: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The [Section] Key=value entries of a unit file and its drop-ins, in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for path, text in fragments:
        section = None
        pending = ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            if not pending and (not line or line[0] in "#;"):
                continue
            if line.endswith("\\"):  # continued on the next line, the backslash becoming a space
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                sections.setdefault(section, [])
                continue
            if "=" not in line or section is None:
                raise UnitSettingError(f"{path}: cannot parse line {line!r}")
            key, value = line.split("=", 1)
            sections[section].append((key.strip(), value.strip()))
    return sections


def parse_env_file(text: str) -> list[tuple[str, str]]:
    """An EnvironmentFile=: KEY=VALUE lines, # and ; comments, shell-like quoting."""
    pairs = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i].strip()
            i += 1
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        if not ENV_NAME.match(key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\([\\"$`])', r"\1", value[1:-1])
        else:
            value = re.sub(r"\\(.)", r"\1", value)
        pairs.append((key, value))
    return pairs


def unescape_unit_name(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text.replace("-", "/"))


def expand_argument(word: str, env: dict[str, str]) -> list[str]:
    """One ExecStart= argument with variables substituted: ``$VAR`` alone splits at whitespace
    (zero or more words), ``${VAR}`` anywhere gives exactly its value, ``$$`` is ``$``."""
    whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
    if whole:
        return env.get(whole.group(1), "").split()
    return [re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                   lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), word)]
