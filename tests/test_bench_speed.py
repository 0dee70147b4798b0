"""`models bench --device` on a MobileNet: the estimate is the board's speed model on the counted
graph, with its range and basis, and `--record` keeps the workload for `devices calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeagent.cli_models import models
from edgeagent.devices import load_profile
from edgeagent.devices.speed import estimate
from edgeagent.models.card import BenchReport
from edgeagent.models.convnets import mobilenet_v1_onnx
from edgeagent.models.estimate import local_threads
from edgeagent.models.workload_onnx import count_onnx


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "mobilenet.onnx"
    return mobilenet_v1_onnx(path, alpha=0.5, size=128, classes=10)


def _bench(args: list[str]) -> BenchReport:
    result = CliRunner().invoke(models, ["bench", *args, "--runs", "20", "--json", "-q"])
    assert result.exit_code == 0, result.output
    return BenchReport.model_validate_json(result.stdout)


@pytest.mark.parametrize("device", ["pi-zero-2w", "pi4", "pi5"])
def test_bench_estimates_with_the_speed_model_and_says_so(mobilenet: Path, device: str) -> None:
    profile = load_profile(device)
    report = _bench([str(mobilenet), "--device", device])
    f = report.variant.figures
    assert f is not None
    work = count_onnx(mobilenet)
    assert f.workload == work
    expected = estimate(work, profile, precision="fp32", runtime="onnxruntime")
    assert expected is not None
    assert f.estimate_p50_ms == pytest.approx(expected.ms, rel=1e-5)
    assert f.estimate_low_ms is not None
    assert f.estimate_high_ms is not None
    assert f.estimate_low_ms < f.estimate_p50_ms < f.estimate_high_ms
    assert f.estimate_threads == profile.threads
    assert f.estimate_basis is not None
    assert f"speed model of {device}" in f.estimate_basis
    # Timed here at no more threads than this machine has; the device's threads are modelled.
    assert f.threads == local_threads(profile)
    assert f.speed_factor == pytest.approx(f.estimate_p50_ms / f.p50_ms, rel=1e-3)


def test_a_slower_board_is_estimated_slower(mobilenet: Path) -> None:
    zero = _bench([str(mobilenet), "--device", "pi-zero-2w"]).variant.figures
    five = _bench([str(mobilenet), "--device", "pi5"]).variant.figures
    assert zero is not None
    assert five is not None
    assert zero.estimate_p50_ms > 4 * five.estimate_p50_ms


def test_record_keeps_the_workload_for_calibration(mobilenet: Path, tmp_path: Path) -> None:
    record = tmp_path / "runs.json"
    _bench([str(mobilenet), "--device", "pi4", "--record", str(record)])
    saved = json.loads(record.read_text())
    assert len(saved) == 1
    assert saved[0]["workload"] == count_onnx(mobilenet).model_dump(mode="json")
    assert saved[0]["model_sha256"]


def test_the_human_report_prints_the_range_and_basis(mobilenet: Path) -> None:
    result = CliRunner().invoke(
        models, ["bench", str(mobilenet), "--device", "pi4", "--runs", "20", "-q"]
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("est. pi4"))
    assert "–" in line  # the range, e.g. "72.78 ms (56.10 ms–94.40 ms)"
    assert "basis           speed model of pi4" in result.output


def test_a_litert_file_is_estimated_for_litert(mobilenet: Path, tmp_path: Path) -> None:
    from edgeagent.models.tflite_conv import onnx_to_tflite
    from edgeagent.models.workload_tflite import count_tflite

    tflite = onnx_to_tflite(mobilenet, tmp_path / "mobilenet.tflite")
    f = _bench([str(tflite), "--device", "pi4"]).variant.figures
    assert f is not None
    pi4 = load_profile("pi4")
    litert = estimate(count_tflite(tflite), pi4, precision="fp32", runtime="litert")
    ort = estimate(count_tflite(tflite), pi4, precision="fp32", runtime="onnxruntime")
    assert litert is not None
    assert ort is not None
    assert f.estimate_p50_ms == pytest.approx(litert.ms, rel=1e-5)
    assert litert.ms != pytest.approx(ort.ms, rel=1e-3)  # XNNPACK's fitted factor applies
