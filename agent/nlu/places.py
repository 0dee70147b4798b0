"""Words that look like a place the router does not know: a misspelled room ("kitchn"), a room
no table lists ("in the nursery", "the games room"). The router asks back about them instead of
dropping them: dropping "kitchn" turns "the kitchn lamp" into "a lamp", any of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._constants import wordset

#: Words that follow "in the"/"at the" without being a place.
NOT_PLACES = wordset(
    "house home flat apartment building place moment meantime morning evening afternoon "
    "night day daytime weekend week time dark light middle whole entire same other next "
    "last first end corner world mood way background future past usual right left top "
    "bottom front back side area ceiling wall floor window corner meantime kids family "
    "room rooms lamp lamps lights"
)
#: Real words close to a room word ("giving" ~ "living", "wall" ~ "hall"): never a misspelling.
NOT_MISSPELLINGS = wordset(
    "giving leaving moving loving diving living fall wall ball call tall half halls hell "
    "hill hull hale hals kitten kitchens garbage garages gardens harden warden sturdy steady "
    "lunge longer lounger flyer offices basements patios ratio bedrooms bathrooms toilets "
    "cellars collar corridors studio studies halloween lobby hobby shall small stall all "
    "gallery garner offer slower setting settings hard card ward faster quest mister "
    "fitting knitting sifting boom zoom broom roomy font"
)
_WORD = r"[a-z][a-z'-]*"
_AFTER_LOCATIVE = re.compile(
    rf"\b(?:in|inside|at|throughout|around|into|across)\s+(?:the|my|our|this|that)\s+({_WORD})"
    rf"(\s+room\b)?"
)
_X_ROOM = re.compile(rf"\b({_WORD})\s+room\b")
_DETERMINERS = wordset(
    "the a an my our this that every each any which what other same whole spare one no"
)


@dataclass(frozen=True)
class Place:
    """A word in a place's position the router does not know."""

    words: str
    suggestions: tuple[str, ...]
    """Catalog room values it may mean, closest first (empty: none is close)."""
    misspelled: bool
    """True when it is one or two letters from a room word."""

    def question(self, rooms: Iterable[str]) -> str:
        if self.suggestions:
            options = " or ".join(f"the {r}" for r in self.suggestions)
            return f'Which room is "{self.words}"? Did you mean {options}?'
        return f'Which room is "{self.words}"? Rooms: {", ".join(sorted(rooms)) or "none"}.'


def distance(a: str, b: str, limit: int = 3) -> int:
    """Edit distance with transpositions (optimal string alignment), capped at ``limit``."""
    if abs(len(a) - len(b)) >= limit:
        return limit
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) >= limit:
            return limit
        prev2, prev = prev, cur
    return min(prev[-1], limit)


def _close(word: str, target: str) -> bool:
    allowed = 1 if len(target) <= 6 else 2
    return distance(word, target, allowed + 1) <= allowed


class PlaceFinder:
    """Finds unknown place words in normalized text.

    ``rooms``: catalog room value → the phrases naming it; ``other_rooms``: phrases naming rooms
    outside the catalog (reported by the router itself); ``known``: every other word the router
    understands (kinds, verbs, tag values, device ids …), never a place.
    """

    def __init__(
        self,
        rooms: Mapping[str, Iterable[str]],
        other_rooms: Iterable[str],
        known: Iterable[str],
    ) -> None:
        self.rooms = {room: tuple(phrases) for room, phrases in rooms.items()}
        phrases = [p for ps in self.rooms.values() for p in ps] + list(other_rooms)
        self.room_words = frozenset(w for p in phrases for w in p.split())
        self.first_words = frozenset(p.split()[0] for p in phrases)
        self.room_phrases = frozenset(phrases)
        self.known = frozenset(known) | self.room_words | NOT_PLACES | _DETERMINERS
        self._room_tokens = {
            room: frozenset(w for p in ps for w in p.split() if len(w) >= 3)
            for room, ps in self.rooms.items()
        }

    def find(self, norm: str) -> tuple[Place, ...]:
        found: dict[str, Place] = {}
        for m in _AFTER_LOCATIVE.finditer(norm):
            word = m.group(1)
            if word in self.first_words or word in self.known:
                continue
            words = word + (" room" if m.group(2) else "")
            found.setdefault(word, self._place(words, word))
        for m in _X_ROOM.finditer(norm):
            word = m.group(1)
            if word in _DETERMINERS or f"{word} room" in self.room_phrases:
                continue
            if word in self.room_words and word not in self.first_words:
                continue
            found.setdefault(word, self._place(f"{word} room", word))
        for word in set(norm.split()):
            if len(word) < 4 or word in self.known or word in NOT_MISSPELLINGS or word in found:
                continue
            if word.endswith("s") and word[:-1] in self.room_words:
                continue  # "bedrooms"
            if any(_close(word, target) for target in self.room_words if len(target) >= 4):
                found[word] = self._place(word, word)
        return tuple(found.values())

    def _place(self, words: str, word: str) -> Place:
        ranked = sorted(
            (min(distance(word, t, 4) for t in tokens), room)
            for room, tokens in self._room_tokens.items()
            if tokens
        )
        close = tuple(room for d, room in ranked if d <= (1 if len(word) <= 5 else 2))
        return Place(words, close, bool(close))
