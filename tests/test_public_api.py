"""The public API is the sorted __all__ of the package root, and the README's snippets run."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import edgeagent
from edgeagent import AgentConfig, DeviceAgent
from edgeagent.skills import SkillSet, collect_skills

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_all_is_sorted_and_complete() -> None:
    exported = edgeagent.__all__
    assert exported == sorted(exported)
    public = {
        name
        for name, value in vars(edgeagent).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("edgeagent")
        and not isinstance(value, type(edgeagent))
    }
    assert public <= set(exported), f"public but not in __all__: {sorted(public - set(exported))}"
    for name in exported:
        assert hasattr(edgeagent, name), name


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_skill_snippet_defines_working_skills() -> None:
    (block,) = [b for b in _python_blocks() if "class Lamp(SkillSet)" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    lamp = namespace["Lamp"]()
    assert isinstance(lamp, SkillSet)
    (skill,) = collect_skills(lamp)
    assert skill.name == "set_brightness"
    assert skill.spec.side_effect == "actuate"
    assert skill.spec.input_schema["properties"]["level"]["maximum"] == 100


@pytest.mark.broker
def test_readme_client_snippet_runs_against_a_real_agent(broker_url: str) -> None:
    (block,) = [b for b in _python_blocks() if "async with Fleet(" in b]
    code = block.replace("mqtt://127.0.0.1:1883", broker_url)
    body = "async def snippet():\n" + textwrap.indent(code, "    ") + "    return state\n"
    namespace: dict[str, Any] = {}
    exec(compile(body, "README.md", "exec"), namespace)
    cfg = AgentConfig(
        device="lamp-kitchen",
        fleet="home",
        broker={"url": broker_url},
        skills=[{"module": "smarthome.lamp:Lamp"}],
    )

    async def main() -> Any:
        async with DeviceAgent(cfg):
            return await namespace["snippet"]()

    assert asyncio.run(main()) == {"on": True, "brightness": 40}


def test_typed_call_api() -> None:
    """``call_skill(explain=True)`` gives a CallResult that still unpacks as ``(output, route)``;
    routing is chosen per Fleet or per call; the fleet view's sync is public."""
    import inspect
    import typing

    from edgeagent import CallMode, CallResult, Fleet, RouteVia

    result = CallResult({"on": True}, {"decisions": [], "attempts": []})
    out, route = result
    assert (out, route) == (result.output, result.route)
    assert CallResult._fields == ("output", "route")
    assert typing.get_args(RouteVia) == ("coordinator", "local")
    assert typing.get_args(CallMode) == ("one", "all")
    params = inspect.signature(Fleet.call_skill).parameters
    assert params["via"].default is None
    assert inspect.signature(Fleet).parameters["route"].default == "coordinator"
    assert inspect.iscoroutinefunction(Fleet.sync)
    with pytest.raises(ValueError, match="route must be"):
        Fleet("mqtt://127.0.0.1:1", route="nearby")  # type: ignore[arg-type]
