"""The one way this project writes a Markdown table (reports, the study, the benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: (key, header, format spec): a column of rows given as mappings
Column = tuple[str, str, str]


def cell(value: Any, fmt: str = "") -> str:
    """One cell: None reads "n/a"; numbers take the format spec (".3f", "+.4f"), text stays."""
    if value is None:
        return "n/a"
    return format(value, fmt) if fmt and not isinstance(value, str) else str(value)


def head(columns: Sequence[Column]) -> str:
    """The header and rule lines (a table printed a row at a time, as it is measured, starts here)."""
    return "| " + " | ".join(h for _, h, _ in columns) + " |\n|" + "|".join("---" for _ in columns) + "|"


def line(row: Mapping[str, Any], columns: Sequence[Column]) -> str:
    """One body line; a key the row lacks reads "n/a"."""
    return "| " + " | ".join(cell(row.get(k), f) for k, _, f in columns) + " |"


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows of mappings -> a Markdown table; `columns` are (key, header, format spec)."""
    return "\n".join([head(columns), *(line(r, columns) for r in rows)])
