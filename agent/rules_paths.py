"""Rules: dotted paths into an event (``data.who``, ``tags.room``) and the semantic problem type.

A path never crashes on a shape it does not expect: it resolves to :data:`MISSING` instead, so
a condition on a missing value is simply false (see :mod:`edgeagent.rules`, "Paths"). The
helpers here are shared by conditions, templates and the file model, so they are public names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .protocol import check_name

#: The first segment of every path.
ROOTS: Final[tuple[str, ...]] = ("device", "name", "ts", "data", "tags")
_PLAIN_ROOTS: Final = frozenset({"device", "name", "ts"})


class RuleProblem(Exception):
    """A semantic error in one rule; the validator adds the rule's name and the location."""


def check_field_name(value: str, field: str, what: str) -> None:
    try:
        check_name(value, what)
    except ValueError as exc:
        raise RuleProblem(f"{field}: {exc}") from None


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_list(value: object) -> bool:
    return isinstance(value, list | tuple)


@dataclass(frozen=True, slots=True)
class EventPath:
    """A parsed dotted path such as ``data.who``."""

    text: str
    parts: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> EventPath:
        parts = tuple(text.split("."))
        root = parts[0]
        if root not in ROOTS:
            raise RuleProblem(
                f"{text!r}: unknown root {root!r} (a path starts with "
                f"{', '.join(ROOTS)}){suggest(root, ROOTS)}"
            )
        for part in parts:
            if not part or part != "".join(part.split()) or "{" in part or "}" in part:
                raise RuleProblem(f"{text!r}: malformed path (empty segment, space or brace)")
        if root in _PLAIN_ROOTS and len(parts) > 1:
            raise RuleProblem(f"{text!r}: {root!r} is a plain value, it has no fields")
        return EventPath(text, parts)

    def resolve(self, scope: Mapping[str, Any]) -> Any:
        """The value at this path, or :data:`MISSING`."""
        value: Any = scope
        for part in self.parts:
            if isinstance(value, Mapping):
                if part not in value:
                    return MISSING
                value = value[part]
            elif is_list(value) and part.isascii() and part.isdigit():
                index = int(part)
                if index >= len(value):
                    return MISSING
                value = value[index]
            else:
                return MISSING
        return value


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
