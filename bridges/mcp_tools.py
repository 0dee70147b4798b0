"""The fleet as MCP tools, pure: devices (their manifests and states) in, tool definitions out.

No I/O and no ``mcp`` import: :func:`build_tools` turns what :meth:`edgeagent.Fleet.devices`
returns into a :class:`ToolSet`, and the shell (:mod:`edgeagent.bridges.mcp_server`) renders it
with the SDK. Comparing two tool sets says whether ``notifications/tools/list_changed`` is due.

The rules:

- every skill offered by at least one *online* device is one tool, however many devices offer
  it (the coordinator routes each call); ``system.*`` and ``data.*`` skills are never tools;
- the tool name is the skill name made safe for every MCP client (``[A-Za-z0-9_-]``, at most 64
  characters: dots become ``_``); names that would collide, or clash with the built-in tools
  (``fleet_devices``, ``ask``), get a short hash of the skill name appended;
- the input schema is the skill's own (object) schema plus an optional tag filter; the filter is
  named ``where`` unless the skill has a field of that name, then ``where_tags``, then
  ``_where`` (:data:`WHERE_NAMES`). A skill whose input is not an object schema is wrapped:
  ``{"input": <its input>, "where": {...}}``;
- read skills are ``readOnlyHint``, actuate skills ``destructiveHint``; ``idempotentHint`` is
  the manifest's;
- everything is bounded (:class:`McpLimits`): tools, schema bytes, description length.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgeagent.fleet_view import DeviceInfo
from edgeagent.protocol import OPERATOR_PREFIXES, SkillSpec

__all__ = [
    "BUILTIN_TOOLS",
    "WHERE_NAMES",
    "McpLimits",
    "ToolDef",
    "ToolSet",
    "build_tools",
    "tool_names",
]

#: The tools the bridge always offers, besides the skills.
BUILTIN_TOOLS = ("fleet_devices", "ask")
#: The name of the tag-filter argument: the first one that is not a field of the skill's input.
WHERE_NAMES = ("where", "where_tags", "_where")
#: Longest tool name (the strictest common client limit; MCP itself allows 128).
MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class McpLimits:
    """Every bound the MCP bridge puts on what the fleet (outside input) can grow."""

    max_tools: int = 256
    """Skill tools listed; skills past it (by name) are left out and logged."""
    max_schema_bytes: int = 16_384
    """Largest input or output schema passed through (JSON bytes); a larger input schema is
    replaced by a permissive one (the device still checks the input)."""
    max_description_chars: int = 1_024
    """Longest tool description."""
    max_devices_named: int = 8
    """Devices named in a tool's description (the rest are counted)."""
    max_tag_values: int = 16
    """Tag values listed per tag key in the ``where`` description."""
    max_output_bytes: int = 65_536
    """Largest skill output returned (JSON bytes); larger is a tool error."""
    max_listed_devices: int = 500
    """Devices ``fleet_devices`` returns at most."""
    max_where_pairs: int = 16
    """Tag filters one call may give."""
    max_text_chars: int = 1_000
    """Longest ``ask`` text."""


@dataclass(frozen=True, slots=True)
class ToolDef:
    """One skill as an MCP tool (rendered by the shell into ``mcp_types.Tool``)."""

    name: str
    skill: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    read_only: bool
    destructive: bool
    idempotent: bool
    where_arg: str
    """The argument holding the tag filter (``where`` unless the skill has such a field)."""
    wrapped_input: bool
    """The skill's input travels as the ``input`` argument (its schema is not an object)."""
    wrapped_output: bool
    """The output is returned as ``{"result": output}`` (it is not an object)."""
    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ToolSet:
    """The skill tools of one moment of the fleet; equal sets need no list_changed."""

    tools: tuple[ToolDef, ...] = ()
    left_out: tuple[str, ...] = field(default=(), compare=False)
    """Skills past :attr:`McpLimits.max_tools`."""

    def get(self, name: str) -> ToolDef | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None


def _safe(skill: str) -> str:
    return _UNSAFE.sub("_", skill)[:MAX_NAME] or "_"


def _hashed(skill: str) -> str:
    digest = hashlib.sha256(skill.encode()).hexdigest()[:8]
    return f"{_safe(skill)[: MAX_NAME - 9]}_{digest}"


def tool_names(skills: Iterable[str]) -> dict[str, str]:
    """Skill name -> tool name: safe, at most 64 characters, unique, none of the built-ins.

    A skill keeps its own (made safe) name unless another skill would get the same one or it
    is a built-in tool's; then every such skill gets a hash of its full name appended. The
    result depends on the set of names only, not their order.
    """
    skills = sorted(set(skills))
    counts: dict[str, int] = {}
    for s in skills:
        counts[_safe(s)] = counts.get(_safe(s), 0) + 1
    taken = set(BUILTIN_TOOLS)
    names: dict[str, str] = {}
    for s in skills:
        plain = _safe(s)
        names[s] = plain if counts[plain] == 1 and plain not in taken else _hashed(s)
    return names


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def _is_object_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" and isinstance(schema.get("properties", {}), dict)


def _tag_values(infos: list[DeviceInfo], limits: McpLimits) -> dict[str, list[str]]:
    values: dict[str, set[str]] = {}
    for info in infos:
        for key, value in info.tags.items():
            values.setdefault(key, set()).add(value)
    return {k: sorted(v)[: limits.max_tag_values] for k, v in sorted(values.items())}


def _where_schema(tags: dict[str, list[str]]) -> dict[str, Any]:
    known = "; ".join(f"{k}: {', '.join(v)}" for k, v in tags.items()) or "none"
    return {
        "type": "object",
        "description": "Optional: only devices whose tags have these values, e.g. "
        f'{{"room": "kitchen"}}. Tags of the devices offering it: {known}.',
        "additionalProperties": {"type": "string"},
    }


def _input_schema(
    spec: SkillSpec, tags: dict[str, list[str]], limits: McpLimits
) -> tuple[dict[str, Any], str, bool]:
    """The tool's input schema, the tag filter's argument name, whether the input is wrapped."""
    schema = spec.input_schema
    if _size(schema) > limits.max_schema_bytes:
        schema = {"type": "object", "description": "(schema too large to list)"}
    if not _is_object_schema(schema):
        return (
            {
                "type": "object",
                "properties": {"input": schema, "where": _where_schema(tags)},
                "required": ["input"],
            },
            "where",
            True,
        )
    props: dict[str, Any] = dict(schema.get("properties", {}))
    where_arg = next((n for n in WHERE_NAMES if n not in props), None)
    if where_arg is None:  # every spelling is a field: no tag filter for this skill
        return dict(schema), "", False
    props[where_arg] = _where_schema(tags)
    return {**schema, "properties": props}, where_arg, False


def _output_schema(specs: list[SkillSpec], limits: McpLimits) -> tuple[dict[str, Any] | None, bool]:
    """The declared output schema (None when devices disagree or it is too large), and
    whether the output is wrapped as ``{"result": ...}``."""
    schema = specs[0].output_schema
    wrapped = not _is_object_schema(schema)
    if any(s.output_schema != schema for s in specs[1:]) or _size(schema) > limits.max_schema_bytes:
        return None, wrapped
    if wrapped:
        return {"type": "object", "properties": {"result": schema}, "required": ["result"]}, True
    return schema, False


def _describe(spec: SkillSpec, infos: list[DeviceInfo], where_arg: str, limits: McpLimits) -> str:
    named = []
    for info in infos[: limits.max_devices_named]:
        tags = ", ".join(f"{k}={v}" for k, v in sorted(info.tags.items()))
        named.append(f"{info.device} ({tags})" if tags else info.device)
    more = len(infos) - len(named)
    offered = ", ".join(named) + (f" and {more} more" if more > 0 else "")
    effect = "Reads; changes nothing." if spec.side_effect == "read" else "Changes the world."
    text = (
        f"{spec.description or spec.name} {effect} Offered by {len(infos)} online "
        f"device(s): {offered}. The fleet's coordinator picks one (and fails over)."
    )
    if where_arg:
        text += f" Choose devices by tag with `{where_arg}`."
    if len(text) > limits.max_description_chars:
        text = text[: limits.max_description_chars - 1] + "…"
    return text


def _tool(
    name: str, skill: str, offers: list[tuple[DeviceInfo, SkillSpec]], limits: McpLimits
) -> ToolDef:
    infos = [info for info, _ in offers]
    specs = [spec for _, spec in offers]
    spec = specs[0]  # the first device by name speaks for the schema
    schema, where_arg, wrapped_in = _input_schema(spec, _tag_values(infos, limits), limits)
    output_schema, wrapped_out = _output_schema(specs, limits)
    read = spec.side_effect == "read"
    return ToolDef(
        name=name,
        skill=skill,
        description=_describe(spec, infos, where_arg, limits),
        input_schema=schema,
        output_schema=output_schema,
        read_only=read,
        destructive=not read,
        idempotent=all(s.idempotent for s in specs),
        where_arg=where_arg,
        wrapped_input=wrapped_in,
        wrapped_output=wrapped_out,
        devices=tuple(info.device for info in infos),
    )


def build_tools(devices: Iterable[DeviceInfo], limits: McpLimits | None = None) -> ToolSet:
    """The skill tools for ``devices`` (see the module docstring for the rules)."""
    limits = limits or McpLimits()
    offers: dict[str, list[tuple[DeviceInfo, SkillSpec]]] = {}
    for info in sorted(devices, key=lambda d: d.device):
        if not info.online or info.manifest is None:
            continue
        for spec in info.skills:
            if not spec.name.startswith(OPERATOR_PREFIXES):
                offers.setdefault(spec.name, []).append((info, spec))
    skills = sorted(offers)
    kept, left_out = skills[: limits.max_tools], skills[limits.max_tools :]
    names = tool_names(kept)
    tools = tuple(_tool(names[s], s, offers[s], limits) for s in kept)
    return ToolSet(tools=tools, left_out=tuple(left_out))
