"""The metric names the code exposes, the ones docs/metrics.md lists and the alert rules use agree.

Pure: the families are built from hand-made facts (no catalog, no server), exposed and parsed
back with ``prometheus_client``'s own parser.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from strongroom.core.postgres import ArchiverStatus
from strongroom.services.health import Probe
from strongroom.services.metrics import families
from strongroom.services.overview import Archiver, Overview

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "metrics.md"
RULES = ROOT / "docs" / "prometheus-alerts.yml"


def _exposed() -> set[str]:
    """Every sample name the code can produce (each optional part present)."""
    facts = Overview(
        at=datetime.now(UTC),
        newest_runs=[],
        newest_good=[],
        copies=[],
        newest_drills=[],
        passed_drills=[],
        wal_verify=SimpleNamespace(data={"missing": {"r2": 1}}, created_at=datetime.now(UTC)),  # type: ignore[arg-type]
        locations={"local": Probe("location local", True, "ok")},
        archiver=Archiver("shop", ArchiverStatus(0, None, None, 0, None, None)),
    )
    metrics = list(families(facts))

    class Fixed(Collector):
        def collect(self) -> Any:
            return iter(metrics)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    counters = {f.name for f in text_string_to_metric_families(text) if f.type == "counter"}
    return {f"{n}_total" if n in counters else n for n in names}


def _documented() -> set[str]:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `strongroom_")]
    return {line.split("`")[1] for line in rows}


def test_docs_list_exactly_the_metrics_the_code_exposes() -> None:
    exposed = _exposed()
    assert exposed == _documented()
    required = {
        "strongroom_backup_last_success_timestamp_seconds",
        "strongroom_backup_last_duration_seconds",
        "strongroom_backup_last_size_bytes",
        "strongroom_backup_copies",
        "strongroom_location_up",
        "strongroom_drill_last_success_timestamp_seconds",
        "strongroom_drill_last_rto_seconds",
        "strongroom_wal_last_archived_timestamp_seconds",
        "strongroom_wal_missing_segments",
    }
    assert required <= exposed


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["name"]
        rules.extend(group["rules"])
    return rules


def test_the_alert_rules_are_a_prometheus_rule_file_over_our_metrics() -> None:
    rules = _rules()
    exposed = _exposed()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].count("(") == rule["expr"].count(")")
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
        used = set(re.findall(r"\bstrongroom_[a-z_]+", rule["expr"]))
        assert used <= exposed, (rule["alert"], used - exposed)
        assert used or "node_textfile_mtime_seconds" in rule["expr"], rule["alert"]


def test_the_alert_rules_cover_what_the_readme_promises() -> None:
    expr = {r["alert"]: " ".join(r["expr"].split()) for r in _rules()}
    assert expr["StrongroomBackupTooOld"] == (
        'time() - strongroom_backup_last_success_timestamp_seconds{kind="full"} > 26 * 3600'
    )
    assert expr["StrongroomDrillTooOld"].endswith(
        "strongroom_drill_last_success_timestamp_seconds > 8 * 86400"
    )
    assert expr["StrongroomWalArchiveTooOld"].endswith(
        "strongroom_wal_last_archived_timestamp_seconds > 5 * 60"
    )
    assert expr["StrongroomLocationDown"] == "strongroom_location_up == 0"
