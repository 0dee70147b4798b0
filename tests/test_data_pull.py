"""The data loop end to end: real agents keep hard cases, ``edgeagent data pull`` collects them
over a private mosquitto, pages, deduplicates, clears, reports offline devices and exports
training examples."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from pydantic import BaseModel

from edgeagent import AgentConfig, DeviceAgent, Fleet, SkillSet, skill
from edgeagent.cli import main
from edgeagent.config import SkillSource
from edgeagent.data_skills import KeepsHardCases
from edgeagent.models.zoo import RECIPES
from edgeagent.simulator.spec import FleetSpec

pytestmark = pytest.mark.broker

THRESHOLD = 0.9
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"


class Heard(BaseModel):
    intent: str
    confidence: float


class Speaker(KeepsHardCases, SkillSet):
    """A text skill that is never sure (every call is a low-confidence case)."""

    @skill(side_effect="read")
    def hear(self, text: str) -> Heard:
        out = Heard(intent="unknown", confidence=0.1)
        self.hard_cases.offer("hear", {"text": text}, out, confidence=out.confidence)
        return out


def agent(url: str, fleet: str, device: str, module: str, data: dict[str, Any]) -> DeviceAgent:
    cfg = AgentConfig(device=device, fleet=fleet, broker={"url": url}, skills=[{"module": module}],
                      data=data, tags={"room": "basement" if "meter" in device else "living"},
                      grace_s=0.5)  # fmt: skip
    return DeviceAgent(cfg)


def pull(url: str, fleet: str, *args: str) -> Result:
    res = CliRunner().invoke(main, ["--broker", url, "--fleet", fleet, "data", "pull", *args])
    assert res.exit_code == 0, res.output
    return res


async def pull_async(url: str, fleet: str, *args: str) -> dict[str, Any]:
    res = await asyncio.to_thread(pull, url, fleet, "--json", *args)
    manifest: dict[str, Any] = json.loads(res.stdout)
    return manifest


def noisy_digits(n: int) -> tuple[list[list[float]], list[int]]:
    held_out = RECIPES["digits"].make_eval(0)
    gen = np.random.default_rng(5)
    images = held_out["pixels"][:n] * 16.0 + gen.normal(0, 4.0, size=(n, 64))
    return np.clip(images, 0, 16).round(2).tolist(), held_out["labels"][:n].tolist()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_pull_collects_pages_clears_and_exports(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    images, truth = noisy_digits(60)
    meter_data = {"dir": str(tmp_path / "dev"), "skills": {"read_digit": {
        "reasons": ["low_confidence", "correction"], "confidence_below": THRESHOLD,
        "keep_raw": True}}}  # fmt: skip
    speaker_data = {"dir": str(tmp_path / "dev"), "skills": {"hear": {}}}
    out = tmp_path / "dataset"

    async def scenario() -> None:
        meter = agent(broker_url, fleet_name, "meter-1", "smarthome.meter:DigitReader", meter_data)
        speaker = agent(broker_url, fleet_name, "speaker-1", "tests.test_data_pull:Speaker",
                        speaker_data)  # fmt: skip
        gone = agent(broker_url, fleet_name, "meter-2", "smarthome.meter:DigitReader", meter_data)
        async with gone:  # announces itself, then stops: retained offline
            pass
        async with meter, speaker, Fleet(broker_url, fleet=fleet_name) as fleet:
            assert {"data.cases", "data.clear", "data.correct"} <= {
                s.name for s in meter.manifest().skills
            }
            readings = [await fleet.call("meter-1", "read_digit", {"pixels": p}) for p in images]
            unsure = [i for i, r in enumerate(readings) if r["confidence"] < THRESHOLD]
            assert 8 <= len(unsure) < len(images), len(unsure)  # enough to page, not all
            for text in ("switch the kitchen light on", "lock the front door", "hello there"):
                await fleet.call("speaker-1", "hear", {"text": text})

            first = await pull_async(broker_url, fleet_name, "-o", str(out), "--page", "3")
            devices = first["last_pull"]["devices"]
            assert devices["meter-2"]["status"] == "offline"
            assert devices["meter-1"]["new"] == len(unsure)
            assert devices["meter-1"]["pages"] >= math.ceil(len(unsure) / 3)
            assert devices["speaker-1"]["new"] == 3
            cases = lines(out / "cases.jsonl")
            assert len({c["id"] for c in cases}) == len(cases) == len(unsure) + 3
            kept = sorted(c["input"]["pixels"] for c in cases if c["skill"] == "read_digit")
            assert kept == sorted(images[i] for i in unsure)  # keep_raw: the pixels themselves
            assert {c["reason"] for c in cases} == {"low_confidence"}
            assert first["by_reason"] == {"low_confidence": len(unsure) + 3}

            # A second pull finds nothing new: the dataset deduplicates by case id.
            again = await pull_async(broker_url, fleet_name, "-o", str(out), "--skill", "hear")
            assert again["last_pull"]["new"] == 0
            assert again["cases"] == len(cases)

            # Corrections: by case id for the digits, by input for the text skill.
            for c in cases:
                if c["skill"] == "read_digit":
                    index = images.index(c["input"]["pixels"])
                    fix = {"case": c["id"], "label": truth[index]}
                    await fleet.call("meter-1", "data.correct", fix)
            await fleet.call("speaker-1", "data.correct", {"skill": "hear",
                "input": {"text": "switch the kitchen light on"},
                "label": {"intent": "turn_on", "kind": "light", "room": "kitchen"}})  # fmt: skip

            # Pull with --clear and the examples export.
            last = await pull_async(broker_url, fleet_name, "-o", str(out), "--clear",
                                    "--format", "examples", "--where", "room=basement")  # fmt: skip
            assert "speaker-1" not in last["last_pull"]["devices"]
            assert last["last_pull"]["devices"]["meter-1"]["new"] == len(unsure)
            assert last["last_pull"]["devices"]["meter-1"]["cleared"] == 2 * len(unsure)
            left = await fleet.call("meter-1", "data.cases", {})
            assert left["cases"] == []
            assert left["stored"] == 0
            assert (await fleet.call("speaker-1", "data.cases", {}))["stored"] == 4  # + correction
            # The text correction was not pulled (--where), so no text example yet.
            assert last["exports"]["examples.jsonl"] == 0
            assert last["exports"]["digits.npz"] == len(unsure)
            arrays = np.load(out / "digits.npz")
            assert arrays["pixels"].shape == (len(unsure), 64)
            assert arrays["pixels"].dtype == np.float32
            assert float(arrays["pixels"].max()) <= 1.0
            assert sorted(arrays["labels"].tolist()) == sorted(truth[i] for i in unsure)
            # …and `models optimize --eval` takes it for the digits model.
            import onnx

            from edgeagent.models.data import load_data, model_inputs
            from edgeagent.models.skillset import resolve_model

            inputs = model_inputs(onnx.load(resolve_model("zoo:digits").path))
            _, info = load_data(out / "digits.npz", "evaluation", inputs, labels=True)
            assert info.samples == len(unsure)

            # New cases after a clear get new seqs and are pulled.
            await fleet.call("meter-1", "read_digit", {"pixels": images[unsure[0]]})
            final = await pull_async(broker_url, fleet_name, "-o", str(out),
                                     "--format", "examples")  # fmt: skip
            assert final["last_pull"]["devices"]["meter-1"]["new"] == 1
            assert final["last_pull"]["devices"]["speaker-1"]["new"] == 1  # the correction
            assert lines(out / "examples.jsonl") == [
                {"text": "switch the kitchen light on", "intent": "turn_on", "kind": "light",
                 "room": "kitchen"}
            ]  # fmt: skip
            # What `models adapt` reads (its own loader checks labels against the vocabulary).
            from edgeagent.models.lora_examples import load_examples

            [example] = load_examples(out / "examples.jsonl")
            assert (example.intent, example.kind, example.room) == ("turn_on", "light", "kitchen")

    asyncio.run(scenario())


def test_a_device_that_stops_answering_is_reported(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    data = {"dir": str(tmp_path / "dev"), "skills": {"hear": {}}}

    async def scenario() -> dict[str, Any]:
        quiet = agent(broker_url, fleet_name, "speaker-q", "tests.test_data_pull:Speaker", data)
        ok = agent(broker_url, fleet_name, "speaker-ok", "tests.test_data_pull:Speaker", data)
        async with quiet, ok, Fleet(broker_url, fleet=fleet_name) as fleet:
            await fleet.call("speaker-ok", "hear", {"text": "open the blinds"})
            await quiet.transport.unsubscribe(quiet.topics.calls_filter("speaker-q"))  # hangs
            return await pull_async(broker_url, fleet_name, "-o", str(tmp_path / "d.jsonl"),
                                    "--timeout", "1")  # fmt: skip

    manifest = asyncio.run(scenario())
    devices = manifest["last_pull"]["devices"]
    assert devices["speaker-q"]["status"] == "unreachable"
    assert "no reply" in devices["speaker-q"]["error"]
    assert devices["speaker-ok"] == {"status": "pulled", "pages": 1, "received": 1, "new": 1}
    assert (tmp_path / "d.manifest.json").is_file()
    assert [c["input"]["text"] for c in lines(tmp_path / "d.jsonl")] == ["open the blinds"]


def test_random_sampling_is_seeded(tmp_path: Path) -> None:
    """The simulator's ``sampled`` cases replay with a seed (the keeper's rng is injected)."""
    from edgeagent.data_skills import CaseKeeper
    from edgeagent.models.hardcases import DataConfig, SkillPolicy

    cfg = DataConfig(skills={"hear": SkillPolicy(reasons=["sampled"], sample_rate=0.3)})

    def kept(folder: Path) -> list[int]:
        keeper = CaseKeeper("d", cfg, folder, rng=random.Random(11))
        ids = [keeper.offer("hear", {"text": str(i)}, None) for i in range(200)]
        return [i for i, cid in enumerate(ids) if cid is not None]

    a, b = kept(tmp_path / "a"), kept(tmp_path / "b")
    assert a == b
    assert 40 < len(a) < 80


SIM_SPEC = """\
name: hard-cases
fleet: {fleet}
seed: 4
duration_s: {duration}
groups:
  - name: meter
    count: 3
    profile: pi-zero-2w
    tags: {{kind: meter}}
    skills: [{{module: "smarthome.meter:DigitReader"}}]
    hard_cases: {{skill: read_digit, rate: 0.25}}
coordinator: {{replicas: 1}}
workload:
  - {{skill: read_digit, rate_per_s: {rate}, input_from: "smarthome.samples:digit_image"}}
"""


def sim_spec(fleet: str, duration: float, rate: float) -> FleetSpec:
    from edgeagent.simulator.spec import parse_spec

    text = SIM_SPEC.format(fleet=fleet, duration=duration, rate=rate)
    return parse_spec(text, source="cases.yaml", base_dir=EXAMPLES)


def kept_by_device(plan: Any) -> dict[str, int]:
    from edgeagent.data_skills import DataSkills

    return {
        d.id: next(s for s in d.sets if isinstance(s, DataSkills)).statistics().cases
        for d in plan.all_devices()
    }


def test_a_simulated_fleet_keeps_a_seeded_share_of_its_calls() -> None:
    from edgeagent.simulator.devices import build_fleet
    from edgeagent.simulator.runner import run_embedded

    runs = []
    for _ in range(2):
        plan = build_fleet(sim_spec("sim", 60, 8))
        report, _ = run_embedded(plan)
        runs.append((report["skills"]["read_digit"]["calls"], kept_by_device(plan)))
        assert plan.scratch is not None
        assert plan.scratch.is_dir()
    (calls, kept), (calls2, kept2) = runs
    assert (calls, kept) == (calls2, kept2)  # a seed replays which calls were kept
    assert 0.18 * calls < sum(kept.values()) < 0.32 * calls, (calls, kept)
    assert all(n > 0 for n in kept.values())


def test_hard_cases_must_name_a_skill_that_keeps_them() -> None:
    from edgeagent.errors import ConfigError
    from edgeagent.simulator.devices import build_fleet

    spec = sim_spec("sim", 10, 1)
    bad = spec.model_copy(deep=True)
    scenario = bad.groups[0].hard_cases
    assert scenario is not None
    scenario.skill = "read_digits"
    with pytest.raises(ConfigError, match=r"groups.0 \(meter\): hard_cases.skill.*read_digits"):
        build_fleet(bad)
    bad.groups[0].skills = [SkillSource(module="smarthome.echo")]
    scenario.skill = "echo"
    with pytest.raises(ConfigError, match="'echo' keeps no hard cases"):
        build_fleet(bad)


def test_data_pull_against_a_broker_mode_simulation(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    import threading
    import time

    from edgeagent.simulator import simulate

    done: dict[str, Any] = {}
    run = threading.Thread(
        target=lambda: done.update(r=simulate(sim_spec(fleet_name, 6, 20), broker=broker_url))
    )
    run.start()
    try:
        time.sleep(4.0)  # the fleet online and calls flowing: 2-3 s of the run done
        res = pull(broker_url, fleet_name, "--json", "-o", str(tmp_path / "sim"), "--page", "5")
    finally:
        run.join(timeout=60)
    manifest = json.loads(res.stdout)
    devices = manifest["last_pull"]["devices"]
    assert sorted(devices) == ["meter-1", "meter-2", "meter-3"]
    assert all(d["status"] == "pulled" for d in devices.values()), devices
    assert manifest["by_reason"] == {"sampled": manifest["cases"]}
    assert manifest["cases"] >= 3
    calls = done["r"].report["skills"]["read_digit"]["calls"]
    assert manifest["cases"] < 0.5 * calls
    for case in lines(tmp_path / "sim" / "cases.jsonl"):
        assert case["skill"] == "read_digit"
        assert "$raw" in case["input"]["pixels"]  # keep_raw is off in the scenario
