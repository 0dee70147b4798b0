"""Rules: the YAML format, validation errors (file, line, field, rule), matching, templates,
cooldown and topic filters. Pure logic: no broker."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.config import load_config, load_skills
from edgeagent.errors import ConfigError
from edgeagent.protocol import Event
from edgeagent.rules import OPERATORS, Action, RuleSet, load_rules, parse_rules

# See tests/test_protocol.py: keep libcst's import-time DeprecationWarning from turning a
# hypothesis failure report into an INTERNALERROR under `-W error`.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    importlib.import_module("libcst")  # optional: by name, so mypy needs no stubs for it

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"
RULES_FILE = EXAMPLES / "rules.yaml"
HALL_DOORBELL = {"room": "hall", "kind": "doorbell"}
LIVING_THERMOSTAT = {"room": "living", "kind": "thermostat"}


def event(device: str, name: str, ts: float = 1000.0, **data: Any) -> Event:
    return Event(device=device, name=name, ts=ts, data=data)


def ring(who: str = "visitor") -> Event:
    return event("doorbell-front", "ring", who=who, at=1000.0)


def one_rule(body: str) -> RuleSet:
    """A rule set of one rule named `r`; ``body`` is YAML indented for the rule's mapping."""
    return parse_rules("rules:\n  - name: r\n" + body, source="t.yaml")


def rule_with_test(path: str, test: str) -> RuleSet:
    return one_rule(
        f"    when: {{event: e}}\n    if:\n      {path}: {test}\n    then: {{skill: s}}\n"
    )


# --------------------------------------------------------------------------------------------
# The example file


@pytest.fixture
def example() -> RuleSet:
    return load_rules(RULES_FILE)


def test_example_loads(example: RuleSet) -> None:
    assert [r.name for r in example.rules] == [
        "hall-light-on-ring",
        "dim-hall-when-warm",
        "kitchen-follows-hall",
    ]
    assert len(example) == 3
    assert example.rules[0].cooldown_s == 30
    assert example.rules[0].if_ == {"data.who": {"ne": "cat"}}
    assert example.rules[1].if_ == {"data.celsius": {"ge": 18}, "data.heating": {"eq": False}}


def test_example_ring_lights_the_hall(example: RuleSet) -> None:
    [action] = example.match(ring("visitor"), tags=HALL_DOORBELL, now=0.0)
    assert action == Action(
        rule="hall-light-on-ring",
        skill="set_brightness",
        input={"level": 80},
        where={"room": "hall", "kind": "lamp"},
        mode="all",
        device=None,
        explanation=action.explanation,
    )
    assert "hall-light-on-ring" in action.explanation
    assert 'data.who="visitor" ne "cat"' in action.explanation
    assert "set_brightness" in action.explanation


def test_example_the_cat_does_not(example: RuleSet) -> None:
    assert example.match(ring("cat"), tags=HALL_DOORBELL, now=0.0) == []


def test_example_ring_from_another_doorbell_does_not(example: RuleSet) -> None:
    other = event("doorbell-back", "ring", who="visitor")
    assert example.match(other, tags=HALL_DOORBELL, now=0.0) == []
    # Nor does another event name from the same device.
    assert example.match(event("doorbell-front", "rang", who="x"), tags=None, now=0.0) == []


def test_example_thermostat_dims_the_hall(example: RuleSet) -> None:
    reached = event("thermostat-living", "reached", celsius=20.52, target=20.5, heating=False)
    [action] = example.match(reached, tags=LIVING_THERMOSTAT, now=0.0)
    assert (action.rule, action.input, action.where) == (
        "dim-hall-when-warm",
        {"level": 40},
        {"room": "hall", "kind": "lamp"},
    )
    # when.where looks at the emitting device's tags: another room, or no tags, no match.
    assert example.match(reached, tags={"room": "kitchen", "kind": "thermostat"}, now=1e6) == []
    assert example.match(reached, tags=None, now=1e6) == []


def test_example_kitchen_follows_hall_keeps_the_number(example: RuleSet) -> None:
    lit = event("lamp-hall", "changed", on=True, brightness=65)
    [action] = example.match(lit, tags={"room": "hall", "kind": "lamp"}, now=0.0)
    assert action.input == {"level": 65}
    assert type(action.input["level"]) is int
    assert action.mode == "one"
    off = event("lamp-hall", "changed", on=False, brightness=65)
    assert example.match(off, tags=None, now=0.0) == []


def test_example_matches_the_example_fleet(example: RuleSet) -> None:
    """Every device, event, tag and skill the example rules name exists in the example fleet."""
    configs = [
        load_config(EXAMPLES / f"{d}.yaml")
        for d in ("doorbell-front", "lamp-hall", "lamp-kitchen", "thermostat-living")
    ]
    catalog: set[str] = set()
    events: dict[str, set[str]] = {}
    for cfg in configs:
        skills, _, declared = load_skills(cfg)
        catalog.update(s.name for s in skills)
        events[cfg.device] = set(declared)
    assert example.check(catalog) == []
    for rule in example.rules:
        when, then = rule.when, rule.then
        emitters = [c for c in configs if c.device == when.device or when.device is None]
        emitters = [c for c in emitters if when.where.items() <= c.tags.items()]
        assert any(when.event in events[c.device] for c in emitters), rule.name
        assert any(then.where.items() <= c.tags.items() for c in configs), rule.name


def test_example_event_filters(example: RuleSet) -> None:
    assert example.event_filters("edgeagent", "home") == [
        "edgeagent/home/dev/+/event/reached",
        "edgeagent/home/dev/doorbell-front/event/ring",
        "edgeagent/home/dev/lamp-hall/event/changed",
    ]


# --------------------------------------------------------------------------------------------
# Matching


def test_device_and_tag_selection() -> None:
    rules = one_rule(
        "    when: {event: e, where: {room: hall}}\n"
        "    if: {tags.kind: lamp}\n"
        "    then: {skill: s}\n"
    )
    e = event("any", "e")
    assert len(rules.match(e, tags={"room": "hall", "kind": "lamp"}, now=0)) == 1
    assert rules.match(e, tags={"room": "hall", "kind": "doorbell"}, now=0) == []
    assert rules.match(e, tags={"kind": "lamp"}, now=0) == []
    assert rules.match(e, tags=None, now=0) == []


def test_rules_fire_in_file_order_and_disabled_rules_never_fire() -> None:
    rules = parse_rules(
        """
rules:
  - name: first
    when: {event: e}
    then: {skill: a}
  - name: disabled
    enabled: false
    when: {event: e}
    then: {skill: b}
  - name: third
    when: {event: e}
    then: {skill: c, device: lamp-1}
"""
    )
    actions = rules.match(event("d", "e"), tags=None, now=0)
    assert [(a.rule, a.skill, a.device) for a in actions] == [
        ("first", "a", None),
        ("third", "c", "lamp-1"),
    ]
    assert "any" not in actions[0].explanation
    assert "device lamp-1" in actions[1].explanation
    assert rules.event_filters("r", "f") == ["r/f/dev/+/event/e"]


def test_action_is_frozen_and_owns_its_input() -> None:
    rules = one_rule(
        "    when: {event: e}\n    then: {skill: s, input: {all: '{data}', list: [1, 2]}}\n"
    )
    e = event("d", "e", nested={"x": 1})
    [first] = rules.match(e, tags=None, now=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.skill = "other"  # type: ignore[misc]
    first.input["all"]["nested"]["x"] = 99
    first.input["list"].append(3)
    assert e.data == {"nested": {"x": 1}}
    [second] = rules.match(e, tags=None, now=1)
    assert second.input == {"all": {"nested": {"x": 1}}, "list": [1, 2]}


# --------------------------------------------------------------------------------------------
# Operators: every one, on values of every kind, and on missing paths


OPERATOR_CASES: list[tuple[str, Any, bool]] = [
    ("{eq: 3}", 3, True),
    ("{eq: 3}", 3.0, True),
    ("{eq: 3}", "3", False),
    ("{eq: 1}", True, False),
    ("{eq: true}", True, True),
    ("{eq: true}", 1, False),
    ("{eq: null}", None, True),
    ("{eq: [1, b]}", [1, "b"], True),
    ("{eq: {a: 1}}", {"a": 1}, True),
    ("{eq: {a: 1}}", {"a": True}, False),
    ("cat", "cat", True),
    ("cat", "dog", False),
    ("{ne: cat}", "dog", True),
    ("{ne: cat}", "cat", False),
    ("{ne: 0}", False, True),
    ("{gt: 50}", 51, True),
    ("{gt: 50}", 50, False),
    ("{gt: 50}", 50.5, True),
    ("{gt: 50}", "60", False),
    ("{gt: 0}", True, False),
    ("{gt: b}", "c", True),
    ("{gt: b}", "a", False),
    ("{ge: 50}", 50, True),
    ("{ge: 50}", 49.9, False),
    ("{lt: 50}", 49, True),
    ("{lt: 50}", 50, False),
    ("{lt: 50}", None, False),
    ("{le: 50}", 50, True),
    ("{le: 50}", 51, False),
    ("{le: 50}", [1], False),
    ("{in: [person, visitor]}", "visitor", True),
    ("{in: [person, visitor]}", "cat", False),
    ("{in: [1, 2]}", 2.0, True),
    ("{in: [1, 2]}", True, False),
    ("{in: [[1]]}", [1], True),
    ("{contains: ell}", "hello", True),
    ("{contains: xyz}", "hello", False),
    ("{contains: 2}", [1, 2], True),
    ("{contains: 2}", [1, "2"], False),
    ("{contains: key}", {"key": 0}, True),
    ("{contains: key}", {"other": 0}, False),
    ("{contains: 1}", 12, False),
    ("{contains: 1}", "12", False),
    ("{exists: true}", 0, True),
    ("{exists: true}", None, False),
    ("{exists: false}", None, True),
    ("{exists: false}", "", False),
    ("{gt: 10, lt: 20}", 15, True),
    ("{gt: 10, lt: 20}", 25, False),
]


@pytest.mark.parametrize(("test", "value", "expected"), OPERATOR_CASES)
def test_operator(test: str, value: Any, expected: bool) -> None:
    rules = rule_with_test("data.x", test)
    matched = rules.match(event("d", "e", x=value), tags=None, now=0)
    assert bool(matched) is expected


def test_every_operator_is_covered() -> None:
    used = {t.strip("{").split(":")[0] for t, _, _ in OPERATOR_CASES if t.startswith("{")}
    assert used >= set(OPERATORS)


MISSING_PATHS = [
    "data.nope",  # no such key
    "data.who.first",  # a field of a string
    "data.list.5",  # past the end of a list
    "data.list.x",  # a list has no named fields
    "data.map.a.b.c",  # deeper than the data
    "tags.room",  # no tags given
]


@pytest.mark.parametrize("path", MISSING_PATHS)
@pytest.mark.parametrize(
    "test",
    [
        "{eq: 1}",
        "{ne: 1}",
        "{gt: 1}",
        "{ge: 1}",
        "{lt: 1}",
        "{le: 1}",
        "{in: [1]}",
        "{contains: 1}",
        "{exists: true}",
    ],
)
def test_missing_path_is_false_not_a_crash(path: str, test: str) -> None:
    rules = rule_with_test(path, test)
    e = event("d", "e", who="ann", list=[1, 2], map={"a": 1})
    assert rules.match(e, tags=None, now=0) == []


@pytest.mark.parametrize("path", MISSING_PATHS)
def test_exists_false_holds_on_a_missing_path(path: str) -> None:
    rules = rule_with_test(path, "{exists: false}")
    e = event("d", "e", who="ann", list=[1, 2], map={"a": 1})
    assert len(rules.match(e, tags=None, now=0)) == 1


def test_paths_reach_every_root_and_list_items() -> None:
    rules = one_rule(
        "    when: {event: e}\n"
        "    if:\n"
        "      device: cam-1\n"
        "      name: e\n"
        "      ts: {ge: 100}\n"
        "      data.faces.1.label: person\n"
        "      tags: {contains: room}\n"
        "    then: {skill: s}\n"
    )
    faces = [{"label": "cat"}, {"label": "person"}]
    e = Event(device="cam-1", name="e", ts=150.0, data={"faces": faces})
    assert len(rules.match(e, tags={"room": "hall"}, now=0)) == 1
    early = e.model_copy(update={"ts": 50.0})
    assert rules.match(early, tags={"room": "hall"}, now=1) == []


@settings(max_examples=200, deadline=None)
@given(
    data=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    )
)
def test_any_payload_never_crashes(data: Any) -> None:
    body = "\n".join(
        f"      data.x.y: {{{op}: {'true' if op == 'exists' else '[1]' if op == 'in' else '1'}}}"
        for op in OPERATORS
    )
    rules = one_rule(f"    when: {{event: e}}\n    if:\n{body}\n    then: {{skill: s}}\n")
    for payload in ({"x": data}, {"x": {"y": data}}):
        assert isinstance(rules.match(event("d", "e", **payload), tags=None, now=0), list)


# --------------------------------------------------------------------------------------------
# Templates


def test_templates_keep_types_and_fill_text() -> None:
    rules = one_rule(
        """    when: {event: e}
    then:
      skill: s
      where: {room: "{tags.room}", kind: lamp}
      input:
        int: "{data.n}"
        float: "{data.f}"
        bool: "{data.b}"
        nothing: "{data.none}"
        list: "{data.items}"
        text: "{data.who} at {device} ({data.n}, {data.b}, {data.items})"
        braces: "{{literal}} {{{data.n}}}"
        literal: 7
        nested: [{level: "{data.n}"}, "{name}", "{ts}"]
"""
    )
    e = event("door", "e", ts=12.5, n=80, f=0.25, b=False, none=None, items=[1, "a"], who="ann")
    [action] = rules.match(e, tags={"room": "hall"}, now=0)
    assert action.where == {"room": "hall", "kind": "lamp"}
    assert action.input == {
        "int": 80,
        "float": 0.25,
        "bool": False,
        "nothing": None,
        "list": [1, "a"],
        "text": 'ann at door (80, false, [1,"a"])',
        "braces": "{literal} {80}",
        "literal": 7,
        "nested": [{"level": 80}, "e", 12.5],
    }
    assert type(action.input["int"]) is int
    assert type(action.input["bool"]) is bool


def test_template_device_targets_the_emitter() -> None:
    rules = one_rule("    when: {event: e}\n    then: {skill: s, device: '{device}'}\n")
    [action] = rules.match(event("lamp-7", "e"), tags=None, now=0)
    assert action.device == "lamp-7"


def test_missing_template_value_means_no_fire_and_no_cooldown() -> None:
    rules = one_rule(
        "    when: {event: e}\n"
        "    then: {skill: s, where: {room: '{tags.room}'}, input: {who: '{data.who}'}}\n"
        "    cooldown_s: 60\n"
    )
    assert rules.match(event("d", "e", who="ann"), tags=None, now=0) == []  # no tags.room
    assert rules.match(event("d", "e"), tags={"room": "hall"}, now=1) == []  # no data.who
    assert rules.match(event("d", "e", who=None), tags={"room": None}, now=1) == []  # type: ignore[dict-item]
    [action] = rules.match(event("d", "e", who="ann"), tags={"room": "hall"}, now=2)
    assert action.input == {"who": "ann"}


# --------------------------------------------------------------------------------------------
# Cooldown


def test_cooldown_per_rule_with_explicit_now(example: RuleSet) -> None:
    tags = HALL_DOORBELL
    lit = event("lamp-hall", "changed", on=True, brightness=50)
    assert len(example.match(ring(), tags=tags, now=1000.0)) == 1
    assert example.match(ring(), tags=tags, now=1000.0) == []
    assert example.match(ring(), tags=tags, now=1029.999) == []
    # Another rule (no cooldown) is not held back by this one's.
    assert len(example.match(lit, tags=None, now=1010.0)) == 1
    assert len(example.match(lit, tags=None, now=1010.0)) == 1
    # A non-match does not start or extend the cooldown.
    assert example.match(ring("cat"), tags=tags, now=1020.0) == []
    assert len(example.match(ring(), tags=tags, now=1030.0)) == 1
    assert example.match(ring(), tags=tags, now=1059.0) == []
    example.reset()
    assert len(example.match(ring(), tags=tags, now=1059.0)) == 1


def test_cooldown_survives_a_clock_that_steps_back() -> None:
    rules = one_rule("    when: {event: e}\n    then: {skill: s}\n    cooldown_s: 10\n")
    assert len(rules.match(event("d", "e"), tags=None, now=100.0)) == 1
    # A clock stepped back (virtual time reset) must not hold the rule for ever.
    assert len(rules.match(event("d", "e"), tags=None, now=5.0)) == 1
    assert rules.match(event("d", "e"), tags=None, now=6.0) == []


# --------------------------------------------------------------------------------------------
# Topic filters and the skill catalog


def test_event_filters_are_narrow_and_deduplicated() -> None:
    rules = parse_rules(
        """
rules:
  - {name: a, when: {event: ring, device: door-1}, then: {skill: s}}
  - {name: b, when: {event: ring, device: door-1}, then: {skill: s}}
  - {name: c, when: {event: ring, device: door-2}, then: {skill: s}}
  - {name: d, when: {event: moved}, then: {skill: s}}
  - {name: e, when: {event: moved, device: cam-1}, then: {skill: s}}
  - {name: f, enabled: false, when: {event: gone}, then: {skill: s}}
"""
    )
    assert rules.event_filters("edge/x", "home") == [
        "edge/x/home/dev/+/event/moved",
        "edge/x/home/dev/door-1/event/ring",
        "edge/x/home/dev/door-2/event/ring",
    ]
    assert RuleSet().event_filters("edgeagent", "home") == []


def test_check_warns_for_unknown_skills(example: RuleSet) -> None:
    assert example.check(["set_brightness", "turn_on"]) == []
    warnings_ = example.check(["set_brightnes", "turn_on"])
    assert len(warnings_) == 3
    assert warnings_[0] == (
        "rule 'hall-light-on-ring': no device announces skill 'set_brightness'; "
        "did you mean 'set_brightnes'?"
    )
    assert example.check([]) == [
        f"rule {name!r}: no device announces skill 'set_brightness'"
        for name in ("hall-light-on-ring", "dim-hall-when-warm", "kitchen-follows-hall")
    ]


# --------------------------------------------------------------------------------------------
# Errors: file, line, field and rule


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    return str(err.value).replace(str(path), "rules.yaml")


GOOD_HEAD = """rules:
  - name: ok
    when: {event: e}
    then: {skill: s}
"""


def test_unknown_field_names_file_line_and_field(tmp_path: Path) -> None:
    text = GOOD_HEAD + "  - name: second\n    when: {event: e}\n    then: {skill: s}\n    cool: 3\n"
    assert load_error(tmp_path, text) == (
        "rules.yaml:8: rules.1.cool: unknown field "
        "(check the spelling; see --help or the docs for valid fields)"
    )


def test_unknown_field_inside_then(tmp_path: Path) -> None:
    text = GOOD_HEAD + "  - name: b\n    when: {event: e}\n    then:\n      skil: s\n"
    msg = load_error(tmp_path, text)
    assert "rules.yaml:8: rules.1.then.skil: unknown field" in msg
    assert "rules.yaml:8: rules.1.then.skill: Field required" in msg


def test_bad_mode_names_the_line(tmp_path: Path) -> None:
    text = (
        GOOD_HEAD
        + "  - name: b\n    when: {event: e}\n    then:\n      skill: s\n      mode: any\n"
    )
    assert (
        load_error(tmp_path, text)
        == "rules.yaml:9: rules.1.then.mode: Input should be 'one' or 'all'"
    )


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    assert load_error(tmp_path, GOOD_HEAD + "  - name: [b\n").startswith(
        "rules.yaml:6: invalid YAML"
    )


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_rules("/nonexistent/rules.yaml")


def test_unknown_operator_names_rule_and_line(tmp_path: Path) -> None:
    text = GOOD_HEAD + (
        "  - name: hall-light-on-ring\n"
        "    when: {event: ring}\n"
        "    if:\n"
        "      data.who: {neq: cat}\n"
        "    then: {skill: s}\n"
    )
    assert load_error(tmp_path, text) == (
        "rules.yaml:7: rules.1.if: rule 'hall-light-on-ring': data.who: unknown operator 'neq' "
        "(use one of eq, ne, gt, ge, lt, le, in, contains, exists); did you mean 'ne'?"
    )


def test_duplicate_names(tmp_path: Path) -> None:
    text = GOOD_HEAD + GOOD_HEAD.removeprefix("rules:\n")
    assert load_error(tmp_path, text) == (
        "rules.yaml:1: rules: rule 'ok': the name is used twice (rules.0 and rules.1); "
        "rule names must be unique"
    )


def test_duplicate_names_when_built_in_code() -> None:
    rule = load_rules(RULES_FILE).rules[0]
    with pytest.raises(ConfigError, match=r"^rule 'hall-light-on-ring': the name is used twice"):
        RuleSet([rule, rule])


SEMANTIC_ERRORS = [
    (
        "    when: {event: e}\n    if: {payload.who: x}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': 'payload.who': unknown root 'payload' "
        "(a path starts with device, name, ts, data, tags)",
    ),
    (
        "    when: {event: e}\n    if: {device.id: x}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': 'device.id': 'device' is a plain value",
    ),
    (
        "    when: {event: e}\n    if: {data..x: 1}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': 'data..x': malformed path",
    ),
    (
        "    when: {event: e}\n    if: {data.x: {}}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': data.x: no operator",
    ),
    (
        "    when: {event: e}\n    if: {data.x: [a, b]}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': data.x: a list is ambiguous here",
    ),
    (
        "    when: {event: e}\n    if: {data.x: {gt: [1]}}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': data.x.gt: needs a number or a string, got [1]",
    ),
    (
        "    when: {event: e}\n    if: {data.x: {in: cat}}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': data.x.in: needs a non-empty list, got 'cat'",
    ),
    (
        "    when: {event: e}\n    if: {data.x: {exists: 1}}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': data.x.exists: needs true or false, got 1",
    ),
    (
        "    when: {event: e}\n    if: {data.x: {contains: [1]}}\n    then: {skill: s}\n",
        "rules.yaml:4: rules.0.if: rule 'r': data.x.contains: needs a string, number or bool",
    ),
    (
        "    when: {event: e}\n    then:\n      skill: s\n      input: {a: [x, '{dta.who}']}\n",
        "rules.yaml:4: rules.0.then: rule 'r': input.a.1: template '{dta.who}': 'dta.who': "
        "unknown root 'dta' (a path starts with device, name, ts, data, tags); "
        "did you mean 'data'?",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, input: {a: 'x {data.who'}}\n",
        "rules.yaml:4: rules.0.then: rule 'r': input.a: unclosed '{' in 'x {data.who'",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, input: {a: 'x }'}}\n",
        "rules.yaml:4: rules.0.then: rule 'r': input.a: unmatched '}' in 'x }'",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, input: {a: 'x {}'}}\n",
        "rules.yaml:4: rules.0.then: rule 'r': input.a: empty placeholder",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, where: {room: '{tag.room}'}}\n",
        "rules.yaml:4: rules.0.then: rule 'r': where.room: template '{tag.room}'",
    ),
    (
        "    when: {event: e}\n    then: {skill: 'set brightness'}\n",
        "rules.yaml:4: rules.0.then: rule 'r': skill: invalid skill name 'set brightness'",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, device: 'a/b'}\n",
        "rules.yaml:4: rules.0.then: rule 'r': device: invalid device id 'a/b'",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, device: d, where: {room: hall}}\n",
        "rules.yaml:4: rules.0.then: rule 'r': give device or where, not both",
    ),
    (
        "    when: {event: e}\n    then: {skill: s, device: d, mode: all}\n",
        "rules.yaml:4: rules.0.then: rule 'r': mode: 'all' needs where",
    ),
    (
        "    when: {event: '#'}\n    then: {skill: s}\n",
        "rules.yaml:3: rules.0.when: rule 'r': event: invalid event name '#'",
    ),
    (
        "    when: {event: e, device: 'x+'}\n    then: {skill: s}\n",
        "rules.yaml:3: rules.0.when: rule 'r': device: invalid device id 'x+'",
    ),
    (
        "    when: {event: e}\n    then: {skill: s}\n    cooldown_s: -1\n",
        "rules.yaml:5: rules.0.cooldown_s: Input should be greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(("body", "expected"), SEMANTIC_ERRORS)
def test_semantic_errors_name_rule_line_and_field(tmp_path: Path, body: str, expected: str) -> None:
    assert load_error(tmp_path, "rules:\n  - name: r\n" + body).startswith(expected)


def test_bad_rule_name(tmp_path: Path) -> None:
    msg = load_error(
        tmp_path, "rules:\n  - name: a b\n    when: {event: e}\n    then: {skill: s}\n"
    )
    assert msg.startswith("rules.yaml:2: rules.0.name: invalid rule name 'a b'")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "rules:\n"
        "  - name: one\n"
        "    when: {event: e}\n"
        "    if: {data.x: {neq: 1}}\n"
        "    then: {skill: s}\n"
        "  - name: two\n"
        "    when: {event: e}\n"
        "    then: {skill: 's/t'}\n"
    )
    lines = load_error(tmp_path, text).splitlines()
    assert [line.split(": ", 3)[:3] for line in lines] == [
        ["rules.yaml:4", "rules.0.if", "rule 'one'"],
        ["rules.yaml:8", "rules.1.then", "rule 'two'"],
    ]


def test_empty_file_is_an_empty_rule_set(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("# nothing yet\n")
    rules = load_rules(path)
    assert len(rules) == 0
    assert rules.match(ring(), tags=None, now=0) == []
