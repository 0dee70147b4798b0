"""Rules: templates (``{data.who}``) in a rule's call, compiled once and filled in per event.

Compiling at load time turns every malformed template into a :class:`RuleProblem` that names
the field; rendering at match time raises :class:`Unresolved` when the event lacks a path, so
the rule does not fire rather than call with a hole in its input.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .rules_paths import MISSING, EventPath, RuleProblem, is_list


class Unresolved(Exception):
    """A template's path is missing from the event."""


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{path}`` placeholders: literal text and paths, in order."""

    parts: tuple[str | EventPath, ...]

    @staticmethod
    def compile(text: str, field: str) -> str | Template:
        """A literal string (braces unescaped) or a template; raises :class:`RuleProblem`."""
        parts: list[str | EventPath] = []
        buf: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in "{}" and text.startswith(ch * 2, i):
                buf.append(ch)
                i += 2
            elif ch == "}":
                raise RuleProblem(f"{field}: unmatched '}}' in {text!r} (write '}}}}' for a brace)")
            elif ch == "{":
                end = text.find("}", i + 1)
                if end < 0:
                    raise RuleProblem(
                        f"{field}: unclosed '{{' in {text!r} (write '{{{{' for a brace)"
                    )
                inner = text[i + 1 : end]
                if not inner:
                    raise RuleProblem(f"{field}: empty placeholder '{{}}' in {text!r}")
                try:
                    path = EventPath.parse(inner)
                except RuleProblem as exc:
                    raise RuleProblem(f"{field}: template {text!r}: {exc}") from None
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(path)
                i = end + 1
            else:
                buf.append(ch)
                i += 1
        if buf:
            parts.append("".join(buf))
        if not any(isinstance(p, EventPath) for p in parts):
            return "".join(p for p in parts if isinstance(p, str))
        return Template(tuple(parts))

    def render(self, scope: Mapping[str, Any]) -> Any:
        values: list[Any] = []
        for part in self.parts:
            if isinstance(part, str):
                values.append(part)
                continue
            value = part.resolve(scope)
            if value is MISSING:
                raise Unresolved(part.text)
            values.append(value)
        if len(self.parts) == 1:  # exactly one placeholder: keep the type
            return copy.deepcopy(values[0])
        return "".join(as_text(v) for v in values)


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def compile_value(value: Any, field: str) -> Any:
    """Replace every string in a JSON-like value by its literal text or a :class:`Template`."""
    if isinstance(value, str):
        return Template.compile(value, field)
    if isinstance(value, Mapping):
        return {k: compile_value(v, f"{field}.{k}") for k, v in value.items()}
    if is_list(value):
        return [compile_value(v, f"{field}.{i}") for i, v in enumerate(value)]
    return value


def render_text(value: str | Template, scope: Mapping[str, Any], field: str) -> str:
    """A device id or tag value, template filled in; null counts as missing."""
    if isinstance(value, str):
        return value
    rendered = value.render(scope)
    if rendered is None:
        raise Unresolved(f"{field} (null)")
    return as_text(rendered)


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(value, Template):
        return value.render(scope)
    if isinstance(value, dict):
        return {k: render_value(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, scope) for v in value]
    return value
