"""Build .mypy_tree/: a symlink view of the package as installed (agent/ -> edgeagent/, devices/ ->
edgeagent/devices/, …) from pyproject's package-dir, so mypy checks the real import names."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
# MYPY_TREE=DIR builds it elsewhere (parallel checks in one checkout must not share one tree).
tree = Path(os.environ.get("MYPY_TREE", root / ".mypy_tree"))
package_dir: dict[str, str] = tomllib.loads((root / "pyproject.toml").read_text())["tool"][
    "setuptools"
]["package-dir"]
shutil.rmtree(tree, ignore_errors=True)
for name, folder in sorted(package_dir.items()):
    target = tree.joinpath(*name.split("."))
    target.mkdir(parents=True, exist_ok=True)
    for src in (root / folder).iterdir():
        if src.suffix in (".py", ".pyi") or src.name == "py.typed":
            (target / src.name).symlink_to(src)
