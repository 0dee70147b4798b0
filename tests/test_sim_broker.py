"""The fleet simulator in broker mode: every device a real MQTT 5 client of a real mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.errors import ConfigError
from edgeagent.localbroker import Mosquitto
from edgeagent.simulator import simulate
from edgeagent.simulator.spec import parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"

SPEC = """\
name: broker-small
fleet: {fleet}
seed: 11
duration_s: 12
groups:
  - name: lamp
    count: 4
    profile: pi-zero-2w
    tags: {{kind: lamp, room: [kitchen, hall]}}
    skills: [{{module: "smarthome.lamp:Lamp"}}]
  - name: hub
    count: 3
    profile: x86-64
    skills: [{{module: smarthome.echo}}]
coordinator: {{replicas: 1}}
workload:
  - {{skill: set_brightness, rate_per_s: 10, where: {{kind: lamp}}, input: {{level: 40}}}}
  - {{skill: slow_echo, rate_per_s: 10, input: {{data: hi, delay_s: 0.5}}}}
faults:
  - {{name: hub crash, kind: crash, group: hub, count: 1, at_s: 4, duration_s: 4}}
"""


def spec_for(fleet: str, text: str = SPEC) -> object:
    return parse_spec(text.format(fleet=fleet), source="broker.yaml", base_dir=EXAMPLES)


@pytest.mark.broker
def test_broker_mode_completes_with_expected_success(broker_url: str, fleet_name: str) -> None:
    result = simulate(spec_for(fleet_name), broker=broker_url)  # type: ignore[arg-type]
    report = result.report
    assert report["mode"] == "broker"
    lamps = report["skills"]["set_brightness"]
    echo = report["skills"]["slow_echo"]
    # Poisson arrivals at 10/s for 12 s each; every call answered: the crash is failed over.
    assert 80 < lamps["calls"] < 170
    assert 80 < echo["calls"] < 170
    assert lamps["success_rate"] == 1.0
    assert echo["success_rate"] >= 0.98, echo
    assert echo["failovers"] >= 1  # calls held by the crashed hub went elsewhere
    assert echo["p50_ms"] >= 500  # the skill's own half second, in real time
    offline = [e for e in report["timeline"] if e["kind"] == "offline"]
    crashed = next(e for e in report["timeline"] if e["kind"] == "fault")["targets"]
    assert [e["device"] for e in offline] == crashed
    assert offline[0]["until"] - offline[0]["t"] == pytest.approx(4, abs=1.5)
    assert report["groups"]["hub"]["offline_s"] == pytest.approx(4, abs=1.5)
    assert result.stats.devices == 7


@pytest.mark.broker
def test_broker_restart_needs_a_local_broker(broker_url: str, fleet_name: str) -> None:
    text = SPEC.replace(
        "{{name: hub crash, kind: crash, group: hub, count: 1, at_s: 4, duration_s: 4}}",
        "{{name: restart, kind: broker_restart, at_s: 4, duration_s: 1}}",
    )
    with pytest.raises(ConfigError, match=r"broker_restart needs a broker the simulator runs"):
        simulate(spec_for(fleet_name, text), broker=broker_url)  # type: ignore[arg-type]
    text = text.replace("{{name: restart", "{{name: lossy, group: hub").replace(
        "kind: broker_restart", "kind: link_loss"
    )
    with pytest.raises(ConfigError, match=r"link_loss needs the embedded network"):
        simulate(spec_for(fleet_name, text), broker=broker_url)  # type: ignore[arg-type]


@pytest.mark.broker
@pytest.mark.slow
def test_broker_restart_with_a_local_broker(fleet_name: str) -> None:
    text = SPEC.replace(
        "{{name: hub crash, kind: crash, group: hub, count: 1, at_s: 4, duration_s: 4}}",
        "{{name: restart, kind: broker_restart, at_s: 4, duration_s: 1}}",
    )
    with Mosquitto() as broker:
        del broker  # only to check mosquitto is installed; simulate starts its own
    report = simulate(spec_for(fleet_name, text), broker="local").report  # type: ignore[arg-type]
    faults = [e for e in report["timeline"] if e["kind"] == "fault"]
    assert [f["fault"] for f in faults] == ["broker_restart"]
    # Calls during the outage fail; before and after they succeed.
    series = report["skills"]["set_brightness"]["series"]
    early = [p for p in series if p["t"] < 3 and p["calls"]]
    late = [p for p in series if p["t"] >= 9 and p["calls"]]
    assert all(p["ok"] == p["calls"] for p in early + late)
    assert report["skills"]["set_brightness"]["success_rate"] < 1.0


@pytest.mark.broker
def test_two_shards_run_one_fleet(broker_url: str, fleet_name: str, tmp_path: Path) -> None:
    """Shard 1 runs in another process (the CLI); shard 0 here leads and reports on all."""
    import os
    import subprocess
    import sys

    spec_file = tmp_path / "sharded.yaml"
    spec_file.write_text(SPEC.format(fleet=fleet_name))
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    follower = subprocess.Popen(
        [sys.executable, "-m", "edgeagent", "sim", "run", str(spec_file), "--broker", broker_url,
         "--shard", "1/2", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        result = simulate(spec_file, broker=broker_url, shard=(0, 2))
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert "shard 1/2: ran 3 devices" in out
    report = result.report
    assert report["devices"] == 7
    assert result.stats.devices == 4  # 4 here, 3 in the follower
    served = {g for g in ("lamp", "hub") if report["groups"][g]["calls"]}
    assert served == {"lamp", "hub"}
    assert report["skills"]["set_brightness"]["success_rate"] == 1.0
    # The crash targets one hub, whichever shard runs it; its offline period is seen here.
    crashed = next(e for e in report["timeline"] if e["kind"] == "fault")["targets"]
    offline = [e["device"] for e in report["timeline"] if e["kind"] == "offline"]
    assert offline == crashed


def test_shards_need_a_shared_broker() -> None:
    with pytest.raises(ConfigError, match="shards need a broker"):
        simulate(spec_for("x"), shard=(0, 2))  # type: ignore[arg-type]
