"""`edgeagent keys` and `edgeagent bundle`: reproducible, signed, verified, refused when wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeagent.cli import main
from tests.deployapp import make_app

MINISIGN = shutil.which("minisign")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("bundle")
    key = work / "keys" / "fleet.key"
    runner = CliRunner()
    res = runner.invoke(main, ["keys", "generate", "--key", str(key), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["public"] == str(work / "keys" / "fleet.pub")
    config = make_app(work / "app", device="lamp-b", fleet="f", broker="mqtt://127.0.0.1:1",
                      profile="pi-zero-2w")  # fmt: skip
    out = work / "b1"
    res = runner.invoke(
        main, ["bundle", "build", str(config), "--device", "pi4", "-o", str(out), "--key",
               str(key), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"work": work, "key": key, "pub": work / "keys" / "fleet.pub", "config": config,
            "out": out}  # fmt: skip


def test_keys_generate_refuses_to_overwrite(built: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["keys", "generate", "--key", str(built["key"])])
    assert res.exit_code == 1
    assert "--force" in res.output
    assert built["key"].stat().st_mode & 0o777 == 0o600


def test_build_is_reproducible_and_for_the_device(built: dict[str, Path]) -> None:
    runner = CliRunner()
    again = built["work"] / "b2"
    res = runner.invoke(main, ["bundle", "build", str(built["config"]), "--device", "pi4", "-o",
                               str(again), "--key", str(built["key"])])  # fmt: skip
    assert res.exit_code == 0, res.output
    for name in ("bundle.json", "bundle.json.minisig"):
        assert (built["out"] / name).read_bytes() == (again / name).read_bytes()
    data = json.loads((built["out"] / "bundle.json").read_text())
    assert data["profile"] == "pi4"
    assert data["platform"]["arch"] == "aarch64"
    assert data["platform"]["python"] == "3.11"
    wheels = [f["path"] for f in data["files"] if f["role"] == "wheel"]
    assert any("pydantic_core" in w and "aarch64" in w for w in wheels)
    assert any(w.startswith("wheels/edgeagent-") for w in wheels)
    assert "set_brightness" in data["skills"]
    assert "echo" in data["skills"]
    config = next(f for f in data["files"] if f["path"] == "app/agent.yaml")
    text = (built["out"] / "files" / config["sha256"]).read_text()
    assert "profile: pi4" in text


def test_verify_inspect_and_every_refusal(built: dict[str, Path]) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["bundle", "verify", str(built["out"]), "--key", str(built["pub"])])
    assert ok.exit_code == 0, ok.output
    assert "ok:" in ok.output
    wrong = runner.invoke(main, ["bundle", "verify", str(built["out"]), "--key",
                                 str(built["pub"]), "--device", "pi5"])  # fmt: skip
    assert wrong.exit_code == 1
    assert "pi4, not pi5" in wrong.output
    inspect = runner.invoke(main, ["bundle", "inspect", str(built["out"]), "--json"])
    assert json.loads(inspect.output)["device"] == "lamp-b"

    bad = built["work"] / "tampered"
    shutil.copytree(built["out"], bad)
    data = json.loads((bad / "bundle.json").read_text())
    lamp = next(f for f in data["files"] if f["path"] == "app/smarthome/lamp.py")
    (bad / "files" / lamp["sha256"]).write_text("print('owned')\n")
    res = runner.invoke(main, ["bundle", "verify", str(bad), "--key", str(built["pub"])])
    assert res.exit_code == 1
    assert "app/smarthome/lamp.py" in res.output
    (bad / "files" / lamp["sha256"]).unlink()
    res = runner.invoke(main, ["bundle", "verify", str(bad), "--key", str(built["pub"])])
    assert "missing" in res.output
    (bad / "bundle.json.minisig").unlink()
    res = runner.invoke(main, ["bundle", "verify", str(bad), "--key", str(built["pub"])])
    assert res.exit_code == 1
    assert "unsigned" in res.output
    other = built["work"] / "other.key"
    runner.invoke(main, ["keys", "generate", "--key", str(other)])
    res = runner.invoke(main, ["bundle", "verify", str(built["out"]), "--key",
                               str(built["work"] / "other.pub")])  # fmt: skip
    assert res.exit_code == 1
    assert "not trusted" in res.output


@pytest.mark.skipif(MINISIGN is None, reason="minisign not installed")
def test_minisign_checks_a_bundle(built: dict[str, Path]) -> None:
    res = subprocess.run(
        [str(MINISIGN), "-Vm", str(built["out"] / "bundle.json"), "-p", str(built["pub"])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "edgeagent bundle 0.1.0+" in res.stdout


def test_build_errors_are_one_clear_line(tmp_path: Path, built: dict[str, Path]) -> None:
    runner = CliRunner()
    config = tmp_path / "c.yaml"
    config.write_text("device: x\nskills:\n  - module: nosuchmodule\n")
    res = runner.invoke(main, ["bundle", "build", str(config), "--device", "pi4", "--key",
                               str(built["key"])])  # fmt: skip
    assert res.exit_code == 1
    assert "nosuchmodule" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["bundle", "build", str(built["config"]), "--device", "pi9",
                               "--key", str(built["key"])])  # fmt: skip
    assert res.exit_code == 1
    assert "pi9" in res.output
    res = runner.invoke(main, ["bundle", "build", str(built["config"]), "--device", "pi4",
                               "--key", str(tmp_path / "none.key")])  # fmt: skip
    assert res.exit_code == 1
    assert "keys generate" in res.output
