"""End to end: real agent processes, a real mosquitto, our CLI and clients we did not write."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agents import Retained, agent_cmd, port_of, running_agent
from tests.broker.mosquitto import Mosquitto

pytestmark = pytest.mark.broker

RR = shutil.which("mosquitto_rr")
SUB = shutil.which("mosquitto_sub")


def cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_cli_call_and_typed_errors(
    broker_url: str, fleet_name: str, cli_env: dict[str, str]
) -> None:
    with running_agent("lamp-kitchen.yaml", broker_url, fleet_name, "lamp-kitchen"):
        ok = cli(
            "--fleet",
            fleet_name,
            "call",
            "lamp-kitchen",
            "set_brightness",
            '{"level": 35}',
            env=cli_env,
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == {"on": True, "brightness": 35}

        state = cli("--fleet", fleet_name, "call", "lamp-kitchen", "get_state", env=cli_env)
        assert json.loads(state.stdout) == {"on": True, "brightness": 35}

        bad = cli(
            "--fleet",
            fleet_name,
            "call",
            "lamp-kitchen",
            "set_brightness",
            '{"level": 101}',
            env=cli_env,
        )
        assert bad.returncode == 2
        assert bad.stderr.startswith("error: bad_request:")
        assert "level" in bad.stderr

        missing = cli("--fleet", fleet_name, "call", "lamp-kitchen", "dance", env=cli_env)
        assert missing.returncode == 2
        assert "not_found" in missing.stderr
        assert "set_brightness" in missing.stderr

        nobody = cli("--fleet", fleet_name, "call", "ghost", "x", "--timeout", "1", env=cli_env)
        assert nobody.returncode == 2
        assert "not_found" in nobody.stderr  # at once: it never announced itself
        assert "no device 'ghost'" in nobody.stderr

        not_json = cli(
            "--fleet", fleet_name, "call", "lamp-kitchen", "set_brightness", "{level", env=cli_env
        )
        assert not_json.returncode != 0
        assert "not valid JSON" in not_json.stderr


@pytest.mark.skipif(RR is None or SUB is None, reason="mosquitto-clients not installed")
def test_foreign_mqtt5_client_calls_a_skill(broker_url: str, fleet_name: str) -> None:
    """mosquitto_rr, with nothing but the documented protocol, calls a skill."""
    assert RR is not None  # the skipif above
    assert SUB is not None
    port = str(port_of(broker_url))
    base = f"edgeagent/{fleet_name}/dev/lamp-kitchen"
    with running_agent("lamp-kitchen.yaml", broker_url, fleet_name, "lamp-kitchen"):
        rr = subprocess.run(
            [
                RR,
                "-V",
                "5",
                "-p",
                port,
                "-t",
                f"{base}/call/set_brightness",
                "-e",
                f"rr/{fleet_name}/reply",
                "-m",
                '{"level": 12}',
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert rr.returncode == 0, rr.stderr
        assert json.loads(rr.stdout) == {"type": "ok", "output": {"on": True, "brightness": 12}}

        err = subprocess.run(
            [
                RR,
                "-V",
                "5",
                "-p",
                port,
                "-t",
                f"{base}/call/set_brightness",
                "-e",
                f"rr/{fleet_name}/reply",
                "-m",
                "not json",
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        reply = json.loads(err.stdout)
        assert reply["type"] == "error"
        assert reply["code"] == "bad_request"

        # mosquitto_sub sees the retained state and manifest.
        sub = subprocess.run(
            [
                SUB,
                "-V",
                "5",
                "-p",
                port,
                "-t",
                f"{base}/state",
                "-t",
                f"{base}/manifest",
                "-C",
                "2",
                "-W",
                "5",
                "-v",
                "--retained-only",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        lines = dict(line.split(" ", 1) for line in sub.stdout.strip().splitlines())
        assert json.loads(lines[f"{base}/state"])["status"] == "online"
        manifest = json.loads(lines[f"{base}/manifest"])
        assert manifest["device"] == "lamp-kitchen"
        assert manifest["tags"] == {"room": "kitchen", "kind": "lamp"}
        specs = {s["name"]: s for s in manifest["skills"]}
        assert specs["set_brightness"]["input_schema"]["properties"]["level"]["maximum"] == 100
        assert specs["toggle"]["idempotent"] is False
        assert specs["get_state"]["side_effect"] == "read"


def test_sigkill_publishes_offline_through_last_will(broker_url: str, fleet_name: str) -> None:
    topic = f"edgeagent/{fleet_name}/dev/doorbell-front/state"
    watch = Retained(broker_url, topic)
    try:
        with running_agent("doorbell-front.yaml", broker_url, fleet_name, "doorbell-front") as proc:
            watch.wait_for(topic, "status", "online")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            doc = watch.wait_for(topic, "status", "offline", timeout=20)
            assert doc["reason"] == "connection lost"  # the will, not a clean shutdown
    finally:
        watch.close()


def test_sigterm_drains_and_publishes_offline(broker_url: str, fleet_name: str) -> None:
    topic = f"edgeagent/{fleet_name}/dev/lamp-hall/state"
    watch = Retained(broker_url, topic)
    try:
        with running_agent("lamp-hall.yaml", broker_url, fleet_name, "lamp-hall") as proc:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            doc = watch.wait_for(topic, "status", "offline")
            assert doc["reason"] == "stopped"
        statuses = [json.loads(p)["status"] for t, p in watch.history if t == topic and p]
        assert statuses[-2:] == ["draining", "offline"]
    finally:
        watch.close()


def test_agent_reconnects_and_reannounces_after_broker_restart(
    restartable_broker: Mosquitto, fleet_name: str, cli_env: dict[str, str]
) -> None:
    url = restartable_broker.url
    env = {**cli_env, "EDGEAGENT_BROKER": url}
    with running_agent("lamp-kitchen.yaml", url, fleet_name, "lamp-kitchen"):
        restartable_broker.restart(down_s=0.5)  # persistence off: retained messages are gone
        watch = Retained(url, f"edgeagent/{fleet_name}/dev/lamp-kitchen/+")
        try:
            watch.wait_for(
                f"edgeagent/{fleet_name}/dev/lamp-kitchen/state", "status", "online", timeout=30
            )
            manifest = watch.wait_for(
                f"edgeagent/{fleet_name}/dev/lamp-kitchen/manifest", "device", "lamp-kitchen"
            )
            skills = manifest["skills"]
            assert isinstance(skills, list)
            assert {s["name"] for s in skills} >= {"turn_on", "set_brightness"}
        finally:
            watch.close()
        ok = cli("--fleet", fleet_name, "call", "lamp-kitchen", "turn_on", env=env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["on"] is True


def test_fleet_ls_and_watch(broker_url: str, fleet_name: str, cli_env: dict[str, str]) -> None:
    with (
        running_agent("lamp-kitchen.yaml", broker_url, fleet_name, "lamp-kitchen"),
        running_agent("thermostat-living.yaml", broker_url, fleet_name, "thermostat-living"),
    ):
        ls = cli("--fleet", fleet_name, "fleet", "ls", "--json", env=cli_env)
        assert ls.returncode == 0, ls.stderr
        rows = {r["device"]: r for r in json.loads(ls.stdout)}
        assert set(rows) == {"lamp-kitchen", "thermostat-living"}
        assert rows["thermostat-living"]["status"] == "online"
        assert rows["thermostat-living"]["tags"] == {"room": "living", "kind": "thermostat"}
        assert "read_temperature" in rows["thermostat-living"]["skills"]

        table = cli("--fleet", fleet_name, "fleet", "ls", env=cli_env)
        assert "lamp-kitchen" in table.stdout
        assert "STATUS" in table.stdout

        show = cli(
            "--fleet", fleet_name, "fleet", "show", "thermostat-living", "--json", env=cli_env
        )
        assert json.loads(show.stdout)["skills"][0]["name"] in {"read_temperature", "set_target"}

        # watch: retained manifests and states first, then live updates; 4 + 1 health at least.
        started = time.monotonic()
        watch = cli(
            "--fleet",
            fleet_name,
            "fleet",
            "watch",
            "--json",
            "--count",
            "5",
            env=cli_env,
            timeout=60,
        )
        assert watch.returncode == 0, watch.stderr
        kinds = [json.loads(line)["type"] for line in watch.stdout.splitlines()]
        assert kinds.count("manifest") == 2
        assert kinds.count("state") == 2
        assert "health" in kinds
        assert time.monotonic() - started < 45


def test_agent_rejects_bad_config_with_file_line_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("device: lamp\nskils:\n  - module: smarthome.lamp:Lamp\n")
    proc = subprocess.run(
        agent_cmd(str(cfg), "mqtt://127.0.0.1:1", "x"), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert f"{cfg}:2: skils: unknown field" in proc.stderr
    assert "skills: Field required" in proc.stderr


def test_bad_broker_url_is_one_clear_line_without_the_password(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "EDGEAGENT_BROKER": "mqtt://me:hunter2@127.0.0.1:99999"}
    for args in (["fleet", "ls"], ["call", "a", "b"]):
        proc = cli(*args, env=env)
        assert proc.returncode == 1
        assert proc.stderr == (
            "error: broker URL 'mqtt://me:***@127.0.0.1:99999' has an invalid port\n"
        )
    refused = cli("--broker", "mqtt://127.0.0.1:1", "fleet", "ls", env=cli_env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: cannot connect to MQTT broker at mqtt://127.0.0.1:1")
