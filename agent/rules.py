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

The implementation is split by concept: :mod:`.rules_paths` (paths, the problem type),
:mod:`.rules_conditions` (operators), :mod:`.rules_templates` (placeholders),
:mod:`.rules_model` (the file format and its validation) and :mod:`.rules_match`
(:class:`RuleSet`: matching, cooldowns, rates). This module is the public face: every name
importable from here before the split still is.
"""

from __future__ import annotations

from pathlib import Path

from .rules_conditions import OPERATORS, Operator
from .rules_match import Action, RuleSet
from .rules_match import log as log  # the logger of rule decisions, named edgeagent.rules
from .rules_model import Mode, Rule, RulesFile, Then, When
from .rules_paths import ROOTS
from .yamlconf import load_yaml_model, parse_yaml_model

__all__ = [
    "OPERATORS",
    "ROOTS",
    "Action",
    "Mode",
    "Operator",
    "Rule",
    "RuleSet",
    "RulesFile",
    "Then",
    "When",
    "load_rules",
    "parse_rules",
]


def load_rules(path: str | Path) -> RuleSet:
    """Load and validate a rules file; errors name the file, line, field and rule."""
    return RuleSet(load_yaml_model(path, RulesFile).rules)


def parse_rules(text: str, *, source: str = "<string>") -> RuleSet:
    """Like :func:`load_rules` for YAML text; ``source`` names it in errors."""
    return RuleSet(parse_yaml_model(text, RulesFile, source=source).rules)
