"""The set-up path: pyproject and environment.yml agree, CI runs the README's command."""

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["lab"] + extras["deploy"] + extras["test"]
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
    (targets,) = re.findall(r"^for target in ([\w -]+); do$", ci, flags=re.M)  # each stage, timed
    commands = [f"make {t}" for t in targets.split()]
    assert commands[0] == "make test" and "make test-floor" in commands
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and all(f"`{c}`" in readme for c in commands)  # each one documented
    workflow = (ROOT / ".github" / "workflows" / "test.yml").read_text()
    assert "make test" in workflow


def _make_setup_commands(**env) -> list[list[str]]:
    """The commands `make setup` would run on a fresh checkout, as words (`make -n -B`: printed, none run)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TORCH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", "-C", str(ROOT), "setup"], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines()]


def _pip_installs(commands: list[list[str]]) -> list[list[str]]:
    """What each `python -m pip install` or `uv pip install` installs, in order: its arguments less the options."""
    installs = []
    for words in commands:
        at = next((i for i in range(len(words) - 1) if words[i:i + 2] == ["pip", "install"]), None)
        if at is None or not (words[at - 1] == "-m" or words[at - 1].endswith("/uv")):
            continue
        args, rest = [], iter(words[at + 2:])
        for w in rest:
            if w in ("--python", "-c"):  # options that take a value
                next(rest)
            elif not w.startswith("--"):
                args.append(w)
        installs.append(args)
    return installs


def test_makefile_pins_the_local_cpu_torch_before_the_package():
    commands = _make_setup_commands()
    installs = _pip_installs(commands)
    assert installs.index(["torch==2.13.0", "uv"]) < installs.index(["-e", ".[lab,deploy,test]"])
    kernel = next(words for words in commands if words[1:4] == ["-m", "ipykernel", "install"])
    assert kernel[kernel.index("--name") + 1] == "decidiff-lab"
    # The pin is only a default: TORCH from the environment replaces it.
    assert ["torch", "uv"] in _pip_installs(_make_setup_commands(TORCH="torch"))


def test_no_remote_code_or_pickle_loading_in_the_package_or_notebooks():
    forbidden = ("custom_pipeline=", "trust_remote_code=True", "torch.load(", "use_safetensors=False", "pickle.load")
    paths = [*(ROOT / "decidiff_lab").rglob("*.py"), *(ROOT / "notebooks").rglob("*.ipynb"),
             *(ROOT / "scripts").rglob("*.py")]
    assert len(paths) > 10
    for path in paths:
        text = path.read_text()
        assert not [f for f in forbidden if f in text], path


def test_the_readme_layout_lists_every_module():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Other machines")]
    package = Path(__file__).resolve().parent.parent / "decidiff_lab"
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        listed = f"`{name}`" in layout or f"`decidiff_lab/{name}`" in layout
        assert listed, f"README's layout table does not list {name}"
