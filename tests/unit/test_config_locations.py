"""Cloud locations from settings: endpoints derived from the account or region, overrides, gaps.

No network: only the configuration and the boto3 client it builds are inspected.
"""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.config import LocationSpec, load_config
from strongroom.core.storage.s3 import S3Location
from strongroom.errors import ConfigError
from strongroom.services.runtime import build_locations

CREDENTIALS = {
    "R2_BUCKET_NAME": "shop-backups",
    "R2_ACCESS_KEY_ID": "r2-key-id",
    "R2_SECRET_ACCESS_KEY": "r2-secret-value",
    "B2_BUCKET_NAME": "shop-backups-b2",
    "B2_ACCESS_KEY_ID": "b2-key-id",
    "B2_SECRET_ACCESS_KEY": "b2-secret-value",
}


def _spec(settings: dict[str, Any], name: str) -> LocationSpec:
    return load_config({"STRONGROOM_LOCATIONS": "r2,b2", **settings}).location(name)


def _built(settings: dict[str, Any], name: str) -> S3Location:
    locations, problems = build_locations(load_config(settings).locations)
    assert not problems, problems
    (loc,) = [loc for loc in locations if loc.name == name]
    assert isinstance(loc, S3Location)
    return loc


def test_r2_endpoint_comes_from_the_account_id() -> None:
    spec = _spec({**CREDENTIALS, "R2_ACCOUNT_ID": "0123abcd"}, "r2")
    assert spec.problem == ""
    assert spec.kind == "s3"
    assert spec.options["endpoint_url"] == "https://0123abcd.r2.cloudflarestorage.com"
    assert spec.options["region"] == "auto"
    assert spec.options["bucket"] == "shop-backups"


def test_b2_endpoint_comes_from_the_region() -> None:
    spec = _spec({**CREDENTIALS, "B2_REGION": "us-west-004"}, "b2")
    assert spec.problem == ""
    assert spec.options["endpoint_url"] == "https://s3.us-west-004.backblazeb2.com"
    assert spec.options["region"] == "us-west-004"


@pytest.mark.parametrize("name", ["r2", "b2"])
def test_an_explicit_endpoint_wins(name: str) -> None:
    env = name.upper()
    settings = {
        **CREDENTIALS,
        "R2_ACCOUNT_ID": "0123abcd",
        "B2_REGION": "us-west-004",
        f"{env}_ENDPOINT_URL": "http://127.0.0.1:8333/",
        f"{env}_PREFIX": "eu/prod",
    }
    spec = _spec(settings, name)
    assert spec.options["endpoint_url"] == "http://127.0.0.1:8333/"
    assert spec.options["prefix"] == "eu/prod"
    loc = _built({"STRONGROOM_LOCATIONS": name, **settings}, name)
    assert loc.endpoint_url == "http://127.0.0.1:8333"
    assert (
        loc.describe() == f"s3://{settings[f'{env}_BUCKET_NAME']}/eu/prod at http://127.0.0.1:8333"
    )


@pytest.mark.parametrize(
    ("name", "hint"),
    [("r2", "R2_ENDPOINT_URL or R2_ACCOUNT_ID"), ("b2", "B2_ENDPOINT_URL or B2_REGION")],
)
def test_no_endpoint_and_no_way_to_derive_one_is_a_named_problem(name: str, hint: str) -> None:
    spec = _spec(CREDENTIALS, name)
    assert spec.problem == f"{name} is not configured: set {hint}"


def test_missing_credentials_are_listed_by_name_never_by_value() -> None:
    spec = _spec({"R2_ACCOUNT_ID": "0123abcd", "R2_SECRET_ACCESS_KEY": "s3cr3t-value"}, "r2")
    assert spec.problem == "r2 is not configured: set R2_BUCKET_NAME, R2_ACCESS_KEY_ID"
    assert "s3cr3t-value" not in spec.problem


def test_locations_and_required_ones_follow_the_settings() -> None:
    config = load_config(
        {
            **CREDENTIALS,
            "R2_ACCOUNT_ID": "0123abcd",
            "B2_REGION": "eu-central-003",
            "STRONGROOM_LOCATIONS": "b2, local ,r2",
            "STRONGROOM_REQUIRED_LOCATIONS": "local,b2",
        }
    )
    assert [(s.name, s.required) for s in config.locations] == [
        ("b2", True),
        ("local", True),
        ("r2", False),
    ]
    default = load_config({})
    assert [(s.name, s.required) for s in default.locations] == [
        ("local", True),
        ("r2", False),
        ("b2", False),
    ]


def test_clients_send_checksums_only_when_the_operation_requires_them() -> None:
    """boto3 >= 1.36 otherwise adds CRC checksum headers that R2, B2 and SeaweedFS reject."""
    settings = {**CREDENTIALS, "R2_ACCOUNT_ID": "0123abcd", "STRONGROOM_LOCATIONS": "r2"}
    client = _built(settings, "r2").client()
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    assert client.meta.endpoint_url == "https://0123abcd.r2.cloudflarestorage.com"
    assert client.meta.config.s3 is not None
    assert client.meta.config.s3.get("addressing_style") == "path"


def test_retry_budgets_and_timeouts_come_from_the_environment() -> None:
    settings = {
        **CREDENTIALS,
        "STRONGROOM_LOCATIONS": "r2",
        "R2_ACCOUNT_ID": "0123abcd",
        "R2_MAX_ATTEMPTS": "5",
        "R2_PART_RETRIES": "0",
        "R2_READ_TIMEOUT": "2.5",
        "R2_PART_SIZE": str(32 << 20),
    }
    loc = _built(settings, "r2")
    assert (loc.max_attempts, loc.part_retries, loc.read_timeout, loc.part_size) == (
        5,
        0,
        2.5,
        32 << 20,
    )


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [("B2_PART_RETRIES", "three", "a whole number"), ("B2_READ_TIMEOUT", "1m", "a number")],
)
def test_a_malformed_number_names_its_variable(name: str, value: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be {kind}.*got '{value}'$"):
        load_config({**CREDENTIALS, "B2_REGION": "us-west-004", name: value})


def test_each_s3_operation_has_an_overall_deadline() -> None:
    settings = {**CREDENTIALS, "STRONGROOM_LOCATIONS": "b2", "B2_REGION": "us-west-004"}
    assert _built(settings, "b2").operation_timeout == 120.0
    assert _built({**settings, "B2_OPERATION_TIMEOUT": "7.5"}, "b2").operation_timeout == 7.5
    with pytest.raises(ConfigError, match=r"^B2_OPERATION_TIMEOUT must be more than 0"):
        _built({**settings, "B2_OPERATION_TIMEOUT": "0"}, "b2")
