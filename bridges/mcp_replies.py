"""Tool calls and their replies, pure: arguments in, a call plan or a reply out.

:func:`split_arguments` turns a tool call's arguments into the skill input and the tag filter
(or a :class:`~edgeagent.errors.BadRequest`); :func:`output_reply`, :func:`error_reply`,
:func:`devices_reply` and :func:`ask_reply` turn what the fleet said into a :class:`ToolReply`
(text, structured content, error flag, meta), which the shell renders as a ``CallToolResult``.
Nothing here imports ``mcp``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgeagent.errors import BadRequest, CallError
from edgeagent.fleet_view import DeviceInfo
from edgeagent.protocol import OPERATOR_PREFIXES
from edgeagent.results import AskResult

from .mcp_tools import McpLimits, ToolDef

__all__ = [
    "ROUTE_META",
    "ToolReply",
    "ask_reply",
    "devices_reply",
    "error_reply",
    "explain_route",
    "output_reply",
    "parse_where",
    "split_arguments",
]

#: The ``_meta`` key a routed call's full routing record travels under (when small enough).
ROUTE_META = "edgeagent/route"
#: Longest tag key or value in a ``where`` filter (a topic level's bound).
MAX_TAG_CHARS = 128
#: Largest routing record or error details passed through (JSON bytes).
MAX_META_BYTES = 4_096


@dataclass(frozen=True, slots=True)
class ToolReply:
    """What a tool call returns, before the SDK's types."""

    text: str
    structured: dict[str, Any] | None = None
    is_error: bool = False
    note: str | None = None
    """A second, short text (the routing explanation)."""
    meta: dict[str, Any] | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _clip(value: Any, limit: int = MAX_META_BYTES) -> Any:
    """``value`` if its JSON fits in ``limit`` bytes, else a note saying how large it was."""
    size = len(_dumps(value).encode())
    return value if size <= limit else {"clipped": f"{size} bytes (limit {limit})"}


def parse_where(value: Any, limits: McpLimits) -> dict[str, str]:
    """A tag filter from a tool argument: an object of strings (numbers and booleans are
    accepted as their text), bounded, with no ``,`` or ``=`` (the wire's separators)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"where must be an object of tag values, not {type(value).__name__}")
    if len(value) > limits.max_where_pairs:
        raise BadRequest(f"where has {len(value)} tags; at most {limits.max_where_pairs}")
    where: dict[str, str] = {}
    for key, raw in value.items():
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        if not isinstance(raw, str | int | float):
            raise BadRequest(f"where.{key} must be a string, not {type(raw).__name__}")
        text = str(raw)
        for part in (key, text):
            if not part or len(part) > MAX_TAG_CHARS or "," in part or "=" in part:
                raise BadRequest(
                    f"where.{key[:MAX_TAG_CHARS]}: tag keys and values are 1-{MAX_TAG_CHARS} "
                    "characters without ',' or '='"
                )
        where[key] = text
    return where


def split_arguments(
    tool: ToolDef, arguments: dict[str, Any] | None, limits: McpLimits
) -> tuple[Any, dict[str, str]]:
    """The skill's input and the tag filter from a tool call's arguments (BadRequest if the
    filter is malformed; the input itself is checked by the device against its schema)."""
    args = dict(arguments or {})
    where = parse_where(args.pop(tool.where_arg, None), limits) if tool.where_arg else {}
    if tool.wrapped_input:
        if "input" not in args:
            raise BadRequest(f"{tool.name} needs its input in the 'input' argument")
        return args.pop("input"), where
    return args, where


def explain_route(route: dict[str, Any]) -> str:
    """One line on how a call was routed: the device that answered, the attempts, what was
    passed over and why."""
    attempts = route.get("attempts") or []
    parts = []
    if attempts:
        tried = ", ".join(
            f"{a.get('device')} {a.get('outcome')}"
            + (f" {a['ms']:.0f} ms" if isinstance(a.get("ms"), int | float) else "")
            for a in attempts[:8]
        )
        parts.append(f"attempts: {tried}")
    rejected: dict[str, str] = {}
    for decision in route.get("decisions") or []:
        if isinstance(decision, dict):
            rejected.update(decision.get("rejected") or {})
    if rejected:
        shown = list(rejected.items())[:8]
        parts.append("passed over: " + ", ".join(f"{d} ({why})" for d, why in shown))
    return "routed by the coordinator; " + ("; ".join(parts) or "no routing record")


def output_reply(tool: ToolDef, output: Any, route: dict[str, Any], limits: McpLimits) -> ToolReply:
    """A skill's output as the tool's result: structured content (the output, or
    ``{"result": output}`` when it is not an object) and the same as JSON text."""
    text = _dumps(output)
    size = len(text.encode())
    note = explain_route(route)
    if size > limits.max_output_bytes:
        return ToolReply(
            text=f"internal: the skill ran ({note}) but its output of {size} bytes exceeds "
            f"the MCP bridge's limit of {limits.max_output_bytes} bytes",
            structured={"error": {"code": "internal", "message": "output too large"}},
            is_error=True,
        )
    structured = (
        {"result": output} if tool.wrapped_output or not isinstance(output, dict) else output
    )
    return ToolReply(text=text, structured=structured, note=note, meta={ROUTE_META: _clip(route)})


def error_reply(exc: CallError) -> ToolReply:
    """A typed call error as an MCP tool error: ``code: message`` and the same structured."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details:
        error["details"] = _clip(exc.details)
    note = explain_route(exc.route) if exc.route else None
    return ToolReply(text=f"{exc.code}: {exc.message}", structured={"error": error},
                     is_error=True, note=note)  # fmt: skip


def _device_entry(info: DeviceInfo) -> dict[str, Any]:
    manifest = info.manifest
    return {
        "device": info.device,
        "status": info.status,
        "tags": info.tags,
        "profile": manifest.profile if manifest else None,
        "release": manifest.release if manifest else None,
        "skills": [s.name for s in info.skills if not s.name.startswith(OPERATOR_PREFIXES)],
    }


def devices_reply(
    devices: Iterable[DeviceInfo], where: dict[str, str], online_only: bool, limits: McpLimits
) -> ToolReply:
    """``fleet_devices``: every device (or those matching ``where``), bounded."""
    chosen = [
        d for d in sorted(devices, key=lambda d: d.device)
        if all(d.tags.get(k) == v for k, v in where.items()) and (d.online or not online_only)
    ]  # fmt: skip
    listed = [_device_entry(d) for d in chosen[: limits.max_listed_devices]]
    body = {"devices": listed, "count": len(chosen), "truncated": len(chosen) > len(listed)}
    lines = [
        f"{e['device']}: {e['status']}; tags "
        + (", ".join(f"{k}={v}" for k, v in sorted(e["tags"].items())) or "none")
        + "; skills "
        + (", ".join(e["skills"]) or "none")
        for e in listed
    ]
    more = [f"... and {len(chosen) - len(listed)} more"] if body["truncated"] else []
    return ToolReply(text="\n".join(lines + more) or "no devices", structured=body)


def ask_reply(result: AskResult) -> ToolReply:
    """``ask``: what was understood and done, or the question back when nothing was done."""
    if result.interpretation is not None:
        reading = result.interpretation
        body: dict[str, Any] = {
            "done": True,
            "skill": reading.skill,
            "input": reading.input,
            "where": reading.where,
            "mode": reading.mode,
            "output": result.output,
            "understood": reading.explanation,
        }
        text = f"done: {reading.skill} {_dumps(reading.input)}"
        if reading.where:
            text += " where " + ", ".join(f"{k}={v}" for k, v in sorted(reading.where.items()))
        return ToolReply(text=f"{text} -> {_dumps(result.output)}", structured=_clip(body, 65_536))
    unsure = result.unsure
    question = getattr(unsure, "question", None)
    reason = getattr(unsure, "reason", "not understood")
    candidates = [
        {"skill": c.skill, "input": c.input, "where": c.where, "confidence": c.confidence}
        for c in getattr(unsure, "candidates", [])[:3]
    ]
    body = {"done": False, "question": question, "reason": reason, "candidates": candidates}
    text = "nothing was done: " + (question or reason)
    return ToolReply(text=text, structured=body)
