"""What the text itself says, to ground an LLM's plan: the actions its verbs mean, the numbers it
says, whether it asks for several things.

A model under constrained decoding writes *some* valid plan for any text; these are the router's
own readings of the text (the grammar's verbs, the number parser), so an LLM step that actuates
with a skill no verb means, or with a number nobody said, is refused (:mod:`.layer_llm`). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .catalog import skill_choices
from .grammar import RULES, SET_VERBS, active_command
from .numbers import convert, words_to_digits
from .readings import Candidate
from .slots import Request

_JOINS = re.compile(r"\s(?:and|and then|then|also|after that|plus)\s|[,;]")


def asks_several(request: Request) -> bool:
    """True when the text asks for more than one action ("turn off the lights and lock the
    door"): one reading of an earlier layer would do only part of it."""
    parts = [p for c in request.mood.clauses for p in _JOINS.split(c.text)]
    return sum(1 for p in parts if active_command(p.strip()) is not None) >= 2


_DIGITS = re.compile(r"(?<![\w.:-])-?\d+(?:[.,]\d+)?")


def said_numbers(request: Request, earlier: Sequence[Candidate] = ()) -> frozenset[float]:
    """The numbers the text says (digits or words, "twenty one", "half" → 50), its first number
    converted to Celsius when it is a temperature in another unit, and the numbers the earlier
    layers put in their inputs (converted to the skill's unit): an actuation's number must be
    one of these, never one the model made up."""
    found = {
        float(m.group(0).replace(",", ".")) for m in _DIGITS.finditer(words_to_digits(request.norm))
    }
    number = request.slots.number
    if number is not None:
        found.add(number.value)
        celsius, _ = convert(number, "celsius")
        if celsius is not None:
            found.add(celsius)
    for c in earlier:
        found.update(
            float(v)
            for v in c.interpretation.input.values()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
    return frozenset(found)


_SET_VERB = re.compile(SET_VERBS)


def verb_skills(request: Request, names: Sequence[str]) -> frozenset[str]:
    """The actuating skills the text's verbs can mean: the grammar's actions ("turn off",
    "lock", a set verb with a number) mapped to skill names, and each of ``names`` whose words
    the text all says ("set speed"). An LLM step that actuates with another skill is refused:
    the model does not get to add an action nobody asked for."""
    norm = request.norm
    actions = {r.action for r in RULES if r.action != "query_state" and r.pattern.search(norm)}
    if request.slots.number is not None and _SET_VERB.search(norm):
        actions.add("set_level")
    found = {n for a in actions for n in skill_choices(a, None)}
    words = set(norm.split())
    found.update(n for n in names if set(n.split("_")) <= words)
    return frozenset(found)
