"""What kind of speech act a request is: only a command may actuate.

:func:`analyse` splits the text into clauses (at ``, ; : ! ?``, "and then", "so", "but") and
gives each a mood; the request's mood is a command when one clause is an imperative ("turn off
the light", "kitchen light off", "could you …", "I'd like …"), else a question (which may be
answered by a read skill), else what the clauses say: a statement ("it's dark in here"), a past
("I turned the lamp off") or future ("I'm going to turn it off") statement. Some words decide for
the whole text: a condition ("if", "when I …", "unless", …) or an advice question ("should I
…?", "is it a good idea to …") is never carried out, and a time ("tomorrow", "in 10 minutes",
"yesterday") makes a command a plan or a report, not a request to act now.

Pure functions over text; :class:`Mood` says which words decided, for explanations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

MoodKind = Literal["command", "question", "advice", "conditional", "past", "future", "statement"]

#: Moods whose read skills may run (a question is answered; a command may ask for a read).
READS_OK: frozenset[MoodKind] = frozenset({"command", "question"})

_SPLIT = re.compile(r"([,;!?]+|(?<!\d):(?!\d)|\s(?:and then|then|so|but|because|cause|cos)\s)")

# Politeness that looks like a condition or a question but is not one.
_POLITE_TAIL = re.compile(
    r"\b(?:if you (?:would|could|can|will|please|like|don'?t mind|do not mind|wouldn'?t mind)|"
    r"if (?:possible|that'?s (?:ok|okay|alright|fine))|when you (?:get|have) a (?:chance|moment|"
    r"sec|second|minute)|when you can|whenever you can)\b"
)
_POLITE_HEAD = re.compile(
    r"^(?:(?:please|pls|plz|hey|hi|hello|ok|okay|so|um|uh|oh|well|yo|kindly|quickly|just|now|"
    r"and|also|right|alright|go ahead and|let'?s|lets|do me a favou?r and|"
    r"(?:could|can|would|will) (?:you|u)(?: please| kindly| maybe)?(?: mind)?|"
    r"(?:do|would) you mind|any chance (?:you|u) (?:could|can)|is it possible to|"
    r"(?:i'?d|i would) (?:like|love) (?:you|u) to|(?:i|we) (?:want|need) (?:you|u) to|"
    r"(?:you|u) (?:can|could|may|might as well))\b[\s,]*)+"
)

_CONDITIONAL = re.compile(
    r"\b(?:if|whenever|unless|in case|as soon as|provided|assuming|until|till|otherwise|"
    r"after|before|once (?:i|we|you|he|she|they|it|the|someone|somebody|everyone|it'?s))\b"
)
_WHEN_QUESTION = re.compile(
    r"^\s*when(?:'s| is| was| were| did| does| do| will| has| have| had| can| could| should)\b"
)
_WHEN = re.compile(r"\bwhen\b")
#: "tell me if the light is on": a question about now, not a condition.
_ASKS_IF = re.compile(
    r"\b(?:tell me|let me know|check|see|find out)\s+(?:if|whether)\s+(?:[\w'-]+\s+){0,4}?"
    r"(?:is|are|was|were|'s)\b"
)
#: Clause heads after which "if"/"when" asks about now ("check if the door is locked"), unlike
#: "tell me if …" or "if … then …", which ask for something to happen later.
_EMBEDDED = re.compile(
    r"^(?:(?:please |can (?:you|u) |could (?:you|u) )?(?:check|see|find out|look)|is|are|was|"
    r"were|did|does|do|has|have|had|who|what|what's|whats|which|how|how's)\b"
)
_ADVICE = re.compile(
    r"^\s*(?:should|shall|ought)\b|\b(?:should|shall) (?:i|we)\b|\bought (?:i|we )?to\b|"
    r"\bdo (?:you|u) (?:think|reckon|recommend|suggest)\b|\bwould (?:you|u) (?:recommend|"
    r"suggest|advise)\b|\bwhat do (?:you|u) think\b|\bwould it be (?:a good idea|better|wise|"
    r"smart|ok|okay)\b|\bis it (?:a good idea|wise|worth|better|smart|ok|okay|alright|safe|"
    r"sensible)\b|\bwhat if\b|\bdo (?:i|we) (?:need|have) to\b|\bwhat would happen\b|"
    r"\bworth (?:it|turning|switching|setting|putting)\b|\bbetter to\b|\bshould (?:i|we|you)\b"
)
_FUTURE_TIME = re.compile(
    r"\b(?:tomorrow|tonight|later|later on|this (?:morning|afternoon|evening|weekend)|"
    r"next (?:week|month|time|morning|evening)|in (?:a|an|\d+(?:\.\d+)?|a few|a couple of|some|"
    r"half an) (?:minutes?|mins?|hours?|hrs?|seconds?|secs?|days?|moment|while|bit)|"
    r"at (?:noon|midnight|dawn|dusk|sunset|sunrise|night)|at \d{1,2}(?::\d\d)?\s*(?:am|pm|"
    r"o'?clock)|at \d{1,2}:\d\d|(?:on|by|every|each) (?:monday|tuesday|wednesday|thursday|friday|"
    r"saturday|sunday|weekday|weekend)|every (?:day|morning|evening|night|hour|week)|"
    r"each (?:morning|evening|night|day)|eventually|overnight|from now|remind (?:me|us)|"
    r"remember to|don'?t forget|do not forget|schedule|timer)\b"
)
_PAST_TIME = re.compile(
    r"\b(?:yesterday|last (?:night|week|time|month|evening)|ago|earlier|this morning|"
    r"already|just now)\b"
)

_QUESTION_HEAD = re.compile(
    r"^(?:is|are|was|were|isn'?t|aren'?t|wasn'?t|do|does|did|doesn'?t|didn'?t|has|have|"
    r"had|what|whats|what's|how|hows|how's|which|who|whose|who's|when|where|where's|why|any|"
    r"anyone|anybody|tell me|show me|check|let me know|see if|find out|read|report|i wonder|"
    r"(?:i'?d|i would) (?:like|love) to (?:know|see|check|hear)|(?:i|we) (?:want|need) to "
    r"(?:know|see|check)|can (?:you|u) (?:tell|check|see|show|find)|"
    r"could (?:you|u) (?:tell|check|see|show|find))\b"
)
_REQUEST_HEAD = re.compile(
    r"^(?:(?:i|we)(?:'d| would)? (?:like|love|want|need|prefer|wish)|i'd rather|"
    r"(?:i|we)(?:'d| would) rather|could|can|would|give me|get me)\b"
)
_SUBJECT = re.compile(
    r"^(?:i|i'm|im|i've|ive|i'd|i'll|we|we're|were|we've|we'd|we'll|you|you're|youre|you've|"
    r"he|he's|she|she's|they|they're|they've|it|it's|its|there|there's|theres|someone|"
    r"somebody|nobody|no one|everybody|everyone|mum|mom|dad|this|that|that's|thats)\b"
)
#: A past tense or participle ending, without the common words that only look like one.
_ED = r"(?!(?:bed|red|shed|led|need|speed|feed|seed|hundred|embed)\b)[a-z]{2,}ed"
_FUTURE_VERB = re.compile(
    r"\b(?:will|'ll|shall|going to|gonna|about to|plan to|planning to|intend to)\b|^i'll\b|^we'll\b"
)
_PAST_VERB = re.compile(
    r"\b(?:was|were|had|did|'ve|have|has|left|put|shut|rang|rung|went|got|forgot|came|made|"
    r"kept|ran|set|turned|switched|dimmed|locked|unlocked|opened|closed|pressed|flipped|"
    rf"toggled|lowered|raised|changed|adjusted|killed|cut|{_ED})\b"
)
_FINITE = re.compile(
    r"\b(?:is|are|was|were|isn'?t|aren'?t|wasn'?t|weren'?t|has|have|had|hasn'?t|haven'?t|"
    r"needs|need|needed|seems|seem|looks|look|feels|feel|stays|stay|gets|got|went|goes|keeps|"
    r"kept|should|shouldn'?t|must|will|won'?t|would|'ll|rang|rings|came|became|broke|works|"
    rf"'s|{_ED})\b"
)
#: Words an imperative starts with (besides the grammar's verbs): a clause starting with one is a
#: command even when a finite verb follows ("make sure the light is off").
_IMPERATIVE_HEAD = re.compile(
    r"^(?:turn|switch|set|dim|make|put|get|keep|leave|bring|give|let|raise|lower|increase|"
    r"decrease|reduce|drop|bump|crank|boost|start|stop|open|close|shut|lock|unlock|ring|press|"
    r"push|buzz|toggle|flip|kill|cut|light|illuminate|heat|warm|cool|brighten|activate|enable|"
    r"disable|deactivate|power|run|play|pause|resume|mute|unmute|water|arm|disarm|go|change|"
    r"adjust|move|take|fire|knock|douse|extinguish|ensure|reset|sound|chime)\b"
)


@dataclass(frozen=True)
class Clause:
    text: str
    """The clause, normalized."""
    mood: MoodKind
    clue: str


@dataclass(frozen=True)
class Mood:
    """A request's mood and the words that decided it."""

    kind: MoodKind
    clue: str
    clauses: tuple[Clause, ...]

    @property
    def acts(self) -> bool:
        return self.kind == "command"

    @property
    def reads(self) -> bool:
        return self.kind in READS_OK

    def in_command(self, words: str) -> bool:
        """True if ``words`` (normalized) are inside a command clause."""
        if self.kind != "command":
            return False
        pattern = re.compile(rf"(?<![\w-]){re.escape(words.strip())}(?![\w-])")
        return any(c.mood == "command" and pattern.search(c.text) for c in self.clauses)

    def describe(self) -> str:
        names = {
            "command": "a command",
            "question": "a question",
            "advice": "an advice question",
            "conditional": "a condition",
            "past": "about the past",
            "future": "about the future",
            "statement": "a statement",
        }
        return f'{names[self.kind]} ("{self.clue}")' if self.clue else names[self.kind]


def analyse(text: str, normalize: Callable[[str], str]) -> Mood:
    """The mood of ``text``; ``normalize`` is the router's text normalization."""
    raw = text.lower().replace("\u2019", "'")
    whole = normalize(_POLITE_TAIL.sub(" ", raw))
    parts = _SPLIT.split(_POLITE_TAIL.sub(" ", raw))
    found: list[Clause] = []
    for part, sep in zip(parts[::2], [*parts[1::2], ""], strict=True):
        norm = normalize(part).strip()
        clause = _clause(norm, asked="?" in sep) if norm else None
        if clause is not None:
            found.append(clause)
    clauses = tuple(found)
    if m := _ADVICE.search(whole):
        return Mood("advice", m.group(0).strip(), clauses)
    for c in clauses:
        cond = _CONDITIONAL.search(c.text)
        when = _WHEN.search(c.text)
        if when and (_WHEN_QUESTION.match(c.text) or _EMBEDDED.match(c.text)):
            when = None
        if cond and cond.group(0) == "if" and (_EMBEDDED.match(c.text) or _ASKS_IF.search(c.text)):
            cond = None
        if cond or when:
            return Mood("conditional", cond.group(0).strip() if cond else "when", clauses)
    kinds = [c.mood for c in clauses]
    if "command" in kinds:
        if m := _FUTURE_TIME.search(whole):
            return Mood("future", m.group(0), clauses)
        if m := _PAST_TIME.search(whole):
            return Mood("past", m.group(0), clauses)
        return Mood("command", "", clauses)
    for kind in ("question", "advice", "future", "past", "statement"):
        first = next((c for c in clauses if c.mood == kind), None)
        if first is not None:
            return Mood(first.mood, first.clue, clauses)
    return Mood("command", "", clauses)


def _clause(norm: str, asked: bool = False) -> Clause | None:
    stripped = _POLITE_HEAD.sub("", norm).strip()
    if not stripped or stripped in ("thanks", "thank you", "cheers", "ta", "please"):
        return None
    first = stripped.split()[0]
    if first in ("should", "shall", "ought"):
        return Clause(norm, "advice", first)
    if m := _QUESTION_HEAD.match(stripped):
        return Clause(norm, "question", m.group(0))
    if m := _REQUEST_HEAD.match(stripped):
        return Clause(norm, "command", m.group(0))
    if _IMPERATIVE_HEAD.match(stripped):
        return Clause(norm, "command", "")
    if m := _SUBJECT.match(stripped):
        rest = stripped[m.end() :]
        if f := _FUTURE_VERB.search(stripped):
            return Clause(norm, "future", f.group(0).strip())
        if p := _PAST_VERB.search(rest):
            return Clause(norm, "past" if p.group(0) != "has" else "statement", p.group(0))
        return Clause(norm, "statement", m.group(0))
    if asked:
        return Clause(norm, "question", "?")
    if f := _FINITE.search(stripped):
        word = f.group(0)
        past = word in ("was", "were", "had", "went", "came", "became", "broke", "rang", "got")
        return Clause(norm, "past" if past else "statement", word)
    return Clause(norm, "command", "")  # an elliptical command: "kitchen light off"


def strip_polite(norm: str) -> str:
    """``norm`` without the politeness at its head ("could you please …")."""
    return _POLITE_HEAD.sub("", norm.strip()).strip()
