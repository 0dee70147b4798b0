"""The coordinator's automations: device events in, rule-made calls out.

What fires is decided by :class:`~edgeagent.rules.RuleSet` (pure: conditions, cooldowns, rates);
this module checks each event before believing it (size, shape, the device its topic names, how
many rule-made calls led to it, so two rules calling each other cannot loop forever) and makes
each action a call through the coordinator's own routing, in a task of the coordinator's group.
A failed action is logged (rate-limited), never raised: a task must not bring the group down.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from .client import encode_input
from .clock import Clock
from .coord_forward import Forwarder, RouteFailure, Trace, output_of
from .coord_route import CallRouter
from .errors import CallError
from .limits import CoordinatorLimits
from .logutil import LogLimiter, clip
from .protocol import HOP_PROPERTY, Event, Topics, decode
from .registry import Registry
from .rules import Action, RuleSet
from .transport.base import Inbound

__all__ = ["RULE_DEADLINE_S", "RuleActions", "event_hop"]

log = logging.getLogger("edgeagent.coordinator")  # the coordinator's logger, as before the split

#: Deadline of a rule-made call, seconds.
RULE_DEADLINE_S = 10.0

Spawn = Callable[[str, Coroutine[Any, Any, None]], object]
"""Run a coroutine as a named task of the coordinator's group."""
Drop = Callable[[str, str, str], None]
"""Count and log a message that is not believed: (kind, topic, why)."""


def event_hop(raw: str | None) -> int:
    """How many rule-made calls led to an event, from its hop property (-1: unreadable)."""
    raw = raw or "0"
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 4 else -1


class RuleActions:
    """Fires the rules of a :class:`RuleSet` on events and makes their calls."""

    def __init__(
        self,
        rules: RuleSet,
        *,
        topics: Topics,
        registry: Registry,
        clock: Clock,
        limits: CoordinatorLimits,
        router: CallRouter,
        forwarder: Forwarder,
        spawn: Spawn,
        drop: Drop,
    ) -> None:
        self.rules = rules
        self.topics = topics
        self.registry = registry
        self.clock = clock
        self.limits = limits
        self.router = router
        self.forwarder = forwarder
        self._spawn = spawn
        self._drop = drop
        self._log = LogLimiter(log)
        self.fired = 0
        self.cut = 0
        self.limited = 0

    def on_event(self, msg: Inbound) -> None:
        if len(msg.payload) > self.limits.max_message_bytes:
            self._drop("oversized", msg.topic, f"an event of {len(msg.payload):,} bytes")
            return
        try:
            event = decode(msg.payload)
        except ValidationError as exc:
            self._drop("malformed", msg.topic, clip(exc.errors()[0]["msg"]))
            return
        parsed = self.topics.parse_device_topic(msg.topic)
        if not isinstance(event, Event) or parsed is None:
            return
        if (event.device, event.name) != (parsed[0], parsed[2]):
            self._drop("spoofed", msg.topic, f"event names {clip(event.device, 60)!r}")
            return
        raw_hop = msg.props.user_property(HOP_PROPERTY)
        hop = event_hop(raw_hop)
        if not 0 <= hop < self.limits.rule_max_depth:
            self.cut += 1
            self._log.warning(
                "rule-loop",
                "rules: event %s from %s came from a chain of %s rule-made calls (limit %d): "
                "no rule fires for it (a loop between rules?)",
                event.name, event.device, clip(raw_hop or "0", 8), self.limits.rule_max_depth,
            )  # fmt: skip
            return
        entry = self.registry.devices.get(event.device)
        tags = entry.tags if entry is not None and entry.manifest is not None else None
        for action in self.rules.match(
            event, tags=tags, now=self.clock.time(), max_per_minute=self.limits.rule_max_per_minute
        ):
            if action.limited:
                self.limited += 1
                self._log.warning(
                    "rule-rate",
                    "rule %s: fired %d times in the last minute (limit): not firing for %s/%s",
                    action.rule, self.limits.rule_max_per_minute, event.device, event.name,
                )  # fmt: skip
                continue
            self.fired += 1
            # The key is the event's own id: a redelivered event never acts twice, and two
            # events in the same millisecond are two. (Older agents send no id.)
            idem = f"rule-{action.rule}-{event.id or uuid.uuid4().hex}"
            self._spawn(f"coord-rule-{action.rule}", self.act(action, idem, hop + 1))

    async def act(self, action: Action, idem: str, hop: int = 1) -> None:
        """Make the call of one action (logged; never raises)."""
        deadline = self.clock.monotonic() + RULE_DEADLINE_S
        payload = encode_input(action.input)
        trace = Trace(caller=f"rule/{action.rule}", hop=hop)
        router = self.router
        try:
            if action.device is not None:
                out: Any = output_of(
                    await self.forwarder.forward(
                        action.device, action.skill, payload, deadline, idem, None, trace
                    )
                )
            elif action.mode == "all":
                out = await router.fan_out(
                    action.skill, payload, action.where, deadline, idem, None, trace
                )
            else:
                out = output_of(
                    await router.route_one(
                        action.skill, payload, action.where, deadline, idem, None, trace
                    )
                )
            self._log.info("rule-ok", "rule %s: %s -> %s", action.rule, action.explanation,
                           clip(out))  # fmt: skip
        except (CallError, RouteFailure) as exc:
            self._log.warning("rule-failed", "rule %s: %s failed: %s", action.rule, action.skill,
                              clip(exc))  # fmt: skip
        except Exception as exc:  # a task of the group must not fail it (and the coordinator)
            self._log.warning("rule-failed", "rule %s: %s failed: %s: %s", action.rule,
                              action.skill, type(exc).__name__, clip(exc))  # fmt: skip
