"""End to end in a real browser: JupyterLab from .venv, headless Chromium, a notebook, Run All.

What is under test is JupyterLab's side: the course kernel starts from the notebook's kernelspec, Run All
runs every cell, outputs and figures render. That does not depend on the notebook, so this runs 02 (about
10 s of cells, ten figures); nbval runs every notebook, 00 included, cell by cell. Notebook 00's ipyplot
gallery is the one output this leaves to nbval's comparison of its stored HTML."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a copy of notebooks/ (so autosave never touches the committed outputs)."""
    home = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", home / "notebooks")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws")}
    jupyter = Path(sys.executable).parent / "jupyter"
    server = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home / 'notebooks'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield url, token
    server.terminate()
    server.wait(timeout=20)


NOTEBOOK = "02_clip_text_encoder.ipynb"


def _stored_figures(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.get("outputs", []))


def test_a_notebook_runs_all_cells_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, token = lab
    shot = ROOT / "build" / f"browser-{Path(NOTEBOOK).stem}.png"
    shot.parent.mkdir(exist_ok=True)
    start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
        # The notebook's kernelspec names the course kernel: wait for it to start.
        page.wait_for_function("() => [...document.querySelectorAll('.jp-Toolbar-kernelName')]"
                               ".some(e => e.textContent.trim() === 'decidiff-lab')", timeout=90_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
        page.get_by_text("Run", exact=True).first.click()
        # By role, not text: JupyterLab 4.0 also renders a hidden command palette holding "Run All Cells".
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        code_cells = page.locator(".jp-CodeCell")
        n = code_cells.count()
        # Done when every code cell shows an execution count and the kernel is idle again.
        page.wait_for_function(
            """n => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                      return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
            arg=n, timeout=300_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
        images = page.locator(".jp-OutputArea-output img")
        page.locator(".jp-OutputArea-output img").last.scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=False)
        assert errors.count() == 0, errors.first.inner_text()
        # Every figure the committed run stored is drawn again here.
        assert images.count() >= _stored_figures(ROOT / "notebooks" / NOTEBOOK) >= 2
        assert all(images.nth(i).evaluate("img => img.naturalWidth > 0") for i in range(images.count()))
        browser.close()
    print(f"browser run-all: {time.perf_counter() - start:.0f} s, screenshot {shot}")
