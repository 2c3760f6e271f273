"""The set-up path: pyproject and environment.yml agree, CI runs the README's command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["lab"] + extras["test"]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    reqs = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            reqs.update({_name(r): r.replace(" ", "") for r in dep["pip"] if not r.startswith("-e")})
        elif not dep.startswith(("python", "pip")) or dep.startswith("pytorch"):
            reqs[_name(dep)] = dep.replace(" ", "")
    reqs["torch"] = reqs.pop("pytorch").replace("pytorch", "torch")  # conda names it pytorch
    return reqs


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_torch_is_a_range_and_torchvision_is_never_required():
    reqs = _pyproject_requirements()
    assert reqs["torch"].startswith("torch>=")
    assert "torchvision" not in reqs and "open-clip-torch" not in reqs and "timm" not in reqs


def test_ci_runs_the_readme_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands[0] == "make test" and "make test-floor" in commands
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and all(f"`{c}`" in readme for c in commands)  # each one documented
    workflow = (ROOT / ".github" / "workflows" / "test.yml").read_text()
    assert "make test" in workflow


def test_makefile_pins_the_local_cpu_torch_before_the_package():
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH  ?= torch==2.13.0" in makefile
    assert makefile.index("$(TORCH)") < makefile.index('-e ".[lab,test]"')
    assert "--name decidiff-lab" in makefile


def test_no_remote_code_or_pickle_loading_in_the_package_or_notebooks():
    forbidden = ("custom_pipeline=", "trust_remote_code=True", "torch.load(", "use_safetensors=False", "pickle.load")
    paths = [*(ROOT / "decidiff_lab").rglob("*.py"), *(ROOT / "notebooks").rglob("*.ipynb"),
             *(ROOT / "scripts").rglob("*.py")]
    assert len(paths) > 10
    for path in paths:
        text = path.read_text()
        assert not [f for f in forbidden if f in text], path
