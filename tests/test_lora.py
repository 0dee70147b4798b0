"""LoRA adapters for the intent model: the base is the plain model, an adapter trained on a
household's phrasing changes its held-out accuracy, and every wrong file is refused clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from smarthome.assistant import CommandParser, Utterance

from edgeagent.cli import main
from edgeagent.deploy import bundle as bundle_module
from edgeagent.deploy.bundle import BuildOptions, build_bundle
from edgeagent.models import ModelError
from edgeagent.models.lora import score, train_adapter
from edgeagent.models.lora_adapter import (
    AdapterError,
    AdapterMismatch,
    file_sha256,
    load_adapted,
    model_version,
    read_meta,
    read_parameters,
    write_adapter,
    zoo_base,
)
from edgeagent.models.lora_base import LoraBaseError, lora_targets, make_lora_base
from edgeagent.models.lora_examples import ExamplesError, load_examples
from edgeagent.models.onnx_backend import OnnxSession
from edgeagent.models.zoo import RECIPES
from tests.deployapp import make_app

ROOT = Path(__file__).resolve().parent.parent
HOUSEHOLD = ROOT / "examples" / "adapters" / "household.yaml"
HELD_OUT = ROOT / "examples" / "adapters" / "household-heldout.yaml"
PLAIN = RECIPES["intent"].onnx_path
BASE = zoo_base("intent")
TARGETS = ("trunk.0", "trunk.2", "intent", "kind", "room")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One adapter trained end to end through the CLI (the slow part, done once)."""
    out = tmp_path_factory.mktemp("lora") / "household.onnx_adapter"
    res = CliRunner().invoke(
        main,
        ["models", "adapt", "zoo:intent", "--examples", str(HOUSEHOLD), "-o", str(out),
         "--held-out", str(HELD_OUT), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"path": out, "report": json.loads(res.output)}


def _eval_features() -> dict[str, np.ndarray[Any, Any]]:
    return RECIPES["intent"].make_eval(0)


def test_base_is_the_plain_model_without_an_adapter() -> None:
    x = _eval_features()["features"]
    plain = OnnxSession(PLAIN).run({"features": x})
    base = load_adapted("zoo:intent", None)
    assert base.inputs == OnnxSession(PLAIN).inputs  # the adapter inputs are not feeds
    got = base.run({"features": x})
    assert set(got) == {"intent", "kind", "room"}
    for head in got:
        np.testing.assert_allclose(
            np.asarray(got[head], np.float32),
            np.asarray(plain[head], np.float32),
            rtol=0,
            atol=1e-5,
        )
    # The committed base is what the recipe's step makes from the committed plain model.
    rebuilt = make_lora_base(onnx.load(str(PLAIN)), "intent")
    assert rebuilt.SerializeToString() == onnx.load(str(BASE)).SerializeToString()
    assert [t.name for t in lora_targets(rebuilt)] == list(TARGETS)
    assert BASE.stat().st_size < PLAIN.stat().st_size * 1.05
    with pytest.raises(LoraBaseError, match="not a LoRA base"):
        lora_targets(onnx.load(str(PLAIN)))


def test_cli_reports_and_the_adapter_changes_held_out_accuracy(trained: dict[str, Any]) -> None:
    report = trained["report"]
    assert report["bytes"] == trained["path"].stat().st_size
    assert report["examples"]["adapted"]["exact_match"] >= 0.9
    held = load_examples(HELD_OUT)
    before = score(load_adapted("zoo:intent", None).run, held)
    after = score(load_adapted("zoo:intent", trained["path"]).run, held)
    assert report["held_out"]["base"]["exact_match"] == round(before.exact, 4)
    assert report["held_out"]["adapted"]["exact_match"] == round(after.exact, 4)
    # Measured: intent 0.375 -> 0.90, exact 0.05 -> 0.65 (benchmarks/bench_adapter.py).
    assert after.intent - before.intent >= 0.3, (before, after)
    assert after.exact - before.exact >= 0.4, (before, after)
    # Replay keeps the zoo's own held-out set: the intent accuracy drops by at most 5 points.
    ev = _eval_features()
    base_out = load_adapted("zoo:intent", None).run({"features": ev["features"]})
    adapted_out = load_adapted("zoo:intent", trained["path"]).run({"features": ev["features"]})
    acc = [float(np.mean(np.argmax(o["intent"], 1) == ev["labels_intent"]))
           for o in (base_out, adapted_out)]  # fmt: skip
    assert acc[1] >= acc[0] - 0.05, acc


def test_adapter_file_metadata_and_math(trained: dict[str, Any]) -> None:
    path = trained["path"]
    meta = read_meta(path)
    assert meta.base == "intent"
    assert meta.base_file == "intent-lora.onnx"
    assert meta.base_sha256 == file_sha256(BASE)
    assert (meta.rank, meta.targets, meta.examples) == (4, TARGETS, 40)
    assert meta.replay > 0
    params = read_parameters(path)
    assert sorted(params) == sorted(f"{t}.lora_{ab}" for t in TARGETS for ab in "AB")
    assert params["trunk.0.lora_A"].shape == (512, 4)
    assert params["intent.lora_B"].shape == (4, 10)
    assert path.stat().st_size < 0.15 * BASE.stat().st_size
    fmt = ort.AdapterFormat.read_adapter(str(path))  # ORT's reader ignores our metadata block
    assert fmt.get_model_version() == model_version(meta.base_sha256)
    # The side path is x @ A @ B added to each dense layer: numpy reference vs ONNX Runtime.
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(PLAIN)).graph.initializer}

    def dense(x: np.ndarray[Any, Any], layer: str) -> np.ndarray[Any, Any]:
        lora = x @ params[f"{layer}.lora_A"] @ params[f"{layer}.lora_B"]
        out: np.ndarray[Any, Any] = x @ w[f"{layer}.weight"].T + w[f"{layer}.bias"] + lora
        return out

    x = _eval_features()["features"][:64]
    h = np.maximum(dense(np.maximum(dense(x, "trunk.0"), 0), "trunk.2"), 0)
    got = load_adapted("zoo:intent", path).run({"features": x})
    for head in ("intent", "kind", "room"):
        np.testing.assert_allclose(
            np.asarray(got[head], np.float32), dense(h, head), rtol=1e-4, atol=1e-4
        )


def test_an_adapter_for_another_base_is_refused(tmp_path: Path, trained: dict[str, Any]) -> None:
    plain = onnx.load(str(PLAIN))
    for t in plain.graph.initializer:
        if t.name == "intent.bias":  # a retrained model: same shapes, other weights
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1.0, t.name))
    other = tmp_path / "other-lora.onnx"
    onnx.save(make_lora_base(plain, "intent"), str(other))
    # ONNX Runtime alone would run it without complaint ...
    OnnxSession(other, adapter=trained["path"]).warmup(1)
    # ... so the metadata check refuses it, naming both.
    with pytest.raises(AdapterMismatch, match=r"trained for base 'intent' \(intent-lora.onnx"):
        load_adapted(other, trained["path"])
    with pytest.raises(AdapterMismatch, match=r"other-lora\.onnx"):
        CommandParser(model=str(other), adapter=str(trained["path"]))


def test_broken_adapter_files_are_typed_errors(tmp_path: Path, trained: dict[str, Any]) -> None:
    good = trained["path"].read_bytes()
    junk = tmp_path / "junk.onnx_adapter"
    junk.write_bytes(b"not an adapter at all" * 10)
    with pytest.raises(AdapterError, match="not an edgeagent adapter"):
        load_adapted("zoo:intent", junk)
    damaged = tmp_path / "damaged.onnx_adapter"  # flatbuffer overwritten, metadata intact
    damaged.write_bytes(b"\xff" * 64 + good[64:])
    with pytest.raises(AdapterError, match="not a valid ONNX Runtime adapter"):
        load_adapted("zoo:intent", damaged)
    with pytest.raises(ModelError, match="cannot load adapter"):
        OnnxSession(BASE, adapter=damaged)
    bad_meta = tmp_path / "meta.onnx_adapter"
    bad_meta.write_bytes(good.replace(b'"rank":4', b'"rank":"four"'))
    with pytest.raises(AdapterError, match="damaged metadata block"):
        read_meta(bad_meta)
    with pytest.raises(AdapterError, match="no LoRA base file"):
        load_adapted("zoo:digits", trained["path"])


def test_examples_file_errors_name_file_and_line(tmp_path: Path) -> None:
    yml = tmp_path / "p.yaml"
    yml.write_text("- {text: hi, intent: turn_on}\n- text: make it cosy\n  intent: heat_up\n")
    with pytest.raises(ExamplesError, match=r"p.yaml:3: 1.intent: .*unknown intent 'heat_up'") as e:
        load_examples(yml)
    assert "turn_on, turn_off, set_level" in str(e.value)
    yml.write_text("- {text: hi, intent: turn_on, room: den}\n")
    with pytest.raises(ExamplesError, match=r"p.yaml:1: 0.room: .*valid: kitchen, living"):
        load_examples(yml)
    yml.write_text("- {text: hi, intent: turn_on}\n- {text: x, intent: open, colour: red}\n")
    with pytest.raises(ExamplesError, match=r"p.yaml:2: 1.colour: unknown field"):
        load_examples(yml)
    yml.write_text("text: hi\n")
    with pytest.raises(ExamplesError, match="expected a list of examples"):
        load_examples(yml)
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"text": "hi", "intent": "lock", "kind": "door"}\n\n{"text": "x"\n')
    with pytest.raises(ExamplesError, match=r"p.jsonl:3: invalid JSON"):
        load_examples(jl)
    jl.write_text('{"text": "hi", "intent": "lock", "kind": "doors"}\n')
    with pytest.raises(ExamplesError, match=r"p.jsonl:1: kind: .*unknown kind 'doors'"):
        load_examples(jl)
    jl.write_text('{"text": "bolt the porch", "intent": "lock", "kind": "door"}\n')
    (only,) = load_examples(jl)
    assert (only.intent, only.kind, only.room) == ("lock", "door", None)
    with pytest.raises(ExamplesError, match=r"not '\.txt'"):
        load_examples(tmp_path / "p.txt")
    res = CliRunner().invoke(main, ["models", "adapt", "zoo:intent", "--examples", str(yml), "-o",
                                    str(tmp_path / "a.onnx_adapter")])  # fmt: skip
    assert res.exit_code == 1
    assert "error: " in res.output
    assert "Traceback" not in res.output


def test_model_skill_with_an_adapter(trained: dict[str, Any]) -> None:
    held = load_examples(HELD_OUT)
    plain = CommandParser()
    adapted = CommandParser(adapter=str(trained["path"]))
    assert plain.model_info("parse_command") == ("intent", "1")
    assert adapted.model_info("parse_command") == ("intent", "1+adapter:household")
    right = {"plain": 0, "adapted": 0}
    for e in held:
        for name, skill_set in (("plain", plain), ("adapted", adapted)):
            got = skill_set.parse_command(Utterance(text=e.text))
            right[name] += (got.intent, got.kind, got.room) == (e.intent, e.kind, e.room)
    assert right["adapted"] >= right["plain"] + 0.4 * len(held), right


def _fake_wheels(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The bundle's wheel set (built and downloaded otherwise) as one small file: this test is
    about the app files, which build_bundle collects for real."""
    folder.mkdir()
    wheel = folder / "edgeagent-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    monkeypatch.setattr(bundle_module, "edgeagent_wheel", lambda cache, log: wheel)
    monkeypatch.setattr(bundle_module, "wheel_requirements", lambda own, extras: [])
    monkeypatch.setattr(bundle_module, "resolve_wheels", lambda *a, **k: [])


def test_bundle_ships_only_the_adapter(
    tmp_path: Path, trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_wheels(monkeypatch, tmp_path / "wheels")
    app = tmp_path / "app"
    make_app(app, device="speaker-a", fleet="f", broker="mqtt://127.0.0.1:1", profile="pi4")
    second = tmp_path / "other.onnx_adapter"
    params, meta = train_adapter(BASE, load_examples(HOUSEHOLD)[:10], epochs=2, seed=1)
    write_adapter(second, params, meta)
    shutil.copy(trained["path"], app / "household.onnx_adapter")
    manifests = []
    for name, adapter in (("a", app / "household.onnx_adapter"), ("b", second)):
        config = app / f"speaker-{name}.yaml"
        config.write_text(
            "device: speaker-a\nfleet: f\nbroker: mqtt://127.0.0.1:1\nprofile: pi4\nskills:\n"
            f"  - module: smarthome.assistant:CommandParser\n    options: {{adapter: {adapter}}}\n"
        )
        built = build_bundle(config, "pi4", tmp_path / f"b-{name}",
                             options=BuildOptions(cache=tmp_path / "cache"))  # fmt: skip
        manifests.append(built.manifest)
    files = [{f["path"]: f for f in m["files"]} for m in manifests]
    for f in files:
        assert not [p for p in f if p.endswith(".onnx")]  # the base stays in the wheel
    assert files[0]["app/models/household.onnx_adapter"]["size"] == trained["path"].stat().st_size
    assert files[1]["app/models/other.onnx_adapter"]["size"] == second.stat().st_size
    sha = [{p: f["sha256"] for p, f in fs.items()} for fs in files]
    differ = {p for p in sha[0].keys() | sha[1].keys() if sha[0].get(p) != sha[1].get(p)}
    assert differ == {"app/agent.yaml", "app/models/household.onnx_adapter",
                      "app/models/other.onnx_adapter"}  # fmt: skip
    assert sum(files[1][p]["size"] for p in differ if p in files[1]) < 20_000
    (model,) = manifests[0]["models"]
    assert model["file"] == "edgeagent wheel: edgeagent/models/zoo/intent/intent-lora.onnx"
    assert model["variant"] == "adapter:household"
    config_sha = files[0]["app/agent.yaml"]["sha256"]
    assert (
        "adapter: models/household.onnx_adapter"
        in (tmp_path / "b-a" / "files" / config_sha).read_text()
    )


def test_router_model_layer_runs_base_plus_adapter(trained: dict[str, Any]) -> None:
    """The router takes the adapted session as its model (``session=``)."""
    from benchmarks.bench_nlu_heldout import load_catalog
    from edgeagent.nlu import Interpretation, Router

    session = load_adapted("zoo:intent", trained["path"])
    router = Router(load_catalog({}), session=session, layers=("model",))
    got = router.route("nix the big light in the kitchen")
    assert isinstance(got, Interpretation), got
    assert (got.skill, got.where) == ("turn_off", {"room": "kitchen", "kind": "lamp"})
