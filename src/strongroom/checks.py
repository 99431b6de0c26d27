"""Django system checks: a bad strongroom setting shows up in ``manage.py check``, not at 02:00.

Malformed settings (a key that is not 32 url-safe base64 bytes, an unknown codec, impossible
time limits) are errors. A missing key is only a warning: a developer's machine that never backs
up must still run ``migrate`` and ``runserver``. Nothing here touches the network or a database.
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from strongroom.errors import StrongroomError


@checks.register("strongroom")
def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from strongroom.conf import config_from_django
    from strongroom.core.crypto import Keyring
    from strongroom.services.runtime import codec_for

    try:
        config = config_from_django()
        codec_for(config)
    except StrongroomError as exc:
        return [checks.Error(str(exc), id="strongroom.E001")]
    if not config.encryption_key:
        return [
            checks.Warning(
                "BACKUP_ENCRYPTION_KEY is not set: strongroom cannot back up or restore",
                hint="generate one with `strongroom keygen` and keep a copy off this server",
                id="strongroom.W001",
            )
        ]
    try:
        Keyring.from_strings(config.encryption_key, config.old_encryption_keys)
    except StrongroomError as exc:
        return [checks.Error(str(exc), id="strongroom.E002")]
    return []
