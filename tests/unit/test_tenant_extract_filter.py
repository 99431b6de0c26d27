"""The byte-level pieces of a tenant's extraction from pg_dump's COPY text (no servers)."""

from __future__ import annotations

import random

import pytest

from strongroom.core.postgres.tenant_extract import (
    LineFilter,
    copy_text,
    parse_copy,
    parse_identifiers,
)


def _slow(lines: bytes, value: bytes, index: int) -> list[bytes]:
    """The obvious filter: split every line, compare the field."""
    kept = []
    for line in lines.splitlines(keepends=True):
        if line.rstrip(b"\n").split(b"\t")[index] == value:
            kept.append(line)
    return kept


@pytest.mark.parametrize("index", [0, 1, 3])
def test_the_filter_keeps_exactly_the_lines_whose_field_matches(index: int) -> None:
    rng = random.Random(index)
    values = [b"a", b"ab", b"b", b"\\N", b"a\\tb"]
    lines = b"".join(b"\t".join(rng.choice(values) for _ in range(4)) + b"\n" for _ in range(3000))
    for value in (b"a", b"ab", b"a\\tb"):
        picked, count = LineFilter(value, index, 4).pick(lines)
        expected = _slow(lines, value, index)
        assert picked == b"".join(expected) and count == len(expected)


def test_a_value_elsewhere_on_the_line_does_not_match() -> None:
    lines = b"t1\tt2\tx\nt2\tt1\ty\nt2\tt2\tt1\n"
    assert LineFilter(b"t1", 1, 3).pick(lines) == (b"t2\tt1\ty\n", 1)
    assert LineFilter(b"t1", 0, 3).pick(lines) == (b"t1\tt2\tx\n", 1)
    assert LineFilter(b"t1", 2, 3).pick(lines) == (b"t2\tt2\tt1\n", 1)
    assert LineFilter(b"t2", 0, 1).pick(b"t2\nt22\nt2\n") == (b"t2\nt2\n", 2)


def test_tenant_ids_are_escaped_as_copy_text_writes_them() -> None:
    assert copy_text("plain") == b"plain"
    assert copy_text("back\\slash\ttab\nline") == b"back\\\\slash\\ttab\\nline"
    assert copy_text("zoë") == "zoë".encode()


def test_copy_statements_and_quoted_identifiers() -> None:
    plain = parse_copy("COPY public.customers (id, tenant_id, name) FROM stdin;")
    assert plain is not None
    assert (plain.schema, plain.table, plain.columns) == (
        "public",
        "customers",
        ("id", "tenant_id", "name"),
    )
    quoted = parse_copy('COPY "My Schema"."we ird" ("a b", "x""y", "c,d", z) FROM stdin;')
    assert quoted is not None
    assert (quoted.schema, quoted.table) == ("My Schema", "we ird")
    assert quoted.columns == ("a b", 'x"y', "c,d", "z")
    assert parse_copy("SET row_security = off;") is None
    assert parse_identifiers('public."T.1"') == ["public", "T.1"]
