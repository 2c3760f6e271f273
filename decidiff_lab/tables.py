"""Tables of rows (dicts), the one home for them: markdown for notebooks' `display(Markdown(...))`,
aligned plain text for `print` (deterministic outputs, no pandas).

* `markdown(rows, columns)`: `columns` = (key, header, format) triples, e.g. ("steps", "steps", "{}").
* `text_table(rows, columns=None, formats=None)`: columns aligned, numbers right-justified.
"""

from __future__ import annotations


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of `rows`; `columns` = (key, header, format), e.g. ("steps", "steps", "{}")."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def text_table(rows: list[dict], columns=None, formats: dict | None = None) -> str:
    """Rows (dicts) as an aligned plain-text table; `formats` maps a column to a format spec."""
    columns = list(columns or rows[0])
    formats = formats or {}

    def cell(row, col):
        value = row.get(col, "")
        if value is None:
            return "-"
        if col in formats:
            return format(value, formats[col])
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,d}"
        return str(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
