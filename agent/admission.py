"""The device agent's admission: may this call run here, now? Pure decisions, no I/O.

A call reaching a device is checked in a fixed order, and the first check that fails answers it
(the order is part of the protocol: a caller sees the same refusal for the same request):

1. :func:`key_refusal`: an idempotency key, if any, of 1 to ``MAX_IDEMPOTENCY_KEY`` characters
   (before the idempotency cache is asked, in :mod:`edgeagent.device_calls`);
2. :func:`admit`: the hop user property (0 to :data:`MAX_HOP`); the device draining
   (``unavailable``); the payload within the device's ``max_payload``; the system skill
   :data:`PING_SKILL`; a skill of that name; room in the skill's ``max_concurrency`` +
   ``max_queue`` (``busy``);
3. :func:`parse_input`: the input valid for the skill (``bad_request`` with a summary).

Each returns a :class:`Refusal` (code and message, the exact texts callers see) or what the call
needs next; :class:`~edgeagent.device_calls.CallServer` publishes the refusal. Keeping the checks
here lets them be tested without a broker or a loop (``tests/test_device_policies.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ValidationError

from .protocol import BINARY_CONTENT_TYPE, HOP_PROPERTY, MAX_IDEMPOTENCY_KEY, ErrorCode
from .skills import Skill

__all__ = [
    "MAX_HOP",
    "PING_SKILL",
    "Admitted",
    "Load",
    "Refusal",
    "admit",
    "is_full",
    "key_refusal",
    "parse_hop",
    "parse_input",
]

#: Deepest chain of rule-made calls an agent accepts (the coordinator cuts far earlier).
MAX_HOP = 64
#: The system skill every agent answers (unless it has a skill of that name): device, release,
#: agent version, uptime. Names starting with "_" are reserved for such system skills.
PING_SKILL = "_ping"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the call with this error instead of running it."""

    code: ErrorCode
    message: str
    #: The skill is at capacity: the agent counts it among the skill's ``rejected`` calls.
    skill_full: bool = False


@dataclass(frozen=True, slots=True)
class Admitted:
    """The call may run: its hop (0 when not made by a rule) and whether it is the system ping."""

    hop: int
    ping: bool = False


# Admission is on every call's path: the common answers are made once.
_ADMITTED = tuple(Admitted(hop) for hop in range(MAX_HOP + 1))


class Load(Protocol):
    """What admission reads of one skill: its limits and the calls it holds now."""

    @property
    def in_flight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def max_queue(self) -> int: ...


def is_full(load: Load) -> bool:
    """No room for another call: running plus waiting calls reached both limits together."""
    return load.in_flight + load.queued >= load.max_concurrency + load.max_queue


def key_refusal(key: str | None) -> Refusal | None:
    """The refusal of an idempotency key of the wrong length (None: no key, or a good one)."""
    if key is None or 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        return None
    return Refusal(
        "bad_request", f"idempotency key of {len(key)} characters: use 1 to {MAX_IDEMPOTENCY_KEY}"
    )


def parse_hop(value: str | None) -> int | None:
    """The hop user property as a number (0 when absent), None when it is not a valid one."""
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 3 or int(value) > MAX_HOP:
        return None
    return int(value)


def admit(
    name: str,
    *,
    hop: str | None,
    draining: bool,
    size: int,
    max_payload: int,
    device: str,
    skills: Mapping[str, Load],
) -> Admitted | Refusal:
    """May a call to skill ``name`` (``size`` bytes, hop property ``hop``) be queued now?

    ``skills``: the device's skills by name with their load; ``draining``: the device is
    shutting down. The checks run in the module docstring's order.
    """
    n = parse_hop(hop)
    if n is None:
        return Refusal(
            "bad_request",
            f"user property {HOP_PROPERTY!r} must be a whole number from 0 to {MAX_HOP}",
        )
    if draining:
        return Refusal("unavailable", "device is shutting down")
    if size > max_payload:
        return Refusal(
            "bad_request",
            f"payload of {size} bytes exceeds this device's limit of {max_payload} bytes",
        )
    load = skills.get(name)
    if load is None and name == PING_SKILL:
        return Admitted(n, ping=True)
    if load is None:
        known = ", ".join(sorted(skills)) or "none"
        return Refusal("not_found", f"device {device!r} has no skill {name!r} (skills: {known})")
    if is_full(load):
        return Refusal(
            "busy",
            f"skill {name!r} is at capacity ({load.max_concurrency} running, {load.max_queue} "
            "queued); retry later or elsewhere",
            skill_full=True,
        )
    return _ADMITTED[n]


def parse_input(
    skill: Skill, payload: bytes, content_type: str | None, input_property: str | None
) -> BaseModel | Refusal:
    """The skill's input from a request (JSON, or binary with the ``input`` user property)."""
    try:
        if content_type == BINARY_CONTENT_TYPE:
            return skill.validate_binary_input(payload, input_property)
        return skill.validate_input(payload)
    except ValidationError as exc:
        return Refusal("bad_request", _summarize(exc))
    except ValueError as exc:  # binary request: no bytes field, or bad `input` property
        return Refusal("bad_request", str(exc))


def _summarize(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "invalid input: " + "; ".join(parts)
