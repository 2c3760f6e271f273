"""Write pip constraints that pin every `>=` floor of pyproject.toml: `name==floor`, one a line.

`make test-floor` installs the package under these, so the minimum versions pyproject.toml declares
are the versions tested; pyproject.toml stays the only list. torch is left out: the floor run
installs `$(TORCH)` (the CPU 2.13.0 on disk) first, and pip keeps it.

    python scripts/floor_constraints.py [pyproject.toml] [out.txt]   # default out: stdout
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored copy (the script runs in a fresh venv)
    from pip._vendor import tomli as tomllib

SKIP = {"torch"}


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = project["dependencies"] + [r for group in project.get("optional-dependencies", {}).values() for r in group]
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*(?:,.*)?(?:;.*)?", req)
        if not m:
            raise SystemExit(f"{pyproject}: {req!r} has no `>=` floor to test")
        name = m.group(1).lower().replace("_", "-")
        if name not in SKIP:
            pins[name] = f"{name}=={m.group(2)}"
    return sorted(pins.values())


def main(argv: list[str]) -> None:
    pyproject = Path(argv[1]) if len(argv) > 1 else Path("pyproject.toml")
    text = f"# Generated from {pyproject.name} by scripts/floor_constraints.py: do not edit.\n"
    text += "\n".join(floors(pyproject)) + "\n"
    if len(argv) > 2:
        Path(argv[2]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv)
