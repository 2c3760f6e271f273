"""The rule every notebook follows (README, "Testing"): strict outputs hold on any machine,
measurements are ignored by nbval and asserted in their cell, and every sanitize rule says why."""

import configparser
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("**/*.ipynb"))
IGNORE = "# NBVAL_IGNORE_OUTPUT"
# Sources whose numbers are measurements: wall clocks and training runs.
MEASURES = re.compile(r"time_call\(|perf_counter\(|\.seconds\b|train_seconds|\.rows\b|run_mini_recipe\(|_seconds\(")
WORDS = {5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def code_cells(path):
    return [(i, "".join(c["source"]), c.get("outputs", []))
            for i, c in enumerate(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")]


def shown_text(outputs) -> str:
    """What a cell prints or displays as text, less what sanitize.cfg or nbval already discount."""
    parts = []
    for out in outputs:
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
            continue  # a progress bar: its text is the step count, not a result
        if out["output_type"] == "stream" and out["name"] == "stdout":
            parts.append("".join(out["text"]))
        for kind in ("text/markdown", "text/html"):
            parts.append("".join(out.get("data", {}).get(kind, "")))
        plain = "".join(out.get("data", {}).get("text/plain", ""))
        if not plain.startswith(("<Figure", "<IPython", "<Axes")):
            parts.append(plain)
    return "\n".join(line for line in "\n".join(parts).splitlines() if not line.startswith("time: "))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_measurement_is_ignored_by_nbval_and_asserted_in_its_cell(path):
    for i, source, outputs in code_cells(path):
        if source.startswith(IGNORE):
            assert re.search(r"^\s*assert ", source, re.M), f"{path.name} cell {i}: ignored but asserts nothing"
        elif MEASURES.search(source) and shown_text(outputs).strip():
            pytest.fail(f"{path.name} cell {i} shows a measurement that nbval would compare strictly")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_executed(path):
    assert any(outputs for _, _, outputs in code_cells(path)), f"{path.name} has no outputs: run `make course`"
    counts = [c["execution_count"] for c in json.loads(path.read_text())["cells"]
              if c["cell_type"] == "code" and c.get("outputs")]
    assert None not in counts and counts == sorted(counts), f"{path.name}: executed out of order or partly"


def sanitize_rules() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "notebooks" / "sanitize.cfg")
    return cfg


def test_every_sanitize_rule_says_why_and_the_readme_counts_them():
    cfg = sanitize_rules()
    assert cfg.sections(), "no sanitize rules"
    for reason in cfg.sections():
        assert len(reason.split()) >= 5, f"sanitize rule [{reason}] needs a reason"
        assert set(cfg[reason]) == {"regex", "replace"}
        re.compile(cfg[reason]["regex"])
    readme = (ROOT / "README.md").read_text()
    assert f"holds {WORDS[len(cfg.sections())]} rules" in readme


def test_the_image_rule_blanks_embedded_images_and_nothing_else():
    cfg = sanitize_rules()
    (rule,) = [cfg[s] for s in cfg.sections() if "base64" in cfg[s]["regex"]]
    html = '<img src="data:image/png;base64,iVBORw0KGgo+/AA==" title="nano-deci: a red circle">'
    assert re.sub(rule["regex"], rule["replace"], html) == '<img src="data:image;base64,IMAGE" title="nano-deci: a red circle">'


def test_the_autotime_rule_blanks_every_wall_time_autotime_prints():
    (rule,) = [r for name, r in sanitize_rules().items() if name.startswith("autotime")]
    for shown in ("time: 2.61 ms", "time: 1e+03 ms", "time: 1min 17s", "time: 136 μs"):
        line = f"{shown} (started: 2026-12-02 13:51:29 +00:00)"
        assert re.sub(rule["regex"], rule["replace"], line) == "time: TIME", line
