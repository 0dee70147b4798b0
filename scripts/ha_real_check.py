"""The body of scripts/ha-real-check: a real Home Assistant driving the fleet through the bridge.

Usage: .venv/bin/python scripts/ha_real_check.py /path/to/hass
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeagent.localbroker import Mosquitto  # noqa: E402
from tests.agents import running_agent  # noqa: E402

FLEET = "hacheck"
AUTOMATIONS = """
- id: lamp_on
  alias: lamp on at 37 percent
  triggers: [{trigger: time_pattern, seconds: "/5"}]
  conditions: [{condition: state, entity_id: light.lamp_hall, state: "off"}]
  actions: [{action: light.turn_on, target: {entity_id: light.lamp_hall},
             data: {brightness_pct: 37}}]
- id: thermostat_target
  alias: thermostat to 22.5
  triggers: [{trigger: time_pattern, seconds: "/5"}]
  conditions: [{condition: template, value_template:
    "{{ states('climate.thermostat_living') not in ('unknown', 'unavailable')
        and state_attr('climate.thermostat_living', 'temperature') != 22.5 }}"}]
  actions: [{action: climate.set_temperature, target: {entity_id: climate.thermostat_living},
             data: {temperature: 22.5}}]
"""


def ha_config(folder: Path, port: int) -> None:
    (folder / ".storage").mkdir(parents=True)
    (folder / "configuration.yaml").write_text(
        "homeassistant:\n  name: check\n  unit_system: metric\n  time_zone: UTC\n"
        "automation: !include automations.yaml\nlogger:\n  default: warning\n"
        "  logs: {homeassistant.components.mqtt: info}\n"
    )
    (folder / "automations.yaml").write_text(AUTOMATIONS)
    entry = {
        "entry_id": "edgeagentcheckmqtt",
        "version": 1,
        "minor_version": 1,
        "domain": "mqtt",
        "title": "127.0.0.1",
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
        "data": {"broker": "127.0.0.1", "port": port, "discovery": True},
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
    }
    store = {
        "version": 1,
        "minor_version": 1,
        "key": "core.config_entries",
        "data": {"entries": [entry]},
    }
    (folder / ".storage" / "core.config_entries").write_text(json.dumps(store))


def edgeagent(*args: str, url: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "edgeagent.cli", "--broker", url, "--fleet", FLEET, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def wait(check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got = check()
        except (subprocess.CalledProcessError, ValueError, KeyError, OSError):
            got = None
        if got:
            return got
        time.sleep(2)
    return None


def main(hass: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples" / "smart-home")}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="ha-check-") as tmp:
        broker = stack.enter_context(Mosquitto())
        url = broker.url
        for device in ("lamp-hall", "thermostat-living"):
            stack.enter_context(running_agent(f"{device}.yaml", url, FLEET, device))
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeagent.cli",
                "--broker",
                url,
                "--fleet",
                FLEET,
                "--log-level",
                "info",
                "bridge",
                "run",
                "--ha",
                "--ha-poll",
                "5",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        stack.callback(bridge.wait, 15)
        stack.callback(bridge.send_signal, signal.SIGTERM)
        folder = Path(tmp) / "config"
        ha_config(folder, int(url.rsplit(":", 1)[1]))
        log = open(Path(tmp) / "hass.out", "wb")  # noqa: SIM115
        stack.callback(log.close)
        started = time.monotonic()
        ha = subprocess.Popen([hass, "-c", str(folder), "--skip-pip"], stdout=log, stderr=log)
        stack.callback(ha.wait, 60)
        stack.callback(ha.send_signal, signal.SIGTERM)
        lamp = wait(
            lambda: (
                (s := edgeagent("call", "lamp-hall", "get_state", url=url))
                and s["brightness"] == 37
                and s
            ),
            240,
        )
        print(f"lamp after HA's automation: {lamp} ({time.monotonic() - started:.0f} s)")
        thermo = wait(
            lambda: (
                (s := edgeagent("call", "thermostat-living", "read_temperature", url=url))
                and s["target"] == 22.5
                and s
            ),
            60,
        )
        print(f"thermostat after HA's automation: {thermo}")
        time.sleep(12)  # HA writes its registries with a delay
        registry = folder / ".storage" / "core.entity_registry"
        entities = []
        if registry.exists():
            data = json.loads(registry.read_text())["data"]["entities"]
            entities = sorted(e["entity_id"] for e in data if e["platform"] == "mqtt")
        print("entities Home Assistant created:", ", ".join(entities) or "none")
        ha.send_signal(signal.SIGTERM)  # on stop it saves every entity's last state
        ha.wait(60)
        restore = folder / ".storage" / "core.restore_state"
        states = {}
        if restore.exists():
            for item in json.loads(restore.read_text())["data"]:
                states[item["state"]["entity_id"]] = item["state"]
        for entity in ("light.lamp_hall",):  # MQTT climates do not save a last state
            st = states.get(entity, {})
            attrs = {
                k: v
                for k, v in st.get("attributes", {}).items()
                if k
                in (
                    "brightness",
                    "color_mode",
                    "current_temperature",
                    "temperature",
                    "hvac_action",
                    "min_temp",
                    "max_temp",
                )
            }
            print(f"Home Assistant's last state of {entity}: {st.get('state')} {attrs}")
        log.flush()
        text = (Path(tmp) / "hass.out").read_text(errors="replace")
        errors = [
            line
            for line in text.splitlines()
            if ("ERROR" in line or "WARNING" in line) and "mqtt" in line.lower()
        ]
        print(f"HA log lines mentioning mqtt at WARNING/ERROR: {len(errors)}")
        for line in errors[:20]:
            print("  ", line[:300])
        ok = bool(lamp and thermo and entities)
        print("RESULT:", "ok" if ok else "FAILED")
        if not ok:
            print(text[-4000:])
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
