"""Settings owned by their backend: one declaration feeds the loader, Django and the README.

No network: only the configuration is built.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom import conf, config
from strongroom.config import load_config, setting_names
from strongroom.core.storage import (
    LocalLocation,
    LocationType,
    Setting,
    location_types,
    register_location,
    unregister_location,
)
from strongroom.core.storage.settings import seconds
from strongroom.errors import ConfigError
from strongroom.services.runtime import build_locations

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def nas() -> Iterator[LocationType]:
    """A location ``nas`` served by the local backend, declared the way a backend module does."""
    kind = register_location(
        LocationType(
            "nas",
            LocalLocation,
            settings=(
                Setting("NAS_PATH", "path", required=True),
                Setting("NAS_TIMEOUT", parse=seconds),
            ),
            retention=Setting("NAS_RETENTION_DAYS", default=90),
        )
    )
    yield kind
    unregister_location("nas")


def _table_rows(*paths: Path) -> str:
    lines = (line for p in paths for line in p.read_text(encoding="utf-8").splitlines())
    return "\n".join(line for line in lines if line.startswith("| `"))


def test_the_readme_table_lists_every_setting_a_backend_declares() -> None:
    table = _table_rows(ROOT / "README.md")
    declared = [name for t in location_types() for name in t.names]
    assert [name for name in declared if f"`{name}`" not in table] == []
    assert "`R2_PART_RETRIES`" in table and "`B2_PART_RETRIES`" in table


def test_every_general_setting_is_in_a_table_of_the_readme_or_the_docs() -> None:
    table = _table_rows(ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
    assert [name for name in setting_names() if f"`{name}`" not in table] == []


def test_every_name_the_loader_reads_is_a_known_setting() -> None:
    """A literal such as ``_get(source, "BACKUP_X")`` in config.py must be in GENERAL_SETTINGS."""
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    read = {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and len(node.args) > 1
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "source"
        and isinstance(node.args[1], ast.Constant)
    }
    assert len(read) > 25
    assert read - set(config.GENERAL_SETTINGS) == set()


def test_django_setting_names_are_computed_from_the_backends() -> None:
    names = conf.SETTING_NAMES
    for expected in ("R2_PART_RETRIES", "B2_PART_RETRIES", "BACKUP_LOCAL_PATH", "R2_ACCOUNT_ID"):
        assert expected in names
    assert len(names) == len(set(names))
    assert [t.name for t in location_types()][:3] == ["local", "r2", "b2"]


def test_a_registered_location_is_read_listed_and_built(nas: LocationType, tmp_path: Path) -> None:
    assert {"NAS_PATH", "NAS_TIMEOUT", "NAS_RETENTION_DAYS"} <= set(conf.SETTING_NAMES)
    cfg = load_config({"STRONGROOM_LOCATIONS": "local,nas", "NAS_PATH": str(tmp_path)})
    spec = cfg.location("nas")
    assert (spec.kind, spec.retention_days, spec.options, spec.problem) == (
        "local",
        90,
        {"path": str(tmp_path)},
        "",
    )
    (_, built), problems = build_locations(cfg.locations)
    assert problems == {}
    assert isinstance(built, LocalLocation) and built.path == tmp_path
    gap = load_config({"STRONGROOM_LOCATIONS": "nas"}).location("nas").problem
    assert gap == "nas is not configured: set NAS_PATH"
    with pytest.raises(ConfigError, match=r"^NAS_TIMEOUT must be a number of seconds, got '1m'$"):
        load_config({"STRONGROOM_LOCATIONS": "nas", "NAS_TIMEOUT": "1m"})


def test_an_unknown_location_lists_the_registered_names(nas: LocationType) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"STRONGROOM_LOCATIONS": "local,tape"})
    assert str(err.value) == (
        "STRONGROOM_LOCATIONS names unknown location 'tape': use local, r2, b2 and/or nas"
    )


def test_without_an_extra_backend_the_message_is_the_seeds() -> None:
    with pytest.raises(ConfigError, match=re.escape("use local, r2 and/or b2")):
        load_config({"STRONGROOM_LOCATIONS": "tape"})
