"""Rules: small automations, "when this event happens (and its payload says so), call that skill".

Pure logic: no MQTT, no clock. A runner (the coordinator) subscribes to
:meth:`RuleSet.event_filters`, decodes each :class:`~edgeagent.protocol.Event`, calls
:meth:`RuleSet.match` with the emitting device's tags and the current time, and routes the
:class:`Action` s it gets back. Conditions are data, never code: no ``eval``.

File format (YAML)::

    rules:
      - name: hall-light-on-ring          # unique; one topic level (letters, digits, _ . -)
        description: Light the hall when someone rings.     # optional
        enabled: true                     # optional; false keeps the rule but never fires it
        when:                             # which events; every part given must hold
          event: ring                     # the event name ({root}/{fleet}/dev/+/event/{name})
          device: doorbell-front          # optional: only from this device
          where: {room: hall}             # optional: only from devices whose tags include these
        if:                               # optional: every test must hold (AND)
          data.who: {ne: cat}             # path: {operator: operand, ...}, all must hold
          data.at: {exists: true}
          tags.kind: doorbell             # a bare value is short for {eq: value}
        then:                             # the call to make
          skill: set_brightness
          where: {room: hall, kind: lamp} # the devices to call, by their tags (or `device: ID`)
          mode: all                       # one (default): any one of them; all: every one
          input: {level: 80}              # the skill's input; strings may be templates
        cooldown_s: 30                    # optional: after firing, ignore matches for 30 s
        max_per_minute: 10                # optional: fire at most 10 times in any 60 s

Paths
    Dotted paths into the event: ``device``, ``name``, ``ts`` (Unix seconds), ``data`` and
    ``data.KEY...`` (the payload; a number indexes a list: ``data.faces.0``), ``tags`` and
    ``tags.KEY`` (the emitting device's tags, when the runner passes them). A path that does not
    resolve (no such key, no tags given, a field of a string) is *missing*: it never crashes.

Operators (operands are literal values, never templates)
    ``eq`` / ``ne``   equal / not equal; JSON equality: ``1`` equals ``1.0``, ``true`` is not ``1``
    ``gt`` ``ge`` ``lt`` ``le``   ordered comparison with a number or a string; a value of the
                      other kind (or a bool) compares false
    ``in``            the value is one of the operand's (non-empty) list
    ``contains``      a string value holds the operand as a substring, a list holds it as an
                      element, a mapping holds it as a key
    ``exists``        ``true``: the path resolves to a value other than null; ``false``: it does not

    Every test on a missing path is false, except ``exists: false``; so ``data.who: {ne: cat}``
    is false when the event has no ``who``. For "one of several", use ``in`` (or two rules).
    YAML reads bare ``yes``, ``no``, ``on``, ``off`` as booleans: quote them to mean text.

Templates
    In ``then.input`` (at any depth), ``then.where`` values and ``then.device``, ``{path}`` is
    replaced by the event's value at ``path``. A string that is exactly one placeholder keeps
    the value's type (``"{data.brightness}"`` gives ``80``, not ``"80"``); inside other text the
    value is written as text (strings as they are, anything else as JSON). ``{{`` and ``}}`` are
    literal braces. A rule whose templates name a path the event lacks does not fire.

Cooldown and rate
    Per rule: after a rule fires at ``now``, its matches are ignored until ``now + cooldown_s``.
    And a rule fires at most ``max_per_minute`` times in any 60 s (default: the runner's,
    60 for the coordinator; 0 means no limit): past it, :meth:`RuleSet.match` returns the action
    marked ``limited`` so the runner can report it instead of calling. The state lives in the
    :class:`RuleSet` (each coordinator replica keeps its own).

Loops
    A rule's call can make a device emit an event that fires another rule (or the same one).
    The runner carries a hop count with every call a rule makes (the ``hop`` User Property;
    agents copy it onto the events the call's skill emits) and fires no rule for an event whose
    chain is already ``rule_max_depth`` calls long: a loop is cut and reported, not run.

Validation
    :func:`load_rules` raises :class:`~edgeagent.errors.ConfigError`. Every message names the file,
    the line and the field (unknown fields are rejected); the semantic ones (a duplicate name, an
    unknown operator or path root, a bad skill name, a malformed template) name the rule too::

        rules.yaml:7: rules.0.if: rule 'hall-light-on-ring': data.who: unknown operator 'neq' ...
        rules.yaml:9: rules.0.then: rule 'hall-light-on-ring': input.level: template '{dta.x}': ...
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError
from .protocol import Event, Topics, check_name
from .yamlconf import load_yaml_model, parse_yaml_model

log = logging.getLogger(__name__)

Mode = Literal["one", "all"]
Operator = Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "contains", "exists"]
OPERATORS: Final[tuple[Operator, ...]] = get_args(Operator)
#: The first segment of every path.
ROOTS: Final[tuple[str, ...]] = ("device", "name", "ts", "data", "tags")
_PLAIN_ROOTS: Final = frozenset({"device", "name", "ts"})


# --------------------------------------------------------------------------------------------
# The file format


class When(BaseModel):
    """Which events a rule looks at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(description="Event name, the last level of …/event/{name}.")
    device: str | None = Field(default=None, description="Only events from this device id.")
    where: dict[str, str] = Field(
        default_factory=dict,
        description="Only events from devices whose tags include all of these (room: hall).",
    )


class Then(BaseModel):
    """The skill call a rule makes when it fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skill: str = Field(description="Skill to call.")
    device: str | None = Field(
        default=None, description="Call this device id (may be a template, e.g. '{device}')."
    )
    where: dict[str, str] = Field(
        default_factory=dict,
        description="Call devices whose tags include all of these; values may be templates.",
    )
    mode: Mode = Field(
        default="one",
        description="one: any one device that matches (the router picks); all: every one.",
    )
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The skill's input; strings may be templates such as '{data.who}'.",
    )


class Rule(BaseModel):
    """One automation: when an event matches, call a skill."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique rule name; one topic level.")
    description: str = Field(default="", description="What the rule is for, for people.")
    enabled: bool = Field(default=True, description="False keeps the rule but never fires it.")
    when: When = Field(description="Which events the rule looks at.")
    if_: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        alias="if",
        description="Tests on the event, all of which must hold: {path: {operator: operand}}; "
        "a bare value means eq.",
    )
    then: Then = Field(description="The skill call to make.")
    cooldown_s: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="Quiet time after firing, seconds."
    )
    max_per_minute: int | None = Field(
        default=None,
        ge=0,
        description="Fire at most this many times in any 60 s (0: no limit; default: the "
        "runner's).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_name(v, "rule name")
        except ValueError as exc:
            raise PydanticCustomError("rule", "{message}", {"message": str(exc)}) from None

    @field_validator("when")
    @classmethod
    def _when(cls, v: When, info: ValidationInfo) -> When:
        with _rule_errors(info):
            _check_name(v.event, "event", "event name")
            if v.device is not None:
                _check_name(v.device, "device", "device id")
        return v

    @field_validator("if_", mode="before")
    @classmethod
    def _if(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, Mapping):
            return v  # the type check names the problem
        with _rule_errors(info):
            return {str(path): _normalize_tests(str(path), ops) for path, ops in v.items()}

    @field_validator("then")
    @classmethod
    def _then(cls, v: Then, info: ValidationInfo) -> Then:
        with _rule_errors(info):
            _compile_then(v)
        return v


class RulesFile(BaseModel):
    """A rules file: a list of rules, names unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list, description="The rules, tried in this order.")

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[Rule]) -> list[Rule]:
        problem = _duplicate(v)
        if problem:
            raise PydanticCustomError("rule", "{message}", {"message": problem})
        return v


def load_rules(path: str | Path) -> RuleSet:
    """Load and validate a rules file; errors name the file, line, field and rule."""
    return RuleSet(load_yaml_model(path, RulesFile).rules)


def parse_rules(text: str, *, source: str = "<string>") -> RuleSet:
    """Like :func:`load_rules` for YAML text; ``source`` names it in errors."""
    return RuleSet(parse_yaml_model(text, RulesFile, source=source).rules)


# --------------------------------------------------------------------------------------------
# Validation helpers


class _Problem(Exception):
    """A semantic error in one rule; the validator adds the rule's name and the location."""


@contextlib.contextmanager
def _rule_errors(info: ValidationInfo) -> Iterator[None]:
    try:
        yield
    except _Problem as exc:
        name = info.data.get("name")
        label = f"rule {name!r}" if isinstance(name, str) else "rule (name invalid)"
        raise PydanticCustomError("rule", "{message}", {"message": f"{label}: {exc}"}) from None


def _check_name(value: str, field: str, what: str) -> None:
    try:
        check_name(value, what)
    except ValueError as exc:
        raise _Problem(f"{field}: {exc}") from None


def _duplicate(rules: Sequence[Rule]) -> str | None:
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            return (
                f"rule {rule.name!r}: the name is used twice (rules.{seen[rule.name]} and "
                f"rules.{i}); rule names must be unique"
            )
        seen[rule.name] = i
    return None


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list(value: object) -> bool:
    return isinstance(value, list | tuple)


@dataclass(frozen=True, slots=True)
class _Path:
    """A parsed dotted path such as ``data.who``."""

    text: str
    parts: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> _Path:
        parts = tuple(text.split("."))
        root = parts[0]
        if root not in ROOTS:
            raise _Problem(
                f"{text!r}: unknown root {root!r} (a path starts with "
                f"{', '.join(ROOTS)}){_suggest(root, ROOTS)}"
            )
        for part in parts:
            if not part or part != "".join(part.split()) or "{" in part or "}" in part:
                raise _Problem(f"{text!r}: malformed path (empty segment, space or brace)")
        if root in _PLAIN_ROOTS and len(parts) > 1:
            raise _Problem(f"{text!r}: {root!r} is a plain value, it has no fields")
        return _Path(text, parts)

    def resolve(self, scope: Mapping[str, Any]) -> Any:
        """The value at this path, or :data:`_MISSING`."""
        value: Any = scope
        for part in self.parts:
            if isinstance(value, Mapping):
                if part not in value:
                    return _MISSING
                value = value[part]
            elif _is_list(value) and part.isascii() and part.isdigit():
                index = int(part)
                if index >= len(value):
                    return _MISSING
                value = value[index]
            else:
                return _MISSING
        return value


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


def _normalize_tests(path: str, ops: Any) -> dict[str, Any]:
    """Check one ``if`` entry and return it as ``{operator: operand}``."""
    _Path.parse(path)
    if _is_list(ops):
        raise _Problem(
            f"{path}: a list is ambiguous here: write {{in: [...]}} for one of several "
            "values, or {eq: [...]} for this exact list"
        )
    if not isinstance(ops, Mapping):
        return {"eq": ops}
    if not ops:
        raise _Problem(f"{path}: no operator (use one of {', '.join(OPERATORS)})")
    for op, operand in ops.items():
        if op not in OPERATORS:
            raise _Problem(
                f"{path}: unknown operator {op!r} (use one of "
                f"{', '.join(OPERATORS)}){_suggest(str(op), OPERATORS)}"
            )
        _check_operand(path, op, operand)
    return {str(op): operand for op, operand in ops.items()}


def _check_operand(path: str, op: str, operand: Any) -> None:
    where = f"{path}.{op}"
    if op in ("gt", "ge", "lt", "le"):
        if not (_is_number(operand) or isinstance(operand, str)):
            raise _Problem(f"{where}: needs a number or a string, got {operand!r}")
        if _is_number(operand) and math.isnan(operand):
            raise _Problem(f"{where}: NaN compares with nothing")
    elif op == "in":
        if not _is_list(operand) or not operand:
            raise _Problem(f"{where}: needs a non-empty list, got {operand!r}")
    elif op == "contains":
        if not (_is_number(operand) or isinstance(operand, str | bool)):
            raise _Problem(f"{where}: needs a string, number or bool, got {operand!r}")
    elif op == "exists" and not isinstance(operand, bool):
        raise _Problem(f"{where}: needs true or false, got {operand!r}")


# --------------------------------------------------------------------------------------------
# Tests (conditions)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but a bool is only ever equal to a bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_list(a) or _is_list(b):
        return _is_list(a) and _is_list(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_same(a[k], b[k]) for k in a)
        )
    return bool(a == b)


def _ordered(op: str, value: Any, operand: Any) -> bool:
    comparable = (_is_number(value) and _is_number(operand)) or (
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
    if _is_list(value):
        return any(_same(item, operand) for item in value)
    if isinstance(value, Mapping):
        return isinstance(operand, str) and operand in value
    return False


@dataclass(frozen=True, slots=True)
class _Test:
    path: _Path
    op: str
    operand: Any

    def holds(self, value: Any) -> bool:
        """Apply the operator to ``value`` (the resolved path, maybe :data:`_MISSING`)."""
        if self.op == "exists":
            return (value is not _MISSING and value is not None) is self.operand
        if value is _MISSING:
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


# --------------------------------------------------------------------------------------------
# Templates


class _Unresolved(Exception):
    """A template's path is missing from the event."""


@dataclass(frozen=True, slots=True)
class _Template:
    """A string with ``{path}`` placeholders: literal text and paths, in order."""

    parts: tuple[str | _Path, ...]

    @staticmethod
    def compile(text: str, field: str) -> str | _Template:
        """A literal string (braces unescaped) or a template; raises :class:`_Problem`."""
        parts: list[str | _Path] = []
        buf: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in "{}" and text.startswith(ch * 2, i):
                buf.append(ch)
                i += 2
            elif ch == "}":
                raise _Problem(f"{field}: unmatched '}}' in {text!r} (write '}}}}' for a brace)")
            elif ch == "{":
                end = text.find("}", i + 1)
                if end < 0:
                    raise _Problem(f"{field}: unclosed '{{' in {text!r} (write '{{{{' for a brace)")
                inner = text[i + 1 : end]
                if not inner:
                    raise _Problem(f"{field}: empty placeholder '{{}}' in {text!r}")
                try:
                    path = _Path.parse(inner)
                except _Problem as exc:
                    raise _Problem(f"{field}: template {text!r}: {exc}") from None
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
        if not any(isinstance(p, _Path) for p in parts):
            return "".join(p for p in parts if isinstance(p, str))
        return _Template(tuple(parts))

    def render(self, scope: Mapping[str, Any]) -> Any:
        values: list[Any] = []
        for part in self.parts:
            if isinstance(part, str):
                values.append(part)
                continue
            value = part.resolve(scope)
            if value is _MISSING:
                raise _Unresolved(part.text)
            values.append(value)
        if len(self.parts) == 1:  # exactly one placeholder: keep the type
            return copy.deepcopy(values[0])
        return "".join(_as_text(v) for v in values)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _compile_value(value: Any, field: str) -> Any:
    """Replace every string in a JSON-like value by its literal text or a :class:`_Template`."""
    if isinstance(value, str):
        return _Template.compile(value, field)
    if isinstance(value, Mapping):
        return {k: _compile_value(v, f"{field}.{k}") for k, v in value.items()}
    if _is_list(value):
        return [_compile_value(v, f"{field}.{i}") for i, v in enumerate(value)]
    return value


def _text(value: str | _Template, scope: Mapping[str, Any], field: str) -> str:
    """A device id or tag value, template filled in; null counts as missing."""
    if isinstance(value, str):
        return value
    rendered = value.render(scope)
    if rendered is None:
        raise _Unresolved(f"{field} (null)")
    return _as_text(rendered)


def _render(value: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(value, _Template):
        return value.render(scope)
    if isinstance(value, dict):
        return {k: _render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, scope) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class _CompiledThen:
    device: str | _Template | None
    where: dict[str, str | _Template]
    input: dict[str, Any]


def _compile_then(then: Then) -> _CompiledThen:
    _check_name(then.skill, "skill", "skill name")
    if then.device is not None and then.where:
        raise _Problem("give device or where, not both")
    if then.device is not None and then.mode == "all":
        raise _Problem("mode: 'all' needs where (tags), not one device")
    device: str | _Template | None = None
    if then.device is not None:
        device = _Template.compile(then.device, "device")
        if isinstance(device, str):
            _check_name(device, "device", "device id")
    where = {k: _Template.compile(v, f"where.{k}") for k, v in then.where.items()}
    return _CompiledThen(device, where, _compile_value(then.input, "input"))


# --------------------------------------------------------------------------------------------
# Matching


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
    text = _as_text(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tags_text(tags: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items())


@dataclass(slots=True)
class _Compiled:
    rule: Rule
    tests: tuple[_Test, ...]
    then: _CompiledThen

    @staticmethod
    def of(rule: Rule) -> _Compiled:
        tests = tuple(
            _Test(_Path.parse(path), op, operand)
            for path, ops in rule.if_.items()
            for op, operand in ops.items()
        )
        return _Compiled(rule, tests, _compile_then(rule.then))

    def selects(self, event: Event, tags: Mapping[str, str] | None) -> bool:
        when = self.rule.when
        if not self.rule.enabled or event.name != when.event:
            return False
        if when.device is not None and event.device != when.device:
            return False
        if not when.where:
            return True
        return tags is not None and all(tags.get(k) == v for k, v in when.where.items())

    def failed_test(self, scope: Mapping[str, Any]) -> _Test | None:
        for test in self.tests:
            if not test.holds(test.path.resolve(scope)):
                return test
        return None

    def action(self, event: Event, scope: Mapping[str, Any]) -> Action:
        """The call, templates filled in; raises :class:`_Unresolved`."""
        rule, then = self.rule, self.then
        device = None if then.device is None else _text(then.device, scope, "then.device")
        if device is not None:
            try:
                check_name(device, "device id")
            except ValueError as exc:
                raise _Unresolved(f"then.device: {exc}") from None
        where = {k: _text(v, scope, f"then.where.{k}") for k, v in then.where.items()}
        input_ = _render(then.input, scope)
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
        problem = _duplicate(self._rules)
        if problem:
            raise ConfigError(problem)
        try:
            self._compiled = tuple(_Compiled.of(rule) for rule in self._rules)
        except _Problem as exc:  # only for rules built without validation (model_construct)
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
            except _Unresolved as exc:
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
            f"{_suggest(r.then.skill, sorted(known))}"
            for r in self._rules
            if r.then.skill not in known
        ]

    def reset(self) -> None:
        """Forget every cooldown and rate count."""
        self._fired.clear()
        self._recent.clear()
