"""GitHub markdown tables, for the report and the kernel benchmark's README table alike."""

from __future__ import annotations


def md_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; ``None`` cells are empty and a ``|`` inside a cell is escaped."""
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
