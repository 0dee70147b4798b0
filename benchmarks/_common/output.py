"""Printing a report: progress lines on stderr, the report as JSON or as tables on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def progress(quiet: bool, line: str) -> None:
    """One progress line on stderr (results go to stdout), unless ``quiet``."""
    if not quiet:
        print(line, file=sys.stderr, flush=True)


def print_json(report: Any, indent: int = 2) -> None:
    """The report as JSON on stdout (values JSON cannot hold, such as paths, as strings)."""
    print(json.dumps(report, indent=indent, default=str))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A Markdown table (pasted into ``docs/benchmarks.md`` as is); ``align`` has one letter per
    column, ``l`` or ``r``. Cells are printed with ``str``: format numbers before."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of l/r per column ({len(header)})")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)
