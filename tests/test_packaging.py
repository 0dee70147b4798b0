"""The wheel installs into a fresh virtual environment with only `edgeagent` at the top level."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "packages"
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel, and what building it printed."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("edgeagent-*.whl")
    return whl, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, str]) -> Path:
    return built[0]


def test_wheel_builds_without_setuptools_warnings(built: tuple[Path, str]) -> None:
    """Package data declared as data, not taken for packages (that printed ~250 lines of
    "Package would be ignored" per install)."""
    output = built[1]
    for warning in ("would be ignored", "SetuptoolsDeprecationWarning", "SetuptoolsWarning"):
        assert warning not in output, output[output.find(warning) - 500 :][:2000]
    assert not re.search(r"BuildBackendWarning: (?!Editable installation)", output)


def test_wheel_has_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"edgeagent", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for pkg in PACKAGES:
        assert pkg.replace(".", "/") + "/__init__.py" in names, pkg
    assert "edgeagent/py.typed" in names
    for data in (
        "edgeagent/devices/profiles/pi4.yaml",
        "edgeagent/models/zoo/digits/digits.onnx",
        "edgeagent/bridges/web/index.html",
        "edgeagent/bridges/web/vendor/mqtt/mqtt.min.js",
    ):
        assert data in names, data


def test_wheel_stays_small_for_devices(wheel: Path) -> None:
    """Every device release carries this wheel: onnxruntime-web's 14.8 MB wasm build lives in
    its own distribution (packages/edgeagent-web, the `browser` extra), never in here."""
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "onnxruntime-web" in n or n.endswith(".wasm")]
    assert wheel.stat().st_size < 2_000_000, wheel.stat().st_size


@pytest.mark.slow
def test_wheel_installs_and_runs_in_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # A device install: the package and one runtime (the `onnx` extra: onnxruntime, numpy).
    subprocess.run([py, "-m", "pip", "install", "-q", f"{wheel}[onnx]"], check=True, timeout=600)
    help_out = subprocess.run(
        [env_dir / "bin" / "edgeagent", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_out.returncode == 0, help_out.stderr
    assert "Commands:" in help_out.stdout
    assert "call" in help_out.stdout
    code = "import importlib, sys\n" + "".join(
        f"m = importlib.import_module({p!r}); assert 'site-packages' in m.__file__, m.__file__\n"
        for p in PACKAGES
    )
    code += (
        "import numpy as np\n"
        "from edgeagent.models import load_model\n"
        "from edgeagent.models.zoo import RECIPES\n"
        "s = load_model(RECIPES['digits'].artifact_dir / 'digits.onnx')\n"
        "assert s.run({'pixels': np.zeros((1, 64), np.float32)})['logits'].shape == (1, 10)\n"
    )
    imported = subprocess.run([py, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
