"""LoRA adapters for the zoo's tiny LLM: the committed LoRA base is the plain model token for
token, an adapter trained on a household's plans (through the CLI) raises the household's
held-out exact-plan accuracy, another base's adapter is refused, and the skill runs with it in
a real agent over a private mosquitto."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeagent import AgentConfig, DeviceAgent, Fleet
from edgeagent.cli import main
from edgeagent.models.llm_adapt import generate_plans, to_example
from edgeagent.models.llm_backend import load_llm
from edgeagent.models.llm_lora_base import LORA_DIR, make_lora_base, make_lora_folder
from edgeagent.models.llm_plan_examples import load_plan_examples
from edgeagent.models.llm_process import LlmProcess
from edgeagent.models.lora_adapter import AdapterMismatch, read_meta
from edgeagent.models.lora_examples import ExamplesError
from edgeagent.models.lora_llm import base_digest
from edgeagent.models.zoo import llm_recipes
from edgeagent.models.zoo.tinyllm_data import examples

og = pytest.importorskip("onnxruntime_genai")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
HOUSEHOLD = ROOT / "examples" / "adapters" / "llm-household.yaml"
HELD_OUT = ROOT / "examples" / "adapters" / "llm-household-heldout.yaml"
PLAIN = llm_recipes()["tinyllm"].model_dir
BASE = PLAIN / LORA_DIR
MARGIN = 0.15
"""The least gain in held-out exact-plan accuracy the adapter must bring (measured: +29 points,
12.5% -> 41.7%, benchmarks/bench_llm_adapter.py)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One adapter trained end to end through the CLI (the slow part, done once)."""
    out = tmp_path_factory.mktemp("llmadapt") / "house.onnx_adapter"
    res = CliRunner().invoke(
        main,
        ["models", "adapt", "zoo:tinyllm", "--examples", str(HOUSEHOLD), "-o", str(out),
         "--held-out", str(HELD_OUT), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"path": out, "report": json.loads(res.output)}


def _tokens(folder: Path, texts: list[str]) -> list[list[int]]:
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    out = []
    for text in texts:
        chat = examples("test", 1, 0)[0].chat()
        chat[1]["content"] = text
        ids = tok.encode(tok.apply_chat_template(json.dumps(chat), add_generation_prompt=True))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 64, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        out.append(list(gen.get_sequence(0)))
    return out


def test_the_lora_base_is_the_plain_model_and_is_reproducible(tmp_path: Path) -> None:
    texts = [e.text for e in examples("test", 8, 3)] + ["crank the whirly to 3"]
    assert _tokens(BASE, texts) == _tokens(PLAIN, texts)
    # made from the committed model.onnx, byte for byte (the recipe writes it the same way)
    again = make_lora_folder(PLAIN, tmp_path / "lora")
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (BASE / name).read_bytes(), name
    total = sum(p.stat().st_size for p in PLAIN.rglob("*") if p.is_file())
    assert total < 700_000, "the tiny model and its LoRA base ship in every device's wheel"


def test_the_adapter_teaches_the_household_idioms(trained: dict[str, Any]) -> None:
    report = trained["report"]
    held = report["held_out"]
    assert held["n"] == 24
    assert held["adapted"] >= held["base"] + MARGIN, held
    assert report["examples"]["adapted"] >= report["examples"]["base"] + 2 * MARGIN
    meta = read_meta(trained["path"])
    assert (meta.base, meta.rank, meta.examples) == ("tinyllm", 8, 40)
    assert meta.base_sha256 == base_digest(BASE)
    assert meta.targets == tuple(
        sorted(f"model.layers.{i}.attn.{p}" for i in range(2) for p in ("qkv_proj", "o_proj"))
    )
    assert report["bytes"] < 0.3 * (PLAIN / "model.onnx").stat().st_size


def test_a_session_with_the_adapter_uses_it_on_every_generation(trained: dict[str, Any]) -> None:
    held = [to_example(e) for e in load_plan_examples(HELD_OUT)][:6]
    want = generate_plans(BASE, held, trained["path"])
    llm = load_llm("zoo:tinyllm", adapter=trained["path"])
    plain = load_llm("zoo:tinyllm")
    got = [llm.generate(e.chat(), max_tokens=160).text for e in held]
    assert got == [w.strip() for w in want]
    assert got != [plain.generate(e.chat(), max_tokens=160).text for e in held]
    assert llm.generate(held[0].chat(), max_tokens=160).text == got[0]  # still active


def test_an_adapter_for_another_base_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(BASE, other)
    make_lora_base(PLAIN / "model.onnx", other / "model.onnx", targets=("o_proj",))
    with pytest.raises(AdapterMismatch, match="made for base 'tinyllm'"):
        load_llm(other, adapter=trained["path"])
    with pytest.raises(AdapterMismatch, match="made for base 'tinyllm'"):  # across the pipe too
        LlmProcess(other, adapter=trained["path"])


@pytest.mark.broker
def test_the_skill_runs_the_adapter_from_its_options(
    trained: dict[str, Any], broker_url: str, fleet_name: str
) -> None:
    ask = next(e.chat() for e in map(to_example, load_plan_examples(HELD_OUT)[:1]))
    want = generate_plans(BASE, [to_example(load_plan_examples(HELD_OUT)[0])], trained["path"])

    async def run() -> None:
        options = {"model": "zoo:tinyllm", "adapter": str(trained["path"])}
        cfg = AgentConfig(
            device="assistant",
            fleet=fleet_name,
            broker={"url": broker_url},
            skills=[{"module": "edgeagent.models.llm_skill:LlmSkillSet", "options": options}],
        )
        agent = DeviceAgent(cfg)
        spec = {s.name: s for s in agent.manifest().skills}["generate"]
        assert (spec.model, spec.model_version) == ("tinyllm", "1+adapter:house")
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            out = await fleet.call(
                "assistant", "generate", {"messages": ask, "max_tokens": 160, "stream": False}
            )
            assert out["text"] == want[0].strip()
            status = await fleet.call("assistant", "llm_status", {})
            assert status["version"] == "1+adapter:house"

    asyncio.run(run())


def test_plan_examples_name_the_file_line_and_valid_skills(tmp_path: Path) -> None:
    bad = tmp_path / "plans.yaml"
    bad.write_text(
        "- {text: pop on the whirly, steps: [{skill: turn_on, where: {kind: fan}}]}\n"
        "- {text: warm up, steps: [{skill: heat_up, where: {kind: thermostat}}]}\n"
    )
    with pytest.raises(ExamplesError, match=r"plans.yaml:2: .*unknown skill 'heat_up'; valid: "):
        load_plan_examples(bad)
    bad.write_text(
        "- {text: pop on the whirly, steps: [{skill: turn_on, where: {floor: first}}]}\n"
    )
    with pytest.raises(ExamplesError, match="unknown where key 'floor'"):
        load_plan_examples(bad)
    res = CliRunner().invoke(
        main, ["models", "adapt", "zoo:tinyllm", "--examples", str(bad), "-o", str(tmp_path / "x")]
    )
    assert res.exit_code == 1
    assert "error: " in res.output
    assert "floor" in res.output
    assert not (tmp_path / "x").exists()
