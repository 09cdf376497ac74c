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


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows of mappings -> a Markdown table; `columns` are (key, header, format spec); a key a row
    lacks reads "n/a"."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)
