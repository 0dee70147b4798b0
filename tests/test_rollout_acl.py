"""The broker's policy for the system skills and rollouts (issues 10 and 12), on a REAL mosquitto
running the generated configuration: only operators call ``system.*`` (a device, a client, a
client granted ``system.update`` and the coordinator are refused by the broker: the device never
sees the call), devices fetch rollout files and report their updates, the operator serves the
files and keeps the rollout's records. Every refusal has its allowed twin in the same test.

The raw probes are tests/test_trust.py's; the end-to-end test runs a real agent with the system
skills, a ``Fleet`` per identity and a file server on the operator's connection."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent import DeviceAgent, Fleet
from edgeagent.brokerconf import acl_text, coord_read_skills, read_calls
from edgeagent.config import AgentConfig, load_skills
from edgeagent.deploy.transfer_mqtt import FileServer
from edgeagent.errors import CallTimeout
from edgeagent.fleetdir import FleetRegistry, Identity
from edgeagent.protocol import SYSTEM_SKILLS
from edgeagent.securebroker import SecureBroker, Wanted, start_secure
from edgeagent.skills import collect_skills
from edgeagent.system import SystemSkills
from edgeagent.transport.base import Inbound
from tests.test_trust import ALLOWED, LAMP_SKILLS, Probe, need_mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

FLEET = "racl"
BASE = f"edgeagent/{FLEET}"
#: What a deployed lamp declares: its own skills and the system skills.
DEPLOYED: dict[str, Any] = {
    **LAMP_SKILLS,
    "system.info": "read",
    "system.update": "actuate",
    "system.rollback": "actuate",
    "system.restart": "actuate",
}
IDENTITIES = [
    Wanted("lamp-a", "device", skills=DEPLOYED),
    Wanted("lamp-b", "device", skills=DEPLOYED),
    Wanted("coord", "coordinator"),
    Wanted("ops", "operator"),
    Wanted("phone", "client"),
    Wanted("sneaky", "client", grants=("system.update", "lamp-a/system.restart", "turn_on")),
]
#: The device tool's stand-in for the end-to-end test: refuses every switch at once.
REFUSING_TOOL = """\
import json, os, sys
from pathlib import Path
spool = Path(sys.argv[sys.argv.index("--spool") + 1])
(spool / "request.json").unlink()
out = {"action": "update", "ok": False, "error": "refused by the test's tool"}
(spool / ".result.tmp").write_text(json.dumps(out))
os.replace(spool / ".result.tmp", spool / "result.json")
"""


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureBroker]:
    need_mosquitto()
    broker = start_secure(IDENTITIES, fleet=FLEET)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def probes(secure: SecureBroker) -> Iterator[Callable[[str], Probe]]:
    made: list[Probe] = []

    def make(name: str) -> Probe:
        p = Probe(secure.broker_config(name))
        made.append(p)
        assert p.connect() == "Success", f"{name} could not connect: {p.connack}"
        return p

    yield make
    for p in made:
        p.close()


# --------------------------------------------------------------------------------------------
# The pure generator


def test_acl_lets_only_operators_call_system_skills_and_opens_the_rollout_topics() -> None:
    def ident(name: str, role: Any, **kw: Any) -> Identity:
        return Identity(name=name, role=role, created=0.0, **kw)

    reg = FleetRegistry(fleet="home", broker_hosts=["broker.lan"], identities=[
        ident("lamp", "device", skills={"get": "read", "system.info": "read",
                                        "system.update": "actuate"}),
        ident("heater", "device", skills={"get": "read", "system.info": "read"}),
        ident("coord", "coordinator"),
        ident("ops", "operator"),
        ident("phone", "client", grants=["system.update", "lamp/system.info", "get"]),
    ])  # fmt: skip
    acl = acl_text(reg)
    blocks = {b.split("\n", 1)[0]: b for b in acl.split("\nuser ")[1:]}
    b = "edgeagent/home"
    # Read on every device, yet never open to everyone (the twin: `get` is).
    assert coord_read_skills(reg) == ["get"]
    assert read_calls(reg) == [f"{b}/dev/+/call/get", f"{b}/coord/call/get"]
    assert "system." not in "\n".join(
        line for line in acl.splitlines() if line.startswith("pattern")
    )
    # Grants of system skills give nothing (and say so); the other grant stands.
    phone = blocks["phone"]
    assert f"topic write {b}/dev/+/call/get" in phone
    assert "# grant system.update ignored: only operators call the system skills" in phone
    assert "# grant lamp/system.info ignored" in phone
    assert not [x for x in phone.splitlines() if x.startswith("topic") and "system." in x]
    # The coordinator forwards anything but the system skills.
    coord = blocks["coord"]
    assert f"topic write {b}/dev/+/call/+" in coord
    assert [x for x in coord.splitlines() if "deny" in x] == [
        f"topic deny {b}/dev/+/call/{s}" for s in SYSTEM_SKILLS
    ]
    # The operator: calls, rollout records, update reports, the file server.
    ops = blocks["ops"].splitlines()
    for line in (f"topic write {b}/dev/+/call/+", f"topic readwrite {b}/rollout/#",
                 f"topic read {b}/dev/+/update", f"topic read {b}/files/+/get",
                 f"topic write {b}/dev/+/files/in"):  # fmt: skip
        assert line in ops
    # A device: its own update report, self-test and file replies; requests to any server.
    lamp = blocks["lamp"].splitlines()
    for line in (f"topic write {b}/dev/lamp/update", f"topic write {b}/dev/lamp/call/_ping",
                 f"topic readwrite {b}/dev/lamp/update/self-test",
                 f"topic write {b}/files/+/get", f"topic read {b}/dev/lamp/files/in"):  # fmt: skip
        assert line in lamp
    assert not [x for x in lamp if "heater" in x or "/dev/+/" in x or "rollout" in x]


# --------------------------------------------------------------------------------------------
# The real broker, raw probes


def test_only_the_operator_reaches_a_devices_system_skills(probes: Callable[[str], Probe]) -> None:
    lamp = probes("lamp-a")
    assert lamp.subscribe(f"{BASE}/dev/lamp-a/call/+") == "Granted QoS 1"
    ops = probes("ops")
    for skill in SYSTEM_SKILLS:
        assert ops.publish(f"{BASE}/dev/lamp-a/call/{skill}", b"from-ops") in ALLOWED
    for name in ("lamp-b", "phone", "sneaky", "coord"):
        caller = probes(name)
        for skill in SYSTEM_SKILLS:
            ack = caller.publish(f"{BASE}/dev/lamp-a/call/{skill}", name.encode())
            assert ack == "Not authorized", (name, skill)
        # Nor through the coordinator.
        assert caller.publish(f"{BASE}/coord/call/system.update") == "Not authorized", name
    # The twins: what these identities may call still reaches the device.
    assert probes("coord").publish(f"{BASE}/dev/lamp-a/call/turn_on", b"coord") in ALLOWED
    assert probes("sneaky").publish(f"{BASE}/dev/lamp-a/call/turn_on", b"sneaky") in ALLOWED
    assert probes("phone").publish(f"{BASE}/dev/lamp-a/call/get_state", b"phone") in ALLOWED
    got = lamp.received()
    assert sorted(t.rsplit("/", 1)[1] for t, p in got if p == b"from-ops") == sorted(SYSTEM_SKILLS)
    assert sorted((t.rsplit("/", 1)[1], p) for t, p in got if p != b"from-ops") == [
        ("get_state", b"phone"), ("turn_on", b"coord"), ("turn_on", b"sneaky"),
    ]  # fmt: skip


def test_devices_fetch_files_and_report_and_the_operator_keeps_the_records(
    probes: Callable[[str], Probe],
) -> None:
    lamp, other, ops, phone = probes("lamp-a"), probes("lamp-b"), probes("ops"), probes("phone")
    # File requests: any device to any file server; only the operator serves (reads) them.
    assert ops.subscribe(f"{BASE}/files/+/get") == "Granted QoS 1"
    phone.subscribe(f"{BASE}/files/+/get")  # granted, then nothing is delivered
    assert lamp.publish(f"{BASE}/files/rollout-r1/get", b"req-a") in ALLOWED
    assert other.publish(f"{BASE}/files/rollout-r1/get", b"req-b") in ALLOWED
    assert phone.publish(f"{BASE}/files/rollout-r1/get", b"req-phone") == "Not authorized"
    # File replies: the operator writes them; each device reads its own only.
    assert lamp.subscribe(f"{BASE}/dev/lamp-a/files/in") == "Granted QoS 1"
    other.subscribe(f"{BASE}/dev/lamp-a/files/in")  # not its own: nothing arrives
    assert ops.publish(f"{BASE}/dev/lamp-a/files/in", b"chunk") in ALLOWED
    assert other.publish(f"{BASE}/dev/lamp-a/files/in", b"forged") == "Not authorized"
    # Update reports: the device its own, retained; the operator reads them.
    assert ops.subscribe(f"{BASE}/dev/+/update") == "Granted QoS 1"
    phone.subscribe(f"{BASE}/dev/+/update")
    report = json.dumps({"device": "lamp-a", "state": "downloading"}).encode()
    assert lamp.publish(f"{BASE}/dev/lamp-a/update", report, retain=True) in ALLOWED
    assert other.publish(f"{BASE}/dev/lamp-a/update", b"forged", retain=True) == ("Not authorized")
    # The rollout's records and control: the operator's alone.
    assert ops.subscribe(f"{BASE}/rollout/#") == "Granted QoS 1"
    assert ops.publish(f"{BASE}/rollout/r1/control", b'{"command":"pause"}') in ALLOWED
    for name, p in (("lamp-a", lamp), ("phone", phone)):
        assert p.publish(f"{BASE}/rollout/r1/control", b"abort") == "Not authorized", name
        assert p.publish(f"{BASE}/rollout/r1", b"forged", retain=True) == "Not authorized", name

    assert sorted(ops.received(f"{BASE}/files/")) == [
        (f"{BASE}/files/rollout-r1/get", b"req-a"), (f"{BASE}/files/rollout-r1/get", b"req-b"),
    ]  # fmt: skip
    assert ops.received(f"{BASE}/dev/") == [(f"{BASE}/dev/lamp-a/update", report)]
    assert ops.received(f"{BASE}/rollout/") == [(f"{BASE}/rollout/r1/control",
                                                 b'{"command":"pause"}')]  # fmt: skip
    assert lamp.received() == [(f"{BASE}/dev/lamp-a/files/in", b"chunk")]
    assert other.received() == []
    assert phone.received() == []
    lamp.publish(f"{BASE}/dev/lamp-a/update", b"", retain=True)


# --------------------------------------------------------------------------------------------
# End to end: a real agent with the system skills on the secured broker


def _deployed_lamp(secure: SecureBroker, root: Path) -> tuple[DeviceAgent, SystemSkills]:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "edgeagent-device.py").write_text(REFUSING_TOOL)
    info = {"device": "lamp-a", "profile": "x86-64", "service": "process"}
    (root / "device.json").write_text(json.dumps(info))
    cfg = AgentConfig(
        device="lamp-a",
        fleet=FLEET,
        broker=secure.broker_config("lamp-a"),
        skills=[{"module": "smarthome.lamp:Lamp"}],
        release="1.0",
        grace_s=0,
    )
    system = SystemSkills(root, cfg.release)
    skills, sets, events = load_skills(cfg)
    agent = DeviceAgent(cfg, skills=[*skills, *collect_skills(system)],
                        skill_sets=[*sets, system], events=events)  # fmt: skip
    return agent, system


def test_operator_updates_a_device_through_the_secured_broker(
    secure: SecureBroker, tmp_path: Path
) -> None:
    """The operator's ``system.update`` reaches the device, which fetches the missing file from
    the operator's file server and reports on its update topic; the same call from a device or a
    client never arrives; the agent's self-test call to itself passes the broker."""
    content = uuid.uuid4().bytes * 1000
    sha = hashlib.sha256(content).hexdigest()
    store = tmp_path / "files"
    store.mkdir()
    (store / sha).write_bytes(content)
    manifest = {"version": "2.0", "profile": "x86-64", "device": "lamp-a",
                "files": [{"path": "app/x.bin", "sha256": sha, "size": len(content)}]}  # fmt: skip
    request = {"manifest": json.dumps(manifest), "signature": "x", "server": "rollout-acl"}
    agent, system = _deployed_lamp(secure, tmp_path / "opt")

    async def main() -> None:
        ops_cfg = secure.broker_config("ops")
        reports: list[dict[str, Any]] = []
        async with (
            agent,
            Fleet(ops_cfg, fleet=FLEET, timeout=10) as ops,
            Fleet(secure.broker_config("lamp-b"), fleet=FLEET) as device_b,
            Fleet(secure.broker_config("sneaky"), fleet=FLEET) as sneaky,
        ):
            server = FileServer(ops.transport, [store], fleet=FLEET, server="rollout-acl")
            await server.start()

            def on_report(msg: Inbound) -> None:
                if msg.payload:
                    reports.append(json.loads(msg.payload))

            await ops.transport.subscribe(f"{BASE}/dev/lamp-a/update", on_report, qos=1)
            for _ in range(250):  # the system skills start a moment after the agent is online
                if system.started:
                    break
                await asyncio.sleep(0.02)
            # Refused by the broker: the device never sees these calls.
            for caller in (device_b, sneaky):
                with pytest.raises(CallTimeout):
                    await caller.call("lamp-a", "system.update", request, timeout=1)
                with pytest.raises(CallTimeout):
                    await caller.call("lamp-a", "system.info", timeout=1)
            assert agent.statistics().served == 0
            assert agent.statistics().failed == 0
            assert (await sneaky.call("lamp-a", "turn_on", timeout=5))["on"] is True  # the twin
            info = await ops.call("lamp-a", "system.info")
            assert info["release"] == "1.0"
            accepted = await ops.call("lamp-a", "system.update", request)
            assert (accepted["missing_files"], accepted["missing_bytes"]) == (1, len(content))
            for _ in range(500):
                if reports and reports[-1]["state"] == "failed":
                    break
                await asyncio.sleep(0.02)
            states = [r["state"] for r in reports]
            assert states[0] == "downloading"
            assert states[-2:] == ["applying", "failed"], reports
            assert reports[-1]["error"] == "refused by the test's tool"
            assert server.stats.bytes_served == len(content)
            assert (system.spool / "stage" / "store" / sha).read_bytes() == content
            await system.self_test()  # the agent's call to its own _ping, answered
            await server.stop()

    asyncio.run(main())
