"""Numeric settings: finite, in their documented range, and named by the variable that was set.

Shared by :mod:`strongroom.config` (the general settings) and the storage backends'
declarations (:mod:`strongroom.core.storage.settings`), so every number an operator writes is
checked the same way before any work starts. Declaring a new numeric setting is one
:class:`Number`; its parser is the instance itself (``parse(name, raw_value)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from strongroom.errors import ConfigError

#: The longest duration any setting may ask for: a year (and far below ``threading.TIMEOUT_MAX``).
MAX_SECONDS = 366 * 24 * 3600
MIB = 1024 * 1024


@dataclass(frozen=True)
class Number:
    """How one numeric setting is read: whole or not, and the closed range allowed.

    ``above`` is an exclusive lower bound (a timeout must be more than 0), ``low`` an inclusive
    one; ``high`` is inclusive. ``what`` is the noun of the messages ("a number of seconds").
    """

    what: str
    whole: bool = False
    low: float | None = None
    above: float | None = None
    high: float | None = None

    def __call__(self, name: str, value: Any) -> Any:
        """``value`` as an int or float, or a ``ConfigError`` naming ``name``."""
        number = self._convert(name, value)
        if not self.allows(number):
            raise ConfigError(f"{name} must be {self.range}, got {value!r}")
        return number

    def allows(self, number: float) -> bool:
        """Whether ``number`` is inside this setting's range."""
        return (
            (self.low is None or number >= self.low)
            and (self.above is None or number > self.above)
            and (self.high is None or number <= self.high)
        )

    @property
    def range(self) -> str:
        """The allowed values in words, for messages and documentation."""
        low = f"more than {_g(self.above)}" if self.above is not None else None
        if low is None and self.low is not None:
            low = f"at least {_g(self.low)}"
        if low and self.high is not None:
            if self.low is not None:
                return f"between {_g(self.low)} and {_g(self.high)}"
            return f"{low} and at most {_g(self.high)}"
        return low or (f"at most {_g(self.high)}" if self.high is not None else self.what)

    def _convert(self, name: str, value: Any) -> Any:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be {self.what}, got {value!r}")
        try:
            number = float(value) if not isinstance(value, int) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be {self.what}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if not self.whole:
            return float(number)
        if isinstance(value, str):  # "3.0" and "1e3" are not how a count is written
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{name} must be {self.what}, got {value!r}") from None
        if not float(number).is_integer():
            raise ConfigError(f"{name} must be {self.what}, got {value!r}")
        return int(number)


def _g(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def seconds(*, high: float = MAX_SECONDS) -> Number:
    """A duration: more than 0 and at most ``high`` seconds."""
    return Number("a number of seconds", above=0, high=high)


def whole(low: int, high: int | None = None, what: str = "a whole number") -> Number:
    """A count (attempts, jobs, an hour of the day) from ``low`` to ``high``."""
    return Number(what, whole=True, low=low, high=high)


#: Days a copy is kept: at least one, at most a century.
DAYS = whole(1, 36500, "a whole number of days")
