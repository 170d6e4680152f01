"""Install the lowest versions of the libraries vitpss patches that pyproject.toml allows, into a folder.

    python tools/install_floors.py .floors        # then: PYTHONPATH=.floors:src python -m pytest ...

``make test-floors`` runs this and then the integration and patching tests against the floors. The
floors are the ``>=`` bounds of timm, transformers, accelerate, open_clip_torch and lightning in
pyproject.toml. pip resolves them against the running interpreter's environment (``--dry-run``:
nothing there changes), so torch and everything that already fits is reused and only the floors
and the dependencies they need at other versions go into the folder, put first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
#: Distribution name -> import name of the libraries whose floors are tested.
PATCHED = {"timm": "timm", "transformers": "transformers", "accelerate": "accelerate",
           "open_clip_torch": "open_clip", "lightning": "lightning"}


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{distribution: lowest allowed version}`` for :data:`PATCHED`, read from pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9a-zA-Z.]*)", requirement.strip())
        if match and match[1] in PATCHED:
            found[match[1]] = match[2]
    missing = sorted(set(PATCHED) - set(found))
    if missing:
        raise SystemExit(f"pyproject.toml declares no '>=' floor for {', '.join(missing)}")
    return found


def _dry_run(requirements: list[str]) -> dict[str, str]:
    """``{name: version}`` of every distribution pip would add or change here to satisfy ``requirements``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                        *requirements], check=True)
        install = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in install}


def _dependents(names: set[str]) -> set[str]:
    """Installed distributions that require one of ``names`` (outside extras).

    They stay importable next to the floors (transformers imports ``datasets`` when it is
    installed), so they must be versions that accept the floors' dependencies too.
    """
    found = set()
    for dist in importlib.metadata.distributions():
        for line in dist.requires or []:
            requirement = Requirement(line)
            if (canonicalize_name(requirement.name) in names
                    and (requirement.marker is None or requirement.marker.evaluate({"extra": ""}))):
                found.add(canonicalize_name(dist.metadata["Name"]))
    return found


def resolve(pins: list[str]) -> list[str]:
    """``name==version`` of every distribution to put next to the running environment for ``pins``:
    the pins, the dependencies they need at other versions, and versions of installed dependents of
    those that accept them."""
    extra: set[str] = set()
    while True:
        changed = _dry_run(pins + sorted(extra))
        more = _dependents(set(changed)) - set(changed) - extra - {"vitpss"}
        if not more:
            return [f"{name}=={version}" for name, version in sorted(changed.items())]
        extra |= more


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="folder to install into (put it first on PYTHONPATH)")
    args = parser.parse_args()
    pins = [f"{name}=={version}" for name, version in floors().items()]
    wanted = resolve(pins)
    print("installing into", args.target, ":", " ".join(wanted), flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                    str(args.target), *wanted], check=True)
    check = ("import importlib, importlib.metadata as m; "
             + "; ".join(f"importlib.import_module('{module}'); print('{name}', m.version('{name}'))"
                         for name, module in PATCHED.items()))
    env = {**os.environ, "PYTHONPATH": str(args.target)}
    lines = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    imported = dict(zip(lines[::2], lines[1::2]))
    print("imported from", args.target, ":", ", ".join(f"{k} {v}" for k, v in imported.items()))
    wrong = {k: v for k, v in imported.items() if Version(v) != Version(floors()[k])}
    if wrong:
        raise SystemExit(f"imported versions other than the floors: {wrong}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
