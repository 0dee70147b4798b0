"""Natural-language commands → a skill, its input and a ``where``: the coordinator's router.

::

    catalog = Catalog([("lamp-kitchen", {"room": "kitchen", "kind": "lamp"}, lamp_specs), …])
    router = Router(catalog)                       # threshold 0.6, the zoo's intent model
    router.route("turn off the kitchen lights")
    # Interpretation(skill='turn_off', input={}, where={'room': 'kitchen', 'kind': 'lamp'},
    #                mode='one', confidence=0.95, layer='grammar', explanation='grammar: …')
    router.route("order pizza")
    # Unsure(candidates=[], reason='grammar: no command verb recognized; model: …')

Three layers, tried in order; the first confident, runnable reading wins:

1. **exact**: the text is a skill name, or ``skill_name key=value …``. Keys naming an input
   property of the skill go to ``input`` (values parsed as JSON when they parse, else strings);
   keys naming a device tag (``room``, ``kind``, …) go to ``where`` (``device=ID``: that device's
   tags); ``mode=all`` sets the mode. Confidence 1.
2. **grammar**: a small set of regular expressions for command verbs ("turn off", "switch … on",
   "dim … to 30%", "set … to 21 degrees", questions, "ring", …), room words (the catalog's
   ``room`` tag values plus synonyms: "living room", "lounge" → ``living``) and kind words
   ("lights", "lamp" → the ``kind`` tag value the catalog's lamps use, through :data:`KIND_TAGS`).
3. **model**: the zoo's tiny intent model (``edgeagent.models.zoo.intent.interpret``); its
   (intent, kind) pair maps to a skill with the same tables as the grammar. Confidence is the
   product of the probabilities of the heads used (intent, kind, and room unless the text names
   a room). numpy and the runtime are imported, and the model loaded, on first use only; when
   they are missing the router still works with the first two layers and says so.

In every layer the skill must exist on a device the ``where`` selects: the router never routes to
a skill no device has. Numbers ("30%", "21 degrees") fill the skill's one required numeric input
property, checked against the schema's type and bounds. Below ``threshold``, or when no reading
can run as is, :meth:`Router.route` returns :class:`Unsure` with up to three candidates from all
layers, best first, instead of guessing.
It also answers Unsure, rather than let a later layer decide, when the text is in the exact form
but cannot run, when the model reads a different skill than the grammar did, and for a negated
command ("don't turn off …").

``where`` holds device tag filters only (``{"room": "kitchen", "kind": "lamp"}``), as the
coordinator's registry matches them; a device named by its id ("turn off lamp-kitchen",
``device=lamp-kitchen`` in the exact form) becomes its tags, and is routed to only when those tags
single it out among the devices with the skill. ``mode`` is ``"all"`` when the text says
"all"/"every"/"everything"/"both"; otherwise ``"one"``, and a command naming a kind but no room
leaves the choice among that kind's devices to the caller.

Pure logic: no MQTT, no I/O except loading the model.
"""

from __future__ import annotations

from ._constants import LAYERS, Layer, Mode
from .catalog import (
    ACTION_SKILLS,
    KIND_CUES,
    KIND_TAGS,
    KIND_WORDS,
    ROOM_WORDS,
    Catalog,
    CatalogDevice,
    Interpretation,
    SupportsRun,
    Unsure,
    kind_concept,
    skill_choices,
)
from .router import Router

__all__ = [
    "ACTION_SKILLS",
    "KIND_CUES",
    "KIND_TAGS",
    "KIND_WORDS",
    "LAYERS",
    "ROOM_WORDS",
    "Catalog",
    "CatalogDevice",
    "Interpretation",
    "Layer",
    "Mode",
    "Router",
    "SupportsRun",
    "Unsure",
    "kind_concept",
    "skill_choices",
]
