"""The optimizer: variants, measurements, the choice rules, the card, and the CLI.

A small MLP (64-256-128-10, MatMul+Add+Relu) is fitted on scikit-learn's digits with numpy in
the test itself: random hidden layers and a ridge-regression output layer, which is enough for
about 95% accuracy and big enough for int8 to shrink the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("sklearn")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeagent.cli_models import models  # noqa: E402
from edgeagent.devices import load_profile  # noqa: E402
from edgeagent.devices.profile import DeviceProfile, Figure  # noqa: E402
from edgeagent.models.card import (  # noqa: E402
    BenchReport,
    Figures,
    ModelCard,
    VariantRecord,
    render_markdown,
)
from edgeagent.models.choose import choose  # noqa: E402
from edgeagent.models.mlp import read_mlp_chain  # noqa: E402
from edgeagent.models.optimize import optimize  # noqa: E402
from edgeagent.models.variants import build_variants  # noqa: E402

RUNS = 200
ROOT = Path(__file__).resolve().parent.parent


# --- fixtures ---------------------------------------------------------------------------------


def _mlp_onnx(layers: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]) -> Any:
    nodes, inits = [], []
    current = "x"
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["logits" if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (np.asarray(digits.data) / 16).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:1400], order[1400:]
    w1 = rng.normal(0, 1 / 8, (64, 256)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 256).astype(np.float32)
    w2 = rng.normal(0, 1 / 16, (256, 128)).astype(np.float32)
    b2 = np.full(128, 0.05, np.float32)
    hidden = np.maximum(np.maximum(x[train] @ w1 + b1, 0) @ w2 + b2, 0)
    a = np.hstack([hidden, np.ones((len(hidden), 1), np.float32)]).astype(np.float64)
    theta = np.linalg.solve(a.T @ a + 0.1 * np.eye(a.shape[1]), a.T @ np.eye(10)[y[train]])
    w3, b3 = theta[:-1].astype(np.float32), theta[-1].astype(np.float32)
    root = tmp_path_factory.mktemp("optimizer")
    files = {
        "model": root / "mlp.onnx",
        "calibration": root / "calib.npz",
        "eval": root / "eval.npz",
        "bad": root / "bad.npz",
    }
    onnx.save(_mlp_onnx([(w1, b1), (w2, b2), (w3, b3)]), str(files["model"]))
    np.savez(files["calibration"], x=x[train[:300]])
    np.savez(files["eval"], x=x[test], labels=y[test])
    np.savez(files["bad"], pixels=x[train[:10]])
    files["root"] = root
    return files


@pytest.fixture(scope="module", params=["pi4", "pi5"])
def card(request: pytest.FixtureRequest, data: dict[str, Path]) -> ModelCard:
    profile = load_profile(request.param)
    out = data["root"] / f"out-{profile.name}"
    return optimize(
        data["model"],
        profile,
        out,
        calibration=data["calibration"],
        evaluation=data["eval"],
        runs=RUNS,
    )


def _figures(p50: float, size: int, drop: float = 0.0, mem: float = 5.0) -> Figures:
    return Figures(
        size_bytes=size,
        size_gzip_bytes=size // 2,
        peak_memory_mb=mem,
        threads=1,
        runs=100,
        p50_ms=p50,
        p99_ms=p50 * 2,
        speed_factor=1.0,
        estimate_p50_ms=p50,
        estimate_p99_ms=p50 * 2,
        metric="accuracy",
        metric_value=0.9,
        drop=drop,
    )


def _variant(name: str, fig: Figures | None, **kw: Any) -> VariantRecord:
    defaults: dict[str, Any] = {"technique": name, "precision": "fp32", "runtime": "onnxruntime"}
    return VariantRecord(name=name, figures=fig, **(defaults | kw))


def _profile(**update: Any) -> DeviceProfile:
    return load_profile("pi4").model_copy(update=update)


# --- the choice rules, on synthetic figures ---------------------------------------------------


def test_choice_prefers_the_fastest_within_the_accuracy_budget() -> None:
    variants = [
        _variant("fp32", _figures(0.10, 1000)),
        _variant("fast-but-wrong", _figures(0.01, 1000, drop=3.0)),
        _variant("fast", _figures(0.05, 900, drop=0.5)),
    ]
    choice = choose(variants, _profile(), budget=1.0)
    assert choice.variant == "fast"
    assert "quality" in choice.eliminated["fast-but-wrong"]
    assert "drop 3.00 > 1" in choice.rules[1]
    assert choice.variant in choice.reason


def test_budget_zero_keeps_only_variants_without_a_drop() -> None:
    variants = [
        _variant("fp32", _figures(0.10, 1000)),
        _variant("slightly-worse", _figures(0.05, 500, drop=0.3)),
        _variant("better", _figures(0.08, 800, drop=-0.2)),
    ]
    choice = choose(variants, _profile(), budget=0.0)
    assert choice.variant == "better"
    assert "slightly-worse" in choice.eliminated


def test_int8_slower_than_fp32_is_never_chosen_unless_size_forces_it() -> None:
    fp32 = _variant("fp32", _figures(0.10, 4 * 1024 * 1024))
    int8 = _variant("int8", _figures(0.12, 1024 * 1024), precision="int8", base="fp32")
    choice = choose([fp32, int8], _profile(), budget=1.0)
    assert choice.variant == "fp32"
    assert "int8 only when faster" in choice.eliminated["int8"]
    tight = _profile(storage_budget_mb=Figure(value=2, source="test budget"))
    choice = choose([fp32, int8], tight, budget=1.0)
    assert choice.variant == "int8"
    assert "storage" in choice.eliminated["fp32"]
    assert "size forces it" in choice.rules[-2]
    assert "does not fit" in choice.reason


def test_ties_go_to_the_smaller_file_and_runtimes_must_exist() -> None:
    variants = [
        _variant("fp32", _figures(0.100, 1000)),
        _variant("small", _figures(0.103, 300)),
        _variant("lite", _figures(0.02, 900), runtime="litert"),
    ]
    assert choose(variants, _profile(), budget=1.0).variant == "lite"
    ort_only = _profile(runtimes=["onnxruntime"])
    choice = choose(variants, ort_only, budget=1.0)
    assert choice.variant == "small"
    assert "runtime" in choice.eliminated["lite"]
    assert "smallest" in choice.reason


def test_nothing_fits_is_a_choice_of_none_with_reasons() -> None:
    variants = [
        _variant("fp32", _figures(0.1, 1000, mem=50.0)),
        _variant("skipped", None, skipped="not an MLP chain"),
    ]
    tiny = _profile(model_budget_mb=Figure(value=1, source="test budget"))
    choice = choose(variants, tiny, budget=1.0)
    assert choice.variant is None
    assert "RAM" in choice.eliminated["fp32"]
    assert "not an MLP chain" in choice.eliminated["skipped"]
    assert choice.reason.startswith("no variant meets the rules")


# --- builders ---------------------------------------------------------------------------------


def test_builders_skip_with_a_reason_when_a_technique_does_not_apply(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "conv.onnx"))
    built = build_variants(
        tmp_path / "conv.onnx",
        tmp_path / "variants",
        None,
        ["int8-dynamic", "structured-25", "litert-fp32", "magnitude-50"],
    )
    reasons = {b.name: b.skipped for b in built}
    assert reasons["fp32"] is None
    assert "convolutions" in str(reasons["int8-dynamic"])
    assert "MLP chain" in str(reasons["structured-25"])
    assert reasons["litert-fp32"] is None  # conv nets go through models/tflite_conv.py
    assert "no MatMul/Gemm" in str(reasons["magnitude-50"])


def test_the_zoo_digits_model_is_read_as_an_mlp_chain() -> None:
    path = ROOT / "models" / "zoo" / "digits" / "digits.onnx"
    if not path.is_file():
        pytest.skip("the zoo's digits model is not trained in this checkout")
    chain = read_mlp_chain(onnx.load(str(path)))
    assert not isinstance(chain, str), chain
    assert chain.widths[0] == 64
    assert chain.widths[-1] == 10


# --- end to end -------------------------------------------------------------------------------


def test_every_variant_is_built_and_measured(card: ModelCard) -> None:
    by_name = {v.name: v for v in card.variants}
    assert len(by_name) == 14
    for v in card.variants:
        assert v.figures is not None, (v.name, v.skipped, v.error)
        f = v.figures
        assert f.size_bytes > 0
        assert f.size_gzip_bytes > 0
        assert f.p50_ms > 0
        assert f.p99_ms >= f.p50_ms
        assert f.peak_memory_mb is not None
        assert f.peak_memory_mb >= 0
        assert f.metric == "accuracy"
        assert f.metric_value is not None
        assert f.drop is not None
        assert f.fidelity is not None
        assert f.fidelity.data == "calibration"
        assert f.estimate_p50_ms == pytest.approx(f.p50_ms * f.speed_factor, rel=1e-3)
        factor = card.device.speed.int8 if v.precision == "int8" else card.device.speed.fp32
        assert f.speed_factor == factor.value
    fp32 = by_name["fp32"].figures
    assert fp32 is not None
    assert fp32.metric_value is not None
    assert fp32.metric_value > 0.9
    int8 = by_name["int8-static"].figures
    assert int8 is not None
    assert int8.size_bytes <= 0.35 * fp32.size_bytes
    for pct in (25, 50):
        pruned = by_name[f"structured-{pct}"].figures
        assert pruned is not None
        assert pruned.params is not None
        assert fp32.params is not None
        assert pruned.params < fp32.params
        assert pruned.size_bytes < fp32.size_bytes
    magnitude = by_name["magnitude-80"]
    assert "compressed size only" in magnitude.technique
    assert magnitude.figures is not None
    assert magnitude.figures.size_gzip_bytes < fp32.size_gzip_bytes
    assert abs(magnitude.figures.size_bytes - fp32.size_bytes) < 0.01 * fp32.size_bytes


def test_the_choice_follows_the_rules(card: ModelCard) -> None:
    choice = card.choice
    assert choice.variant is not None
    by_name = {v.name: v for v in card.variants}
    pick = by_name[choice.variant]
    f = pick.figures
    assert f is not None
    assert f.drop is not None
    assert f.drop <= card.data.budget
    assert pick.runtime in card.device.runtimes
    assert f.size_bytes <= card.device.storage_budget_mb.value * 2**20
    if pick.precision == "int8":
        base = by_name[pick.base or "fp32"].figures
        assert base is not None
        assert f.estimate_p50_ms <= base.estimate_p50_ms
    qualified = [by_name[n].figures for n in choice.qualified]
    fastest = min(q.estimate_p50_ms for q in qualified if q is not None)
    assert f.estimate_p50_ms <= fastest * 1.05 + 1e-9
    for name in set(by_name) - set(choice.qualified):
        assert name in choice.eliminated


def test_a_tight_storage_budget_leaves_only_small_variants(card: ModelCard) -> None:
    sizes = {v.name: v.figures.size_bytes for v in card.variants if v.figures is not None}
    limit = sorted(sizes.values())[2] / 2**20
    tight = card.device.model_copy(
        update={"storage_budget_mb": Figure(value=limit, source="test budget")}
    )
    choice = choose(card.variants, tight, card.data.budget)
    assert choice.variant is not None
    assert sizes[choice.variant] <= limit * 2**20
    assert "storage" in choice.eliminated["fp32"]


def test_budget_zero_on_measured_variants(card: ModelCard) -> None:
    choice = choose(card.variants, card.device, 0.0)
    assert choice.variant is not None
    for v in card.variants:
        if v.figures is not None and v.figures.drop is not None and v.figures.drop > 0:
            assert v.name in choice.eliminated


def test_the_card_is_written_and_validates(card: ModelCard, data: dict[str, Path]) -> None:
    out = data["root"] / f"out-{card.device.name}"
    loaded = ModelCard.model_validate_json((out / "card.json").read_text())
    assert loaded.choice == card.choice
    md = (out / "card.md").read_text()
    assert card.choice.reason in md
    assert f"**Chosen: {card.choice.variant}**" in md
    assert "edgeagent models optimize" in md
    assert "--device" in card.reproduce.command
    assert card.chosen_file is not None
    assert (out / card.chosen_file).is_file()
    for v in card.variants:
        assert v.file is not None
        assert (out / v.file).is_file()
    assert card.model.sha256
    assert card.machine.cores >= 1
    assert any("peak memory" in m and "baseline" in m for m in card.method)
    assert render_markdown(loaded) == md


def test_without_eval_the_card_says_accuracy_was_not_checked(data: dict[str, Path]) -> None:
    card = optimize(
        data["model"],
        load_profile("pi5"),
        data["root"] / "no-eval",
        calibration=data["calibration"],
        variants=["fp32", "int8-static"],
        runs=RUNS,
    )
    assert not card.data.accuracy_checked
    for v in card.variants:
        assert v.figures is not None
        assert v.figures.fidelity is not None
        assert v.figures.metric is None
        assert v.figures.fidelity.top1_agreement is not None
    assert "accuracy was not checked" in render_markdown(card)
    assert "top-1 disagreement" in card.data.budget_unit


# --- the command line -------------------------------------------------------------------------


def test_cli_optimize_json(data: dict[str, Path]) -> None:
    out = data["root"] / "cli"
    result = CliRunner().invoke(
        models,
        [
            "optimize",
            str(data["model"]),
            "--device",
            "pi5",
            "--calibration",
            str(data["calibration"]),
            "--eval",
            str(data["eval"]),
            "--variants",
            "fp32,structured-50,litert-fp32",
            "--runs",
            str(RUNS),
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    card = ModelCard.model_validate_json(result.stdout)
    assert [v.name for v in card.variants] == ["fp32", "structured-50", "litert-fp32"]
    assert card.choice.variant is not None
    assert "--variants fp32,structured-50,litert-fp32" in card.reproduce.command
    assert "measuring" in result.stderr


def test_cli_bench_json_and_record(data: dict[str, Path]) -> None:
    record = data["root"] / "speed.json"
    runner = CliRunner()
    base = ["bench", str(data["model"]), "--runs", str(RUNS), "--record", str(record), "--json"]
    first = runner.invoke(models, [*base, "--device", "x86-64", "--reference", "-q"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(models, [*base, "--device", "pi4", "--eval", str(data["eval"]), "-q"])
    assert second.exit_code == 0, second.output
    report = BenchReport.model_validate_json(second.stdout)
    f = report.variant.figures
    assert f is not None
    assert f.metric == "accuracy"
    assert f.peak_memory_mb is not None
    assert f.estimate_p50_ms == pytest.approx(f.p50_ms * 8.0, rel=1e-3)
    assert report.implied_speed_factor is not None
    assert report.implied_speed_factor > 0
    entries = json.loads(record.read_text())
    assert [e["reference"] for e in entries] == [True, False]
    human = runner.invoke(models, ["bench", str(data["model"]), "-d", "pi5", "--runs", "50"])
    assert human.exit_code == 0, human.output
    assert "est. pi5" in human.stdout


def test_cli_bad_npz_names_are_a_clear_error(data: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        models,
        ["optimize", str(data["model"]), "-d", "pi4", "--calibration", str(data["bad"])],
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --calibration")
    assert "'pixels'" in result.stderr
    assert "x: float32[?, 64]" in result.stderr


def test_cli_int8_static_without_calibration_names_the_file_needed(data: dict[str, Path]) -> None:
    result = CliRunner().invoke(models, ["optimize", str(data["model"]), "-d", "pi4"])
    assert result.exit_code == 1
    assert "int8-static" in result.stderr
    assert "--calibration FILE.npz" in result.stderr
    assert "x: float32[?, 64]" in result.stderr


def test_cli_unknown_device_and_model(data: dict[str, Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(models, ["bench", str(data["model"]), "-d", "no-such-board"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")
    result = runner.invoke(models, ["bench", "missing.onnx", "-d", "pi4"])
    assert result.exit_code == 1
    assert "missing.onnx" in result.stderr


def test_cli_zoo_lists_recipes() -> None:
    result = CliRunner().invoke(models, ["zoo", "--json"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.stdout)]
    assert "digits" in names
