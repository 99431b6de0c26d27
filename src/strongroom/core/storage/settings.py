"""Which settings a location reads, declared by the backend module that serves it.

A backend module registers one :class:`LocationType` per location name it serves (``local``,
``r2``, ``b2``, ...): the backend class, every setting with its parser, default and secrecy, and
how derived options are filled in. The configuration loader, the Django settings list, the config
file's known names and the README's table all read these declarations, so they cannot drift, and
adding a backend means adding one module. Nothing here imports Django or :mod:`strongroom.config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strongroom import numbers
from strongroom.errors import ConfigError
from strongroom.numbers import Number, whole

if TYPE_CHECKING:
    from strongroom.core.storage.base import Location

#: ``parse(setting_name, raw_value)``: the typed value, or a ``ConfigError`` naming the setting.
Parser = Callable[[str, Any], Any]
#: Setting name -> parsed value, ``None`` when the setting is unset (or blank).
Values = dict[str, Any]


def raw(source: Mapping[str, Any], name: str) -> Any:
    """``source[name]`` with surrounding blanks removed; unset and blank both mean ``None``."""
    value = source.get(name)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def text(name: str, value: Any) -> str:
    """Any value, as text."""
    return str(value)


#: Numeric parsers (:class:`strongroom.numbers.Number`): finite, in range, named by the setting.
#: A backend declares its own range with ``whole(low, high)`` or ``seconds(high=...)``.
integer = Number("an integer", whole=True)
whole_number = whole(0)
seconds = numbers.seconds()
#: Days a copy is kept (every location's retention setting).
days = numbers.DAYS


def numeric_settings() -> tuple[Setting, ...]:
    """Every registered location's numeric settings, retention included (tests cover each)."""
    return tuple(
        s
        for t in location_types()
        for s in (*t.settings, t.retention, *_optional(t.tenant_retention))
        if isinstance(s.parse, Number)
    )


def _optional(setting: Setting | None) -> tuple[Setting, ...]:
    return (setting,) if setting is not None else ()


@dataclass(frozen=True)
class Setting:
    """One setting a location reads, and the backend option it fills."""

    name: str
    #: Key in the options for ``Location.from_options``; ``None`` when only ``derive`` reads it.
    option: str | None = None
    parse: Parser = text
    default: Any = None
    #: Missing (after ``derive``) makes the location unusable; ``hint`` is what to set instead.
    required: bool = False
    hint: str = ""
    #: Credentials and keys: never shown, and a config file holding one must be private.
    secret: bool = False


@dataclass(frozen=True)
class LocationOptions:
    """What the settings say about one location: backend options, or why it is unusable."""

    options: dict[str, Any]
    retention_days: int
    problem: str = ""
    #: Days a tenant backup's copy is kept here (its own series beside the full backups).
    tenant_retention_days: int | None = None


@dataclass(frozen=True)
class LocationType:
    """A location name, the backend class that serves it and every setting it reads."""

    name: str
    backend: type[Location]
    settings: tuple[Setting, ...]
    #: Days a copy is kept (``parse=days``: at least 1); its default applies when unset.
    retention: Setting
    #: Fill options from other settings (an endpoint from an account id), given parsed values.
    derive: Callable[[Values, dict[str, Any]], None] | None = None
    #: Days a tenant backup's copy is kept; ``None``: the same as ``retention``.
    tenant_retention: Setting | None = None

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def names(self) -> tuple[str, ...]:
        """Every setting name this location reads, retention included."""
        extra = (self.tenant_retention.name,) if self.tenant_retention else ()
        return (*(s.name for s in self.settings), self.retention.name, *extra)

    @property
    def secret_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings if s.secret)

    def read(self, source: Mapping[str, Any]) -> LocationOptions:
        """This location's settings parsed from ``source``; a malformed value is a ConfigError."""
        values = {s.name: _parsed(source, s) for s in self.settings}
        options: dict[str, Any] = {}
        for s in self.settings:
            value = values[s.name] if values[s.name] is not None else s.default
            if s.option is not None and value is not None:
                options[s.option] = value
        if self.derive is not None:
            self.derive(values, options)
        missing = _missing(self.settings, values, options)
        problem = f"{self.name} is not configured: set {', '.join(missing)}" if missing else ""
        days = _parsed(source, self.retention)
        days = self.retention.default if days is None else days
        tenant = self.tenant_retention
        tenant_days = None
        if tenant is not None:
            tenant_days = _parsed(source, tenant)
            tenant_days = tenant.default if tenant_days is None else tenant_days
        return LocationOptions(
            options, int(days), problem, None if tenant_days is None else int(tenant_days)
        )


def _missing(settings: tuple[Setting, ...], values: Values, options: dict[str, Any]) -> list[str]:
    """What to set, in declaration order: required settings still empty after ``derive``."""
    return [
        s.hint or s.name
        for s in settings
        if s.required and not (options.get(s.option) if s.option else values[s.name])
    ]


def _parsed(source: Mapping[str, Any], setting: Setting) -> Any:
    value = raw(source, setting.name)
    return None if value is None else setting.parse(setting.name, value)


_LOCATIONS: dict[str, LocationType] = {}


def register_location(location_type: LocationType) -> LocationType:
    """Serve ``location_type.name`` (a later registration of the same name replaces it)."""
    _LOCATIONS[location_type.name] = location_type
    return location_type


def unregister_location(name: str) -> None:
    """Forget a location name (tests that register their own backend clean up with this)."""
    _LOCATIONS.pop(name, None)


def location_types() -> tuple[LocationType, ...]:
    """Every registered location, in registration order."""
    return tuple(_LOCATIONS.values())


def location_type(name: str) -> LocationType:
    """The registered location ``name``; a ``ConfigError`` lists the known names otherwise."""
    try:
        return _LOCATIONS[name]
    except KeyError:
        raise ConfigError(
            f"STRONGROOM_LOCATIONS names unknown location {name!r}: use {known_locations()}"
        ) from None


def known_locations() -> str:
    """``local, r2 and/or b2``: the registered names, for messages."""
    names = list(_LOCATIONS)
    if len(names) < 2:
        return names[0] if names else "none (no storage backend is registered)"
    return f"{', '.join(names[:-1])} and/or {names[-1]}"


def setting_names() -> tuple[str, ...]:
    """Every setting name the registered locations read."""
    return tuple(n for t in location_types() for n in t.names)


def secret_setting_names() -> tuple[str, ...]:
    return tuple(n for t in location_types() for n in t.secret_names)
