"""Fleet identity and broker policy: every spoof refused by a REAL mosquitto running the
generated configuration (``edgeagent broker config``), plus the pure generator and the CLI.

The probes speak raw paho-mqtt (MQTT 5) so they see exactly what the broker answers: CONNACK
and PUBACK reason codes, and what a subscriber with the right to read actually receives. Every
refusal test has its allowed twin in the same test, so it fails if the broker lets nothing (or
everything) through. Keys, certificates and passwords are made at run time in temporary folders;
no test touches the system broker on 1883.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeagent import DeviceAgent, Fleet
from edgeagent.broker import BrokerConfig
from edgeagent.brokerconf import BrokerFiles, acl_text, coord_read_skills, passwd_text, render
from edgeagent.cli import main
from edgeagent.config import AgentConfig
from edgeagent.coordinator import Coordinator
from edgeagent.errors import CallTimeout, ConfigError
from edgeagent.fleetca import check_password, hash_password, issue_client, make_ca
from edgeagent.fleetdir import BrokerSettings, FleetDir, FleetRegistry, Identity
from edgeagent.securebroker import SecureBroker, Wanted, start_secure
from edgeagent.transport.mqtt import MqttTransport

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"
FLEET = "trust"
BASE = f"edgeagent/{FLEET}"
LAMP_SKILLS: dict[str, Any] = {
    "get_state": "read",
    "set_brightness": "actuate",
    "toggle": "actuate",
    "turn_off": "actuate",
    "turn_on": "actuate",
}
#: PUBACK reasons of an accepted publish (mosquitto says when nobody subscribes).
ALLOWED = ("Success", "No matching subscribers")
SETTLE_S = 0.4  # long enough for a loopback message to arrive (they take about 1 ms)

pytestmark = pytest.mark.timeout(120)


def need_mosquitto() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")


IDENTITIES = [
    Wanted("lamp-a", "device", skills=LAMP_SKILLS),
    Wanted("lamp-b", "device", skills=LAMP_SKILLS, grants=("turn_on",)),
    Wanted("coord", "coordinator"),
    Wanted("ops", "operator"),
    Wanted("phone", "client"),
    Wanted("pw-user", "client", password=True),
]


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureBroker]:
    need_mosquitto()
    broker = start_secure(IDENTITIES, fleet=FLEET)
    try:
        yield broker
    finally:
        broker.close()


# --------------------------------------------------------------------------------------------
# A raw MQTT 5 probe


class Probe:
    """A paho client that records CONNACK, PUBACK/SUBACK reason codes and received messages."""

    def __init__(self, cfg: BrokerConfig, client_id: str | None = None, will: str | None = None):
        self.cfg = cfg
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        tls = cfg.tls
        assert tls is not None
        self.client.tls_set(
            ca_certs=str(tls.ca_file),
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
        user, password = cfg.credentials()
        if user is not None:
            self.client.username_pw_set(user, password)
        if will is not None:
            self.client.will_set(will, b'{"type":"state"}', qos=1, retain=True)
        self.connack: str | None = None
        self.acks: dict[int, str] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = str(rc)
        self._done.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connack is None:
            self.connack = f"disconnected: {rc}"
        self._done.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            self.acks[mid] = str(rc)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any) -> None:
        with self._lock:
            self.acks[mid] = str(rcs[0])

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self) -> str:
        """Connect; the CONNACK reason, or why the connection failed."""
        try:
            self.client.connect(self.cfg.host, self.cfg.port)
        except (OSError, ssl.SSLError) as exc:
            self.connack = f"failed: {exc}"
            return self.connack
        self.client.loop_start()
        self._done.wait(5)
        return self.connack or "no answer"

    @property
    def connected(self) -> bool:
        return self.connack == "Success"

    def _wait_ack(self, mid: int) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if mid in self.acks:
                    return self.acks[mid]
            time.sleep(0.01)
        return "no ack"

    def publish(
        self, topic: str, payload: bytes = b"{}", *, retain: bool = False, reply_to: str = ""
    ) -> str:
        """Publish at QoS 1; the PUBACK reason (mosquitto answers "Not authorized" to MQTT 5)."""
        props = None
        if reply_to:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho
            props.ResponseTopic = reply_to
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        return self._wait_ack(info.mid)

    def subscribe(self, topic_filter: str) -> str:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None
        return self._wait_ack(mid)

    def received(self, prefix: str = "") -> list[tuple[str, bytes]]:
        time.sleep(SETTLE_S)
        with self._lock:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def close_with_will(self) -> None:
        """DISCONNECT with reason 0x04: the broker publishes the will as if the link died."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        self.client.loop_stop()


@pytest.fixture
def probes(secure: SecureBroker) -> Iterator[Any]:
    made: list[Probe] = []

    def make(name: str, **kw: Any) -> Probe:
        p = Probe(secure.broker_config(name), **kw)
        made.append(p)
        assert p.connect() == "Success", f"{name} could not connect: {p.connack}"
        return p

    yield make
    for p in made:
        p.close()


# --------------------------------------------------------------------------------------------
# Connecting


def test_unenrolled_clients_cannot_connect(secure: SecureBroker, tmp_path: Path) -> None:
    ok = Probe(secure.broker_config("phone"))
    assert ok.connect() == "Success"  # the twin: an enrolled certificate is let in
    ok.close()
    ca = secure.fleet.ca_cert
    # No client certificate at all.
    bare = Probe(BrokerConfig(url=secure.url, tls={"ca_file": ca}))
    assert bare.connect() != "Success"
    # A certificate for an enrolled name, issued by another CA (an attacker's own "fleet").
    rogue_ca = make_ca(FLEET)
    forged = issue_client(rogue_ca.cert_pem, rogue_ca.key_pem, FLEET, "ops")
    (tmp_path / "f.crt").write_bytes(forged.cert_pem)
    (tmp_path / "f.key").write_bytes(forged.key_pem)
    tls = {"ca_file": ca, "cert_file": tmp_path / "f.crt", "key_file": tmp_path / "f.key"}
    rogue = Probe(BrokerConfig(url=secure.url, tls=tls))
    assert rogue.connect() != "Success"
    # Anonymous and made-up users on the password listener.
    anon = Probe(BrokerConfig(url=secure.password_url, tls={"ca_file": ca}))
    assert anon.connect() == "Not authorized"
    made_up = BrokerConfig(
        url=secure.password_url, username="lamp-a", password="guess", tls={"ca_file": ca}
    )
    assert Probe(made_up).connect() == "Not authorized"


def test_password_identity_works_and_a_wrong_password_fails(
    secure: SecureBroker, probes: Any
) -> None:
    good = probes("pw-user")
    assert good.subscribe(f"{BASE}/dev/+/state") == "Granted QoS 1"
    wrong = secure.broker_config("pw-user").model_copy(update={"password": "not-the-password"})
    assert Probe(wrong).connect() == "Not authorized"


def test_generated_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    subprocess.run([exe, "-b", "-c", str(passwd), "u", "s3cret"], check=True, capture_output=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert check_password("s3cret", theirs)
    assert not check_password("s3creT", theirs)
    ours = hash_password("s3cret")
    assert ours.startswith("$7$101$")
    assert check_password("s3cret", ours)
    assert ours.split("$")[3:] != theirs.split("$")[3:]  # a fresh salt each time


# --------------------------------------------------------------------------------------------
# Devices write only their own topics


def test_device_cannot_write_another_devices_retained_manifest_or_state(probes: Any) -> None:
    owner, intruder, watcher = probes("lamp-a"), probes("lamp-b"), probes("ops")
    assert watcher.subscribe(f"{BASE}/dev/lamp-a/#") == "Granted QoS 1"
    real = json.dumps({"type": "state", "device": "lamp-a", "status": "online"}).encode()
    assert owner.publish(f"{BASE}/dev/lamp-a/state", real, retain=True) in ALLOWED
    fake_state = json.dumps({"type": "state", "device": "lamp-a", "status": "offline"}).encode()
    fake_manifest = json.dumps({"type": "manifest", "device": "lamp-a", "tags": {}}).encode()
    assert intruder.publish(f"{BASE}/dev/lamp-a/state", fake_state, retain=True) == (
        "Not authorized"
    )
    assert intruder.publish(f"{BASE}/dev/lamp-a/manifest", fake_manifest, retain=True) == (
        "Not authorized"
    )
    # An operator may call anything but may not write a device's retained topics either.
    assert watcher.publish(f"{BASE}/dev/lamp-a/state", fake_state, retain=True) == "Not authorized"
    assert watcher.received() == [(f"{BASE}/dev/lamp-a/state", real)]
    # A later subscriber gets the genuine retained state only.
    late = probes("phone")
    late.subscribe(f"{BASE}/dev/lamp-a/+")
    assert late.received() == [(f"{BASE}/dev/lamp-a/state", real)]
    owner.publish(f"{BASE}/dev/lamp-a/state", b"", retain=True)


def test_device_cannot_pose_as_another(secure: SecureBroker, probes: Any) -> None:
    # A last will on another device's state topic: mosquitto 2.0.11 accepts the CONNECT but
    # never publishes the will (its own will, the twin, is published).
    watcher = probes("ops")
    watcher.subscribe(f"{BASE}/dev/+/state")
    for device in ("lamp-b", "lamp-a"):
        p = Probe(secure.broker_config("lamp-b"), will=f"{BASE}/dev/{device}/state")
        assert p.connect() == "Success"
        p.close_with_will()
    assert [t for t, _ in watcher.received()] == [f"{BASE}/dev/lamp-b/state"]
    probes("lamp-b").publish(f"{BASE}/dev/lamp-b/state", b"", retain=True)
    # It cannot read another device's calls, nor publish its events or health.
    impostor, caller = probes("lamp-b"), probes("ops")
    impostor.subscribe(f"{BASE}/dev/lamp-a/call/+")
    impostor.subscribe(f"{BASE}/dev/lamp-b/call/+")
    assert caller.publish(f"{BASE}/dev/lamp-a/call/turn_on") in ALLOWED
    assert caller.publish(f"{BASE}/dev/lamp-b/call/turn_on") in ALLOWED
    assert [t for t, _ in impostor.received()] == [f"{BASE}/dev/lamp-b/call/turn_on"]
    assert impostor.publish(f"{BASE}/dev/lamp-a/event/changed") == "Not authorized"
    assert impostor.publish(f"{BASE}/dev/lamp-a/health") == "Not authorized"
    assert impostor.publish(f"{BASE}/dev/lamp-b/event/changed") in ALLOWED


# --------------------------------------------------------------------------------------------
# Actuations need a grant


def test_unauthorised_client_cannot_call_an_actuate_skill(probes: Any) -> None:
    lamp, coord, phone, ops = probes("lamp-a"), probes("coord"), probes("phone"), probes("ops")
    assert lamp.subscribe(f"{BASE}/dev/lamp-a/call/+") == "Granted QoS 1"
    assert coord.subscribe(f"$share/g/{BASE}/coord/call/+") == "Granted QoS 1"
    # Refused on the device's call topic and through the coordinator alike.
    assert phone.publish(f"{BASE}/dev/lamp-a/call/turn_on") == "Not authorized"
    assert phone.publish(f"{BASE}/coord/call/turn_on") == "Not authorized"
    # A skill no device declares counts as an actuation.
    assert phone.publish(f"{BASE}/coord/call/open_garage") == "Not authorized"
    # Read-only skills are open to every enrolled identity.
    assert phone.publish(f"{BASE}/dev/lamp-a/call/get_state") in ALLOWED
    assert phone.publish(f"{BASE}/coord/call/get_state") in ALLOWED
    # An operator may actuate.
    assert ops.publish(f"{BASE}/dev/lamp-a/call/turn_on") in ALLOWED
    assert ops.publish(f"{BASE}/coord/call/turn_on") in ALLOWED
    assert [t for t, _ in lamp.received()] == [
        f"{BASE}/dev/lamp-a/call/get_state",
        f"{BASE}/dev/lamp-a/call/turn_on",
    ]
    assert [t for t, _ in coord.received()] == [
        f"{BASE}/coord/call/get_state",
        f"{BASE}/coord/call/turn_on",
    ]


def test_granted_device_can_call_its_granted_skill_only(probes: Any) -> None:
    lamp, granted = probes("lamp-a"), probes("lamp-b")
    lamp.subscribe(f"{BASE}/dev/lamp-a/call/+")
    assert granted.publish(f"{BASE}/dev/lamp-a/call/turn_on") in ALLOWED
    assert granted.publish(f"{BASE}/coord/call/turn_on") in ALLOWED
    assert granted.publish(f"{BASE}/dev/lamp-a/call/turn_off") == "Not authorized"
    assert [t for t, _ in lamp.received()] == [f"{BASE}/dev/lamp-a/call/turn_on"]


def test_only_the_coordinator_receives_coordinator_calls(probes: Any) -> None:
    coord, thief, ops = probes("coord"), probes("phone"), probes("ops")
    coord.subscribe(f"{BASE}/coord/call/+")
    thief.subscribe(f"{BASE}/coord/call/+")  # mosquitto grants it, then delivers nothing
    thief.subscribe("#")
    ops.publish(f"{BASE}/coord/call/turn_on", b'{"secret": 1}')
    assert [t for t, _ in coord.received()] == [f"{BASE}/coord/call/turn_on"]
    assert not [m for m in thief.received() if b"secret" in m[1]]


def test_replies_go_only_to_client_folders(probes: Any) -> None:
    """Devices answer on ``…/client/+/reply`` and ``…/fwd``; a client reads only its own."""
    lamp = probes("lamp-a")
    me = probes("phone", client_id="ea-cli-me")
    other = probes("ops", client_id="ea-cli-other")
    assert me.subscribe(f"{BASE}/client/ea-cli-me/reply") == "Granted QoS 1"
    other.subscribe(f"{BASE}/client/ea-cli-me/reply")  # not its folder: nothing arrives
    assert lamp.publish(f"{BASE}/client/ea-cli-me/reply", b"answer") in ALLOWED
    assert lamp.publish(f"{BASE}/client/ea-cli-me/other") == "Not authorized"
    assert lamp.publish("elsewhere/reply") == "Not authorized"
    assert me.received() == [(f"{BASE}/client/ea-cli-me/reply", b"answer")]
    assert other.received() == []


# --------------------------------------------------------------------------------------------
# Revocation


def test_revoked_identity_cannot_connect_after_restart() -> None:
    need_mosquitto()
    wanted = [
        Wanted("gone", "client"),
        Wanted("stays", "client"),
        Wanted("pw", "client", password=True),
        Wanted("pw-stays", "client", password=True),
    ]
    with start_secure(wanted, fleet=FLEET) as broker:
        for name in ("gone", "stays", "pw", "pw-stays"):
            p = Probe(broker.broker_config(name))
            assert p.connect() == "Success", name
            p.close()
        gone, pw = broker.broker_config("gone"), broker.broker_config("pw")
        broker.revoke("gone")
        broker.revoke("pw")
        broker.restart()
        assert Probe(gone).connect() != "Success"  # the certificate is on the CRL
        assert Probe(pw).connect() == "Not authorized"  # the password is gone
        for name in ("stays", "pw-stays"):
            stays = Probe(broker.broker_config(name))
            assert stays.connect() == "Success", name
            stays.close()
        crl = (broker.conf_dir / "crl.pem").read_bytes()
        assert crl == broker.fleet.crl.read_bytes()


# --------------------------------------------------------------------------------------------
# End to end: the real agent, coordinator and client with enrolled credentials


def _lamp_config(broker: BrokerConfig, device: str) -> AgentConfig:
    return AgentConfig(
        device=device,
        fleet=FLEET,
        broker=broker,
        skills=[{"module": "smarthome.lamp:Lamp"}],
        grace_s=0,
    )


def test_agent_coordinator_and_clients_with_enrolled_credentials(secure: SecureBroker) -> None:
    async def main() -> None:
        async with asyncio.timeout(30):
            agent = DeviceAgent(_lamp_config(secure.broker_config("lamp-a"), "lamp-a"))
            coord = Coordinator(
                MqttTransport(secure.broker_config("coord")),
                root="edgeagent",
                fleet=FLEET,
                group=secure.fleet.registry.coordinator_group,
            )
            async with (
                agent,
                coord,
                Fleet(secure.broker_config("ops"), fleet=FLEET) as ops,
                Fleet(secure.broker_config("phone"), fleet=FLEET) as phone,
                Fleet(secure.broker_config("pw-user"), fleet=FLEET) as pw,
            ):
                out = await ops.call("lamp-a", "set_brightness", {"level": 40}, timeout=5)
                assert out == {"on": True, "brightness": 40}
                out = await ops.call_skill("set_brightness", {"level": 30}, timeout=5)
                assert out == {"on": True, "brightness": 30}
                assert (await phone.call("lamp-a", "get_state", timeout=5))["brightness"] == 30
                assert (await pw.call_skill("get_state", timeout=5))["brightness"] == 30
                # The broker drops the unauthorised actuation: no device ever sees it.
                with pytest.raises(CallTimeout):
                    await phone.call("lamp-a", "set_brightness", {"level": 90}, timeout=1)
                with pytest.raises(CallTimeout):
                    await phone.call_skill("set_brightness", {"level": 90}, timeout=1)
                assert (await ops.call("lamp-a", "get_state", timeout=5))["brightness"] == 30

    asyncio.run(main())


def test_simulator_broker_mode_runs_on_the_secured_broker() -> None:
    need_mosquitto()
    from edgeagent.simulator import simulate
    from edgeagent.simulator.spec import parse_spec

    spec = parse_spec(
        f"""\
name: secure-small
fleet: t{uuid.uuid4().hex[:10]}
seed: 3
duration_s: 4
groups:
  - {{name: lamp, count: 3, profile: pi-zero-2w, tags: {{kind: lamp}},
     skills: [{{module: "smarthome.lamp:Lamp"}}]}}
coordinator: {{replicas: 1}}
workload:
  - {{skill: set_brightness, rate_per_s: 10, where: {{kind: lamp}}, input: {{level: 40}}}}
  - {{skill: get_state, rate_per_s: 10}}
""",
        source="secure.yaml",
        base_dir=EXAMPLES,
    )
    report = simulate(spec, broker="local", secure=True).report
    assert report["mode"] == "broker"
    for skill in ("set_brightness", "get_state"):
        assert report["skills"][skill]["calls"] > 10
        assert report["skills"][skill]["success_rate"] == 1.0
    with pytest.raises(ConfigError, match="broker='local'"):
        simulate(spec, broker=None, secure=True)


# --------------------------------------------------------------------------------------------
# The pure generator


def _registry(*identities: Identity) -> FleetRegistry:
    return FleetRegistry(fleet="home", broker_hosts=["broker.lan"], identities=list(identities))


def _ident(name: str, role: Any, **kw: Any) -> Identity:
    return Identity(name=name, role=role, created=0.0, **kw)


def test_acl_gives_devices_only_their_own_topics() -> None:
    reg = _registry(
        _ident("lamp", "device", skills={"get": "read", "on": "actuate"}),
        _ident("heater", "device", skills={"get": "read", "set": "actuate"}, grants=["lamp/on"]),
    )
    acl = acl_text(reg)
    blocks = acl.split("\nuser ")
    lamp = next(b for b in blocks if b.startswith("lamp\n"))
    heater = next(b for b in blocks if b.startswith("heater\n"))
    assert "topic write edgeagent/home/dev/lamp/manifest" in lamp
    assert "edgeagent/home/dev/heater/" not in lamp
    assert "topic write edgeagent/home/dev/lamp/call/on" in heater  # its grant
    assert "topic write edgeagent/home/dev/+/call/on" not in heater
    # Patterns (every identity) never write a device's own topics.
    patterns = [line for line in acl.splitlines() if line.startswith("pattern")]
    assert not [p for p in patterns if p.endswith(("/state", "/manifest", "/health"))
                and "write" in p]  # fmt: skip
    assert "pattern write edgeagent/home/dev/+/call/get" in patterns  # read on every device
    assert not [p for p in patterns if p.endswith(("/call/on", "/call/set", "/call/+"))]
    # A device whose skills are unknown: read skills are opened device by device.
    reg.identities.append(_ident("mystery", "device"))
    patterns = [line for line in acl_text(reg).splitlines() if line.startswith("pattern")]
    assert "pattern write edgeagent/home/dev/lamp/call/get" in patterns
    assert "pattern write edgeagent/home/dev/heater/call/get" in patterns
    assert not [p for p in patterns if "/dev/+/call/" in p or "mystery" in p]
    assert "pattern readwrite edgeagent/home/client/%c/#" in patterns


def test_coordinator_read_skills_are_read_on_every_device() -> None:
    reg = _registry(
        _ident("a", "device", skills={"get": "read", "toggle": "read"}),
        _ident("b", "device", skills={"get": "read", "toggle": "actuate"}),
    )
    assert coord_read_skills(reg) == ["get"]
    assert "pattern write edgeagent/home/coord/call/toggle" not in acl_text(reg)
    assert "pattern write edgeagent/home/dev/a/call/toggle" in acl_text(reg)


def test_revoked_identities_get_no_rules_and_no_password() -> None:
    reg = _registry(
        _ident("ops", "operator", revoked=True),
        _ident("pw", "client", auth="password", password_hash="$7$101$x$y", revoked=True),
        _ident("lamp", "device", revoked=True, skills={"get": "read"}),
        _ident("ok", "client", auth="password", password_hash="$7$101$a$b", grants=["on"]),
    )
    acl = acl_text(reg)
    assert "user ops" not in acl
    assert "user lamp" not in acl
    assert "dev/lamp/call/get" not in acl
    assert "user ok\ntopic write edgeagent/home/dev/+/call/on" in acl
    assert passwd_text(reg) == "ok:$7$101$a$b\n"


def test_mosquitto_conf_requires_certificates_and_names_every_file() -> None:
    files = BrokerFiles.under("/etc/mosquitto/ea")
    certs_only = render(_registry(_ident("lamp", "device")), files, BrokerSettings(port=9883))
    conf = certs_only["mosquitto.conf"]
    for line in (
        "allow_anonymous false",
        "per_listener_settings false",
        "acl_file /etc/mosquitto/ea/acl",
        "listener 9883",
        "require_certificate true",
        "use_identity_as_username true",
        "crlfile /etc/mosquitto/ea/crl.pem",
        "cafile /etc/mosquitto/ea/ca.crt",
    ):
        assert line in conf.splitlines(), line
    assert "password_file" not in conf
    assert "passwd" not in certs_only
    with_pw = render(
        _registry(_ident("u", "client", auth="password", password_hash="$7$1$a$b")), files
    )
    assert "password_file /etc/mosquitto/ea/passwd" in with_pw["mosquitto.conf"]
    assert "listener 8884" in with_pw["mosquitto.conf"]
    assert with_pw["passwd"] == "u:$7$1$a$b\n"


def test_registry_rejects_bad_names_and_grants() -> None:
    with pytest.raises(ValueError, match="identity name"):
        _ident("x/+/#", "device")
    with pytest.raises(ValueError, match="skill in grant"):
        _ident("ok", "client", grants=["lamp/#"])
    with pytest.raises(ValueError, match="role"):
        _ident("ok", "boss")


# --------------------------------------------------------------------------------------------
# The CLI


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_init_enroll_revoke_and_broker_config(tmp_path: Path) -> None:
    d = str(tmp_path / "fleet")
    res = _cli("--fleet", "home", "fleet", "init", "--dir", d, "--broker-host", "hub.lan")
    assert res.exit_code == 0, res.output
    assert oct((tmp_path / "fleet" / "ca.key").stat().st_mode & 0o777) == "0o600"
    res = _cli("fleet", "init", "--dir", d)
    assert res.exit_code == 1
    assert "--force" in res.output
    config = str(EXAMPLES / "lamp-kitchen.yaml")
    enroll = ("fleet", "enroll")
    res = _cli(
        *enroll, "lamp-kitchen", "--role", "device", "--config", config, "--dir", d, "--json"
    )
    assert res.exit_code == 0, res.output
    done = json.loads(res.output)
    assert done["skills"]["turn_on"] == "actuate"
    assert done["skills"]["get_state"] == "read"
    assert done["url"] == "mqtts://hub.lan:8883"
    key = Path(done["folder"]) / "lamp-kitchen.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    res = _cli("fleet", "enroll", "lamp-hall", "--role", "device", "--config", config, "--dir", d)
    assert res.exit_code == 2
    assert "'lamp-kitchen', not 'lamp-hall'" in res.output
    res = _cli("fleet", "enroll", "bad/name", "--role", "device", "--dir", d)
    assert res.exit_code == 1
    assert "invalid device id" in res.output
    res = _cli(*enroll, "kid", "--role", "client", "--grant", "turn_on", "--password", "--dir", d)
    assert res.exit_code == 0, res.output
    out = tmp_path / "broker"
    res = _cli("broker", "config", "--fleet-dir", d, "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert {Path(f).name for f in json.loads(res.output)["files"]} == {
        "ca.crt", "broker.crt", "broker.key", "crl.pem", "mosquitto.conf", "acl", "passwd",
    }  # fmt: skip
    assert "user kid\ntopic write edgeagent/home/dev/+/call/turn_on" in (out / "acl").read_text()
    crl_before = (out / "crl.pem").read_bytes()
    res = _cli("fleet", "revoke", "lamp-kitchen", "--dir", d)
    assert res.exit_code == 0, res.output
    assert (out / "crl.pem").read_bytes() != crl_before  # rewritten where it was written
    assert "user lamp-kitchen" not in (out / "acl").read_text()
    res = _cli("fleet", "identities", "--dir", d, "--json")
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["lamp-kitchen"]["revoked"]
    assert not rows["kid"]["revoked"]
    res = _cli("fleet", "revoke", "nobody", "--dir", d)
    assert res.exit_code == 1
    assert "no identity 'nobody'" in res.output


def test_cli_without_a_fleet_says_to_run_init(tmp_path: Path) -> None:
    env = {"EDGEAGENT_FLEET_DIR": str(tmp_path / "missing")}
    for args in (("fleet", "identities"), ("broker", "config"), ("fleet", "revoke", "x")):
        res = _cli(*args, env=env)
        assert res.exit_code == 1
        assert "run `edgeagent fleet init`" in res.output, args


def test_reenrolment_retires_the_old_certificate(tmp_path: Path) -> None:
    fd = FleetDir.create(tmp_path / "f", fleet="home")
    first = fd.enroll("lamp", "device")
    with pytest.raises(ConfigError, match="already enrolled"):
        fd.enroll("lamp", "device")
    second = fd.enroll("lamp", "device", force=True)
    assert first.identity.serial != second.identity.serial
    assert first.identity.serial in fd.registry.retired
    again = FleetDir.open(tmp_path / "f")
    assert again.registry.get("lamp") == second.identity


def test_cli_uses_an_identitys_broker_yaml(secure: SecureBroker) -> None:
    """`--broker-config` takes the broker.yaml `fleet enroll` wrote: the operator's CLI can call
    an actuate skill on the secured broker; a client identity's CLI cannot."""
    import sys

    def cli(identity: str, *args: str) -> subprocess.CompletedProcess[str]:
        cfg = secure.fleet.identity_dir(identity) / "broker.yaml"
        assert cfg.exists(), cfg
        return subprocess.run(
            [sys.executable, "-m", "edgeagent", "--broker-config", str(cfg), "--fleet", FLEET,
             *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    async def main() -> None:
        agent = DeviceAgent(_lamp_config(secure.broker_config("lamp-a"), "lamp-a"))
        async with asyncio.timeout(60), agent:
            ok = await asyncio.to_thread(
                cli, "ops", "call", "lamp-a", "set_brightness", '{"level": 55}', "--timeout", "5"
            )
            assert ok.returncode == 0, ok.stderr
            assert json.loads(ok.stdout) == {"on": True, "brightness": 55}
            refused = await asyncio.to_thread(
                cli, "phone", "call", "lamp-a", "set_brightness", '{"level": 5}', "--timeout", "2"
            )
            assert refused.returncode != 0
            assert "timeout" in refused.stderr
            read = await asyncio.to_thread(cli, "phone", "call", "lamp-a", "get_state")
            assert read.returncode == 0, read.stderr
            assert json.loads(read.stdout)["brightness"] == 55

    asyncio.run(main())


def test_demo_runs_on_a_secured_broker() -> None:
    """`edgeagent demo --secure`: every agent, the coordinator and the tour connect with their
    own certificate to a broker enforcing the ACL, and the whole tour still works."""
    import sys

    need_mosquitto()
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", "demo", "--secure"],
        cwd=root, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "secured mosquitto at mqtts://127.0.0.1:" in done.stdout
    # A rule's actuation (the coordinator's identity) and an operator's call both went through.
    assert 'lamp-hall -> {"on": true, "brightness": 80}' in done.stdout
    assert "on lamp-hall (the only candidate)" in done.stdout
    assert "Stopped 7 agents and the coordinator" in done.stdout
