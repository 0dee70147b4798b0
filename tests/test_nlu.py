"""edgeagent.nlu: the layered router (exact → grammar → model) over the example fleet's catalog,
and its accuracy on a corpus of phrasings held apart from the intent model's templates."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.config import load_config, load_skills
from edgeagent.models.zoo import intent as zoo
from edgeagent.nlu import LAYERS, Catalog, Interpretation, Layer, Router, Unsure
from edgeagent.protocol import Manifest, SkillSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "smart-home"
CORPUS = Path(__file__).resolve().parent / "data" / "nlu_corpus.yaml"
#: The example fleet's device configs (rules.yaml and other files there are not devices).
FLEET = (
    "doorbell-front",
    "echo",
    "lamp-hall",
    "lamp-kitchen",
    "meter-basement",
    "pump-garage",
    "speaker-living",
    "thermostat-living",
)

# Measured on this corpus (133 phrasings, 57 of them must not act; the router was tuned on it, so
# these are development numbers, not held-out ones) with the committed zoo:intent model
# (threshold 0.6): overall 1.000, grammar alone 0.992, model alone 0.782, no wrong actuation.
# The floors leave a margin for a retrained model.
FLOOR_OVERALL = 0.90
FLOOR_GRAMMAR_ALONE = 0.88
FLOOR_MODEL_ALONE = 0.55
CONFIDENTLY_WRONG = 0.8


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """What a coordinator's registry would know about the example fleet: each device's tags and
    skill specs, from the same config files and skill modules the agents run."""
    entries = []
    for name in FLEET:
        cfg = load_config(EXAMPLES / f"{name}.yaml")
        skills, _, _ = load_skills(cfg)
        entries.append((cfg.device, cfg.tags, [s.spec for s in skills]))
    return Catalog(entries)


@pytest.fixture(scope="module")
def router(catalog: Catalog) -> Router:
    return Router(catalog)


def selects(catalog: Catalog, skill: str, where: Mapping[str, str]) -> set[str]:
    return set(catalog.devices_with(skill, where))


def routed(result: Interpretation | Unsure) -> Interpretation:
    assert isinstance(result, Interpretation), f"expected an interpretation, got {result}"
    return result


def unsure(result: Interpretation | Unsure) -> Unsure:
    assert isinstance(result, Unsure), f"expected Unsure, got {result}"
    assert len(result.candidates) <= 3
    return result


def assert_runnable_skills(catalog: Catalog, result: Interpretation | Unsure) -> None:
    """Never a skill no selected device has: neither the reading nor any candidate."""
    readings = result.candidates if isinstance(result, Unsure) else [result]
    for r in readings:
        assert catalog.devices_with(r.skill, r.where), f"{r.skill} on {r.where}: no such device"


# --- the catalog --------------------------------------------------------------------------------


def test_catalog_views(catalog: Catalog) -> None:
    assert {"turn_on", "turn_off", "set_brightness", "set_target", "press"} <= set(
        catalog.skill_names
    )
    assert list(catalog.skill_names) == sorted(catalog.skill_names)
    assert catalog.rooms == {"kitchen", "hall", "living", "basement", "garage"}
    assert {"lamp", "thermostat", "doorbell", "speaker"} <= catalog.kinds
    assert catalog.tags["room"] == catalog.rooms
    assert catalog.devices_with("turn_off", {"room": "kitchen"}) == ("lamp-kitchen",)
    assert set(catalog.devices_with("turn_off")) == {"lamp-kitchen", "lamp-hall"}
    assert catalog.devices_with("turn_off", {"room": "living"}) == ()
    spec = catalog.spec("set_target")
    assert spec is not None
    assert spec.input_schema["required"] == ["celsius"]


def test_catalog_from_manifests_and_duplicates(catalog: Catalog) -> None:
    manifests = [
        Manifest(
            device=d.device,
            fleet="home",
            tags=dict(d.tags),
            skills=list(d.skills),
            max_payload=1024,
            agent_version="0",
        )
        for d in catalog.devices
    ]
    again = Catalog.from_manifests(manifests)
    assert again.skill_names == catalog.skill_names
    assert again.rooms == catalog.rooms
    first = catalog.entries[0]
    with pytest.raises(ValueError, match="listed twice"):
        Catalog([first, first])


# --- layer 1: exact -----------------------------------------------------------------------------


def test_exact_skill_name(router: Router) -> None:
    r = routed(router.route("turn_off"))
    assert (r.layer, r.skill, r.input, r.where, r.mode, r.confidence) == (
        "exact",
        "turn_off",
        {},
        {},
        "one",
        1.0,
    )
    assert r.explanation.startswith("exact:")


def test_exact_with_input_where_and_mode(router: Router) -> None:
    r = routed(router.route("set_brightness level=30 room=kitchen"))
    assert (r.layer, r.skill, r.input, r.where) == (
        "exact",
        "set_brightness",
        {"level": 30},
        {"room": "kitchen"},
    )
    r = routed(router.route("set_brightness level=30 kind=lamp mode=all"))
    assert (r.where, r.mode) == ({"kind": "lamp"}, "all")
    r = routed(router.route('press who="the postman"'))
    assert r.input == {"who": "the postman"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("set_target celsius=50", "above the maximum 30"),
        ("set_brightness room=kitchen", "needs level"),
        ("set_brightness level=30 colour=red", "neither an input"),
        ("set_brightness level=30 room=bedroom", "no device with room=bedroom"),
    ],
)
def test_exact_problems_are_unsure(router: Router, catalog: Catalog, text: str, why: str) -> None:
    u = unsure(router.route(text))
    assert why in u.reason
    exact = [c for c in u.candidates if c.layer == "exact"]
    if why.startswith("no device"):
        # Named in the reason, but never offered as a candidate: no device could run it.
        assert not exact, u
        return
    assert exact, u
    assert exact[0].confidence <= 0.5
    assert why in exact[0].explanation


# --- layer 2: grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "skill", "where", "value", "mode"),
    [
        ("turn off the kitchen lights", "turn_off", {"room": "kitchen"}, {}, "one"),
        ("switch the hall lamp on", "turn_on", {"room": "hall"}, {}, "one"),
        ("dim the hall lamp to 30%", "set_brightness", {"room": "hall"}, {"level": 30}, "one"),
        (
            "set the living room to 22 degrees",
            "set_target",
            {"room": "living"},
            {"celsius": 22},
            "one",
        ),
        ("what's the temperature in the lounge", "read_temperature", {"room": "living"}, {}, "one"),
        ("is the hall light on?", "get_state", {"room": "hall"}, {}, "one"),
        ("ring the doorbell", "press", {"kind": "doorbell"}, {}, "one"),
        ("did anyone ring?", "recent_rings", {"kind": "doorbell"}, {}, "one"),
        ("toggle the kitchen lamp", "toggle", {"room": "kitchen"}, {}, "one"),
        ("turn off all the lights", "turn_off", {"kind": "lamp"}, {}, "all"),
        ("switch every lamp on", "turn_on", {"kind": "lamp"}, {}, "all"),
        ("read temperature", "read_temperature", {}, {}, "one"),
    ],
)
def test_grammar(
    router: Router,
    catalog: Catalog,
    text: str,
    skill: str,
    where: dict[str, str],
    value: dict[str, Any],
    mode: str,
) -> None:
    r = routed(router.route(text))
    assert r.layer == "grammar", r
    assert r.skill == skill, r
    assert selects(catalog, r.skill, r.where) == selects(catalog, skill, where), r
    assert r.input == value
    assert r.mode == mode
    assert r.confidence >= router.threshold
    assert r.explanation.startswith("grammar:")


def test_grammar_where_names_the_catalogs_tags(router: Router) -> None:
    r = routed(router.route("turn off the kitchen lights"))
    assert r.where == {"room": "kitchen", "kind": "lamp"}  # lights → the catalog's kind=lamp
    assert '"lights"' in r.explanation
    assert '"kitchen"' in r.explanation
    # A room-less command for a kind with several devices: a question back, not one of them.
    u = unsure(router.route("turn the lights on"))
    assert u.question is not None
    assert "lamp-hall" in u.question
    assert "lamp-kitchen" in u.question
    r = routed(router.route("turn all the lights on"))
    assert (r.where, r.mode) == ({"kind": "lamp"}, "all")
    r = routed(router.route("put a light on"))  # "a light": any one of them will do
    assert (r.skill, r.where, r.mode) == ("turn_on", {"kind": "lamp"}, "one")
    r = routed(router.route("is it warm in the sitting room"))
    assert r.where["room"] == "living"


def test_grammar_maps_kinds_through_the_table() -> None:
    lamp = _specs("lamp-kitchen")
    cat = Catalog([("bulb-1", {"room": "kitchen", "kind": "light"}, lamp)])
    r = routed(Router(cat, model=None).route("switch off the kitchen lamp"))
    assert r.where == {"room": "kitchen", "kind": "light"}


def test_grammar_alone_does_not_load_the_model(catalog: Catalog) -> None:
    router = Router(catalog)
    routed(router.route("turn off the kitchen lights"))
    assert router.model_status == "not loaded"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("dim the kitchen lamp", "needs level"),
        ("set the kitchen lamp to 150%", "above the maximum 100"),
        ("set the kitchen lamp to 22 degrees", "percent, not degrees"),
        ("it's freezing in the lounge", "needs celsius"),
    ],
)
def test_grammar_input_problems_are_unsure(router: Router, text: str, why: str) -> None:
    u = unsure(router.route(text))
    assert any(why in c.explanation for c in u.candidates), u
    assert all(c.confidence <= 0.5 for c in u.candidates if why in c.explanation)


def test_never_routes_to_a_skill_no_device_has(catalog: Catalog) -> None:
    thermostat = [d for d in catalog.entries if d[0] == "thermostat-living"]
    only = Catalog(thermostat)
    for model in (None, "zoo:intent"):
        router = Router(only, model=model)
        for text in ("turn off the kitchen lights", "turn on the heating", "ring the doorbell"):
            result = router.route(text)
            assert_runnable_skills(only, result)
            u = unsure(result)
            assert all(c.skill in only.skill_names for c in u.candidates)
    u = unsure(Router(catalog).route("turn on the bedroom lights"))
    assert "bedroom" in u.reason
    u = unsure(Router(catalog).route("lock the front door"))
    assert "no door device" in u.reason


@pytest.mark.parametrize(
    ("text", "skill", "where", "value"),
    [
        ("turn off lamp-kitchen", "turn_off", {"room": "kitchen"}, {}),
        ("set lamp-hall to 40%", "set_brightness", {"room": "hall"}, {"level": 40}),
        ("turn off the 2 lamps", "turn_off", {"kind": "lamp"}, {}),  # a count, not a level
        ("warm the lounge to 20.5 degrees", "set_target", {"room": "living"}, {"celsius": 20.5}),
    ],
)
def test_grammar_numbers_and_device_ids(
    router: Router,
    catalog: Catalog,
    text: str,
    skill: str,
    where: dict[str, str],
    value: dict[str, Any],
) -> None:
    r = routed(router.route(text))
    assert (r.skill, r.input) == (skill, value)
    assert selects(catalog, r.skill, r.where) == selects(catalog, skill, where)


def test_a_device_named_by_id_becomes_its_tags(router: Router) -> None:
    r = routed(router.route("turn off lamp-kitchen"))
    assert r.where == {"room": "kitchen", "kind": "lamp"}  # tag filters only, as the registry
    r = routed(router.route("turn_off device=lamp-hall"))
    assert (r.layer, r.where) == ("exact", {"room": "hall", "kind": "lamp"})
    lamp = _specs("lamp-kitchen")
    twins = Catalog([(d, {"room": "kitchen", "kind": "lamp"}, lamp) for d in ("lamp-a", "lamp-b")])
    for text in ("turn off lamp-a", "turn_off device=lamp-a"):
        u = unsure(Router(twins, model=None).route(text))
        assert "cannot name lamp-a alone" in u.reason + " ".join(
            c.explanation for c in u.candidates
        )
    unsure(Router(twins, model=None).route("turn_off device=lamp-z"))


def test_times_are_not_levels(router: Router) -> None:
    u = unsure(router.route("wake me at 6:30 tomorrow"))
    assert not any(c.input for c in u.candidates), u
    unsure(router.route("set a timer for 10 minutes"))


def test_negated_commands_are_never_acted_on(router: Router) -> None:
    u = unsure(router.route("don't turn off the kitchen light"))
    assert "negated" in u.reason


def test_below_threshold_gives_at_most_three_candidates(catalog: Catalog) -> None:
    strict = Router(catalog, threshold=0.99, model=None)
    u = unsure(strict.route("hall light on please"))  # grammar 0.85: a kind and "on", no verb
    (grammar,) = [c for c in u.candidates if c.layer == "grammar"]
    assert (grammar.skill, grammar.where["room"], grammar.confidence) == ("turn_on", "hall", 0.85)
    assert "< threshold 0.99" in u.reason
    confidences = [c.confidence for c in u.candidates]
    assert confidences == sorted(confidences, reverse=True)
    # An ambiguous command: both lamps could be meant, no room or kind named.
    u = unsure(Router(catalog, model=None).route("turn it off"))
    assert 1 <= len(u.candidates) <= 3
    assert "which device" in u.candidates[0].explanation


# --- never actuate what was not understood with certainty (issue 10) ----------------------------


def _probe_fleet(catalog: Catalog) -> Catalog:
    """The issue's fleet: the kitchen lamp and a garden probe no table of the router knows."""
    kitchen = [e for e in catalog.entries if e[0] == "lamp-kitchen"]
    probe = spec("get_temperature", "read", "Air temperature, degrees Celsius.")
    return Catalog([*kitchen, ("probe-garden", {"kind": "probe", "room": "garden"}, [probe])])


def test_a_value_never_goes_to_a_kind_the_text_did_not_select(catalog: Catalog) -> None:
    fleet = _probe_fleet(catalog)
    for model in (None, "zoo:intent"):
        u = unsure(Router(fleet, model=model).route("set the target to 18"))
        assert all(c.confidence <= 0.5 for c in u.candidates), u
        assert "names no light" in u.reason
        assert u.question
    # With a thermostat in the fleet, "the target" is the word of its skill's name.
    r = routed(Router(catalog).route("set the target to 18"))
    assert (r.skill, r.input) == ("set_target", {"celsius": 18})


def test_unknown_devices_are_matched_by_their_manifests(catalog: Catalog) -> None:
    fleet = _probe_fleet(catalog)
    for router in (
        Router(fleet, model=None),
        Router(Catalog([*catalog.entries, *fleet.entries[1:]])),
    ):
        r = routed(router.route("how warm is it in the garden"))
        assert (r.skill, r.where) == ("get_temperature", {"room": "garden"})
        assert "manifest" in r.explanation
    sprinkler = spec(
        "start_watering",
        description="Water the garden.",
        properties={"minutes": {"type": "integer", "minimum": 1, "maximum": 60}},
    )
    garden = Catalog([("sprinkler-1", {"kind": "sprinkler", "room": "garden"}, [sprinkler])])
    r = routed(Router(garden, model=None).route("water the garden for 10 minutes"))
    assert (r.skill, r.input) == ("start_watering", {"minutes": 10})
    u = unsure(Router(garden, model=None).route("water the garden"))  # how long?
    assert "needs minutes" in u.reason


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("if someone rings the doorbell, tell me", "condition"),
        ("should I turn the heating up to 25?", "advice question"),
        ("I turned off the kitchen lights", "about the past"),
        ("I'm going to switch off the hall light", "about the future"),
        ("turn on the kitchen lamp tomorrow", "about the future"),
        ("it's dark in the hall", "statement"),
        ("how about turning off the kitchen light", "question"),
        ("remind me to turn off the kitchen light", "future"),
    ],
)
def test_only_commands_act(router: Router, text: str, why: str) -> None:
    u = unsure(router.route(text))
    assert why in u.reason, u
    assert u.question
    assert all(c.confidence <= 0.5 for c in u.candidates), u


def test_questions_run_reads_only(router: Router) -> None:
    r = routed(router.route("can you tell me if the hall light is on"))
    assert r.skill == "get_state"
    r = routed(router.route("did anyone ring while I was out?"))
    assert r.skill == "recent_rings"


@pytest.mark.parametrize(
    ("text", "word", "suggested"),
    [
        ("turn off the kitchn light", "kitchn", "kitchen"),
        ("switch on the lamp in the hallwy", "hallwy", "hall"),
        ("dim the kichen lamp to 30%", "kichen", "kitchen"),
        ("turn on the light in the nursery", None, None),
        ("switch off the lamp in the games room", "games room", None),
    ],
)
def test_unrecognised_rooms_are_asked_back(
    router: Router, text: str, word: str | None, suggested: str | None
) -> None:
    u = unsure(router.route(text))
    assert u.question is not None
    if word:
        assert f'"{word}"' in u.question
    if suggested:
        assert f"the {suggested}" in u.question
    assert all(c.confidence <= 0.5 for c in u.candidates), u


def test_several_devices_without_a_room_are_asked_back(router: Router) -> None:
    for text in ("turn off the lamp", "dim the light to 40%", "is the lamp on?"):
        u = unsure(router.route(text))
        assert u.question is not None, (text, u)
        assert "lamp-hall" in u.question
        assert "lamp-kitchen" in u.question
    r = routed(router.route("switch both lamps off"))
    assert (r.skill, r.mode) == ("turn_off", "all")
    lamp = _specs("lamp-kitchen")
    two = Catalog([(d, {"room": "kitchen", "kind": "lamp"}, lamp) for d in ("lamp-a", "lamp-b")])
    u = unsure(Router(two, model=None).route("turn off the kitchen lamp"))  # which of the two?
    assert u.question is not None
    assert "lamp-a" in u.question
    r = routed(Router(two, model=None).route("turn off the kitchen lights"))  # all of them
    assert (r.where, r.mode) == ({"room": "kitchen", "kind": "lamp"}, "all")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("set the heating to 70 fahrenheit", 21.1),
        ("heat the lounge to 68 °F", 20),
        ("set the heating to twenty one degrees", 21),
        ("make the lounge nineteen and a half degrees", 19.5),
    ],
)
def test_units_are_converted_and_number_words_read(router: Router, text: str, value: float) -> None:
    r = routed(router.route(text))
    assert r.skill == "set_target"
    assert r.input["celsius"] == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "skill", "value"),
    [
        ("dim the kitchen lamp to forty percent", "set_brightness", {"level": 40}),
        ("hall light to half please", "set_brightness", {"level": 50}),
        ("turn off the 2 lamps", "turn_off", {}),
    ],
)
def test_number_words(router: Router, text: str, skill: str, value: dict[str, Any]) -> None:
    r = routed(router.route(text))
    assert (r.skill, r.input) == (skill, value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("set the heating to 25 fahrenheit", "below the minimum 5"),  # -3.9 °C
        ("set the kitchen lamp to 40 lumens", "not lumens"),
        ("put the heating on 50 percent", "not percent"),
    ],
)
def test_units_that_do_not_fit_are_asked_back(router: Router, text: str, why: str) -> None:
    u = unsure(router.route(text))
    assert why in u.reason
    assert u.question


def test_cli_ask_asks_back_and_does_nothing(
    broker_url: str, fleet_name: str, cli_env: dict[str, str]
) -> None:
    """`edgeagent ask` against a real broker: a request matching two lamps is asked back (exit
    3, the question on stdout) and changes nothing; a certain one is carried out (exit 0)."""
    from edgeagent.client import Fleet
    from tests.test_coordinator import coordinator, lamp

    async def ask(text: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeagent", "--fleet", fleet_name, "ask", text,
            env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def main() -> None:
        async with (
            lamp(broker_url, fleet_name, "lamp-hall", "hall"),
            lamp(broker_url, fleet_name, "lamp-kitchen", "kitchen"),
            coordinator(broker_url, fleet_name),
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            for text, asked in (
                ("turn on the lamp", "Which one: lamp-hall"),
                ("if someone rings the doorbell, turn on the lamp", "That is a condition"),
            ):
                code, out, err = await ask(text)
                assert code == 3, (out, err)
                assert out.startswith(asked), (out, err)
            for device in ("lamp-hall", "lamp-kitchen"):
                assert (await fleet.call(device, "get_state"))["on"] is False
            code, out, err = await ask("turn on the hall lamp")
            assert code == 0, (out, err)
            assert (await fleet.call("lamp-hall", "get_state"))["on"] is True
            assert (await fleet.call("lamp-kitchen", "get_state"))["on"] is False

    asyncio.run(main())


# --- layer 3: the model -------------------------------------------------------------------------


class FakeSession:
    """Returns logits whose softmax gives ``p`` to the chosen label of each head."""

    def __init__(self, intent: str, kind: str, room: str, p: float = 0.9) -> None:
        self.chosen = {"intent": intent, "kind": kind, "room": room}
        self.p = p
        self.calls = 0

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        assert feeds["features"].shape == (1, zoo.BUCKETS)
        self.calls += 1
        out = {}
        for head, labels in (("intent", zoo.INTENTS), ("kind", zoo.KINDS), ("room", zoo.ROOMS)):
            rest = math.log((1 - self.p) / (len(labels) - 1))
            logits = [math.log(self.p) if x == self.chosen[head] else rest for x in labels]
            out[head] = np.array([logits], dtype=np.float32)
        return out


def model_router(catalog: Catalog, session: FakeSession, **kw: Any) -> Router:
    return Router(catalog, session=session, layers=("model",), **kw)


@pytest.mark.parametrize(
    ("intent", "kind", "text", "skill", "value"),
    [
        ("turn_off", "light", "zzz in the kitchen", "turn_off", {}),
        ("set_level", "light", "zzz kitchen 40%", "set_brightness", {"level": 40}),
        ("set_level", "thermostat", "zzz 21 degrees", "set_target", {"celsius": 21}),
        ("query_state", "thermostat", "zzz", "read_temperature", {}),
        ("query_state", "light", "zzz kitchen", "get_state", {}),
        ("notify", "doorbell", "zzz the doorbell", "press", {}),
    ],
)
def test_model_maps_intent_and_kind_to_skills(
    catalog: Catalog, intent: str, kind: str, text: str, skill: str, value: dict[str, Any]
) -> None:
    session = FakeSession(intent, kind, "none", p=0.95)
    r = routed(model_router(catalog, session).route(text))
    assert (r.layer, r.skill, r.input) == ("model", skill, value)
    assert r.explanation.startswith(f"model: intent {intent}")
    assert session.calls == 1


def test_model_confidence_is_the_product_of_the_heads_used(catalog: Catalog) -> None:
    session = FakeSession("query_state", "light", "kitchen", p=0.9)
    r = routed(model_router(catalog, session).route("zzz"))
    assert r.where == {"room": "kitchen", "kind": "lamp"}  # room from the room head
    assert r.confidence == pytest.approx(0.9**3, abs=1e-3)
    # A room the text names is not the model's guess: the room head is left out.
    r = routed(model_router(catalog, session).route("zzz in the kitchen"))
    assert r.confidence == pytest.approx(0.9**2, abs=1e-3)
    assert "room from the text" in r.explanation


def test_model_guesses_never_actuate(catalog: Catalog) -> None:
    """The model's kind and room heads are guesses: an actuation needs them in the text."""
    session = FakeSession("turn_off", "light", "kitchen", p=0.99)
    u = unsure(model_router(catalog, session).route("zzz"))
    assert u.candidates[0].skill == "turn_off"
    assert "names no light" in u.reason
    r = routed(model_router(catalog, session).route("zzz the kitchen lamp"))
    assert (r.skill, r.where) == ("turn_off", {"room": "kitchen", "kind": "lamp"})


def test_model_below_threshold_is_unsure(catalog: Catalog) -> None:
    session = FakeSession("query_state", "light", "kitchen", p=0.7)  # 0.7³ = 0.34
    u = unsure(model_router(catalog, session).route("zzz"))
    assert u.candidates[0].skill == "get_state"
    assert u.candidates[0].layer == "model"
    assert "< threshold" in u.reason
    r = routed(model_router(catalog, session, threshold=0.3).route("zzz"))
    assert r.skill == "get_state"


@pytest.mark.parametrize(
    ("intent", "kind", "why"),
    [
        ("unknown", "none", "not a device command"),
        ("turn_on", "fan", "no fan device"),
        ("lock", "door", "no door device"),
        ("turn_on", "thermostat", "has power_on or switch_on or turn_on"),
    ],
)
def test_model_readings_no_device_can_run_are_unsure(
    catalog: Catalog, intent: str, kind: str, why: str
) -> None:
    u = unsure(model_router(catalog, FakeSession(intent, kind, "none", p=0.99)).route("zzz"))
    assert why in u.reason
    assert_runnable_skills(catalog, u)


def test_real_model_layer(catalog: Catalog) -> None:
    router = Router(catalog, layers=("model",))
    r = routed(router.route("turn off the kitchen lights"))
    assert (r.layer, r.skill, r.where) == ("model", "turn_off", {"room": "kitchen", "kind": "lamp"})
    assert r.confidence > 0.9
    assert router.model_status == "loaded"
    u = unsure(router.route("what's the weather like tomorrow"))
    assert "not a device command" in u.reason


def test_without_the_model_the_router_still_works(catalog: Catalog, tmp_path: Path) -> None:
    broken = Router(catalog, model=str(tmp_path / "missing.onnx"))
    assert routed(broken.route("turn off the kitchen lights")).layer == "grammar"
    u = unsure(broken.route("order pizza"))
    assert "model: layer unavailable" in u.reason
    assert broken.model_status.startswith("unavailable")
    u = unsure(Router(catalog, model=None).route("order pizza"))
    assert "model: layer disabled" in u.reason


def test_missing_numpy_is_reported(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "edgeagent.models.zoo", None)  # import fails as without numpy
    router = Router(catalog, session=FakeSession("turn_off", "light", "kitchen"))
    assert routed(router.route("turn off the kitchen lights")).layer == "grammar"
    u = unsure(router.route("order pizza"))
    assert "model: layer unavailable" in u.reason


def test_numpy_and_the_runtime_are_imported_lazily() -> None:
    code = textwrap.dedent(
        """
        import sys
        from edgeagent.nlu import Catalog, Router
        from edgeagent.protocol import SkillSpec
        spec = SkillSpec(name="turn_off", side_effect="actuate", idempotent=True,
                         input_schema={"type": "object", "properties": {}},
                         output_schema={}, max_concurrency=1, max_queue=1, timeout_s=1)
        router = Router(Catalog([("lamp-1", {"room": "kitchen", "kind": "lamp"}, [spec])]))
        assert router.route("turn off the kitchen light").skill == "turn_off"
        loaded = [m for m in ("numpy", "onnxruntime") if m in sys.modules]
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=60)


_WORDS = (
    *("turn", "on", "off", "the", "kitchen", "hall", "lounge", "bedroom", "lights", "lamp"),
    *("thermostat", "doorbell", "set", "to", "30", "%", "degrees", "all", "every", "dim"),
    *("ring", "press", "toggle", "is", "what", "who", "don't", "please", "22", "-5", "6:30"),
    *("lamp-hall", "set_brightness", "level=3", "room=hall", "kind=lamp", "mode=all", "echo"),
    *("data=x", '"', "'", ",", "?", ":"),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.sampled_from(_WORDS), max_size=10).map(" ".join),
        st.text(max_size=40),
    )
)
def test_any_text_routes_to_a_runnable_skill_or_unsure(
    router: Router, catalog: Catalog, text: str
) -> None:
    result = router.route(text)
    assert_runnable_skills(catalog, result)
    if isinstance(result, Interpretation):
        assert result.confidence >= router.threshold
        spec = catalog.spec(result.skill, result.where)
        assert spec is not None
        assert set(spec.input_schema.get("required", [])) <= set(result.input)
    else:
        assert len(result.candidates) <= 3
        assert result.reason


def test_layers_and_threshold_are_checked(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="threshold"):
        Router(catalog, threshold=1.5)
    with pytest.raises(ValueError, match="unknown layers"):
        Router(catalog, layers=("grammar", "magic"))  # type: ignore[arg-type]
    assert unsure(Router(catalog).route("   ")).reason == "empty text"


# --- the corpus ---------------------------------------------------------------------------------


def _specs(device: str) -> list[SkillSpec]:
    cfg = load_config(EXAMPLES / f"{device}.yaml")
    skills, _, _ = load_skills(cfg)
    return [s.spec for s in skills]


def _corpus() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = yaml.safe_load(CORPUS.read_text())["items"]
    return items


def spec(
    name: str,
    side_effect: str = "actuate",
    description: str = "",
    properties: dict[str, Any] | None = None,
    required: Sequence[str] | None = None,
) -> SkillSpec:
    """A skill spec as a manifest announces it (required: every property unless given)."""
    props = properties or {}
    return SkillSpec.model_validate(
        {
            "name": name,
            "side_effect": side_effect,
            "idempotent": True,
            "description": description,
            "input_schema": {
                "type": "object",
                "properties": props,
                "required": list(props if required is None else required),
            },
            "output_schema": {},
            "max_concurrency": 1,
            "max_queue": 1,
            "timeout_s": 1.0,
        }
    )


def _corpus_devices() -> list[tuple[str, dict[str, str], list[SkillSpec]]]:
    """The corpus's extra devices: kinds no table of the router describes."""
    out = []
    for d in yaml.safe_load(CORPUS.read_text()).get("devices", []):
        skills = [
            spec(s["name"], s["side_effect"], s.get("description", ""), s.get("input"))
            for s in d["skills"]
        ]
        out.append((d["device"], dict(d["tags"]), skills))
    return out


@pytest.fixture(scope="module")
def corpus_catalog(catalog: Catalog) -> Catalog:
    return Catalog([*catalog.entries, *_corpus_devices()])


def _template_pattern() -> re.Pattern[str]:
    """Every utterance the intent recipe's templates can generate, on normalized text."""
    n = zoo.normalize

    def alt(words: Sequence[str] | set[str]) -> str:
        escaped = {re.escape(" ".join(n(w).split())) for w in words}
        return "|".join(sorted(escaped, key=len, reverse=True))

    nouns = alt({w for ws in zoo.KIND_WORDS.values() for w in ws})
    places = alt({w for ws in zoo.ROOM_WORDS.values() for w in ws})
    device = rf"(?:(?:the |my )?(?:(?:{places}) )?(?:{nouns})|the (?:{nouns}) in the (?:{places}))"
    number = r"(?:speed )?#(?: #)?(?:%| percent| degrees)?"
    bodies = []
    for templates in (zoo.TRAIN_TEMPLATES, zoo.TEST_TEMPLATES):
        for specs in templates.values():
            for spec in specs:
                body = spec.rpartition("|")[2].replace("{D}", " qqd ").replace("{N}", " qqn ")
                body = re.escape(" ".join(n(body).split())).replace(r"\ ", " ")
                bodies.append(body.replace("qqd", device).replace("qqn", number))
    prefixes = alt(set(zoo.PREFIXES))
    suffixes = alt({*zoo.SUFFIXES, *zoo.QUESTION_SUFFIXES})
    return re.compile(rf"(?:(?:{prefixes}) )?(?:{'|'.join(bodies)})(?: (?:{suffixes}))?")


def _norm(text: str) -> str:
    return " ".join(zoo.normalize(text).split())


def test_corpus_is_held_apart_from_the_templates() -> None:
    pattern = _template_pattern()
    generated = zoo.generate("train", 400, np.random.default_rng(1))
    generated += zoo.generate("test", 400, np.random.default_rng(2))
    missed = [u.text for u in generated if not pattern.fullmatch(_norm(u.text))]
    assert not missed, f"the template pattern misses generated utterances: {missed[:5]}"
    items = _corpus()
    assert len(items) >= 60
    assert sum(1 for i in items if i.get("unsure")) >= 10
    texts = [i["text"] for i in items]
    assert len(set(texts)) == len(texts)
    produced = [t for t in texts if pattern.fullmatch(_norm(t))]
    assert not produced, f"corpus phrasings the templates can produce: {produced}"


def _correct(catalog: Catalog, item: Mapping[str, Any], result: Interpretation | Unsure) -> bool:
    if item.get("unsure"):
        return isinstance(result, Unsure)
    if isinstance(result, Unsure):
        return False
    expected_input: dict[str, Any] = item.get("input", {})
    return (
        result.skill == item["skill"]
        and selects(catalog, result.skill, result.where)
        == selects(catalog, item["skill"], item["where"])
        and result.mode == item.get("mode", "one")
        and all(
            k in result.input and float(result.input[k]) == float(v)
            for k, v in expected_input.items()
        )
    )


def _evaluate(catalog: Catalog, router: Router) -> tuple[float, list[tuple[Any, ...]]]:
    rows = []
    for item in _corpus():
        result = router.route(item["text"])
        assert_runnable_skills(catalog, result)
        rows.append((item, result, _correct(catalog, item, result)))
    return sum(ok for *_, ok in rows) / len(rows), rows


def test_corpus_accuracy(corpus_catalog: Catalog) -> None:
    catalog = corpus_catalog
    router = Router(catalog)
    accuracy, rows = _evaluate(catalog, router)
    alone: dict[Layer, float] = {}
    for layer in LAYERS[1:]:
        alone[layer], _ = _evaluate(catalog, Router(catalog, layers=(layer,)))
    by_class: dict[str, list[bool]] = {}
    for item, _, ok in rows:
        by_class.setdefault(item.get("class", "-"), []).append(ok)
    by_layer: Counter[str] = Counter()
    right_by_layer: Counter[str] = Counter()
    for _, result, ok in rows:
        key = result.layer if isinstance(result, Interpretation) else "unsure"
        by_layer[key] += 1
        right_by_layer[key] += ok
    unsure_items = [(i, r) for i, r, _ in rows if i.get("unsure")]
    acted_on = [
        (i["text"], r.skill, r.confidence) for i, r in unsure_items if isinstance(r, Interpretation)
    ]
    wrong = [(i, r) for i, r, ok in rows if not ok]
    confidently_wrong = [
        i["text"] for i, r in wrong if isinstance(r, Interpretation) and r.confidence >= 0.8
    ]
    lines = [
        f"nlu corpus: {len(rows)} phrasings, accuracy {accuracy:.3f} "
        f"(threshold {router.threshold}, model {router.model_status})",
        "answered by: "
        + ", ".join(
            f"{k} {by_layer[k]} ({right_by_layer[k]} right)"
            for k in ("exact", "grammar", "model", "unsure")
        ),
        "each layer alone: " + ", ".join(f"{k} {v:.3f}" for k, v in alone.items()),
        f"'unsure' items acted on: {len(acted_on)} {acted_on}",
        "by class: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(by_class.items())),
        f"confidently wrong (>= {CONFIDENTLY_WRONG}): {confidently_wrong}",
        "misses: "
        + "; ".join(
            f"{i['text']!r} → "
            + (f"{r.layer} {r.skill} {r.where}" if isinstance(r, Interpretation) else "Unsure")
            for i, r in wrong
        ),
    ]
    report = "\n".join(lines)
    print("\n" + report)
    assert accuracy >= FLOOR_OVERALL, report
    assert alone["grammar"] >= FLOOR_GRAMMAR_ALONE, report
    assert alone["model"] >= FLOOR_MODEL_ALONE, report
    assert all(conf < CONFIDENTLY_WRONG for *_, conf in acted_on), report
    assert len(confidently_wrong) <= 0.05 * len(rows), report
    # The issue's target: no actuation on a request that must not act, and no wrong actuation.
    spec_of = {(d.device, s.name): s for d in catalog.devices for s in d.skills}
    wrong_actuations = [
        i["text"]
        for i, r, ok in rows
        if not ok
        and isinstance(r, Interpretation)
        and any(
            spec_of[(d, r.skill)].side_effect == "actuate"
            for d in catalog.devices_with(r.skill, r.where)
        )
    ]
    assert not wrong_actuations, report
