"""The rule every notebook follows (README, "Testing"): strict outputs hold on any machine,
measurements are ignored by nbval and asserted in their cell, and every sanitize rule says why."""

import ast
import configparser
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("**/*.ipynb"))
IGNORE = "# NBVAL_IGNORE_OUTPUT"
# Sources whose numbers are measurements: wall clocks and training runs.
MEASURES = re.compile(r"time_call\(|time_interleaved\(|bench_cases\(|block_latencies\(|search\(|perf_counter\(|"
                      r"\.seconds\b|train_seconds|\.rows\b|run_mini\(|_seconds\(")
# Words that name a wall-clock quantity or a ratio of two: an ordering (<, >, ...) on one is a speed claim, which
# a busy or slow machine can flip. Notebooks print such readings (bench.read_ratio); tests/test_bench_clock.py
# checks the harness's arithmetic on a fake clock.
TIMED = re.compile(r"second|_s\b|\bms\b|_ms\b|latenc|speed|faster|slower|per_sample|over_eager|deci_vs_sd|"
                   r"fewer_steps|cheaper_unet|measured_total|interaction|saving|peak_fraction|achieved|PEAK|"
                   r"spread_fraction|\bat_rule\b|\bat_quality\b|\bmeasured\b|train_seconds")
ORDERINGS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
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
            assert re.search(r"^\s*assert ", source, re.M), f"{path.name} code cell {i}: ignored but asserts nothing"
        elif MEASURES.search(source) and shown_text(outputs).strip():
            pytest.fail(f"{path.name} code cell {i} shows a measurement that nbval would compare strictly")


def asserts(source: str):
    """Each assert statement of a cell (IPython magics and shell lines left out) with its source."""
    python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    for node in ast.walk(ast.parse(python)):
        if isinstance(node, ast.Assert):
            yield node, ast.get_source_segment(python, node)


def claims(expr: ast.expr):
    """What an assert claims: its test, split at `and`/`or`/`not`, and the element of an `all(...)`/`any(...)`;
    not a comparison that is only an argument of a call (`np.where(s > 0, ...)`)."""
    if isinstance(expr, ast.BoolOp):
        for value in expr.values:
            yield from claims(value)
    elif isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        yield from claims(expr.operand)
    elif (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("all", "any")
          and expr.args and isinstance(expr.args[0], (ast.GeneratorExp, ast.ListComp))):
        yield from claims(expr.args[0].elt)
    else:
        yield expr


def timing_orderings(node: ast.Assert) -> list[str]:
    """The orderings an assert claims that compare a timed quantity."""
    found = []
    for compare in claims(node.test):
        if isinstance(compare, ast.Compare) and any(isinstance(op, ORDERINGS) for op in compare.ops):
            text = ast.unparse(compare)
            if TIMED.search(text):
                found.append(text)
    return found


def positive_only(node: ast.Assert) -> list[str]:
    """`x > 0`, `0 < x`, `x >= 0` on a single value: true of any time, rate or size that was computed at all, so
    it can only fail on a crash, which the cell would have raised anyway. `assert True` and constants likewise."""
    if isinstance(node.test, ast.Constant):
        return [ast.unparse(node.test)]
    found = []
    for compare in claims(node.test):
        if isinstance(compare, ast.Compare) and len(compare.ops) == 1 and isinstance(compare.ops[0], ORDERINGS):
            left, right = compare.left, compare.comparators[0]
            zero = [side for side in (left, right) if isinstance(side, ast.Constant) and side.value == 0]
            value = right if zero and zero[0] is left else left
            if zero and isinstance(value, (ast.Name, ast.Subscript, ast.Attribute, ast.Call)):
                strict_up = isinstance(compare.ops[0], (ast.Gt, ast.GtE)) == (zero[0] is right)
                if strict_up:
                    found.append(ast.unparse(compare))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_asserts_a_speed_claim_or_a_check_that_cannot_fail(path):
    """A lesson never raises on a slow or busy machine, and never asserts what only a crash could break."""
    for i, source, _ in code_cells(path):
        for node, text in asserts(source):
            timed = timing_orderings(node)
            assert not timed, f"{path.name} code cell {i}: `{text}` orders timings {timed}: print bench.read_ratio instead"
            trivial = positive_only(node)
            assert not trivial, f"{path.name} code cell {i}: `{text}` can only fail on a crash ({trivial}): assert what it means"


@pytest.mark.parametrize("source, verdict", [
    ("assert speedup > 1", "timed"), ("assert PEAK > 0", "timed"), ("assert 0 < saving < 1", "timed"),
    ("assert split['fewer_steps_interval'][0] <= 16 / 10 * 1.03", "timed"),
    ("assert all(r['seconds_per_image'] > 0 for r in records)", "timed"),
    ("assert per_sample[low.name] < per_sample[full.name]", "timed"),
    ("assert n_images > 0", "trivial"), ("assert 0 < len(rows)", "trivial"), ("assert True", "trivial"),
    ("assert last['val_loss'] < first['val_loss'] / 3", "ok"), ("assert max(diffs) < 1e-4", "ok"),
    ("assert count_parameters(a) < count_parameters(b)", "ok"), ("assert len(result['rows']) == 16", "ok"),
    ("%load_ext autotime\nassert r['unet'] < tolerance", "ok"),
    ("assert np.array_equal(d, np.where(s > 0, s, 0.0))", "ok"), ("assert all(r['x'] > 0 for r in rows)", "trivial"),
    ("assert ok and not (speed < 1)", "timed"),
])
def test_the_rule_tells_speed_claims_and_crash_only_checks_from_real_ones(source, verdict):
    ((node, _),) = asserts(source)
    found = "timed" if timing_orderings(node) else "trivial" if positive_only(node) else "ok"
    assert found == verdict, source


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
