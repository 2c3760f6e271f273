"""Training logs: CSV rows written by each stage and phase, read back for notebook 07's plots."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UserError
from ..presets import data_dir


def write_rows(path: Path, rows: list[dict]) -> None:
    """`rows` as a CSV; rows may hold different columns, so the header is their union."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def log_row(path: Path, row: dict) -> None:
    """Append `row` to a CSV (stages log different columns: the header grows to their union)."""
    rows = []
    if path.exists():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    write_rows(path, rows + [row])


def read_log(path: str | Path) -> list[dict]:
    """A training CSV as rows, numbers parsed (int, else float, else the text; empty -> None)."""
    def parse(value):
        if value in ("", None):
            return None
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return value

    with Path(path).open(newline="") as f:
        rows = [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
    seen = 0
    for row in rows:  # cumulative samples, the x axis the plots share with run_mini_recipe's rows
        if isinstance(row.get("samples"), int):
            seen += row["samples"]
            row.setdefault("samples_seen", seen)
    return rows


def shipped_phase_logs(folder: str | Path | None = None) -> dict[str, list[dict]]:
    """{"nano-deci": rows, "nano-sd": rows} from the `*_phases.csv` logs of the shipped models."""
    folder = Path(folder) if folder else data_dir() / "nano-logs"
    logs = {p.name.removesuffix("_phases.csv"): read_log(p) for p in sorted(folder.glob("*_phases.csv"))}
    if not logs:
        raise UserError(f"no *_phases.csv in {folder.name}/: build the nano models with `decidiff-lab train-nano`")
    return logs
