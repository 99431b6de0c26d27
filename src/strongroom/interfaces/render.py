"""Output: one JSON document for scripts; tables, sizes and progress bars (rich) for people.

Progress is only ever drawn on a terminal. Commands print through here so that no command
needs the CLI module (which dispatches to them) for its output.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

#: Piped output is not cut to 80 columns (a table's ids stay whole); ``COLUMNS`` still wins.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240
#: Lines are never wrapped at the console width, so piped output and logs keep one line each.
#: Plain text, never markup: reasons, keys and paths may hold brackets (``[Errno 13]``,
#: ``[/var/backups]``); styling goes through ``Text`` objects instead.
out = Console(highlight=False, markup=False, soft_wrap=True, width=_PIPE_WIDTH)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    """Print ``document`` on stdout, keys sorted, anything not JSON-native as its ``str()``."""
    json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def plain(text: str) -> None:
    """Text that is already a format of its own (Prometheus exposition): written as it is."""
    sys.stdout.write(text)
    sys.stdout.flush()


def prune_summary(
    *, dry_run: bool, deleted: int, failed: int, finished: int, unfinished: int, kept: int
) -> str:
    """The last line of ``strongroom prune``: every number counts copies, none is derived."""
    if dry_run:
        return f"would delete {_copies(deleted)}, kept {kept}"
    parts = [f"deleted {_copies(deleted)}"]
    if failed:
        parts.append(f"{failed} could not be deleted")
    if finished or unfinished:
        done = f"finished {finished} interrupted deletion{'' if finished == 1 else 's'}"
        parts.append(done + (f" ({unfinished} still unfinished)" if unfinished else ""))
    return ", ".join([*parts, f"kept {kept}"])


def _copies(n: int) -> str:
    return f"{n} cop{'y' if n == 1 else 'ies'}"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@contextmanager
def progress(
    label: str, enabled: bool, total: int | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield ``update(bytes_done)``; draws bytes and rate on a terminal, nothing otherwise."""
    with progress_per(enabled) as update:
        yield lambda done: update(label, done, total)


@contextmanager
def progress_per(enabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """Yield ``update(label, bytes_done, total)``: one bar per label (e.g. per copy verified)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda label, done, total: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done)

    with bar:
        yield update


def backups_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print("no backups in the catalog (strongroom backup makes one)")
        return
    table = Table(title=None, show_lines=False)
    for col in ("id", "type", "database", "tenant", "status", "size", "saved", "duration"):
        table.add_column(col)
    table.add_column("locations")
    table.add_column("drill")
    for r in rows:
        ratio = r.get("compression_ratio")
        locations = " ".join(f"{c['location']}:{c['status'].lower()}" for c in r.get("copies", []))
        table.add_row(
            r["id"],
            r.get("backup_type", ""),
            r.get("database", ""),
            r.get("tenant_id") or "",
            _status(r["status"]),
            size(r.get("size_bytes")),
            f"{ratio * 100:.0f}%" if ratio is not None else "-",
            f"{r.get('backup_duration_seconds') or 0:.1f}s",
            locations,
            _drill_mark(r),
        )
    out.print(table)


def _status(status: str) -> Text:
    colour = {
        "VERIFIED": "green",
        "COMPLETED": "green",
        "PARTIAL": "yellow",
        "FAILED": "red",
        "IN_PROGRESS": "cyan",
        "SKIPPED": "dim",
    }.get(status, "white")
    return Text(status, style=colour)


def backup_detail(doc: dict[str, Any]) -> None:
    out.print(Text.assemble((f"backup {doc['id']}", "bold"), "  ", _status(doc["status"])))
    for field in (
        "backup_type",
        "database",
        "tenant_id",
        "filename",
        "checksum",
        "started_at",
        "finished_at",
        "verified_at",
        "backup_job_id",
        "error",
    ):
        if doc.get(field):
            out.print(f"  {field:<24} {doc[field]}")
    out.print(
        f"  {'size':<24} {size(doc.get('size_bytes'))} stored, "
        f"{size(doc.get('raw_size_bytes'))} raw"
    )
    if doc.get("compression_ratio") is not None:
        out.print(f"  {'compression':<24} {doc['compression_ratio'] * 100:.1f}% saved")
    out.print(f"  {'last_drill':<24} {last_drill(doc)}")
    for c in doc.get("copies", []):
        error = f"  ({c['error']})" if c.get("error") else ""
        head = f"  copy {c['location']:<19} "
        out.print(Text.assemble(head, _status(c["status"]), f" {c.get('key', '')}{error}"))


def _drill_mark(doc: dict[str, Any]) -> Text:
    if doc.get("last_drill_ok") is None:
        return Text("-", style="dim")
    return Text("ok", style="green") if doc["last_drill_ok"] else Text("FAILED", style="red")


def last_drill(doc: dict[str, Any]) -> str:
    """A backup's last drill in words: ``passed 2026-12-05T06:00:41Z (drill 7, RTO 41.2 s)``."""
    if doc.get("last_drill_ok") is None:
        return "never (strongroom drill ID proves it restorable)"
    text = f"{'passed' if doc['last_drill_ok'] else 'FAILED'} {doc.get('last_drill_at')}"
    finished = [d for d in doc.get("drills") or [] if d.get("ok") is not None]
    if finished:
        newest = finished[0]
        rto = newest.get("rto_seconds")
        how = f"RTO {rto:.1f} s" if rto is not None else newest.get("error") or "failed"
        text += f" (drill {newest['id']}, {how})"
    return text


def drill_detail(doc: dict[str, Any]) -> None:
    """``strongroom drill``: the verdict, the measured RTO, and each table that disagreed."""
    status = doc["status"]
    out.print(
        Text.assemble(
            (f"drill {doc['id']} of backup {doc['backup_id']}", "bold"),
            "  ",
            Text(status, style="green" if status == "PASSED" else "red"),
        )
    )
    rto = doc.get("rto_seconds")
    data = doc.get("data") or {}
    out.print(f"  {'kind':<24} {doc['kind']}")
    server = doc["kind"] == "base"  # a throwaway server's directory, not a database
    gone = data.get("removed" if server else "dropped")
    verb = "removed" if server else "dropped"
    out.print(f"  {'target':<24} {doc['target']} ({verb}: {'yes' if gone else 'NO'})")
    out.print(f"  {'rto':<24} {f'{rto:.1f} s to a usable database' if rto is not None else '-'}")
    if data.get("source"):
        out.print(f"  {'source':<24} {data['source']}")
    for name in data.get("swept") or []:
        out.print(f"  {verb + ' leftover':<24} {name}")
    for table, rows in sorted((data.get("rows") or {}).items()):
        out.print(f"  {'rows ' + table:<40} {rows:>10} read")
    checked = [i for names in (data.get("amcheck") or {}).values() for i in names or []]
    if server and data.get("rows") is not None:
        amcheck = f"{len(checked)} indexes checked" if data.get("amcheck") else "not available"
        out.print(f"  {'amcheck':<24} {amcheck}")
    for m in doc.get("mismatches") or []:
        found = "no such table" if m["found"] is None else m["found"]
        out.print(f"  DIFF {m['table']:<40} {m['expected']:>10} rows in backup, {found} restored")
    if doc.get("error"):
        out.print(f"  {'error':<24} {doc['error']}")


def tenants_table(rows: list[dict[str, Any]]) -> None:
    """``strongroom tenant list``: each tenant's rows and its newest tenant backup."""
    if not rows:
        out.print("no tenants in the tenant table")
        return
    table = Table(title=None, show_lines=False)
    for col in ("tenant", "rows", "newest backup", "status", "created"):
        table.add_column(col)
    for r in rows:
        newest = r.get("newest_backup") or {}
        table.add_row(
            r["tenant_id"],
            str(r["rows"]),
            newest.get("id", "-"),
            _status(newest["status"]) if newest else Text("-"),
            str(newest.get("created_at") or "-"),
        )
    out.print(table)


def tenant_runs_table(rows: list[dict[str, Any]]) -> None:
    """``strongroom tenant backup --all``: one line per tenant, its backup or why none."""
    table = Table(title=None, show_lines=False)
    for col in ("tenant", "backup", "status", "size", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["tenant_id"], r["id"] or "-", _status(r["status"]), size(r["stored_size"]), r["error"]
        )
    out.print(table)
