"""Every snippet in README.md and data/README.md runs as written, in a fresh interpreter, offline."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# README commands not run here, and why; each has a test of its own with smaller arguments.
NOT_RUN = {
    "make": "the README's own set-up and test commands: this suite is what `make test` runs",
    "decidiff-lab bench": "minutes of timing (tests/test_bench.py runs it with 1 repeat)",
    "decidiff-lab evaluate": "minutes of sampling (tests/test_cli.py runs it on 2 prompts, 2 steps)",
    "decidiff-lab fetch": "needs the hub (tests/test_fake_hub.py runs it against a local fake endpoint)",
    "decidiff-lab train-nano": "5 to 105 minutes of training (tests/test_nano.py trains a few steps)",
    "decidiff-lab doctor --smoke": "needs a GPU and the real weights (tests/test_real_path.py runs it on the replica)",
    "accelerate launch": "needs 8 GPUs (tests/test_training.py runs the same loop on 2 CPU processes)",
    "ACCELERATE_USE_CPU=true torchrun": "minutes of training (tests/test_training.py runs train-nano on 2 gloo "
                                        "processes, forked by accelerate, with a tiny recipe)",
}


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for code in re.findall(rf"```{language}\n(.*?)```", doc.read_text(), flags=re.S):
            found.append((doc.relative_to(ROOT).as_posix(), code))
    return found


def commands() -> list[str]:
    lines = [line.split("  #")[0].strip() for _, code in blocks("bash") for line in code.splitlines()]
    return [line for line in lines if line]


def skipped(command: str) -> bool:
    return any(command == prefix or command.startswith(prefix + " ") for prefix in NOT_RUN)


@pytest.mark.slow
@pytest.mark.parametrize("doc, code", blocks("python"), ids=lambda v: v if v.endswith(".md") else "")
def test_python_snippet_runs_as_written(doc, code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{doc} snippet failed:\n{code}\n{result.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in commands() if not skipped(c)])
def test_cli_snippet_runs_as_written(command, tmp_path):
    argv = shlex.split(command)
    assert argv[0] == "decidiff-lab", f"a README command nobody runs: {command!r} (run it here or add it to NOT_RUN)"
    result = subprocess.run([sys.executable, "-m", "decidiff_lab.cli", *argv[1:]], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"


def test_every_readme_command_is_run_or_says_why_not():
    assert commands(), "no commands found: the README's bash blocks moved?"
    for prefix in NOT_RUN:
        assert any(c == prefix or c.startswith(prefix + " ") for c in commands()), f"stale NOT_RUN entry {prefix!r}"
