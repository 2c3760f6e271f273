"""The notebooks' first cell on Colab/Paperspace: install only what the machine lacks, never upgrade its own
torch, Jupyter or ipywidgets (a Colab runtime's widgets and kernel are tied to the versions it ships)."""

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("**/*.ipynb"))
COLAB_OWN = {"torch", "jupyterlab", "notebook", "jupyter", "jupyter-server", "ipywidgets", "ipykernel", "ipython"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _first_code_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_the_package_itself_requires_none_of_colabs_own_jupyter_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r): r for r in project["dependencies"]}
    assert not (COLAB_OWN - {"torch"}) & set(core), "Jupyter packages belong in the [lab] extra"
    assert re.fullmatch(r"torch>=[\d.]+", core["torch"].replace(" ", "")), "torch must stay a floor, never a pin"
    assert {"jupyterlab", "ipywidgets", "ipykernel"} <= {_name(r) for r in project["optional-dependencies"]["lab"]}


def test_make_setup_installs_the_lab_extra():
    assert re.search(r'-e "\.\[[^]]*lab[^]]*\]"', (ROOT / "Makefile").read_text())


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_set_up_cell_is_a_no_op_where_installed_and_never_upgrades(notebook):
    cell = _first_code_cell(notebook)
    assert cell == _first_code_cell(NOTEBOOKS[0]), "every notebook starts with the same set-up cell"
    assert 'find_spec("decidiff_lab") is None' in cell  # a no-op under `make lab` and in CI
    code = "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith("#"))
    installs = re.findall(r"pip install[^\"]*", code)
    assert installs == ["pip install -q -e ./decidiff-lab"], installs
    assert not re.search(r"-U\b|--upgrade|--force|torch|jupyter|ipywidgets", " ".join(installs))
