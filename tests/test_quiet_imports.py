"""Learners' first output is their model, not a red block of library notices."""

import subprocess
import sys

import pytest

LOAD_AND_WARN = """
import decidiff_lab
from decidiff_lab.loading import load_pipeline
load_pipeline("nano-deci", verbose=False)
from transformers.utils import import_utils
import_utils.logger.warning("a real warning from the same logger")
"""


@pytest.mark.slow
def test_loading_a_pipeline_shows_no_torchvision_fallback_notice_but_real_warnings_pass():
    run = subprocess.run([sys.executable, "-c", LOAD_AND_WARN], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert "requires torchvision" not in run.stderr
    assert "a real warning from the same logger" in run.stderr
