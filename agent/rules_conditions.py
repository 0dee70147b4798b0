"""Rules: the ``if`` conditions (operators on a resolved path), checked once and applied per event.

Conditions are data, never code (no ``eval``): each is an operator from :data:`OPERATORS` and a
literal operand, normalised and checked when the file is loaded (:func:`normalize_tests`), then
applied with JSON semantics (``1`` equals ``1.0``, a bool only equals a bool) by
:class:`Condition`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from .rules_paths import MISSING, EventPath, RuleProblem, is_list, is_number, suggest

Operator = Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "contains", "exists"]
OPERATORS: Final[tuple[Operator, ...]] = get_args(Operator)


def normalize_tests(path: str, ops: Any) -> dict[str, Any]:
    """Check one ``if`` entry and return it as ``{operator: operand}``."""
    EventPath.parse(path)
    if is_list(ops):
        raise RuleProblem(
            f"{path}: a list is ambiguous here: write {{in: [...]}} for one of several "
            "values, or {eq: [...]} for this exact list"
        )
    if not isinstance(ops, Mapping):
        return {"eq": ops}
    if not ops:
        raise RuleProblem(f"{path}: no operator (use one of {', '.join(OPERATORS)})")
    for op, operand in ops.items():
        if op not in OPERATORS:
            raise RuleProblem(
                f"{path}: unknown operator {op!r} (use one of "
                f"{', '.join(OPERATORS)}){suggest(str(op), OPERATORS)}"
            )
        _check_operand(path, op, operand)
    return {str(op): operand for op, operand in ops.items()}


def _check_operand(path: str, op: str, operand: Any) -> None:
    where = f"{path}.{op}"
    if op in ("gt", "ge", "lt", "le"):
        if not (is_number(operand) or isinstance(operand, str)):
            raise RuleProblem(f"{where}: needs a number or a string, got {operand!r}")
        if is_number(operand) and math.isnan(operand):
            raise RuleProblem(f"{where}: NaN compares with nothing")
    elif op == "in":
        if not is_list(operand) or not operand:
            raise RuleProblem(f"{where}: needs a non-empty list, got {operand!r}")
    elif op == "contains":
        if not (is_number(operand) or isinstance(operand, str | bool)):
            raise RuleProblem(f"{where}: needs a string, number or bool, got {operand!r}")
    elif op == "exists" and not isinstance(operand, bool):
        raise RuleProblem(f"{where}: needs true or false, got {operand!r}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but a bool is only ever equal to a bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if is_list(a) or is_list(b):
        return is_list(a) and is_list(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_same(a[k], b[k]) for k in a)
        )
    return bool(a == b)


def _ordered(op: str, value: Any, operand: Any) -> bool:
    comparable = (is_number(value) and is_number(operand)) or (
        isinstance(value, str) and isinstance(operand, str)
    )
    if not comparable:
        return False
    if op == "gt":
        return bool(value > operand)
    if op == "ge":
        return bool(value >= operand)
    if op == "lt":
        return bool(value < operand)
    return bool(value <= operand)


def _contains(value: Any, operand: Any) -> bool:
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    if is_list(value):
        return any(_same(item, operand) for item in value)
    if isinstance(value, Mapping):
        return isinstance(operand, str) and operand in value
    return False


@dataclass(frozen=True, slots=True)
class Condition:
    path: EventPath
    op: str
    operand: Any

    def holds(self, value: Any) -> bool:
        """Apply the operator to ``value`` (the resolved path, maybe :data:`MISSING`)."""
        if self.op == "exists":
            return (value is not MISSING and value is not None) is self.operand
        if value is MISSING:
            return False
        if self.op == "eq":
            return _same(value, self.operand)
        if self.op == "ne":
            return not _same(value, self.operand)
        if self.op == "in":
            return any(_same(value, item) for item in self.operand)
        if self.op == "contains":
            return _contains(value, self.operand)
        return _ordered(self.op, value, self.operand)
