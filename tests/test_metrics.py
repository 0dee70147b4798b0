"""Prometheus metrics: scraped over HTTP from a real coordinator, agents and the fleet bridge on a
real mosquitto, parsed with prometheus_client's own parser, counts checked against the calls
made. Plus the pure parts, the HTTP server's edges, bad config and the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from edgeagent import (
    AgentConfig,
    BadRequest,
    BrokerConfig,
    ConfigError,
    DeviceAgent,
    Fleet,
    NotFound,
    Unavailable,
    __version__,
    skill,
)
from edgeagent.bridges.metrics import FleetMetrics, FleetSnapshot, MetricsServer
from edgeagent.bridges.metrics_families import capped, fold_sum
from edgeagent.bridges.metrics_fleet import FleetCollector
from edgeagent.cli import main as cli_main
from edgeagent.config import load_config
from edgeagent.coordinator import Coordinator
from edgeagent.metrics_stats import OTHER, Buckets, CallStats, LabelCap
from edgeagent.protocol import Health, Manifest, StateMessage
from edgeagent.skills import Skill, build_skill
from edgeagent.transport.mqtt import MqttTransport
from tests.broker.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

Families = dict[str, Metric]


# Helpers ----------------------------------------------------------------------------------------


def parse(text: str) -> Families:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def scrape(url: str) -> Families:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    return parse(await asyncio.to_thread(get))


def value(fams: Families, sample: str, **labels: str) -> float:
    """The one sample named ``sample`` whose labels include ``labels``."""
    found = [
        s.value
        for f in fams.values()
        for s in f.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, found)
    return float(found[0])


def names(fams: Families) -> set[str]:
    """Every family and sample name a scrape holds."""
    out = set(fams)
    for f in fams.values():
        out.update(s.name for s in f.samples)
    return out


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def agent(
    url: str, fleet: str, device: str, skills: list[Skill] | None = None, **cfg: Any
) -> DeviceAgent:
    config = AgentConfig(
        device=device,
        fleet=fleet,
        broker={"url": url},
        tags={"room": "kitchen"},
        skills=[{"module": "smarthome.lamp:Lamp"}] if skills is None else [{"module": "unused"}],
        health_interval_s=0.2,
        **cfg,
    )
    return DeviceAgent(config) if skills is None else DeviceAgent(config, skills=skills)


def picker(name: str, down: bool, ran: dict[str, int]) -> Skill:
    @skill(side_effect="read", idempotent=True)
    async def pick(n: int) -> str:
        ran[name] = ran.get(name, 0) + 1
        if down:
            raise Unavailable(f"{name} is down")
        return name

    return build_skill(pick)


# The live scenario, once per module -------------------------------------------------------------


@dataclass
class Scenario:
    coord: Families
    agent: Families
    fleet: Families
    fleet_after_stop: Families
    gets: int
    picks: int
    ran: dict[str, int]
    failovers: int
    served_by_lamp: int
    runs_by_lamp: int
    fleet_closed: bool = False


GETS = 12


async def live(url: str, fleet_name: str) -> Scenario:
    ran: dict[str, int] = {}
    lamp = agent(url, fleet_name, "lamp-a", metrics_port=0, release="r-42", profile="pi4")
    w1 = agent(url, fleet_name, "w1", [picker("w1", True, ran)])
    w2 = agent(url, fleet_name, "w2", [picker("w2", False, ran)])
    transport = MqttTransport(BrokerConfig(url=url))
    # No hedging: a hedge sent to w1 would be a w1 run that is no failover.
    coordinator = Coordinator(transport, root="edgeagent", fleet=fleet_name, hedge=False)
    from edgeagent.bridges.metrics import serve_coordinator_metrics

    async with lamp, w1, w2, coordinator, Fleet(url, fleet=fleet_name) as fleet:
        server = await serve_coordinator_metrics(coordinator)
        for _ in range(GETS):
            await fleet.call_skill("get_state")
        with pytest.raises(BadRequest):
            await fleet.call_skill("set_brightness", {"level": 500})
        with pytest.raises(NotFound):
            await fleet.call_skill("fly")
        with pytest.raises(NotFound):
            await fleet.call("lamp-a", "fly")  # straight to the device: its own not_found
        picks = 0
        for picks in range(1, 41):  # until w1 was chosen once and w2 took over (a failover)
            assert await fleet.call_skill("pick", {"n": picks}) == "w2"
            if ran.get("w1", 0) and picks >= 5:
                break
        assert ran.get("w1", 0) >= 1, "w1 never chosen in 40 calls"
        coord_fams = await scrape(server.url)
        assert lamp.metrics is not None
        agent_fams = await scrape(lamp.metrics.url)
        stats = lamp.statistics()
        runs = sum(s.calls for s in lamp.skill_slots())

        async with Fleet(url, fleet=fleet_name) as bridge_fleet:
            bridge = FleetMetrics(bridge_fleet, port=0)
            task = asyncio.create_task(bridge.run())
            await asyncio.wait_for(bridge.ready.wait(), 5)
            fleet_url = f"http://127.0.0.1:{bridge.port}/metrics"
            got: Families = {}

            async def health_arrived() -> bool:
                nonlocal got
                got = await scrape(fleet_url)
                try:
                    served = value(
                        got, "edgeagent_fleet_device_calls_served_total", device="lamp-a"
                    )
                    return (
                        served == stats.served
                        and len(got["edgeagent_fleet_device_up"].samples) == 3
                    )
                except (KeyError, AssertionError):
                    return False

            await until(health_arrived)
            fleet_fams = got
            await w1.stop()

            async def w1_down() -> bool:
                nonlocal got
                got = await scrape(fleet_url)
                return value(got, "edgeagent_fleet_device_up", device="w1") == 0

            await until(w1_down)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            try:
                await scrape(fleet_url)
                closed = False
            except urllib.error.URLError:
                closed = True
        await server.close()
        return Scenario(
            coord=coord_fams,
            agent=agent_fams,
            fleet=fleet_fams,
            fleet_after_stop=got,
            gets=GETS,
            picks=picks,
            ran=dict(ran),
            failovers=coordinator.failovers,
            served_by_lamp=stats.served,
            runs_by_lamp=runs,
            fleet_closed=closed,
        )


@pytest.fixture(scope="module")
def scenario(mosquitto: Mosquitto) -> Scenario:
    import uuid

    return asyncio.run(live(mosquitto.url, f"t{uuid.uuid4().hex[:10]}"))


# The coordinator ---------------------------------------------------------------------------------


@pytest.mark.broker
def test_coordinator_counts_calls_by_skill_and_outcome(scenario: Scenario) -> None:
    c = scenario.coord
    calls = "edgeagent_coordinator_calls_total"
    assert value(c, calls, skill="get_state", outcome="ok") == scenario.gets
    assert value(c, calls, skill="set_brightness", outcome="bad_request") == 1
    assert value(c, calls, skill=OTHER, outcome="not_found") == 1  # no device has "fly"
    assert value(c, calls, skill="pick", outcome="ok") == scenario.picks
    assert value(c, "edgeagent_coordinator_errors_total", code="bad_request") == 1
    assert value(c, "edgeagent_coordinator_errors_total", code="not_found") == 1
    # Latency: one observation per call, every bucket cumulative, +Inf = count.
    count = value(c, "edgeagent_coordinator_call_duration_seconds_count", skill="get_state")
    assert count == scenario.gets
    assert (
        value(c, "edgeagent_coordinator_call_duration_seconds_bucket", skill="get_state", le="+Inf")
        == count
    )
    assert value(c, "edgeagent_coordinator_call_duration_seconds_sum", skill="get_state") > 0
    buckets = [
        s.value
        for s in c["edgeagent_coordinator_call_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["skill"] == "get_state"
    ]
    assert buckets == sorted(buckets)
    fwd = "edgeagent_coordinator_forward_duration_seconds_count"
    assert value(c, fwd, device="lamp-a") == scenario.gets + 1  # and set_brightness's


@pytest.mark.broker
def test_coordinator_counts_failovers_and_forwards(scenario: Scenario) -> None:
    c = scenario.coord
    w1_runs = scenario.ran["w1"]
    assert scenario.failovers == w1_runs >= 1  # each time w1 answered unavailable
    assert value(c, "edgeagent_coordinator_failovers_total") == w1_runs
    forwards = "edgeagent_coordinator_forwards_total"
    assert value(c, forwards, device="w1", outcome="unavailable") == w1_runs
    assert value(c, forwards, device="w2", outcome="ok") == scenario.ran["w2"]
    assert value(c, forwards, device="lamp-a", outcome="bad_request") == 1
    assert value(c, "edgeagent_coordinator_hedges_total") == 0  # hedging is off here
    assert value(c, "edgeagent_coordinator_rule_firings_total") == 0
    assert value(c, "edgeagent_coordinator_calls_in_flight") == 0


@pytest.mark.broker
def test_coordinator_sees_devices_and_releases(scenario: Scenario) -> None:
    c = scenario.coord
    assert value(c, "edgeagent_coordinator_devices", status="online") == 3
    assert value(c, "edgeagent_coordinator_devices", status="offline") == 0
    info = value(
        c,
        "edgeagent_device_release_info",
        device="lamp-a",
        release="r-42",
        agent_version=__version__,
        profile="pi4",
    )
    assert info == 1
    assert value(c, "edgeagent_device_release_info", device="w1", release="") == 1


# The agent ---------------------------------------------------------------------------------------


@pytest.mark.broker
def test_agent_metrics_match_its_calls(scenario: Scenario) -> None:
    a = scenario.agent
    assert value(a, "edgeagent_agent_skill_runs_total", skill="get_state") == scenario.gets
    assert value(a, "edgeagent_agent_skill_run_seconds_count", skill="get_state") == scenario.gets
    assert value(a, "edgeagent_agent_skill_runs_total", skill="set_brightness") == 0
    assert value(a, "edgeagent_agent_errors_total", skill="set_brightness", code="bad_request") == 1
    assert value(a, "edgeagent_agent_errors_total", skill=OTHER, code="not_found") == 1
    assert value(a, "edgeagent_agent_calls_served_total") == scenario.served_by_lamp
    assert value(a, "edgeagent_agent_calls_failed_total") == 2
    assert (
        sum(s.value for s in a["edgeagent_agent_skill_runs"].samples if s.name.endswith("_total"))
        == scenario.runs_by_lamp
    )
    assert value(a, "edgeagent_agent_resident_memory_bytes") > 10_000_000
    assert value(a, "edgeagent_agent_in_flight") == 0
    assert value(a, "edgeagent_agent_build_info", device="lamp-a", release="r-42") == 1


# The fleet bridge --------------------------------------------------------------------------------


@pytest.mark.broker
def test_fleet_metrics_from_health_and_manifests(scenario: Scenario) -> None:
    f = scenario.fleet
    assert value(f, "edgeagent_fleet_devices", status="online", profile="pi4") == 1
    assert value(f, "edgeagent_fleet_devices", status="online", profile="") == 2
    served = value(f, "edgeagent_fleet_device_calls_served_total", device="lamp-a")
    assert served == scenario.served_by_lamp
    assert value(f, "edgeagent_fleet_device_calls_failed_total", device="lamp-a") == 2
    assert value(f, "edgeagent_fleet_device_calls_failed_total", device="w1") == scenario.ran["w1"]
    assert value(f, "edgeagent_fleet_skill_calls_total", skill="pick") == sum(scenario.ran.values())
    assert value(f, "edgeagent_fleet_device_queue_depth", device="lamp-a") == 0
    assert value(f, "edgeagent_device_release_info", device="lamp-a", release="r-42") == 1
    for device in ("lamp-a", "w1", "w2"):
        assert value(f, "edgeagent_fleet_device_up", device=device) == 1
    after = scenario.fleet_after_stop
    assert value(after, "edgeagent_fleet_device_up", device="w1") == 0
    assert value(after, "edgeagent_fleet_devices", status="offline", profile="") == 1
    assert scenario.fleet_closed, "the bridge's server still answered after run() was cancelled"


# Services from the command line ------------------------------------------------------------------


def serve_and_scrape(cmd: list[str], env: dict[str, str]) -> Families:
    """Run a service command, scrape the metrics URL it prints, stop it with SIGTERM; the
    exit code must be 0 and the metrics server gone."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = ""
        deadline = time.monotonic() + 20
        while not url and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"metrics at (http://\S+)", line)
            url = found.group(1) if found else ""
        assert url, "no metrics line"
        with urllib.request.urlopen(url, timeout=5) as resp:
            fams = parse(resp.read().decode())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=2)
        return fams
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.broker
def test_coordinator_run_serves_metrics_and_stops_cleanly(
    cli_env: dict[str, str], fleet_name: str
) -> None:
    cmd = [sys.executable, "-m", "edgeagent", "--fleet", fleet_name, "coordinator", "run",
           "--metrics-port", "0"]  # fmt: skip
    fams = serve_and_scrape(cmd, cli_env)
    assert value(fams, "edgeagent_coordinator_devices", status="online") == 0
    assert value(fams, "edgeagent_coordinator_failovers_total") == 0


@pytest.mark.broker
def test_agent_run_serves_metrics_from_its_config(
    cli_env: dict[str, str], fleet_name: str, tmp_path: Path
) -> None:
    config = tmp_path / "lamp.yaml"
    config.write_text(
        "device: lamp-cli\nskills:\n  - module: smarthome.lamp:Lamp\nmetrics_port: 0\n"
    )
    cmd = [sys.executable, "-m", "edgeagent", "--fleet", fleet_name, "agent", "run", str(config)]
    fams = serve_and_scrape(cmd, cli_env)
    assert value(fams, "edgeagent_agent_build_info", device="lamp-cli") == 1
    assert value(fams, "edgeagent_agent_skill_runs_total", skill="get_state") == 0


def test_bad_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        AgentConfig(device="d", skills=[{"module": "m"}], metrics_port=70000)
    path = tmp_path / "lamp.yaml"
    path.write_text("device: lamp\nskills:\n  - module: smarthome.lamp:Lamp\nmetrics_port: -1\n")
    with pytest.raises(ConfigError, match=r"lamp\.yaml:4: metrics_port"):
        load_config(path)
    result = CliRunner().invoke(cli_main, ["coordinator", "run", "--metrics-port", "70000"])
    assert result.exit_code == 2
    assert "--metrics-port" in result.output
    assert "70000" in result.output


def test_a_port_in_use_is_a_config_error() -> None:
    async def main() -> None:
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            server = MetricsServer(parse_registry(), port=held.getsockname()[1])
            with pytest.raises(ConfigError, match=r"cannot serve metrics on 127\.0\.0\.1"):
                await server.start()

    asyncio.run(main())


# The HTTP server's edges -------------------------------------------------------------------------


def parse_registry() -> Any:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("edgeagent_test_things", "Things.", registry=registry).inc(3)
    return registry


async def raw_http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_http_server_answers_only_metrics() -> None:
    async def main() -> None:
        async with MetricsServer(parse_registry()) as server:
            ok = await raw_http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK")
            assert b"edgeagent_test_things_total 3.0" in ok
            head = await raw_http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert head.endswith(b"\r\n\r\n")
            assert (await raw_http(server.port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 404"
            )
            assert (await raw_http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 405"
            )
            assert (await raw_http(server.port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
            # A head past the limit: closed unanswered, and the server keeps serving.
            assert await raw_http(server.port, b"GET /" + b"a" * 20_000 + b"\r\n\r\n") == b""
            assert server.scrapes == 2
            again = await raw_http(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            assert again.startswith(b"HTTP/1.1 200")
            port = server.port
        with pytest.raises(ConnectionRefusedError):
            await raw_http(port, b"GET /metrics HTTP/1.1\r\n\r\n")

    asyncio.run(main())


# The pure parts ----------------------------------------------------------------------------------


def test_buckets_are_cumulative_with_le_bounds() -> None:
    b = Buckets((0.1, 1.0))
    assert b.cumulative() == [("0.1", 0), ("1.0", 0), ("+Inf", 0)]
    for s in (0.05, 0.1, 0.5, 2.0, 7.0):
        b.observe(s)
    assert b.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 5)]  # 0.1 is <= 0.1
    assert b.count == 5
    assert b.total == pytest.approx(9.65)


def test_label_caps_fold_the_rest_into_other() -> None:
    cap = LabelCap(2)
    assert [cap.fold(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
    stats = CallStats((LabelCap(1), LabelCap(5)))
    for skill_name in ("s1", "s2", "s3"):
        stats.record(stats.key(skill_name, "dev"), "ok", 0.01)
    stats.record(stats.key("s1", "dev"), "busy", None)
    assert stats.counts == {
        (("s1", "dev"), "ok"): 1,
        ((OTHER, "dev"), "ok"): 2,
        (("s1", "dev"), "busy"): 1,
    }
    assert stats.by_outcome() == {"ok": 3, "busy": 1}
    assert stats.durations[(OTHER, "dev")].count == 2
    assert capped(["c", "a", "b"], 2) == {"a": "a", "b": "b", "c": OTHER}
    assert fold_sum({"c": 1, "a": 2, "b": 4, "d": 8}, 2) == {"a": 2, "b": 4, OTHER: 9}
    with pytest.raises(ValueError, match="at least 1"):
        LabelCap(0)


def test_fleet_snapshot_is_bounded_and_health_means_alive() -> None:
    snap = FleetSnapshot(max_devices=2)
    manifest = Manifest(device="a", fleet="f", max_payload=64, agent_version="1", release="r1")
    assert snap.apply(manifest)
    assert snap.apply(StateMessage(device="a", status="offline"))
    assert snap.devices["a"].status == "offline"
    health = Health(
        device="a",
        ts=1.0,
        uptime_s=1.0,
        calls_served=5,
        calls_failed=1,
        calls_dropped=0,
        in_flight=0,
        queue_depth=3,
    )
    assert snap.apply(health)
    assert snap.devices["a"].status == "online"
    assert snap.apply(StateMessage(device="b", status="online"))
    assert not snap.apply(StateMessage(device="c", status="online"))
    assert snap.ignored == 1
    assert set(snap.devices) == {"a", "b"}
    fams = {f.name: f for f in FleetCollector(snap, device_labels=1).collect()}
    up = {s.labels["device"]: s.value for s in fams["edgeagent_fleet_device_up"].samples}
    assert up == {"a": 1.0, OTHER: 1.0}
    snap.keep_only({"b"})
    assert set(snap.devices) == {"b"}


# The Grafana dashboard ---------------------------------------------------------------------------


@pytest.mark.broker
def test_dashboard_queries_only_exported_metrics(scenario: Scenario) -> None:
    board = json.loads(DASHBOARD.read_text())
    exported = names(scenario.coord) | names(scenario.agent) | names(scenario.fleet)
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        found = set(re.findall(r"\bedgeagent_[a-z0-9_]+", expr))
        assert found, f"a panel queries no edgeagent metric: {expr}"
        used |= found
    assert used <= exported, sorted(used - exported)
    prefixes = {n.split("_")[1] for n in used}
    assert prefixes >= {"coordinator", "agent", "fleet", "device"}
