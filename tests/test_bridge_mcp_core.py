"""The MCP server's pure core, without a broker: manifests -> tools (names, schemas, the tag
filter, annotations, bounds), arguments, and replies (outputs, typed errors, devices, ask)."""

from __future__ import annotations

from typing import Any

import pytest

from edgeagent.bridges.mcp_replies import (
    ask_reply,
    devices_reply,
    error_reply,
    explain_route,
    output_reply,
    parse_where,
    split_arguments,
)
from edgeagent.bridges.mcp_tools import McpLimits, ToolDef, build_tools, tool_names
from edgeagent.errors import (
    BadRequest,
    Busy,
    CallError,
    CallTimeout,
    InternalError,
    NotFound,
    Unavailable,
)
from edgeagent.fleet_view import DeviceInfo
from edgeagent.nlu import Unsure
from edgeagent.protocol import Manifest, SkillSpec
from edgeagent.results import AskResult

OBJ = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}


def spec(name: str, *, effect: str = "actuate", idem: bool = True, **kw: Any) -> SkillSpec:
    fields: dict[str, Any] = {
        "name": name, "description": f"does {name}", "side_effect": effect, "idempotent": idem,
        "input_schema": {"type": "object", "properties": {"level": {"type": "integer"}}},
        "output_schema": OBJ, "max_concurrency": 1, "max_queue": 1, "timeout_s": 1.0,
    }  # fmt: skip
    fields.update(kw)
    return SkillSpec(**fields)


def device(name: str, skills: list[SkillSpec], status: str = "online", **tags: str) -> DeviceInfo:
    manifest = Manifest(device=name, fleet="f", tags=tags, skills=skills, max_payload=1000,
                        agent_version="0")  # fmt: skip
    return DeviceInfo(device=name, status=status, manifest=manifest, skills=tuple(skills))


def test_one_tool_per_skill_name_online_only_no_system_skills() -> None:
    lamp = [spec("set_brightness"), spec("get_state", effect="read"), spec("system.info")]
    tools = build_tools(
        [
            device("lamp-k", lamp, room="kitchen"),
            device("lamp-h", lamp, room="hall"),
            device("lamp-x", [*lamp, spec("only_offline")], status="offline", room="attic"),
        ]
    )
    assert [t.name for t in tools.tools] == ["get_state", "set_brightness"]
    sb = tools.get("set_brightness")
    assert sb is not None
    assert sb.devices == ("lamp-h", "lamp-k")
    assert (sb.read_only, sb.destructive, sb.idempotent) == (False, True, True)
    gs = tools.get("get_state")
    assert gs is not None
    assert (gs.read_only, gs.destructive) == (True, False)
    # the skill's own fields plus the tag filter, whose description names the known values
    assert set(sb.input_schema["properties"]) == {"level", "where"}
    assert "hall, kitchen" in sb.input_schema["properties"]["where"]["description"]
    assert "attic" not in sb.description
    assert "lamp-h (room=hall)" in sb.description
    assert sb.output_schema == OBJ


def test_where_argument_never_clashes_with_a_skill_field() -> None:
    clash = spec("find", input_schema={"type": "object", "properties": {"where": {}}})
    two = {"type": "object", "properties": {"where": {}, "where_tags": {}}}
    both = spec("find2", input_schema=two)
    raw = spec("classify", input_schema={"type": "string"}, output_schema={"type": "integer"})
    tools = build_tools([device("d", [clash, both, raw])])
    find, find2, classify = (tools.get(n) for n in ("find", "find2", "classify"))
    assert find is not None
    assert find.where_arg == "where_tags"
    assert set(find.input_schema["properties"]) == {"where", "where_tags"}
    assert find2 is not None
    assert find2.where_arg == "_where"
    assert classify is not None
    assert classify.wrapped_input
    assert classify.wrapped_output
    assert classify.input_schema["required"] == ["input"]
    assert classify.output_schema == {
        "type": "object", "properties": {"result": {"type": "integer"}}, "required": ["result"]
    }  # fmt: skip
    value, where = split_arguments(find, {"where": "the attic", "where_tags": {"room": "k"}},
                                   McpLimits())  # fmt: skip
    assert (value, where) == ({"where": "the attic"}, {"room": "k"})
    assert split_arguments(classify, {"input": "hi"}, McpLimits()) == ("hi", {})
    with pytest.raises(BadRequest, match="input"):
        split_arguments(classify, {}, McpLimits())


def test_tool_names_are_safe_unique_and_avoid_the_builtins() -> None:
    names = tool_names(["vision.detect", "vision_detect", "ask", "x" * 100, "plain"])
    assert names["plain"] == "plain"
    assert names["vision.detect"] != names["vision_detect"]
    assert all(n.startswith("vision_detect_") for k, n in names.items() if "vision" in k)
    assert names["ask"].startswith("ask_")
    assert len(names["x" * 100]) == 64
    for name in names.values():
        assert len(name) <= 64
        assert name.replace("_", "").replace("-", "").isalnum()
    # the same set of skills gives the same names in any order
    assert tool_names(reversed(list(names))) == names


def test_bounds_on_tools_and_schemas() -> None:
    many = [spec(f"s{i:03d}") for i in range(20)]
    huge = spec("huge", input_schema={"type": "object", "properties": {
        f"f{i}": {"type": "string", "description": "x" * 100} for i in range(50)}})  # fmt: skip
    tools = build_tools([device("d", [*many, huge])], McpLimits(max_tools=5, max_schema_bytes=2000))
    assert len(tools.tools) == 5
    assert len(tools.left_out) == 16
    tools = build_tools([device("d", [huge])], McpLimits(max_schema_bytes=2000))
    (tool,) = tools.tools
    assert set(tool.input_schema["properties"]) == {"where"}  # permissive: the device checks


def test_where_filters_are_checked() -> None:
    limits = McpLimits(max_where_pairs=2)
    assert parse_where({"room": "kitchen", "floor": 1}, limits) == {"room": "kitchen", "floor": "1"}
    for bad in ("kitchen", {"room": ["a"]}, {"a": "1", "b": "2", "c": "3"}, {"room": "a,b"},
                {"ro=om": "a"}, {"room": ""}):  # fmt: skip
        with pytest.raises(BadRequest):
            parse_where(bad, limits)


@pytest.mark.parametrize(
    "cls", [BadRequest, NotFound, Busy, CallTimeout, Unavailable, InternalError]
)
def test_call_errors_become_tool_errors_with_their_code(cls: type[CallError]) -> None:
    exc = cls("went wrong", details={"field": "level"})
    exc.route = {"attempts": [{"device": "lamp-k", "outcome": "busy", "ms": 3.0}]}
    reply = error_reply(exc)
    assert reply.is_error
    assert reply.text == f"{cls.code}: went wrong"
    assert reply.structured == {"error": {"code": cls.code, "message": "went wrong",
                                          "details": {"field": "level"}}}  # fmt: skip
    assert reply.note is not None
    assert "lamp-k busy 3 ms" in reply.note


def tool_of(output_schema: dict[str, Any] | None, wrapped: bool = False) -> ToolDef:
    return ToolDef(name="t", skill="t", description="", input_schema={},
                   output_schema=output_schema, read_only=True, destructive=False,
                   idempotent=True, where_arg="where", wrapped_input=False,
                   wrapped_output=wrapped, devices=("d",))  # fmt: skip


def test_outputs_become_structured_content_text_and_a_route_note() -> None:
    route = {"decisions": [{"chosen": "lamp-k", "rejected": {"lamp-h": "tags room=hall≠kitchen"}}],
             "attempts": [{"device": "lamp-k", "outcome": "ok", "ms": 4.2}]}  # fmt: skip
    reply = output_reply(tool_of(OBJ), {"on": True}, route, McpLimits())
    assert not reply.is_error
    assert reply.structured == {"on": True}
    assert reply.text == '{"on":true}'
    assert reply.note == ("routed by the coordinator; attempts: lamp-k ok 4 ms; "
                          "passed over: lamp-h (tags room=hall≠kitchen)")  # fmt: skip
    assert reply.meta == {"edgeagent/route": route}
    assert output_reply(tool_of(None, wrapped=True), 7, {}, McpLimits()).structured == {"result": 7}
    big = output_reply(tool_of(OBJ), {"x": "y" * 500}, route, McpLimits(max_output_bytes=100))
    assert big.is_error
    assert "exceeds" in big.text
    assert "lamp-k" in big.text
    assert explain_route({}) == "routed by the coordinator; no routing record"


def test_fleet_devices_and_ask_replies() -> None:
    devices = [device(f"d{i}", [spec("s"), spec("system.info")], room="k" if i % 2 else "h")
               for i in range(5)]  # fmt: skip
    devices.append(device("gone", [spec("s")], status="offline", room="k"))
    reply = devices_reply(devices, {"room": "k"}, False, McpLimits(max_listed_devices=2))
    assert reply.structured is not None
    assert [d["device"] for d in reply.structured["devices"]] == ["d1", "d3"]
    assert reply.structured["count"] == 3
    assert reply.structured["truncated"]
    assert reply.structured["devices"][0]["skills"] == ["s"]
    assert "1 more" in reply.text
    online = devices_reply(devices, {}, True, McpLimits()).structured
    assert online is not None
    assert online["count"] == 5
    unsure = Unsure(candidates=[], reason="two lamps match", question="Which one?")
    asked = ask_reply(AskResult(text="light", interpretation=None, unsure=unsure, output=None))
    assert asked.structured == {"done": False, "question": "Which one?",
                                "reason": "two lamps match", "candidates": []}  # fmt: skip
    assert asked.text == "nothing was done: Which one?"
    assert not asked.is_error
