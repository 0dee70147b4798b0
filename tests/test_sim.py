"""The fleet simulator in embedded mode: specs, virtual time, faults, reports, the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeagent.cli import main
from edgeagent.errors import ConfigError
from edgeagent.simulator import build_fleet, load_calibration, simulate
from edgeagent.simulator.network import SimBroker
from edgeagent.simulator.spec import parse_spec
from edgeagent.simulator.vclock import VirtualTimeLoop
from edgeagent.transport.base import Inbound
from edgeagent.transport.memory import MemoryTransport

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"

SMALL = """\
name: small
fleet: simtest
seed: 3
duration_s: 120
groups:
  - name: lamp
    count: 3
    profile: pi-zero-2w
    tags: {kind: lamp, room: [kitchen, hall]}
    skills: [{module: "smarthome.lamp:Lamp"}]
  - name: meter
    count: 3
    profile: pi3b-plus
    tags: {kind: meter}
    skills: [{module: "smarthome.meter:DigitReader"}]
  - name: hub
    count: 3
    profile: x86-64
    skills: [{module: smarthome.echo}]
workload:
  - {skill: set_brightness, rate_per_s: 2, where: {kind: lamp},
     input_from: "smarthome.samples:brightness"}
  - {skill: read_digit, rate_per_s: 4, input_from: "smarthome.samples:digit_image"}
  - {skill: slow_echo, rate_per_s: 5, input: {data: hi, delay_s: 0.8}}
faults:
  - {name: hub crash, kind: crash, group: hub, count: 1, at_s: 40, duration_s: 30}
assertions:
  - {skill: read_digit, check: "success_rate >= 0.99"}
  - {skill: slow_echo, check: "failovers >= 1", during: hub crash}
"""


def spec_of(text: str = SMALL, **changes: Any) -> Any:
    spec = parse_spec(text, source="small.yaml", base_dir=EXAMPLES)
    return spec.model_copy(update=changes) if changes else spec


def test_same_seed_same_report_different_seed_differs() -> None:
    a = simulate(spec_of()).report
    b = simulate(spec_of()).report
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = simulate(spec_of(seed=4)).report
    assert c["summary"] != a["summary"]
    # Poisson arrivals at the spec's rates: 11 calls/s for 120 s, give or take.
    assert 1100 < a["summary"]["calls"] < 1550
    assert set(a["skills"]) == {"set_brightness", "read_digit", "slow_echo"}


def test_crashed_device_shows_failovers_and_offline_period() -> None:
    report = simulate(spec_of()).report
    faults = [e for e in report["timeline"] if e["kind"] == "fault"]
    assert len(faults) == 1
    crashed = faults[0]["targets"]
    assert len(crashed) == 1
    assert crashed[0].startswith("hub-")
    offline = [e for e in report["timeline"] if e["kind"] == "offline"]
    assert [e["device"] for e in offline] == crashed
    assert offline[0]["t"] == pytest.approx(40, abs=0.5)
    assert offline[0]["until"] - offline[0]["t"] == pytest.approx(30, abs=1.5)
    hub = report["groups"]["hub"]
    assert hub["offline_s"] == pytest.approx(30, abs=1.5)
    # Calls held by the crashed hub were failed over (the will arrived mid-call), none lost.
    assert report["skills"]["slow_echo"]["failovers"] >= 1
    assert report["skills"]["slow_echo"]["success_rate"] == 1.0
    # The online count dips by one while it is down.
    online = {p["t"]: p["online"] for p in hub["series"]}
    assert min(online.values()) == 2
    assert max(online.values()) == 3
    assert all(a["passed"] for a in report["assertions"]), report["assertions"]


def test_virtual_time_runs_faster_than_real_time() -> None:
    spec = spec_of(duration_s=3600.0, faults=[], assertions=[])
    spec = spec.model_copy(update={"workload": spec.workload[:1]})
    started = time.perf_counter()
    result = simulate(spec)
    wall = time.perf_counter() - started
    assert result.report["duration_s"] == 3600.0
    assert 6000 < result.report["summary"]["calls"] < 8400  # 2/s for an hour
    assert wall < 3600 / 20, f"an hour took {wall:.1f} s of wall time"


def test_profiles_set_device_speed() -> None:
    report = simulate(spec_of(faults=[], assertions=[])).report
    cal = report["calibration"]
    lamp, hub = cal["lamp"]["set_brightness"], cal["hub"]["echo"]
    assert lamp["kind"] == hub["kind"] == "python"
    assert lamp["device_ms"] > 10 * hub["device_ms"]  # Pi Zero 2 W vs the reference machine
    meter = cal["meter"]["read_digit"]
    assert meter["kind"] == "fp32"
    assert meter["model_ms"] > 0
    assert meter["model_factor"] > 1
    assert meter["device_ms"] > meter["model_ms"]
    assert report["memory"]["meter"]["used_mb"] > 0
    assert report["memory"]["meter"]["ok"]


def test_slow_fault_raises_latency_while_it_lasts() -> None:
    text = SMALL.replace(
        "  - {name: hub crash, kind: crash, group: hub, count: 1, at_s: 40, duration_s: 30}",
        "  - {name: hot, kind: slow, group: lamp, factor: 200, at_s: 40, duration_s: 40}",
    ).replace("during: hub crash", "during: hot")
    report = simulate(spec_of(text)).report
    series = report["skills"]["set_brightness"]["series"]
    hot = [p["p50_ms"] for p in series if 40 <= p["t"] < 80 and p["p50_ms"] is not None]
    cool = [p["p50_ms"] for p in series if p["t"] >= 90 and p["p50_ms"] is not None]
    assert min(hot) > 3 * max(cool)


def test_link_loss_and_partition_show_in_the_report() -> None:
    text = SMALL.replace(
        "  - {name: hub crash, kind: crash, group: hub, count: 1, at_s: 40, duration_s: 30}",
        "  - {name: lossy, kind: link_loss, group: meter, loss: 0.5, at_s: 20, duration_s: 20}\n"
        "  - {name: cut, kind: partition, group: lamp, count: 3, at_s: 60, duration_s: 50}",
    ).replace("during: hub crash", "during: cut")
    report = simulate(spec_of(text)).report
    names = [e["name"] for e in report["timeline"] if e["kind"] == "fault"]
    assert names == ["lossy", "cut"]
    assert report["skills"]["read_digit"]["errors"].get("timeout", 0) > 0
    # With every lamp cut off, their calls fail; the wills arrive after the keepalive timeout.
    lamp = report["groups"]["lamp"]
    assert lamp["offline_s"] > 0
    assert report["skills"]["set_brightness"]["success_rate"] < 0.9


def test_assertions_fail_when_they_should() -> None:
    text = SMALL.replace('check: "success_rate >= 0.99"', 'check: "p50_ms < 0.001"')
    result = simulate(spec_of(text))
    failed = result.failed_assertions
    assert [a["text"] for a in failed] == ["skill read_digit: p50_ms < 0.001"]
    assert failed[0]["value"] > 0.001


# Bad specs: errors before anything starts, naming the file, line and field -----------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("    count: 3\n    profile: pi3b-plus", "    count: 3\n    profil: pi3b-plus"),
         r"small.yaml:\d+: groups.1.profil: unknown field"),
        (("group: hub, count: 1", "group: attic, count: 1"),
         r"small.yaml:26: faults.0.group: no group 'attic'"),
        (("during: hub crash", "during: flood"), r"small.yaml:29: assertions.1.during: no fault"),
        (('check: "success_rate >= 0.99"', 'check: "speed > 1"'),
         r"small.yaml:28: assertions.0.check: .*METRIC OP NUMBER"),
        (("at_s: 40", "at_s: 400"), r"faults.0.at_s: 400 s is after the run ends"),
    ],
)  # fmt: skip
def test_invalid_spec_names_file_line_and_field(change: tuple[str, str], expected: str) -> None:
    assert change[0] in SMALL
    with pytest.raises(ConfigError, match=expected):
        parse_spec(SMALL.replace(*change), source="small.yaml", base_dir=EXAMPLES)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("profile: pi3b-plus", "profile: pi9"), r"groups.1 \(meter\): profile: .*pi9"),
        (("smarthome.meter:DigitReader", "smarthome.nosuch:Reader"),
         r"groups.1 \(meter\).*cannot import 'smarthome.nosuch'"),
    ],
)  # fmt: skip
def test_unknown_profile_or_skill_module_fails_before_start(
    change: tuple[str, str], expected: str
) -> None:
    spec = spec_of(SMALL.replace(*change))
    with pytest.raises(ConfigError, match=expected):
        build_fleet(spec, source="small.yaml")


def test_models_over_the_memory_budget_are_refused(tmp_path: Path) -> None:
    profile = (EXAMPLES.parent.parent / "devices" / "profiles" / "pi3b-plus.yaml").read_text()
    tiny = profile.replace("name: pi3b-plus", "name: tiny-board")
    budget = tiny.index("model_budget_mb:")
    value = tiny.index("value:", budget)
    end = tiny.index("\n", value)
    tiny = tiny[:value] + "value: 1" + tiny[end:]
    (tmp_path / "tiny-board.yaml").write_text(tiny)
    spec = spec_of(SMALL.replace("profile: pi3b-plus", f"profile: {tmp_path / 'tiny-board.yaml'}"))
    with pytest.raises(ConfigError, match=r"groups.1 \(meter\): its models need .* MiB .* budget"):
        build_fleet(spec, source="small.yaml")


# Pieces ------------------------------------------------------------------------------------------


def test_virtual_time_loop_jumps_instead_of_waiting() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        async with asyncio.timeout(10):
            await asyncio.sleep(9.5)
        return t0, loop.time()

    started = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        t0, t1 = runner.run(main())
    assert t1 - t0 == pytest.approx(3609.5)
    assert time.perf_counter() - started < 5


def test_simulated_links_delay_lose_and_keep_order() -> None:
    async def main() -> tuple[list[tuple[float, int]], int]:
        loop = asyncio.get_running_loop()
        broker = SimBroker(clock=loop.time, rng=random.Random(1))
        a, b = MemoryTransport(broker, "a"), MemoryTransport(broker, "b")
        got: list[tuple[float, int]] = []

        def on(msg: Inbound) -> None:
            got.append((loop.time(), int(msg.payload)))

        await b.subscribe("t", on)
        await a.connect()
        await b.connect()
        for name in ("a", "b"):
            link = broker.link(name)
            link.latency_s, link.jitter_s = 0.010, 0.005
        broker.link("b").loss = 0.25
        for i in range(400):
            a.publish_nowait("t", str(i).encode())
        await asyncio.sleep(5)
        return got, broker.lost_messages

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        got, lost = runner.run(main())
    seq = [n for _, n in got]
    assert seq == sorted(seq)  # jitter never reorders one link
    assert 60 < lost < 140
    assert len(got) + lost == 400
    assert min(t for t, _ in got) >= 0.020  # two one-way hops of at least 10 ms


def test_calibration_file_pins_costs(tmp_path: Path) -> None:
    first = simulate(spec_of(faults=[], assertions=[])).report
    (tmp_path / "report.json").write_text(json.dumps(first))
    pinned = load_calibration(tmp_path / "report.json")
    assert pinned["meter"]["read_digit"] == first["calibration"]["meter"]["read_digit"]["model_ms"]
    again = simulate(spec_of(faults=[], assertions=[]), calibration=pinned).report
    assert again["calibration"]["meter"]["read_digit"]["source"] == "pinned in the spec"
    assert again["skills"] == first["skills"]


# The CLI -----------------------------------------------------------------------------------------


def test_cli_runs_writes_the_report_and_exits_on_failed_assertions(tmp_path: Path) -> None:
    spec = tmp_path / "small.yaml"
    spec.write_text(
        SMALL.replace("duration_s: 120", "duration_s: 60").replace("at_s: 40", "at_s: 20")
    )
    env = {"PYTHONPATH": str(EXAMPLES)}
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["sim", "run", str(spec), "--report", str(out), "--quiet", "--seed", "5"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "read_digit" in result.output
    assert "PASS" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 5
    assert report["duration_s"] == 60
    assert {"report.html", "fleet.png"} <= {p.name for p in out.iterdir()}
    failing = tmp_path / "failing.yaml"
    failing.write_text(spec.read_text().replace('"success_rate >= 0.99"', '"calls > 100000"'))
    result = CliRunner().invoke(main, ["sim", "run", str(failing), "--json"], env=env)
    assert result.exit_code == 1
    data = json.loads(result.output[: result.output.rindex("}") + 1])
    assert data["assertions"][0]["passed"] is False


def test_cli_bad_spec_exits_2_with_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(SMALL.replace("group: hub, count: 1", "group: attic, count: 1"))
    result = CliRunner().invoke(main, ["sim", "run", str(spec), "--quiet"])
    assert result.exit_code == 2
    assert f"{spec}:26: faults.0.group: no group 'attic'" in result.output


def test_example_house_checks_out() -> None:
    """The README's fleet: valid, every profile and skill module found, models in budget."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgeagent", "sim", "check", str(EXAMPLES / "fleet.yaml"), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    groups = {g["group"]: g for g in plan["groups"]}
    assert sum(g["devices"] for g in groups.values()) >= 24
    profiles = {g["profile"] for g in groups.values()}
    assert {"pi-zero-2w", "pi5"} <= profiles
    assert all(g["model_memory_mb"] <= g["budget_mb"] for g in groups.values())


def test_every_fault_kind_runs_and_lands_in_the_timeline() -> None:
    faults = """\
faults:
  - {name: random crashes, kind: crash, group: hub, random_per_hour: 60, duration_s: 5}
  - {name: flapping, kind: flap, group: lamp, count: 1, at_s: 10, duration_s: 40, period_s: 10}
  - {name: slow links, kind: delay, group: meter, delay_ms: 300, at_s: 20, duration_s: 20}
  - {name: lossy broker, kind: message_loss, loss: 0.3, at_s: 60, duration_s: 10}
  - {name: restart, kind: broker_restart, at_s: 90, duration_s: 5}
assertions: []
"""
    text = SMALL[: SMALL.index("faults:")] + faults
    report = simulate(spec_of(text)).report
    timeline = [e for e in report["timeline"] if e["kind"] == "fault"]
    kinds = {e["fault"] for e in timeline}
    assert kinds == {"crash", "flap", "delay", "message_loss", "broker_restart"}
    crashes = [e for e in timeline if e["name"] == "random crashes"]
    assert len(crashes) >= 3  # 60 per hour per device, three hubs, two minutes
    assert all(e["targets"][0].startswith("hub-") for e in crashes)
    # The delayed meters answer slower while the fault lasts.
    series = report["skills"]["read_digit"]["series"]
    slow = [p["p50_ms"] for p in series if 22 <= p["t"] < 38 and p["p50_ms"] is not None]
    fast = [p["p50_ms"] for p in series if p["t"] >= 100 and p["p50_ms"] is not None]
    assert min(slow) > max(fast) + 500  # 300 ms more on both ways of the meter's link
    # While the broker is down calls fail; afterwards every device is back and serving.
    fleet = report["fleet_series"]
    assert any(p["ok"] < p["calls"] for p in fleet if 88 <= p["t"] < 96)
    assert all(p["ok"] == p["calls"] for p in fleet if p["t"] >= 104)
    assert fleet[-1]["online"] == report["devices"]
    assert simulate(spec_of(text)).report == report
