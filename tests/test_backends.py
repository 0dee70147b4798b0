"""Inference backends on small real models: an ONNX Gemm/Relu MLP built with onnx.helper, and the
same weights written as .tflite by our writer. Outputs agree with numpy and with each other."""

from __future__ import annotations

import importlib
import itertools
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeagent.models as models
from edgeagent.devices.profile import DeviceProfile
from edgeagent.models import (
    ModelError,
    RuntimeMissing,
    RuntimeSettings,
    Session,
    TensorSpec,
    load_model,
    settings_for,
)
from edgeagent.models.litert_backend import LiteRTSession
from edgeagent.models.onnx_backend import OnnxSession
from edgeagent.models.tflite_writer import write_mlp_tflite

F32 = npt.NDArray[np.float32]
Layers = list[tuple[F32, F32]]

DIMS = (64, 128, 64, 10)
ACTS: list[Any] = ["relu", "relu", "none"]
SIGNATURE_IN = "x: float32[?, 64]"


def assert_close(actual: npt.NDArray[Any], desired: npt.NDArray[Any]) -> None:
    """``assert_allclose`` at the tolerance of float32 inference, for any array: the backends'
    outputs are typed as generic arrays, which numpy's stubs do not accept as numbers."""
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5)


def random_layers(dims: tuple[int, ...], seed: int = 0) -> Layers:
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32),
            rng.standard_normal(n_out).astype(np.float32),
        )
        for n_in, n_out in itertools.pairwise(dims)
    ]


def numpy_mlp(layers: Layers, acts: list[str], x: F32, softmax: bool = False) -> F32:
    h = x.astype(np.float64)
    for (w, b), act in zip(layers, acts, strict=True):
        h = h @ w.T.astype(np.float64) + b
        if act == "relu":
            h = np.maximum(h, 0.0)
    if softmax:
        e = np.exp(h - h.max(axis=1, keepdims=True))
        h = e / e.sum(axis=1, keepdims=True)
    return h.astype(np.float32)


def write_onnx_mlp(
    path: Path, layers: Layers, acts: list[str], input_dims: tuple[str | int, ...] = ("batch", 64)
) -> Path:
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "x"
    for i, ((w, b), act) in enumerate(zip(layers, acts, strict=True)):
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        out = "logits" if last else f"h{i}"
        gemm_out = f"g{i}" if act == "relu" else out
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out], transB=1))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    n_out = layers[-1][0].shape[0]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def layers() -> Layers:
    return random_layers(DIMS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def onnx_path(model_dir: Path, layers: Layers) -> Path:
    return write_onnx_mlp(model_dir / "mlp.onnx", layers, ACTS)


@pytest.fixture(scope="module")
def tflite_path(model_dir: Path, layers: Layers) -> Path:
    return write_mlp_tflite(layers, ACTS, model_dir / "mlp.tflite")


@pytest.fixture(params=["onnx", "tflite"])
def session(request: pytest.FixtureRequest, onnx_path: Path, tflite_path: Path) -> Session:
    return load_model(onnx_path if request.param == "onnx" else tflite_path)


def batch(n: int, seed: int = 1) -> F32:
    return np.random.default_rng(seed).standard_normal((n, DIMS[0])).astype(np.float32)


# --- outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5])
def test_outputs_match_numpy(session: Session, layers: Layers, n: int) -> None:
    x = batch(n)
    out = session.run({"x": x})
    assert list(out) == ["logits"]
    assert out["logits"].shape == (n, DIMS[-1])
    assert out["logits"].dtype == np.float32
    assert_close(out["logits"], numpy_mlp(layers, ACTS, x))


def test_backends_agree(onnx_path: Path, tflite_path: Path) -> None:
    x = batch(16, seed=7)
    a = load_model(onnx_path).run({"x": x})["logits"]
    b = load_model(tflite_path).run({"x": x})["logits"]
    assert_close(a, b)
    assert np.argmax(a, axis=1).tolist() == np.argmax(b, axis=1).tolist()


@pytest.mark.parametrize(
    ("dims", "acts", "softmax"),
    [
        ((64, 128, 64, 10), ["relu", "relu", "none"], False),
        ((7, 3), ["none"], False),
        ((12, 5, 4), ["relu", "relu"], False),
        ((16, 32, 6), ["relu", "none"], True),
    ],
)
def test_tflite_writer_matches_numpy(
    tmp_path: Path, dims: tuple[int, ...], acts: list[Any], softmax: bool
) -> None:
    layers = random_layers(dims, seed=len(dims) + dims[-1])
    path = write_mlp_tflite(layers, acts, tmp_path / "m.tflite", softmax=softmax)
    session = load_model(path)
    output = "probabilities" if softmax else "logits"
    assert [s.name for s in session.outputs] == [output]
    # Scaled so that ReLU inputs go well past 6: a RELU6 or no activation would not pass.
    x = (10 * np.random.default_rng(3).standard_normal((4, dims[0]))).astype(np.float32)
    got = session.run({"x": x})[output]
    assert_close(got, numpy_mlp(layers, acts, x, softmax))
    if softmax:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_tflite_writer_names_and_aligns(tmp_path: Path, layers: Layers) -> None:
    path = write_mlp_tflite(layers, ACTS, tmp_path / "m.tflite", input_name="features")
    raw = path.read_bytes()
    assert raw[4:8] == b"TFL3"
    for w, b in layers:
        for constant in (w, b):
            offset = raw.find(constant.tobytes())
            assert offset > 0
            assert offset % 16 == 0, "constant buffers start 16-byte aligned"
    session = load_model(path)
    assert [str(s) for s in session.inputs] == ["features: float32[?, 64]"]


@pytest.mark.parametrize(
    ("layers_", "acts", "message"),
    [
        (random_layers((4, 3)), ["relu", "none"], "1 layers but 2 activations"),
        (random_layers((4, 3)), ["tanh"], "activation 'tanh'"),
        (random_layers((4, 3)) + random_layers((5, 2)), ["relu", "none"], "take 5 inputs"),
        ([(np.zeros((3, 4), np.float32), np.zeros(4, np.float32))], ["none"], "bias shaped"),
        ([], [], "at least one layer"),
    ],
)
def test_tflite_writer_rejects_bad_layers(
    tmp_path: Path, layers_: Layers, acts: list[Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_mlp_tflite(layers_, acts, tmp_path / "bad.tflite")
    assert not (tmp_path / "bad.tflite").exists()


# --- signatures and bad input -----------------------------------------------------------------


def test_signatures(session: Session) -> None:
    assert session.inputs == (TensorSpec("x", (None, 64), "float32"),)
    assert session.outputs == (TensorSpec("logits", (None, 10), "float32"),)
    assert [str(s) for s in session.inputs] == [SIGNATURE_IN]
    assert session.runtime == ("onnxruntime" if session.path.endswith(".onnx") else "litert")


BAD_FEEDS: list[tuple[str, Any, str]] = [
    ("short", {"x": batch(1)[:, :63]}, "input 'x' has shape (1, 63)"),
    ("rank", {"x": batch(1)[0]}, "input 'x' has shape (64,)"),
    ("dtype", {"x": batch(1).astype(np.float64)}, "input 'x' has dtype float64"),
    ("int", {"x": np.zeros((1, 64), np.int64)}, "input 'x' has dtype int64"),
    ("byteorder", {"x": batch(1).astype(">f4")}, "non-native byte order"),
    ("missing", {"features": batch(1)}, "missing input 'x'"),
    ("extra", {"x": batch(1), "y": batch(1)}, "unexpected input 'y'"),
    ("empty", {}, "missing input 'x'"),
    ("list", {"x": batch(1).tolist()}, "input 'x' is a list, not a numpy array"),
    ("not a dict", [batch(1)], "feeds must be a dict"),
]


@pytest.mark.parametrize(("case", "feeds", "detail"), BAD_FEEDS, ids=[c[0] for c in BAD_FEEDS])
def test_bad_feeds_name_the_signature(session: Session, case: str, feeds: Any, detail: str) -> None:
    session.run({"x": batch(1)})  # a good run first: the fast path must still catch bad feeds
    with pytest.raises(ModelError) as caught:
        session.run(feeds)
    message = str(caught.value)
    assert detail in message
    assert SIGNATURE_IN in message
    assert Path(session.path).name in message
    session.run({"x": batch(2)})  # and the session still works afterwards
    assert session.statistics().runs == 2


def test_static_shapes_are_enforced(tmp_path: Path, layers: Layers) -> None:
    for session in (
        load_model(write_onnx_mlp(tmp_path / "static.onnx", layers, ACTS, input_dims=(1, 64))),
        load_model(write_mlp_tflite(layers, ACTS, tmp_path / "s.tflite", dynamic_batch=False)),
    ):
        assert [str(s) for s in session.inputs] == ["x: float32[1, 64]"]
        session.run({"x": batch(1)})
        with pytest.raises(ModelError, match=r"has shape \(3, 64\) but the model expects x: float"):
            session.run({"x": batch(3)})


def test_non_contiguous_input(session: Session, layers: Layers) -> None:
    wide = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    for x in (wide[:, ::2], np.asfortranarray(wide[:, :64])):
        assert not x.flags.c_contiguous
        got = session.run({"x": x})["logits"]
        assert_close(got, numpy_mlp(layers, ACTS, x))


def test_runtime_failure_is_a_model_error(tmp_path: Path, layers: Layers) -> None:
    """A feed the signature allows but the graph cannot take fails in the runtime: still a
    ModelError, naming the file."""
    path = write_onnx_mlp(tmp_path / "loose.onnx", layers, ACTS, input_dims=("batch", "n"))
    session = load_model(path)
    assert [str(s) for s in session.inputs] == ["x: float32[?, ?]"]
    with pytest.raises(ModelError, match=r"loose\.onnx: onnxruntime failed"):
        session.run({"x": np.zeros((1, 63), np.float32)})


# --- loading ----------------------------------------------------------------------------------


def test_load_model_dispatches_on_suffix(
    onnx_path: Path, tflite_path: Path, tmp_path: Path
) -> None:
    assert isinstance(load_model(onnx_path), OnnxSession)
    assert isinstance(load_model(str(tflite_path)), LiteRTSession)
    upper = tmp_path / "MLP.ONNX"
    upper.write_bytes(onnx_path.read_bytes())
    assert isinstance(load_model(upper), OnnxSession)
    for name in ("model.pt", "model"):
        (tmp_path / name).write_bytes(b"\0" * 16)
        with pytest.raises(ModelError, match="unknown model format"):
            load_model(tmp_path / name)
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.onnx")


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
@pytest.mark.parametrize("content", ["garbage", "truncated", "empty"])
def test_corrupt_file_is_a_model_error(
    tmp_path: Path, onnx_path: Path, tflite_path: Path, suffix: str, content: str
) -> None:
    good = (onnx_path if suffix == ".onnx" else tflite_path).read_bytes()
    data = {
        "garbage": np.random.default_rng(0).bytes(300),
        "truncated": good[: len(good) // 3],
        "empty": b"",
    }[content]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data)
    with pytest.raises(ModelError) as caught:
        load_model(path)
    assert not isinstance(caught.value, RuntimeMissing)
    message = str(caught.value)
    assert str(path) in message
    assert ("ONNX" if suffix == ".onnx" else "TFLite") in message
    assert len(message) > len(f"cannot load ONNX model {path}: "), "the runtime's reason is given"


def test_onnxruntime_missing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, onnx_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(RuntimeMissing, match=r"pip install 'edgeagent\[onnx\]'"):
        load_model(onnx_path)


def test_litert_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, tflite_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(RuntimeMissing) as caught:
        load_model(tflite_path)
    message = str(caught.value)
    assert "pip install 'edgeagent[tflite]'" in message
    assert "ai_edge_litert.interpreter is not installed" in message
    assert "tflite_runtime.interpreter is not installed" in message


def test_litert_falls_back_to_tflite_runtime(
    monkeypatch: pytest.MonkeyPatch, tflite_path: Path, layers: Layers
) -> None:
    """ai_edge_litert broken (say, an ABI mismatch): tflite_runtime's Interpreter is used."""
    from ai_edge_litert.interpreter import Interpreter

    fallback = types.ModuleType("tflite_runtime.interpreter")
    fallback.Interpreter = Interpreter  # type: ignore[attr-defined]
    real_import = importlib.import_module

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if name == "ai_edge_litert.interpreter":
            raise ImportError("numpy.core.multiarray failed to import")
        if name == "tflite_runtime.interpreter":
            return fallback
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    session = load_model(tflite_path)
    x = batch(2)
    assert_close(session.run({"x": x})["logits"], numpy_mlp(layers, ACTS, x))


def test_importing_the_package_imports_no_runtime_and_no_numpy() -> None:
    code = (
        "import sys, edgeagent.models\n"
        "heavy = {'numpy', 'onnxruntime', 'onnx', 'ai_edge_litert', 'tflite_runtime'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_all_is_sorted() -> None:
    assert models.__all__ == sorted(models.__all__)
    for name in ("Session", "TensorSpec", "RuntimeSettings", "ModelError", "RuntimeMissing"):
        assert name in models.__all__
    assert {"load_model", "settings_for"} <= set(models.__all__)


# --- settings and statistics ------------------------------------------------------------------


def test_settings_reach_onnxruntime(onnx_path: Path) -> None:
    import onnxruntime as ort

    session = load_model(onnx_path, RuntimeSettings(threads=2))
    assert isinstance(session, OnnxSession)
    options = session.ort_session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"

    session = load_model(
        onnx_path, RuntimeSettings(threads=3, spin=True, graph_optimization="basic")
    )
    assert isinstance(session, OnnxSession)
    options = session.ort_session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_threads_reach_litert(monkeypatch: pytest.MonkeyPatch, tflite_path: Path) -> None:
    import ai_edge_litert.interpreter as litert

    seen: list[Any] = []

    class Recording(litert.Interpreter):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(kwargs.get("num_threads"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(litert, "Interpreter", Recording)
    load_model(tflite_path, RuntimeSettings(threads=3))
    assert seen == [3]


@pytest.mark.parametrize("threads", [0, -1])
def test_bad_thread_count(onnx_path: Path, tflite_path: Path, threads: int) -> None:
    for path in (onnx_path, tflite_path):
        with pytest.raises(ModelError, match="threads must be at least 1"):
            load_model(path, RuntimeSettings(threads=threads))


def test_settings_for_profile() -> None:
    # Only the fields settings_for reads: a partial profile on purpose.
    profile = DeviceProfile.model_construct(name="test", threads=3, runtimes=["onnxruntime"])  # type: ignore[call-arg]
    assert settings_for(profile) == RuntimeSettings(threads=3, spin=False)
    assert settings_for(profile, model_bytes=200_000) == RuntimeSettings(threads=3, spin=False)
    assert settings_for(profile, model_bytes=6 * 1024 * 1024).spin is True
    assert settings_for(profile, model_bytes=6 * 1024 * 1024).threads == 3


def test_statistics_count_runs(session: Session) -> None:
    empty = session.statistics()
    assert (empty.runs, empty.p50_ms, empty.p99_ms) == (0, None, None)
    session.warmup(runs=4)
    assert session.statistics().runs == 0, "warm-up runs are not counted"
    for n in (1, 1, 3):
        session.run({"x": batch(n)})
    stats = session.statistics()
    assert stats.runs == 3
    assert stats.p50_ms is not None
    assert stats.p95_ms is not None
    assert stats.p99_ms is not None
    assert 0 <= stats.p50_ms <= stats.p95_ms <= stats.p99_ms < 1000
    with pytest.raises(ModelError):
        session.run({"x": batch(1).astype(np.float64)})
    assert session.statistics().runs == 3, "failed runs are not counted"


def test_litert_batch_resize(tflite_path: Path, layers: Layers) -> None:
    session = load_model(tflite_path)
    assert isinstance(session, LiteRTSession)
    for n in (1, 7, 7, 2, 1, 32):
        x = batch(n, seed=n)
        got = session.run({"x": x})["logits"]
        assert got.shape == (n, 10)
        assert_close(got, numpy_mlp(layers, ACTS, x))
        assert list(session.interpreter.get_input_details()[0]["shape"]) == [n, 64]
    assert session.inputs[0].shape == (None, 64), "the signature stays dynamic"
