"""The example fleet's model skills, served by real agents over a real mosquitto."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from edgeagent import AgentConfig, BadRequest, DeviceAgent, Fleet
from edgeagent.models.skillset import resolve_model
from edgeagent.models.zoo import RECIPES, vibration

pytestmark = pytest.mark.broker


def agent(url: str, fleet: str, device: str, source: str, profile: str) -> DeviceAgent:
    cfg = AgentConfig(
        device=device,
        fleet=fleet,
        broker={"url": url},
        profile=profile,
        skills=[{"module": source, "options": {"profile": profile}}],
        health_interval_s=0.2,
    )
    return DeviceAgent(cfg)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_meter_reads_digits_it_never_trained_on(broker_url: str, fleet_name: str) -> None:
    held_out = RECIPES["digits"].make_eval(0)
    images = held_out["pixels"][:40] * 16.0  # back to the 0..16 scale the skill takes
    labels = held_out["labels"][:40]

    async def main() -> list[int]:
        # pi-zero-2w: the zoo ships the optimizer's choice for it (a LiteRT model).
        meter = agent(broker_url, fleet_name, "meter", "smarthome.meter:DigitReader", "pi-zero-2w")
        spec = meter.manifest().skills[0]
        assert (spec.model, spec.model_version) == ("digits", "1+litert-structured-50")
        assert resolve_model("zoo:digits", "pi-zero-2w").path.suffix == ".tflite"
        async with meter, Fleet(broker_url, fleet=fleet_name) as fleet:
            out = [
                await fleet.call("meter", "read_digit", {"pixels": img.tolist()}) for img in images
            ]
            with pytest.raises(BadRequest, match="pixels"):
                await fleet.call("meter", "read_digit", {"pixels": [0.0] * 63})
            for o in out:
                assert 0.0 <= o["confidence"] <= 1.0
            return [o["digit"] for o in out]

    digits = run(main())
    accuracy = float(np.mean(np.array(digits) == labels))
    assert accuracy >= 0.9, accuracy


def test_pump_flags_faulty_windows_and_passes_healthy_ones(
    broker_url: str, fleet_name: str
) -> None:
    gen = np.random.default_rng(7)
    healthy = vibration.simulate("healthy", 10, gen)
    bearing = vibration.simulate("bearing", 10, gen)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pump = agent(broker_url, fleet_name, "pump", "smarthome.pump:VibrationMonitor", "pi5")
        async with pump, Fleet(broker_url, fleet=fleet_name) as fleet:

            async def score(w: Any) -> dict[str, Any]:
                r: dict[str, Any] = await fleet.call(
                    "pump", "score_window", {"samples": w.tolist()}
                )
                return r

            return [await score(w) for w in healthy], [await score(w) for w in bearing]

    ok, bad = run(main())
    assert sum(r["anomalous"] for r in ok) <= 2
    assert sum(r["anomalous"] for r in bad) >= 8
    assert {r["threshold"] for r in ok} == {0.9}


def test_speaker_parses_commands_and_health_names_the_model(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> tuple[dict[str, Any], Any, Any]:
        spk = agent(broker_url, fleet_name, "spk", "smarthome.assistant:CommandParser", "pi5")
        async with spk, Fleet(broker_url, fleet=fleet_name) as fleet:
            parsed = await fleet.call(
                "spk", "parse_command", {"text": "please dim the bedroom light to 25 percent"}
            )
            info = await fleet.device("spk")
            health = None
            async for msg in fleet.watch():
                if msg.type == "health" and msg.skills["parse_command"].calls:
                    health = msg
                    break
            return parsed, info, health

    parsed, info, health = run(main())
    assert (parsed["intent"], parsed["kind"], parsed["room"]) == ("set_level", "light", "bedroom")
    assert (parsed["number"], parsed["unit"]) == (25.0, "percent")
    (spec,) = info.skills
    resolved = resolve_model("zoo:intent", "pi5")
    assert spec.model == "intent"
    assert spec.model_version == resolved.version
    stats = health.skills["parse_command"]
    assert (stats.model, stats.model_version) == (spec.model, spec.model_version)
    assert stats.p50_ms is not None
    assert stats.p50_ms > 0
