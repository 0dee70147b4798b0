"""Natural-language commands → a skill, its input and a ``where``: the coordinator's router.

::

    catalog = Catalog([("lamp-kitchen", {"room": "kitchen", "kind": "lamp"}, lamp_specs), …])
    router = Router(catalog)                       # threshold 0.6, the zoo's intent model
    router.route("turn off the kitchen lights")
    # Interpretation(skill='turn_off', input={}, where={'room': 'kitchen', 'kind': 'lamp'},
    #                mode='one', confidence=0.95, layer='grammar', explanation='grammar: …')
    router.route("order pizza")
    # Unsure(candidates=[], reason='grammar: no command verb recognized; model: …')

Three layers, tried in order; the first confident, runnable reading wins (a fourth, an on-device
LLM, is optional: ``Router(catalog, llm="zoo:smollm2")``, :mod:`.layer_llm`, docs/llm-routing.md):

1. **exact**: the text is a skill name, or ``skill_name key=value …``. Keys naming an input
   property of the skill go to ``input`` (values parsed as JSON when they parse, else strings);
   keys naming a device tag (``room``, ``kind``, …) go to ``where`` (``device=ID``: that device's
   tags); ``mode=all`` sets the mode. Confidence 1.
2. **grammar**: a small set of regular expressions for command verbs ("turn off", "switch … on",
   "dim … to 30%", "set … to 21 degrees", questions, "ring", …), room words (the catalog's
   ``room`` tag values plus synonyms: "living room", "lounge" → ``living``) and kind words
   ("lights", "lamp" → the ``kind`` tag value the catalog's lamps use, through
   :data:`KIND_TAGS`); where those tables know no skill for the devices, their manifests (below).
3. **model**: the zoo's tiny intent model (``edgeagent.models.zoo.intent.interpret``); its
   (intent, kind) pair maps to a skill with the same tables as the grammar. Confidence is the
   product of the probabilities of the heads used (intent, kind, and for a read the room unless
   the text names one). numpy and the runtime are imported, and the model loaded, on first use
   only; when they are missing the router still works with the first two layers and says so.

In every layer the skill must exist on a device the ``where`` selects: the router never routes to
a skill no device has. Numbers ("30%", "21 degrees", "twenty one degrees", "forty percent",
"half") fill the skill's one required numeric input property, converted to the unit its schema
declares (°F and kelvin → °C when the property or skill description says Celsius; a duration
"for 10 minutes" fills a property in minutes or seconds) and checked against the schema's type
and bounds. Below ``threshold``, or when no reading can run as is, :meth:`Router.route` returns
:class:`Unsure` with up to three candidates from all layers, best first, the reason, and when it
knows what to ask a ``question`` back ("Which one: lamp-hall (room hall) or lamp-kitchen (room
kitchen)? Name the room, or say all.").

**Nothing is carried out that was not understood with certainty.** Besides the threshold:

- *Only commands act* (``mood.py``): the text is split into clauses, each an imperative
  ("turn off …", "kitchen light off", "could you …", "I'd like …"), a question, or a statement
  (present, past, future). A question may run a *read* skill; statements ("it's dark in the
  hall"), the past ("I turned the lamp off"), the future ("… tomorrow", "I'm going to …", "remind
  me to …"), conditions ("if …", "when I …", "unless …"), advice questions ("should I …?", "is it
  a good idea to …") and suggestions ("how about turning …") are never carried out, nor answered
  with a read: Unsure, with the reading as a candidate and a question back. Negation ("don't …")
  stays refused.
- *Rooms*: a word in a room's place the router does not know ("kitchn", "in the nursery", "the
  games room"; ``places.py``) is asked back with the closest rooms, never dropped.
- *Several devices*: an actuation or read whose ``where`` selects several devices and names no
  room is asked back, unless the text says "all"/"every"/"both" (``mode="all"``), counts them
  ("the 2 lamps"), or takes any ("a light"); a room and a plural ("the kitchen lights") is all of
  them in that room.
- *Units*: a unit that cannot be converted to the schema's ("lumens", percent for a temperature,
  degrees for a percentage), or a number for a skill whose schema names no unit, is asked back.
- *The device's kind*: an actuation needs the devices' kind selected by the text (a kind word,
  a cue such as "warmer" or "%", a device id, or the words of the skill's name: "the target" →
  ``set_target``); a value is never poured into a skill of a kind the text did not select, and
  the model's kind and room guesses never decide an actuation. A number, time or duration the
  skill does not take makes it Unsure ("turn on the lights at 7").
- *Unknown devices* (``manifest.py``): skills are also matched through their manifests: skill
  names split into words, descriptions and device tags, with stems and topics ("warm" →
  temperature). A read matches on a topic of its name or description among the devices the text
  selects ("how warm is it in the garden" → ``get_temperature`` on ``kind=probe, room=garden``);
  an actuation needs the skill name's verb ("stop watering", "water" for ``start_watering``), the
  device, and every required value.

It also answers Unsure, rather than let a later layer decide, when the text is in the exact form
but cannot run, and when the model reads a different skill than the grammar did.

``where`` holds device tag filters only (``{"room": "kitchen", "kind": "lamp"}``), as the
coordinator's registry matches them; a device named by its id ("turn off lamp-kitchen",
``device=lamp-kitchen`` in the exact form) becomes its tags, and is routed to only when those tags
single it out among the devices with the skill.

Pure logic: no MQTT, no I/O except loading the model.
"""

from __future__ import annotations

from ._constants import LAYERS, ROUTER_LAYERS, Layer, Mode
from .catalog import (
    ACTION_SKILLS,
    KIND_CUES,
    KIND_TAGS,
    KIND_WORDS,
    ROOM_WORDS,
    Catalog,
    CatalogDevice,
    Interpretation,
    Plan,
    SupportsRun,
    Unsure,
    kind_concept,
    skill_choices,
)
from .layer_llm import Completer
from .router import Router

__all__ = [
    "ACTION_SKILLS",
    "KIND_CUES",
    "KIND_TAGS",
    "KIND_WORDS",
    "LAYERS",
    "ROOM_WORDS",
    "ROUTER_LAYERS",
    "Catalog",
    "CatalogDevice",
    "Completer",
    "Interpretation",
    "Layer",
    "Mode",
    "Plan",
    "Router",
    "SupportsRun",
    "Unsure",
    "kind_concept",
    "skill_choices",
]
