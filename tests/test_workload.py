"""Workload counting: ncnn ``.param`` graphs, ONNX graphs, ``.tflite`` files, and the committed
calibration data (published Raspberry Pi figures and the workloads of the models they timed)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeagent.devices import list_profiles
from edgeagent.devices.calibration import load_published, load_workloads
from edgeagent.devices.calibration.extract import ExtractError, extract_ncnn, extract_xnnpack
from edgeagent.devices.ncnn_param import NcnnParamError, count_param, parse_param
from edgeagent.devices.workload import Workload

NCNN_MIRROR = Path("/work/.mirror/Tencent+ncnn/repo")

# A small graph with every counted class; the MACs by hand:
#   conv1 3x3, 3->16, stride 2, 8x8 -> 4x4: 16*3*3*3 = 432 weights x 16 positions = 6912
#   dw    3x3 depthwise 16 ch, 4x4:         16*9    = 144 weights x 16 positions = 2304
#   pw    1x1, 16->8, 4x4:                  128 weights x 16 positions          = 2048
#   add   split + BinaryOp: 4*4*8 = 128 elements; gap: global pooling, 8 elements
#   fc    8 -> 10 on one vector: 80 weights read
PARAM = """7767517
8 9
Input            data   0 1 data -23330=4,3,8,8,3 0=8 1=8 2=3
Convolution      conv1  1 1 data c1 -23330=4,3,4,4,16 0=16 1=3 3=2 4=1 5=1 6=432 9=1
ConvolutionDepthWise dw 1 1 c1 d1 -23330=4,3,4,4,16 0=16 1=3 4=1 5=1 6=144 7=16
Convolution      pw     1 1 d1 p1 -23330=4,3,4,4,8 0=8 1=1 5=1 6=128
Split            split  1 2 p1 p1a p1b
BinaryOp         add    2 1 p1a p1b s -23330=4,3,4,4,8 0=0
Pooling          gap    1 1 s g -23330=4,1,8,1,1 0=1 4=1
InnerProduct     fc     1 1 g out -23330=4,1,10,1,1 0=10 1=1 2=80
"""


def test_param_counts_every_class_by_hand() -> None:
    work = count_param(PARAM).workload
    assert work.conv_mmac == pytest.approx(6912 / 1e6)
    assert work.depthwise_mmac == pytest.approx(2304 / 1e6)
    assert work.pointwise_mmac == pytest.approx(2048 / 1e6)
    assert work.fc_mweights == pytest.approx(80 / 1e6)
    assert work.elementwise_melems == pytest.approx((128 + 8) / 1e6)
    assert work.nodes == 6  # Input and Split are not nodes
    assert work.precision == "fp32"
    assert work.unknown_ops == []


def test_param_shapes_inferred_without_hints_give_the_same_count() -> None:
    bare = re.sub(r" -23330=[\d,]+", "", PARAM)
    counted = count_param(bare)
    assert counted.workload == count_param(PARAM).workload
    assert set(counted.inferred) == {"data", "conv1", "dw", "pw", "add", "gap", "fc"}
    assert counted.unknown_shape == ()


def test_param_layer_without_any_shape_is_reported_not_guessed() -> None:
    text = PARAM.replace("8 9\n", "9 10\n") + "DetectionOutput det 1 1 out boxes 0=2\n"
    counted = count_param(text)
    assert counted.unknown_shape == ("det",)
    assert counted.workload.unknown_ops == ["DetectionOutput"]
    assert counted.workload.nodes == 7


def test_param_int8_scale_term_and_batched_inner_product() -> None:
    int8 = PARAM.replace("6=432 9=1", "6=432 8=102 9=1")
    assert count_param(int8).workload.precision == "int8"
    assert count_param(int8, precision="fp16").workload.precision == "fp16"
    rows = """7767517
2 2
Input  x  0 1 x -23330=4,2,64,5,1
InnerProduct fc 1 1 x y -23330=4,2,32,5,1 0=32 2=2048
"""
    work = count_param(rows).workload
    assert work.pointwise_mmac == pytest.approx(5 * 2048 / 1e6)
    assert work.fc_mweights == 0


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("7767518\n1 1\n", 1, "magic"),
        ("7767517\n2 2\nInput x 0 1 x\n", 2, "declares 2 layers"),
        ("7767517\n1 1\nInput x 0 1 x 0=abc\n", 3, "not a number"),
        ("7767517\n1 1\nInput x 0 1 x -23330=3,1,2\n", 3, "says 3 values"),
        ("7767517\n1 1\nConvolution c 1 1 x\n", 3, "fewer blobs"),
        ("7767517\n1 1\nInput x 0 1 x 7\n", 3, "<int>=<value>"),
    ],
)
def test_param_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(NcnnParamError, match=rf"line {line}: .*{re.escape(words)}"):
        parse_param(text)


# --- calibration data ---------------------------------------------------------------------


def test_every_published_figure_names_a_profile_and_a_counted_model() -> None:
    figures = load_published()
    workloads = load_workloads()
    profiles = {p.name for p in list_profiles()}
    assert len(figures) > 250
    for fig in figures:
        assert fig.device in profiles, fig
        assert fig.model in workloads, fig
        if fig.min_ms is not None and fig.max_ms is not None:
            assert fig.min_ms <= fig.ms <= fig.max_ms, fig
            assert fig.noisy == (fig.max_ms > 1.5 * fig.min_ms), fig
        if fig.runtime == "ncnn" and not fig.model.endswith("_int8"):
            assert fig.precision == ("fp16" if fig.device == "pi5" else "fp32"), fig
    # the README's best-known outlier, and one figure from each runtime, as the source prints them
    noisy = [f for f in figures if f.noisy]
    assert [(f.device, f.model, f.threads, f.ms) for f in noisy] == [("pi5", "mobilenet", 4, 33.88)]
    xnnpack = {
        (f.device, f.model, f.precision, f.bits): f.ms for f in figures if f.runtime == "xnnpack"
    }
    assert len(xnnpack) == 18
    assert xnnpack["pi4", "mobilenet_v1", "fp32", 64] == 77.0
    assert {(f.device, f.threads) for f in figures if f.runtime == "ncnn"} == {
        (d, t) for d in ("pi3b-plus", "pi4", "pi5", "pi-zero-2w") for t in (1, 4)
    }


def test_committed_workloads_are_sane() -> None:
    workloads = load_workloads()
    for name, entry in workloads.items():
        assert entry.workload.total_mmac > 0, name
        assert entry.workload.precision == ("int8" if name.endswith("_int8") else "fp32"), name
    # MobileNet v1 at 224 is the well-known 569 MMAC (Howard et al. 2017, table 8)
    assert workloads["mobilenet"].workload.total_mmac == pytest.approx(569, rel=0.01)
    assert workloads["mobilenet_v1"].workload == workloads["mobilenet"].workload


README_FRAGMENT = """
### Raspberry Pi 3 Model B+ Broadcom BCM2837B0, Cortex-A53 (ARMv8) (1.4GHz x 4)
```
num_threads = 4
gpu_device = -1
           mobilenet  min =  107.84  max =  110.13  avg =  108.66
      mobilenet_int8  min =   66.91  max =   67.12  avg =   67.03
```
### Raspberry Pi 4 Model B Broadcom BCM2711B0, Cortex-A72 (ARMv8) (1.8GHz x 4)
```
num_threads = 1
gpu_device = -1
           mobilenet  min =  123.76  max =  125.35  avg =  124.32
num_threads = 4
gpu_device = 0
           mobilenet  min =  1.0  max =  2.0  avg =  1.5
```
### Raspberry Pi 5 Broadcom BCM2712, Cortex-A76 (ARMv8) (2.4GHz x 4)
```
num_threads = 4
gpu_device = -1
           mobilenet  min =    9.00  max =   72.98  avg =   33.88
```
### Raspberry Pi Zero 2 W Broadcom BCM2710A1, Cortex-A53 (ARMv8) (1.0GHz x 4)
```
num_threads = 1
gpu_device = -1
           mobilenet  min =  393.79  max =  394.04  avg =  393.94
```
"""


def test_extract_ncnn_reads_cpu_runs_with_their_conditions() -> None:
    figures = extract_ncnn(README_FRAGMENT, "c0ffee")
    got = [(f.device, f.model, f.precision, f.threads, f.ms, f.clock_ghz, f.noisy) for f in figures]
    assert got == [
        ("pi3b-plus", "mobilenet", "fp32", 4, 108.66, 1.4, False),
        ("pi3b-plus", "mobilenet_int8", "int8", 4, 67.03, 1.4, False),
        ("pi4", "mobilenet", "fp32", 1, 124.32, 1.8, False),  # the GPU run is left out
        ("pi5", "mobilenet", "fp16", 4, 33.88, 2.4, True),
        ("pi-zero-2w", "mobilenet", "fp32", 1, 393.94, 1.0, False),
    ]
    assert "blob/c0ffee/benchmark/README.md" in figures[0].source
    with pytest.raises(ExtractError, match="Zero 2 W"):
        extract_ncnn(README_FRAGMENT.split("### Raspberry Pi Zero")[0], "c0ffee")


def test_extract_xnnpack_table() -> None:
    text = """### Raspberry Pi

| Model | RPi Zero W (BCM2835), ms | RPi 3+ (BCM2837B0), ms | RPi 4 (BCM2711), ms | RPi 4 (BCM2711, ARM64), ms |
| ----- | :-: | :-: | :-: | :-: |
| FP32 MobileNet v1 1.0X | 3919 | 114 | 72 | 77 |
| INT8 MobileNet v2 1.0X | 1495 | 30 | 20 | 17 |

## Minimum build requirements
"""  # noqa: E501
    got = [(f.device, f.model, f.precision, f.bits, f.ms) for f in extract_xnnpack(text, "abc")]
    assert got == [
        ("pi3b-plus", "mobilenet_v1", "fp32", 32, 114.0),
        ("pi4", "mobilenet_v1", "fp32", 32, 72.0),
        ("pi4", "mobilenet_v1", "fp32", 64, 77.0),
        ("pi3b-plus", "mobilenet_v2", "int8", 32, 30.0),
        ("pi4", "mobilenet_v2", "int8", 32, 20.0),
        ("pi4", "mobilenet_v2", "int8", 64, 17.0),
    ]


@pytest.mark.skipif(not (NCNN_MIRROR / "HEAD").exists(), reason="no ncnn checkout here")
def test_committed_ncnn_workloads_match_a_recount() -> None:
    workloads = load_workloads()
    for name in ("mobilenet", "mobilenet_v2", "resnet50_int8", "vision_transformer"):
        entry = workloads[name]
        commit = entry.source.split("/blob/")[1].split("/")[0]
        text = subprocess.run(
            ["git", "-C", str(NCNN_MIRROR), "show", f"{commit}:benchmark/models/{name}.param"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        w, h, c = (int(v) for v in entry.input.split("x"))
        recount = count_param(text, input_shape=(w, h, c)).workload
        for field in ("conv_mmac", "pointwise_mmac", "depthwise_mmac", "fc_mweights"):
            assert getattr(recount, field) == pytest.approx(getattr(entry.workload, field)), name


# --- ONNX ---------------------------------------------------------------------------------


def _onnx_model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def _tensor(name: str, shape: list[int | str] | None) -> Any:
    onnx = pytest.importorskip("onnx")
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _weights(name: str, shape: list[int], dtype: str = "float32") -> Any:
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    return onnx.numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


def _count(model: Any) -> Workload:
    from edgeagent.models.workload_onnx import count_onnx

    return count_onnx(model)


def test_onnx_conv_depthwise_pointwise_with_a_dynamic_batch() -> None:
    onnx = pytest.importorskip("onnx")
    make = onnx.helper.make_node
    nodes = [
        make("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),  # 3x3, 3->4, 8x8 out
        make("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn"]),  # folded
        make("Relu", ["bn"], ["r"]),  # fused
        make("Conv", ["r", "w2"], ["d"], pads=[1, 1, 1, 1], group=4),  # depthwise
        make("Conv", ["d", "w3"], ["p"]),  # 1x1, 4->6
        make("Add", ["p", "p"], ["y"]),  # p has two consumers here: 6*8*8 elements
    ]
    inits = [_weights("w1", [4, 3, 3, 3]), _weights("w2", [4, 1, 3, 3])]
    inits += [_weights("w3", [6, 4, 1, 1])]
    inits += [_weights(n, [4]) for n in "sbmv"]
    work = _count(_onnx_model(nodes, [_tensor("x", ["N", 3, 8, 8])], [_tensor("y", None)], inits))
    assert work.conv_mmac == pytest.approx(108 * 64 / 1e6)
    assert work.depthwise_mmac == pytest.approx(36 * 64 / 1e6)
    assert work.pointwise_mmac == pytest.approx(24 * 64 / 1e6)
    assert work.elementwise_melems == pytest.approx(6 * 64 / 1e6)
    assert work.nodes == 4
    assert work.precision == "fp32"
    assert work.unknown_ops == []


def test_onnx_gemm_one_row_reads_weights_more_rows_multiply() -> None:
    onnx = pytest.importorskip("onnx")
    make = onnx.helper.make_node
    one = _onnx_model(
        [make("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        [_tensor("x", [1, 16])], [_tensor("y", None)],
        [_weights("w", [8, 16]), _weights("b", [8])],
    )  # fmt: skip
    work = _count(one)
    assert work.fc_mweights == pytest.approx(128 / 1e6)
    assert work.pointwise_mmac == 0
    rows = _onnx_model(
        [make("MatMul", ["x", "w"], ["y"])],
        [_tensor("x", [1, 5, 16])], [_tensor("y", None)],
        [_weights("w", [16, 8])],
    )  # fmt: skip
    work = _count(rows)
    assert work.pointwise_mmac == pytest.approx(5 * 16 * 8 / 1e6)
    assert work.fc_mweights == 0


def test_onnx_shape_arithmetic_is_free() -> None:
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    make = onnx.helper.make_node
    zero = onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    minus = onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus")
    nodes = [
        make("Shape", ["x"], ["s"]),
        make("Gather", ["s", "zero"], ["n"], axis=0),
        make("Concat", ["n", "minus"], ["shape"], axis=0),
        make("Reshape", ["x", "shape"], ["flat"]),
        make("Sigmoid", ["flat"], ["y"]),
    ]
    model = _onnx_model(nodes, [_tensor("x", ["N", 4, 5])], [_tensor("y", None)], [zero, minus])
    work = _count(model)
    assert work.nodes == 1
    assert work.elementwise_melems == pytest.approx(20 / 1e6)


def test_onnx_qdq_graph_is_int8_and_qdq_nodes_are_free() -> None:
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    make = onnx.helper.make_node
    scale = onnx.numpy_helper.from_array(np.array(0.1, dtype=np.float32), "sc")
    zp = onnx.numpy_helper.from_array(np.array(0, dtype=np.int8), "zp")
    wq = onnx.numpy_helper.from_array(np.ones([4, 3, 3, 3], dtype=np.int8), "wq")
    nodes = [
        make("QuantizeLinear", ["x", "sc", "zp"], ["xq"]),
        make("DequantizeLinear", ["xq", "sc", "zp"], ["xd"]),
        make("DequantizeLinear", ["wq", "sc", "zp"], ["wd"]),
        make("Conv", ["xd", "wd"], ["c"]),
        make("QuantizeLinear", ["c", "sc", "zp"], ["cq"]),
        make("DequantizeLinear", ["cq", "sc", "zp"], ["y"]),
    ]
    model = _onnx_model(nodes, [_tensor("x", [1, 3, 6, 6])], [_tensor("y", None)], [scale, zp, wq])
    work = _count(model)
    assert work.precision == "int8"
    assert work.nodes == 1
    assert work.elementwise_melems == 0
    assert work.conv_mmac == pytest.approx(108 * 16 / 1e6)


def test_onnx_unknown_op_is_counted_and_listed() -> None:
    onnx = pytest.importorskip("onnx")
    make = onnx.helper.make_node
    model = _onnx_model(
        [make("Hardmax", ["x"], ["h"]), make("Relu", ["h"], ["y"])],
        [_tensor("x", [1, 10])], [_tensor("y", None)], [],
    )  # fmt: skip
    work = _count(model)
    assert work.unknown_ops == ["Hardmax"]
    assert work.nodes == 2
    assert work.elementwise_melems == pytest.approx(20 / 1e6)


def test_onnx_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from edgeagent.models.workload_onnx import WorkloadCountError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(WorkloadCountError, match=r"bad\.onnx"):
        _count(bad)


def test_torchvision_mobilenet_v2_agrees_with_ncnn_per_class(tmp_path: Path) -> None:
    """The ONNX and ncnn counters agree on the same architecture, class by class.

    ncnn's mobilenet_v2 is the Caffe port, whose first block keeps a 1x1 expansion (32->32 at
    112x112: 12.85 MMAC) that torchvision's (and the paper's, t=1) leaves out; everything else
    is the same network, so that one layer is added before comparing.
    """
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip(
            "torchvision is not installed (not in the train extra: PyPI's wheel is a CUDA build "
            "that breaks transformers beside the CPU torch); see devices/calibration/workloads.py"
        )
    from edgeagent.devices.calibration.workloads import export_torchvision_onnx

    onnx_work = _count(export_torchvision_onnx("mobilenet_v2", tmp_path / "m.onnx"))
    ncnn_work = load_workloads()["mobilenet_v2"].workload
    first_block_expansion = 32 * 32 * 112 * 112 / 1e6
    assert onnx_work.conv_mmac == pytest.approx(ncnn_work.conv_mmac, rel=0.02)
    assert onnx_work.depthwise_mmac == pytest.approx(ncnn_work.depthwise_mmac, rel=0.02)
    assert onnx_work.fc_mweights == pytest.approx(ncnn_work.fc_mweights, rel=0.02)
    assert onnx_work.pointwise_mmac + first_block_expansion == pytest.approx(
        ncnn_work.pointwise_mmac, rel=0.02
    )
    assert onnx_work.unknown_ops == []
    assert onnx_work.precision == "fp32"


# --- TFLite -------------------------------------------------------------------------------


def test_tflite_mlp_is_matrix_vector_work(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("ai_edge_litert")
    from edgeagent.models.tflite_writer import write_mlp_tflite
    from edgeagent.models.workload_tflite import count_tflite

    rng = np.random.default_rng(0)
    layers = [
        (rng.normal(size=(32, 64)).astype(np.float32), np.zeros(32, np.float32)),
        (rng.normal(size=(10, 32)).astype(np.float32), np.zeros(10, np.float32)),
    ]
    path = write_mlp_tflite(layers, ["relu", "none"], tmp_path / "mlp.tflite", softmax=True)
    work = count_tflite(path)
    assert work.fc_mweights == pytest.approx((64 * 32 + 32 * 10) / 1e6)
    assert work.elementwise_melems == pytest.approx(10 / 1e6)  # the softmax; relu is fused
    assert work.nodes == 3
    assert work.precision == "fp32"
    assert work.conv_mmac == work.pointwise_mmac == work.depthwise_mmac == 0


def test_our_mobilenet_v1_onnx_counts_as_ncnns_benchmarked_graph(tmp_path: Path) -> None:
    """The ONNX counter on models/convnets.py's MobileNet v1 1.0-224 gives the committed workload
    of ncnn's mobilenet.param (the graph behind the published figures), class by class: the
    calibration and a user's ONNX file are priced by the same rules."""
    pytest.importorskip("onnx")
    from edgeagent.devices.calibration import load_workloads
    from edgeagent.models.convnets import mobilenet_v1_onnx

    ours = _count(mobilenet_v1_onnx(tmp_path / "m.onnx", alpha=1.0, size=224, classes=1000))
    ncnn = load_workloads()["mobilenet"].workload
    for name in ("conv_mmac", "pointwise_mmac", "depthwise_mmac", "fc_mweights"):
        assert getattr(ours, name) == pytest.approx(getattr(ncnn, name), rel=0.01), name
    assert abs(ours.nodes - ncnn.nodes) <= 2
