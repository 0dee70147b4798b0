"""Rules: matching events to rules, the actions they ask for, cooldowns and rates.

Pure: the runner passes the event, the emitting device's tags and ``now``; the only state is
each rule's last firing and its firings in the last minute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .protocol import Event, Topics, check_name
from .rules_conditions import Condition
from .rules_model import CompiledThen, Mode, Rule, compile_then, duplicate_problem
from .rules_paths import EventPath, RuleProblem, suggest
from .rules_templates import Unresolved, as_text, render_text, render_value

# The logger keeps the name it had before the split, so log configuration still applies.
log = logging.getLogger("edgeagent.rules")


@dataclass(frozen=True, slots=True)
class Action:
    """A skill call that a rule asks for; the runner routes it (by device, or by tags)."""

    rule: str
    skill: str
    input: dict[str, Any]
    where: dict[str, str]
    mode: Mode
    device: str | None
    explanation: str
    limited: bool = False
    """The rule matched but has fired its ``max_per_minute``: report it, do not call."""


def _show(value: Any) -> str:
    text = as_text(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tags_text(tags: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items())


@dataclass(slots=True)
class _Compiled:
    rule: Rule
    tests: tuple[Condition, ...]
    then: CompiledThen

    @staticmethod
    def of(rule: Rule) -> _Compiled:
        tests = tuple(
            Condition(EventPath.parse(path), op, operand)
            for path, ops in rule.if_.items()
            for op, operand in ops.items()
        )
        return _Compiled(rule, tests, compile_then(rule.then))

    def selects(self, event: Event, tags: Mapping[str, str] | None) -> bool:
        when = self.rule.when
        if not self.rule.enabled or event.name != when.event:
            return False
        if when.device is not None and event.device != when.device:
            return False
        if not when.where:
            return True
        return tags is not None and all(tags.get(k) == v for k, v in when.where.items())

    def failed_test(self, scope: Mapping[str, Any]) -> Condition | None:
        for test in self.tests:
            if not test.holds(test.path.resolve(scope)):
                return test
        return None

    def action(self, event: Event, scope: Mapping[str, Any]) -> Action:
        """The call, templates filled in; raises :class:`Unresolved`."""
        rule, then = self.rule, self.then
        device = None if then.device is None else render_text(then.device, scope, "then.device")
        if device is not None:
            try:
                check_name(device, "device id")
            except ValueError as exc:
                raise Unresolved(f"then.device: {exc}") from None
        where = {k: render_text(v, scope, f"then.where.{k}") for k, v in then.where.items()}
        input_ = render_value(then.input, scope)
        return Action(
            rule=rule.name,
            skill=rule.then.skill,
            input=input_,
            where=where,
            mode=rule.then.mode,
            device=device,
            explanation=self.explain(event, scope, device, where),
        )

    def explain(
        self, event: Event, scope: Mapping[str, Any], device: str | None, where: dict[str, str]
    ) -> str:
        when = self.rule.when
        text = f"rule {self.rule.name!r}: event {event.name!r} from {event.device}"
        if when.where:
            text += f" ({_tags_text(when.where)})"
        if self.tests:
            text += " with " + ", ".join(
                f"{t.path.text}={_show(t.path.resolve(scope))} {t.op} {_show(t.operand)}"
                for t in self.tests
            )
        if device is not None:
            target = f"device {device}"
        elif where:
            target = f"{self.rule.then.mode} of the devices with {_tags_text(where)}"
        else:
            target = f"{self.rule.then.mode} of the devices with the skill"
        return f"{text} -> call {self.rule.then.skill} on {target}"


def _scope(event: Event, tags: Mapping[str, str] | None) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "device": event.device,
        "name": event.name,
        "ts": event.ts,
        "data": event.data,
    }
    if tags is not None:
        scope["tags"] = tags
    return scope


class RuleSet:
    """Validated rules plus each rule's cooldown state; everything else is pure."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules = tuple(rules)
        problem = duplicate_problem(self._rules)
        if problem:
            raise ConfigError(problem)
        try:
            self._compiled = tuple(_Compiled.of(rule) for rule in self._rules)
        except RuleProblem as exc:  # only for rules built without validation (model_construct)
            raise ConfigError(str(exc)) from None
        self._fired: dict[str, float] = {}
        # Per rule, when it fired in the last minute (bounded by its max_per_minute).
        self._recent: dict[str, deque[float]] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def __len__(self) -> int:
        return len(self._rules)

    def match(
        self,
        event: Event,
        *,
        tags: Mapping[str, str] | None,
        now: float,
        max_per_minute: int = 0,
    ) -> list[Action]:
        """The calls ``event`` asks for, in rule order; firing starts each rule's cooldown.

        ``tags`` are the emitting device's tags (from its manifest), None if unknown: rules with
        ``when.where`` or ``tags.*`` tests then do not match. ``now`` is the time in seconds.
        ``max_per_minute`` is the rate limit of rules that set none (0: none); an action past
        its rule's limit comes back with ``limited`` set and does not count as a firing.
        """
        scope = _scope(event, tags)
        actions: list[Action] = []
        for compiled in self._compiled:
            rule = compiled.rule
            if not compiled.selects(event, tags) or compiled.failed_test(scope) is not None:
                continue
            last = self._fired.get(rule.name)
            if last is not None and last <= now < last + rule.cooldown_s:
                log.debug(
                    "rule %r: cooling down for %.3g s more", rule.name, last + rule.cooldown_s - now
                )
                continue
            try:
                action = compiled.action(event, scope)
            except Unresolved as exc:
                log.debug("rule %r: not fired: cannot fill in %s", rule.name, exc)
                continue
            limit = rule.max_per_minute if rule.max_per_minute is not None else max_per_minute
            if limit:
                recent = self._recent.setdefault(rule.name, deque())
                while recent and recent[0] <= now - 60.0:
                    recent.popleft()
                if len(recent) >= limit:
                    actions.append(dataclasses.replace(action, limited=True))
                    continue
                recent.append(now)
            self._fired[rule.name] = now
            actions.append(action)
        return actions

    def event_filters(self, root: str, fleet: str) -> list[str]:
        """The MQTT topic filters a runner must subscribe to, as narrow as the rules allow."""
        topics = Topics(root, fleet)
        enabled = [r.when for r in self._rules if r.enabled]
        anywhere = {w.event for w in enabled if w.device is None}
        filters = {topics.all_events(event) for event in anywhere}
        filters.update(
            topics.event(w.device, w.event)
            for w in enabled
            if w.device is not None and w.event not in anywhere
        )
        return sorted(filters)

    def check(self, catalog_skills: Iterable[str]) -> list[str]:
        """Warnings for rules whose skill no device announces (``catalog_skills``: all names)."""
        known = set(catalog_skills)
        return [
            f"rule {r.name!r}: no device announces skill {r.then.skill!r}"
            f"{suggest(r.then.skill, sorted(known))}"
            for r in self._rules
            if r.then.skill not in known
        ]

    def reset(self) -> None:
        """Forget every cooldown and rate count."""
        self._fired.clear()
        self._recent.clear()
