"""The configuration file: ``NAME=value`` lines with the same names as the environment.

PostgreSQL runs ``archive_command`` and ``restore_command`` with the server's environment, not
the operator's, so those commands (and anything else started far from a shell) need the settings
in a file: ``strongroom --config FILE`` or ``STRONGROOM_CONFIG=FILE``. The environment wins over
the file (see :func:`strongroom.config.environment`).

Format: one ``NAME=value`` per line; blank lines and lines starting with ``#`` are ignored; an
optional ``export`` prefix and single or double quotes around the value are allowed, so the same
file can be sourced by a shell. A ``#`` inside a value is part of it. Every problem is one line
naming the file and the line, never the value (it may be a key). Imports no Django.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from pathlib import Path

from strongroom.errors import ConfigError

_LINE = re.compile(r"(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)")


def read_config_file(
    path: str | os.PathLike[str], known: Collection[str] | None, secrets: Collection[str]
) -> dict[str, str]:
    """Every setting in the file at ``path``; ``ConfigError`` for any problem with it.

    ``known`` are the names a file may set (``None``: any name, for a reader that takes only
    names it knows); when it sets one of ``secrets``, group or other users must have no access
    to it.
    """
    shown = os.fspath(path)
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(_text(shown).splitlines(), start=1):
        item = _parse(line, shown, number)
        if item is None:
            continue
        name, value = item
        if known is not None and name not in known:
            raise ConfigError(f"{shown}, line {number}: {_unknown(name, known)}")
        if name in lines:
            raise ConfigError(
                f"{shown}, line {number}: {name} is already set on line {lines[name]}"
            )
        values[name], lines[name] = value, number
    if any(name in secrets for name in values):
        _check_private(shown)
    return values


def _text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"config file {path} cannot be read: {reason}") from None


def _parse(line: str, path: str, number: int) -> tuple[str, str] | None:
    """``(name, value)``, or ``None`` for a blank or comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    match = _LINE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{path}, line {number}: expected NAME=value")
    value = match["value"]
    if value[:1] in ("'", '"'):
        if len(value) < 2 or value[-1] != value[0]:
            raise ConfigError(f"{path}, line {number}: the value's closing {value[0]} is missing")
        value = value[1:-1]
    return match["name"], value


def _unknown(name: str, known: Collection[str]) -> str:
    import difflib  # only for this message: every command reads the file, few ever get here

    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {name}{hint}"


def _check_private(path: str) -> None:
    """A file holding a key or credentials must be the owner's alone."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} is readable by group or others: chmod 600 {path}")
