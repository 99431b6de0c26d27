"""The WAL's own compression level: zstd 1 unless set, checked when the settings are read."""

from __future__ import annotations

import pytest

from strongroom.config import load_config
from strongroom.errors import ConfigError
from strongroom.services.runtime import Runtime
from strongroom.services.wal_push import wal_codec

KEY = {"BACKUP_ENCRYPTION_KEY": "A" * 43 + "=", "STRONGROOM_LOCATIONS": "local"}


def test_wal_is_zstd_level_1_by_default_while_backups_keep_their_level() -> None:
    config = load_config({**KEY, "BACKUP_LOCAL_PATH": "/nonexistent"})
    assert config.wal.compression_level is None
    codec = wal_codec(config)
    assert (codec.name, codec.level, codec.extension) == ("zstd", 1, "zst")
    assert Runtime.build(config).codec.level == 3  # the backups' codec is left alone


def test_the_setting_gives_the_level_and_the_backup_level_does_not() -> None:
    config = load_config({"BACKUP_WAL_COMPRESSION_LEVEL": "7", "BACKUP_COMPRESSION_LEVEL": "19"})
    assert config.wal.compression_level == 7
    assert wal_codec(config).level == 7
    assert wal_codec(load_config({"BACKUP_COMPRESSION_LEVEL": "19"})).level == 1


def test_other_codecs_keep_the_backup_level_unless_set() -> None:
    gzip = {"BACKUP_COMPRESSION": "gzip"}
    assert wal_codec(load_config(gzip)).level == 6
    assert wal_codec(load_config({**gzip, "BACKUP_COMPRESSION_LEVEL": "9"})).level == 9
    assert wal_codec(load_config({**gzip, "BACKUP_WAL_COMPRESSION_LEVEL": "2"})).level == 2
    plain = wal_codec(
        load_config({"BACKUP_COMPRESSION": "none", "BACKUP_WAL_COMPRESSION_LEVEL": "5"})
    )
    assert (plain.name, plain.level) == ("none", 0)  # no compression has no level


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"BACKUP_COMPRESSION": "gzip", "BACKUP_WAL_COMPRESSION_LEVEL": "12"},
            "BACKUP_WAL_COMPRESSION_LEVEL 12 is out of range for gzip; use 1-9",
        ),
        (
            {"BACKUP_WAL_COMPRESSION_LEVEL": "23"},
            "BACKUP_WAL_COMPRESSION_LEVEL must be between 1 and 22, got '23'",
        ),
        (
            {"BACKUP_WAL_COMPRESSION_LEVEL": "fast"},
            "BACKUP_WAL_COMPRESSION_LEVEL must be a compression level, got 'fast'",
        ),
    ],
)
def test_a_bad_level_is_one_line_when_the_settings_are_read(
    source: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(source)
    assert str(caught.value) == message
