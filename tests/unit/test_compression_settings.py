"""Compression settings: adaptive zstd by default, fixed on request, bounds in one line."""

from __future__ import annotations

import pytest

from strongroom.config import GENERAL_SETTINGS, load_config
from strongroom.core.codecs import Codec
from strongroom.errors import ConfigError
from strongroom.services.runtime import codec_for


def codec(**settings: str) -> Codec:
    return codec_for(load_config(settings))


def refused(**settings: str) -> str:
    with pytest.raises(ConfigError) as caught:
        codec(**settings)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_default_is_adaptive_zstd_from_level_1_to_3() -> None:
    assert codec() == Codec("zstd", 3, "zst", -1, min_level=1)
    assert codec(BACKUP_COMPRESSION_LEVEL="7", BACKUP_COMPRESSION_MIN_LEVEL="2") == Codec(
        "zstd", 7, "zst", -1, min_level=2
    )


@pytest.mark.parametrize("off", ["false", "0", "no", "off", "FALSE"])
def test_fixed_level_on_request(off: str) -> None:
    fixed = codec(BACKUP_COMPRESSION_ADAPT=off, BACKUP_COMPRESSION_LEVEL="5")
    assert fixed == Codec("zstd", 5, "zst", -1) and not fixed.adaptive


def test_gzip_and_none_stay_fixed() -> None:
    assert not codec(BACKUP_COMPRESSION="gzip").adaptive
    assert codec(BACKUP_COMPRESSION="none", BACKUP_COMPRESSION_ADAPT="").level == 0


def test_floor_above_ceiling_is_one_clear_line() -> None:
    message = refused(BACKUP_COMPRESSION_LEVEL="2", BACKUP_COMPRESSION_MIN_LEVEL="3")
    assert message.startswith("BACKUP_COMPRESSION_MIN_LEVEL 3 is above BACKUP_COMPRESSION_LEVEL 2")


def test_floor_out_of_range() -> None:
    assert "use 1-22" in refused(BACKUP_COMPRESSION_MIN_LEVEL="30")


def test_adapt_is_a_boolean() -> None:
    assert refused(BACKUP_COMPRESSION_ADAPT="sometimes") == (
        "BACKUP_COMPRESSION_ADAPT must be true or false, got 'sometimes'"
    )


def test_adapting_gzip_is_refused() -> None:
    assert "only zstd adapts" in refused(BACKUP_COMPRESSION="gzip", BACKUP_COMPRESSION_ADAPT="1")


def test_the_names_are_known_settings() -> None:
    assert {"BACKUP_COMPRESSION_MIN_LEVEL", "BACKUP_COMPRESSION_ADAPT"} <= set(GENERAL_SETTINGS)
