"""The simulator charges a model skill what the device's speed model says (issue 16): a camera
with a MobileNet on a Pi Zero 2 W costs what `models bench --device pi-zero-2w` estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.devices import load_profile
from edgeagent.devices.speed import estimate
from edgeagent.models.convnets import mobilenet_v1_onnx
from edgeagent.models.workload_onnx import count_onnx
from edgeagent.simulator import simulate
from edgeagent.simulator.spec import parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"

SPEC = """\
name: cameras
fleet: camtest
seed: 5
duration_s: 60
groups:
  - name: zero
    count: 2
    profile: pi-zero-2w
    tags: {kind: camera, room: door}
    skills: [{module: "smarthome.camera:Camera", options: {model: "MODEL"}}]
  - name: five
    count: 2
    profile: pi5
    tags: {kind: camera, room: garden}
    skills: [{module: "smarthome.camera:Camera", options: {model: "MODEL"}}]
workload:
  - {name: door, skill: snapshot, rate_per_s: 1, where: {room: door}, input: {seed: 1}}
  - {name: garden, skill: snapshot, rate_per_s: 1, where: {room: garden}, input: {seed: 2}}
"""


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cam") / "mobilenet.onnx"
    return mobilenet_v1_onnx(path, alpha=0.5, size=128, classes=10)


def test_a_camera_costs_what_the_speed_model_says_on_each_device(mobilenet: Path) -> None:
    spec = parse_spec(SPEC.replace("MODEL", str(mobilenet)), source="cams.yaml", base_dir=EXAMPLES)
    report = simulate(spec).report
    work = count_onnx(mobilenet)
    costs = {}
    for group, profile_name in (("zero", "pi-zero-2w"), ("five", "pi5")):
        profile = load_profile(profile_name)
        expected = estimate(work, profile, threads=profile.threads, precision="fp32")
        assert expected is not None, profile_name
        cost = report["calibration"][group]["snapshot"]
        assert cost["kind"] == "fp32"
        assert cost["model_device_ms"] == pytest.approx(expected.ms, rel=1e-3)
        low, high = cost["model_device_range_ms"]
        assert low < cost["model_device_ms"] < high
        assert "speed model" in cost["source"]
        # The call holds the device for the model's device time plus the agent's own work.
        assert cost["device_ms"] > cost["model_device_ms"]
        costs[group] = cost["device_ms"]
    # A Cortex-A53 at 1 GHz is several times slower than a Cortex-A76 at 2.4 GHz.
    assert costs["zero"] > 3 * costs["five"]
    # And the simulated latency of the calls shows it: a door camera call holds a Zero's core
    # for its device time (log-normal jitter around it), a garden call a Pi 5's.
    door, garden = report["workloads"]["door"], report["workloads"]["garden"]
    assert door["calls"] > 30
    assert garden["calls"] > 30
    assert door["p50_ms"] >= 0.8 * costs["zero"]
    assert door["p50_ms"] > garden["p50_ms"] + 0.5 * (costs["zero"] - costs["five"])
