"""The LLM skill served by a real agent over a private mosquitto, with the zoo's tiny model."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from edgeagent import AgentConfig, BadRequest, DeviceAgent, Fleet
from edgeagent.models.llm_folder import resolve_llm
from edgeagent.protocol import Event, decode
from edgeagent.transport import Inbound

pytestmark = pytest.mark.broker

MODEL = os.environ.get("EDGEAGENT_TEST_LLM", "zoo:tinyllm")
ASK = [{"role": "user", "content": "turn off the kitchen lights"}]
LONG = {"type": "array", "items": {"type": "integer"}, "minItems": 400, "maxItems": 400}
"""A schema whose valid outputs are all long: the model cannot end early (the tiny model's
context is 512 tokens: these generations run to max_tokens)."""


def assistant(url: str, fleet: str) -> DeviceAgent:
    cfg = AgentConfig(
        device="assistant",
        fleet=fleet,
        broker={"url": url},
        skills=[
            {
                "module": "edgeagent.models.llm_skill:LlmSkillSet",
                "options": {"model": MODEL, "max_tokens_limit": 480, "stream_interval_ms": 5},
            },
            {"module": "smarthome.echo"},
        ],
        health_interval_s=0.5,
    )
    return DeviceAgent(cfg)


async def partial_events(fleet: Fleet) -> list[Event]:
    """Every ``partial`` event of the fleet from now on (subscribed when this returns)."""
    seen: list[Event] = []

    def on_event(msg: Inbound) -> None:
        event = decode(msg.payload)
        assert isinstance(event, Event)
        seen.append(event)

    await fleet.transport.subscribe(fleet.topics.all_events("partial"), on_event)
    return seen


async def joined(events: list[Event], trace: str, want: str) -> str:
    """The partial texts of call ``trace`` in seq order, once they add up (or after 2 s)."""
    text = ""
    for _ in range(200):
        mine = sorted((e.data for e in events if e.data["trace"] == trace), key=lambda d: d["seq"])
        assert [d["seq"] for d in mine] == list(range(len(mine)))
        text = "".join(d["text"] for d in mine)
        if text == want:
            break
        await asyncio.sleep(0.01)
    return text


def test_generate_streams_partial_events_that_join_to_the_reply(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        agent = assistant(broker_url, fleet_name)
        spec = {s.name: s for s in agent.manifest().skills}["generate"]
        resolved = resolve_llm(MODEL)
        assert (spec.model, spec.model_version) == (resolved.name, resolved.version)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            events = await partial_events(fleet)
            out = await fleet.call(
                "assistant", "generate", {"messages": ASK, "max_tokens": 48}, trace="t-1"
            )
            assert out["text"]
            assert out["tokens"] >= 1
            assert out["finish_reason"] in ("stop", "length")
            assert out["events"] >= 1
            assert await joined(events, "t-1", out["text"]) == out["text"]
            again = await fleet.call(
                "assistant",
                "generate",
                {"messages": ASK, "max_tokens": 48, "stream": False},
                trace="t-2",
            )
            assert again["text"] == out["text"]  # greedy: the same text
            assert again["events"] == 0
            await asyncio.sleep(0.1)
            assert not [e for e in events if e.data["trace"] == "t-2"]

    asyncio.run(main())


def test_json_output_through_the_skill(broker_url: str, fleet_name: str) -> None:
    schema = {
        "type": "object",
        "properties": {"on": {"type": "boolean"}},
        "required": ["on"],
        "additionalProperties": False,
    }

    async def main() -> None:
        async with assistant(broker_url, fleet_name), Fleet(broker_url, fleet=fleet_name) as fleet:
            out = await fleet.call(
                "assistant",
                "generate",
                {
                    "prompt": "lights:",
                    "max_tokens": 32,
                    "json_schema": schema,
                    "seed": 3,
                    "temperature": 1.0,
                },
            )
            assert isinstance(json.loads(out["text"])["on"], bool)

    asyncio.run(main())


def test_the_agent_keeps_serving_while_the_model_generates(
    broker_url: str, fleet_name: str
) -> None:
    """A burst of long generations (one runs, the others queue) while another skill and the
    model's status are called: they are answered before the generations end."""
    body = {"prompt": "numbers:", "max_tokens": 480, "json_schema": LONG, "stream": False}

    async def main() -> tuple[int, list[bool], list[dict[str, Any]]]:
        async with assistant(broker_url, fleet_name), Fleet(broker_url, fleet=fleet_name) as fleet:
            calls = [
                asyncio.create_task(fleet.call("assistant", "generate", body, timeout=60))
                for _ in range(5)
            ]
            echoed = 0
            busy: list[bool] = []
            while not all(c.done() for c in calls):
                assert await fleet.call("assistant", "echo", {"data": "hi"}) == "hi"
                status = await fleet.call("assistant", "llm_status")
                pending = not all(c.done() for c in calls)
                echoed += pending
                busy.append(status["busy"] and pending)
            return echoed, busy, [await c for c in calls]

    echoed, busy, outs = asyncio.run(main())
    assert [o["tokens"] for o in outs] == [480] * 5  # the schema allows no early end
    assert echoed >= 3  # answered while the model was generating
    assert any(busy)


def test_bad_requests_are_refused_with_the_reason(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        async with assistant(broker_url, fleet_name), Fleet(broker_url, fleet=fleet_name) as fleet:
            with pytest.raises(BadRequest, match="exactly one of 'prompt' or 'messages'"):
                await fleet.call("assistant", "generate", {"prompt": "x", "messages": ASK})
            with pytest.raises(BadRequest, match=r"max_tokens must be within 1\.\.480"):
                await fleet.call("assistant", "generate", {"prompt": "x", "max_tokens": 600})
            with pytest.raises(BadRequest, match="role"):
                await fleet.call(
                    "assistant", "generate", {"messages": [{"role": "robot", "content": "x"}]}
                )
            with pytest.raises(BadRequest, match=r"stop\[0\]"):
                await fleet.call("assistant", "generate", {"prompt": "x", "stop": ["y" * 65]})
            out = await fleet.call("assistant", "generate", {"prompt": "x", "max_tokens": 2})
            assert out["tokens"] <= 2

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_cancelled_call_stops_its_generation_and_frees_the_model() -> None:
    from edgeagent.models.llm_skill import GenerateRequest, LlmSkillSet
    from edgeagent.skills import SkillContext

    skills = LlmSkillSet(MODEL, max_tokens_limit=480)
    req = GenerateRequest(prompt="numbers:", max_tokens=480, json_schema=LONG)

    async def main() -> None:
        first = asyncio.Event()

        def emit(name: str, data: object = None) -> None:
            first.set()

        ctx = SkillContext("d", "generate", "t", None, emit, logging.getLogger("test"))
        call = asyncio.create_task(skills.generate(req, ctx))
        await first.wait()  # the first token is out: cancel the call now
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(200):
            if not skills.llm_status().busy:
                break
            await asyncio.sleep(0.01)
        assert not skills.llm_status().busy
        short = GenerateRequest(prompt="numbers:", max_tokens=4)
        out = await skills.generate(short, ctx)
        assert out.tokens <= 4

    try:
        asyncio.run(main())
    finally:
        skills.close()
    # The cancelled generation never finished: only the short one is counted.
    assert skills.llm.statistics().generations == 1


def test_the_llm_assistant_example_streams_its_answer(broker_url: str) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "llm_assistant.py"
    spec = importlib.util.spec_from_file_location("llm_assistant_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pieces: list[str] = []
    model = None if MODEL == "zoo:tinyllm" else MODEL  # the YAML's model is the tiny one
    out = asyncio.run(
        example.ask(broker_url, "turn off the kitchen lights", model=model, on_piece=pieces.append)
    )
    assert out["tokens"] >= 1
    assert "".join(pieces) == out["text"]
    assert len(pieces) == out["events"]
