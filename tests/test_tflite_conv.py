"""The ONNX -> .tflite converter for conv nets (fp32 and int8), run on real LiteRT.

Models are made here (:mod:`edgeagent.models.convnets`): a small MobileNet v1 (alpha 0.25,
96x96, 10 classes) and a tiny residual net that uses the other ops (Pad, MaxPool with padding,
Add, Mul, Sigmoid, HardSwish, Concat, AveragePool, ReduceMean, Softmax). Their batch norms are
fitted to the inputs (``fit_batch_norm``) so that outputs depend on the image, as a trained
net's do. Inputs are "random but structured": perturbations of 8 smooth prototype images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("ai_edge_litert.interpreter")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeagent.devices import load_profile  # noqa: E402
from edgeagent.models import load_model  # noqa: E402
from edgeagent.models.convnets import (  # noqa: E402
    fit_batch_norm,
    mobilenet_v1_onnx,
    tiny_resnet_onnx,
)
from edgeagent.models.optimize import optimize  # noqa: E402
from edgeagent.models.tflite_conv import UnsupportedOp, onnx_to_tflite  # noqa: E402
from edgeagent.models.variant_quant import build_int8_static  # noqa: E402

F32 = npt.NDArray[np.float32]


def _smooth(rng: np.random.Generator, n: int, size: int) -> F32:
    coarse = rng.normal(0, 1, (n, 3, 6, 6)).astype(np.float32)
    k = -(-size // 6)
    return np.kron(coarse, np.ones((1, 1, k, k), np.float32))[:, :, :size, :size]


def structured(n: int, size: int, seed: int) -> F32:
    """``n`` images: one of 8 fixed smooth prototypes, a smooth perturbation, pixel noise."""
    proto = _smooth(np.random.default_rng(100), 8, size)
    rng = np.random.default_rng(seed)
    x = proto[rng.integers(0, 8, n)] + 0.5 * _smooth(rng, n, size)
    noise = rng.normal(0.0, 0.1, size=x.shape)
    return np.asarray(x + noise, np.float32)


def _ort(path: Path, x: F32) -> F32:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: F32 = session.run(None, {"image": x})[0]
    return out


def _litert(path: Path, x: F32) -> F32:
    session = load_model(path)
    (out,) = session.run({"image": x}).values()
    return np.asarray(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    root = tmp_path_factory.mktemp("convnets")
    mobilenet = mobilenet_v1_onnx(root / "mobilenet.onnx", alpha=0.25, size=96, classes=10)
    fit_batch_norm(mobilenet, structured(32, 96, 3))
    resnet = tiny_resnet_onnx(root / "resnet.onnx", softmax=True)
    fit_batch_norm(resnet, structured(32, 64, 3))
    logits = tiny_resnet_onnx(root / "resnet_logits.onnx", softmax=False)
    fit_batch_norm(logits, structured(32, 64, 3))
    return {
        "mobilenet": (mobilenet, 96),
        "resnet": (resnet, 64),
        "resnet_logits": (logits, 64),
    }


def test_the_models_are_what_they_claim(models: dict[str, tuple[Path, int]]) -> None:
    path, _ = models["mobilenet"]
    m = onnx.load(str(path))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 27  # the stem, then 13 x (depthwise, pointwise)
    groups = [next(a.i for a in n.attribute if a.name == "group") for n in convs]
    assert sum(1 for g in groups if g > 1) == 13
    assert 100_000 < path.stat().st_size < 1_500_000
    a = mobilenet_v1_onnx(path.parent / "again.onnx", alpha=0.25, size=96, classes=10)
    b = mobilenet_v1_onnx(path.parent / "again2.onnx", alpha=0.25, size=96, classes=10)
    assert a.read_bytes() == b.read_bytes()
    ops = {n.op_type for n in onnx.load(str(models["resnet"][0])).graph.node}
    assert {"Pad", "MaxPool", "Add", "Mul", "Concat", "HardSwish", "AveragePool"} <= ops


@pytest.mark.parametrize("name", ["mobilenet", "resnet"])
def test_fp32_tflite_equals_onnxruntime(
    name: str, models: dict[str, tuple[Path, int]], tmp_path: Path
) -> None:
    src, size = models[name]
    out = onnx_to_tflite(src, tmp_path / f"{name}.tflite")
    x = np.random.default_rng(7).uniform(-2, 2, (5, 3, size, size)).astype(np.float32)
    ref, got = _ort(src, x), _litert(out, x)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-4


def test_the_session_takes_the_onnx_input_layout(
    models: dict[str, tuple[Path, int]], tmp_path: Path
) -> None:
    src, size = models["mobilenet"]
    session = load_model(onnx_to_tflite(src, tmp_path / "m.tflite"))
    assert session.runtime == "litert"
    assert [(s.name, s.shape) for s in session.inputs] == [("image", (None, 3, size, size))]
    assert [(s.name, s.shape) for s in session.outputs] == [("logits", (None, 10))]
    x = structured(3, size, 11)
    one = np.concatenate([session.run({"image": x[i : i + 1]})["logits"] for i in range(3)])
    batch = np.asarray(session.run({"image": x})["logits"], np.float32)
    assert float(np.abs(batch - one).max()) <= 1e-5


@pytest.mark.parametrize(("name", "floor"), [("mobilenet", 0.75), ("resnet_logits", 0.85)])
def test_int8_agrees_with_fp32_as_well_as_onnxruntime_static_int8(
    name: str, floor: float, models: dict[str, tuple[Path, int]], tmp_path: Path
) -> None:
    src, size = models[name]
    calibration = {"image": structured(128, size, 2)}
    int8 = onnx_to_tflite(src, tmp_path / "int8.tflite", calibration=calibration)
    qdq = build_int8_static(src, tmp_path / "qdq.onnx", calibration, tmp_path)
    assert qdq.path is not None
    x = structured(64, size, 1)
    ref = _ort(src, x)
    assert len(np.unique(ref.argmax(1))) >= 5  # the inputs really lead to different classes
    got, theirs = _litert(int8, x), _ort(qdq.path, x)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    agree_ort = float((theirs.argmax(1) == ref.argmax(1)).mean())
    err, err_ort = float(np.abs(got - ref).mean()), float(np.abs(theirs - ref).mean())
    spread = float(ref.std(axis=0).mean())
    assert agree >= floor, (agree, agree_ort)
    assert agree >= agree_ort - 0.07, (agree, agree_ort)
    assert err <= 0.25 * spread, (err, spread)
    assert err <= 1.25 * err_ort, (err, err_ort)
    assert float(np.abs(got - ref).max()) <= 1.5 * spread
    print(f"{name}: int8 top-1 {agree:.3f} (onnxruntime QDQ {agree_ort:.3f}), mean |err| {err:.4f}")


def test_int8_file_is_int8_inside_with_float_edges(
    models: dict[str, tuple[Path, int]], tmp_path: Path
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    src, size = models["mobilenet"]
    fp32 = onnx_to_tflite(src, tmp_path / "f.tflite")
    int8 = onnx_to_tflite(src, tmp_path / "q.tflite", calibration={"image": structured(8, size, 2)})
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    interpreter = Interpreter(model_path=str(int8))
    details = interpreter.get_tensor_details()
    kinds: dict[str, Any] = {d["name"]: d for d in details}
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    depthwise = [d for n, d in kinds.items() if n.endswith("/weights") and d["shape"][0] == 1]
    assert depthwise
    assert all(d["dtype"] == np.int8 for d in depthwise)
    q = depthwise[0]["quantization_parameters"]
    assert q["quantized_dimension"] == 3
    assert len(q["scales"]) == depthwise[0]["shape"][3]
    biases = [d for n, d in kinds.items() if n.endswith("/bias")]
    assert biases
    assert all(d["dtype"] == np.int32 for d in biases)


def _one_op_model(tmp_path: Path, op: str) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node(op, ["r"], ["y"], name="the_odd_one"),
        ],
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    return path


def test_an_unsupported_op_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOp, match=r"Erf.*the_odd_one"):
        onnx_to_tflite(_one_op_model(tmp_path, "Erf"), tmp_path / "odd.tflite")
    weight = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=2, name="grouped")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "g.onnx"))
    with pytest.raises(UnsupportedOp, match=r"Conv.*grouped.*group 2"):
        onnx_to_tflite(tmp_path / "g.onnx", tmp_path / "g.tflite")


def test_optimize_gives_litert_fp32_and_int8_for_a_mobilenet(
    models: dict[str, tuple[Path, int]], tmp_path: Path
) -> None:
    src, size = models["mobilenet"]
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, image=structured(48, size, 5))
    card = optimize(
        src,
        load_profile("pi4"),
        tmp_path / "out",
        calibration=calibration,
        variants=["fp32", "int8-static", "litert-fp32", "litert-int8"],
        runs=30,
        warmup=5,
    )
    by_name = {v.name: v for v in card.variants}
    assert set(by_name) == {"fp32", "int8-static", "litert-fp32", "litert-int8"}
    for name in ("litert-fp32", "litert-int8"):
        v = by_name[name]
        assert v.skipped is None, v.skipped
        assert v.error is None, v.error
        assert v.runtime == "litert"
        assert v.file is not None
        assert v.file.endswith(".tflite")
        assert v.figures is not None
        assert v.figures.p50_ms > 0
        assert v.figures.fidelity is not None
    lite, lite8 = by_name["litert-fp32"].figures, by_name["litert-int8"].figures
    assert lite is not None
    assert lite8 is not None
    assert by_name["litert-int8"].precision == "int8"
    assert lite8.size_bytes < 0.4 * lite.size_bytes
    assert lite.fidelity is not None
    assert lite.fidelity.top1_agreement == 1.0
    assert by_name["litert-int8"].base == "litert-fp32"
