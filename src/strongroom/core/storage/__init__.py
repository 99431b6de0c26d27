"""Storage locations behind one interface; importing this package registers every backend."""

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

__all__ = [
    "CheckResult",
    "LocalLocation",
    "Location",
    "LocationFactory",
    "ObjectInfo",
    "ObjectWriter",
    "S3Location",
    "b2_endpoint",
    "backend_for",
    "r2_endpoint",
    "register_backend",
]
