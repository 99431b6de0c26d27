"""Storage locations behind one interface; importing this package registers every backend.

Every module of this package is imported, and a backend module registers its class and the
location names it serves with their settings (:mod:`strongroom.core.storage.settings`), so adding
a backend means adding one module here (or registering it from anywhere before configuring).
"""

import importlib
import pkgutil

from strongroom.core.storage.base import (
    CheckResult,
    Location,
    LocationFactory,
    ObjectInfo,
    ObjectWriter,
    backend_for,
    register_backend,
)
from strongroom.core.storage.local import LocalLocation
from strongroom.core.storage.s3 import S3Location, b2_endpoint, r2_endpoint
from strongroom.core.storage.settings import (
    LocationType,
    Setting,
    known_locations,
    location_type,
    location_types,
    register_location,
    secret_setting_names,
    setting_names,
    unregister_location,
)


def _import_backends() -> None:
    """Import each module of the package: backends register themselves on import."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_backends()

__all__ = [
    "CheckResult",
    "LocalLocation",
    "Location",
    "LocationFactory",
    "LocationType",
    "ObjectInfo",
    "ObjectWriter",
    "S3Location",
    "Setting",
    "b2_endpoint",
    "backend_for",
    "known_locations",
    "location_type",
    "location_types",
    "r2_endpoint",
    "register_backend",
    "register_location",
    "secret_setting_names",
    "setting_names",
    "unregister_location",
]
