"""Turn a ``Config`` into live parts: keyring, codec and storage locations.

Everything that can be checked without touching the database or the network is checked here,
before any work starts, so a bad key or an unknown codec is one clear line and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from strongroom.config import Config, LocationSpec
from strongroom.core.codecs import Codec, get_codec
from strongroom.core.crypto import Keyring
from strongroom.core.storage import backend_for
from strongroom.core.storage.base import Location
from strongroom.errors import ConfigError


@dataclass
class Runtime:
    """The configured machinery one operation uses."""

    config: Config
    keyring: Keyring
    codec: Codec
    locations: list[Location]
    #: Locations named in the settings but not usable (missing credentials), with the reason.
    unconfigured: dict[str, str]

    @classmethod
    def build(cls, config: Config) -> Runtime:
        keyring = Keyring.from_strings(config.encryption_key, config.old_encryption_keys)
        codec = codec_for(config)
        locations, unconfigured = build_locations(config.locations)
        return cls(config, keyring, codec, locations, unconfigured)

    def location(self, name: str) -> Location:
        for loc in self.locations:
            if loc.name == name:
                return loc
        if name in self.unconfigured:
            raise ConfigError(self.unconfigured[name])
        self.config.location(name)  # raises with the list of configured names
        raise ConfigError(f"location {name!r} is not available")

    def retention_days(self, name: str, backup_type: str = "FULL_DATABASE") -> int:
        """Days a copy of a ``backup_type`` backup is kept in location ``name``."""
        spec = self.config.location(name)
        if backup_type == "TENANT_BACKUP" and spec.tenant_retention_days is not None:
            return spec.tenant_retention_days
        return spec.retention_days


def codec_for(config: Config) -> Codec:
    """The configured codec: fixed, or adaptive zstd between its floor and ceiling."""
    return get_codec(
        config.codec,
        config.codec_level,
        config.codec_threads,
        min_level=config.codec_min_level,
        adapt=config.codec_adapt,
    )


def build_locations(specs: tuple[LocationSpec, ...]) -> tuple[list[Location], dict[str, str]]:
    """Instantiate configured locations; collect the reason for each one that is not."""
    locations: list[Location] = []
    unconfigured: dict[str, str] = {}
    for spec in specs:
        if spec.problem:
            unconfigured[spec.name] = spec.problem
            continue
        location = backend_for(spec.kind).from_options(spec.name, spec.options)
        location.required = spec.required
        locations.append(location)
    return locations, unconfigured
