"""Numbers in requests: digits or words ("twenty one", "half"), their units, and conversion to
the unit a skill's schema declares.

:func:`words_to_digits` rewrites number words on normalized text ("twenty one degrees" →
"21 degrees", "to half" → "to 50%"); :func:`find_number` then finds the first level or
temperature with its unit. A unit is one of :data:`UNITS`; a unit word the router cannot convert
(lumens, watts, …) is kept as ``unknown_unit`` so the router asks back instead of dropping it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Unit = Literal["percent", "degrees", "celsius", "fahrenheit", "kelvin"]
UNITS: tuple[Unit, ...] = ("percent", "degrees", "celsius", "fahrenheit", "kelvin")

_ONES = {
    "zero": 0,
    "nought": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fourty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_DIGIT_WORDS = {k: v for k, v in _ONES.items() if v < 10}
_NUMBER_WORDS = frozenset({*_ONES, *_TENS, "hundred"})

#: Words for a level (a fraction of the whole), after "to"/"at" or before "brightness" etc.
_FRACTIONS = {
    "half": 50,
    "halfway": 50,
    "a half": 50,
    "a quarter": 25,
    "quarter": 25,
    "three quarters": 75,
    "full": 100,
    "full blast": 100,
}
_FRACTION_RE = re.compile(
    r"(?<![\w-])(?:(?P<pre>to|at|by)\s+)?(?P<word>three\s+quarters|a\s+quarter|quarter|a\s+half|"
    r"halfway|half|full\s+blast|full)(?P<post>\s+(?:brightness|power|volume|speed|way|"
    r"strength|level))?(?![\w-])"
)

_UNIT_WORDS: dict[str, Unit] = {
    "%": "percent",
    "percent": "percent",
    "per cent": "percent",
    "degrees": "degrees",
    "degree": "degrees",
    "deg": "degrees",
    "°": "degrees",
    "celsius": "celsius",
    "centigrade": "celsius",
    "c": "celsius",
    "°c": "celsius",
    "fahrenheit": "fahrenheit",
    "farenheit": "fahrenheit",
    "f": "fahrenheit",
    "°f": "fahrenheit",
    "kelvin": "kelvin",
    "k": "kelvin",
}
#: Units the router knows but cannot convert to a percentage or a temperature: asked back.
UNKNOWN_UNITS = (
    "lumens",
    "lumen",
    "lm",
    "lux",
    "watts",
    "watt",
    "w",
    "kw",
    "kilowatts",
    "volts",
    "volt",
    "amps",
    "mph",
    "kph",
    "rpm",
    "db",
    "decibels",
    "notches",
    "notch",
    "steps",
    "clicks",
    "points",
    "bars",
    "marks",
    "stars",
    "inches",
    "inch",
    "cm",
    "mm",
    "metres",
    "meters",
    "feet",
    "ft",
    "litres",
    "liters",
    "ml",
    "kg",
    "grams",
    "pounds",
    "lbs",
    "gas mark",
)


@dataclass(frozen=True)
class Number:
    """A level or temperature the text gives."""

    value: float
    unit: Unit | None
    """The unit said, or None for a bare number."""
    text: str
    """The words it came from (after number words became digits)."""
    unknown_unit: str | None = None
    """A unit word after the number that cannot be converted ("lumens")."""

    @property
    def temperature(self) -> bool:
        return self.unit in ("degrees", "celsius", "fahrenheit", "kelvin")


def _alternation(words: Iterable[str]) -> str:
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in ordered)


_UNIT_RE = (
    r"(?:\s*(?P<unit>%|°\s*[cf]\b|°|"
    r"(?:degrees?|deg)(?:\s+(?:celsius|centigrade|fahrenheit|farenheit|kelvin|c|f)\b)?|"
    rf"(?:{_alternation(w for w in _UNIT_WORDS if w[0].isalpha())})\b)"
    rf"|\s*(?P<unknown>(?:{_alternation(UNKNOWN_UNITS)})\b))?"
)
# Digits inside a name ("lamp-1") are not a number.
_NUMBER = re.compile(rf"(?<![\w.:-])(?P<value>-?\d+(?:[.,]\d+)?){_UNIT_RE}", re.IGNORECASE)
_TIME_UNIT = re.compile(
    r"^(?::\d\d|\s*(?:minutes?|mins?|seconds?|secs?|hours?|hrs?|days?|weeks?|am|pm|a\.m|p\.m|"
    r"o'?clock|h)\b)"
)


def words_to_digits(norm: str) -> str:
    """Number words as digits, on normalized text (single spaces, lower case).

    "twenty one" → "21", "twenty-one" → "21", "nineteen and a half" → "19.5", "twenty point
    five" → "20.5", "a hundred"/"one hundred" → "100"; "to half" → "to 50%", "full brightness"
    → "100% brightness". A lone "one" is a number only next to a unit or after "to"/"at"
    ("one of the lamps" is not a level).
    """
    tokens = norm.replace("-", " - ").split()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        value, used = _parse_words(tokens, i)
        if used:
            prev = out[-1] if out else ""
            nxt = tokens[i + used] if i + used < len(tokens) else ""
            lone_small = used == 1 and tokens[i] in ("one", "a", "zero", "nought")
            unit_next = nxt in _UNIT_WORDS or nxt in ("per", "percent", "%")
            if lone_small and not (prev in ("to", "at", "by") or unit_next):
                out.append(tokens[i])
                i += 1
                continue
            out.append(f"{value:g}")
            i += used
            continue
        out.append(tokens[i])
        i += 1
    text = " ".join(out).replace(" - ", "-")
    return " " + _FRACTION_RE.sub(_fraction, text).strip() + " "


def _fraction(m: re.Match[str]) -> str:
    pre, word, post = m.group("pre"), " ".join(m.group("word").split()), m.group("post")
    if pre in ("to", "at") or post or word in ("halfway", "full blast"):
        head = f"{pre} " if pre else ""
        return f"{head}{_FRACTIONS[word]}%{post or ''}"
    return m.group(0)  # "by half", "a half hour": relative or not a level


def _parse_words(tokens: list[str], i: int) -> tuple[float, int]:
    """The number spelled from ``tokens[i]`` on, and how many tokens it used (0: none)."""

    def tok(k: int) -> str:
        return tokens[k] if k < len(tokens) else ""

    j = i
    total = 0.0
    seen = False
    if tok(j) == "a" and tok(j + 1) == "hundred":
        total, j, seen = 100.0, j + 2, True
    else:
        small, j = _below_hundred(tokens, j)
        if small is not None:
            total, seen = float(small), True
            if tok(j) == "hundred":
                total *= 100
                j += 1
                if tok(j) == "and" and (tok(j + 1) in _ONES or tok(j + 1) in _TENS):
                    j += 1
    if not seen:
        return 0.0, 0
    if total >= 100 and total % 100 == 0:
        rest, k = _below_hundred(tokens, j)
        if rest is not None:
            total, j = total + rest, k
    if tok(j) == "point" and tok(j + 1) in _DIGIT_WORDS:
        j += 1
        decimals = ""
        while tok(j) in _DIGIT_WORDS:
            decimals += str(_DIGIT_WORDS[tok(j)])
            j += 1
        total = float(f"{int(total)}.{decimals}")
    elif (tok(j), tok(j + 1), tok(j + 2)) == ("and", "a", "half"):
        total, j = total + 0.5, j + 3
    return total, j - i


def _below_hundred(tokens: list[str], j: int) -> tuple[int | None, int]:
    word = tokens[j] if j < len(tokens) else ""
    if word in _TENS:
        value = _TENS[word]
        k = j + 1
        if k < len(tokens) and tokens[k] == "-":
            k += 1
        nxt = tokens[k] if k < len(tokens) else ""
        if nxt in _ONES and 0 < _ONES[nxt] < 10:
            return value + _ONES[nxt], k + 1
        return value, j + 1
    if word in _ONES:
        return _ONES[word], j + 1
    return None, j


def _counted_re(count_words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(rf"^\s*(?:{_alternation(count_words)})\b")


def find_number(norm: str, counted: Iterable[str] = ()) -> Number | None:
    """The first level or temperature in ``norm`` (digits, after :func:`words_to_digits`): not a
    time ("6:30", "10 minutes") nor a count of devices ("2 lamps": ``counted`` lists the device
    words)."""
    counted_re = _counted_re(counted) if counted else None
    for match in _NUMBER.finditer(norm):
        rest = norm[match.end() :]
        unit_text = match.group("unit")
        if _TIME_UNIT.match(rest):
            continue
        if not unit_text and counted_re is not None and counted_re.match(rest):
            continue
        value = float(match.group("value").replace(",", "."))
        unknown = match.group("unknown")
        unknown = " ".join(unknown.split()) if unknown else None
        return Number(value, _unit(unit_text), " ".join(match.group(0).split()), unknown)
    return None


def _unit(text: str | None) -> Unit | None:
    if not text:
        return None
    words = " ".join(text.lower().replace("°", " ° ").split())
    if words.startswith("°"):
        rest = words[1:].strip()
        return _UNIT_WORDS.get("°" + rest, "degrees") if rest else "degrees"
    parts = words.split()
    if parts[0] in ("degrees", "degree", "deg") and len(parts) > 1:
        return _UNIT_WORDS.get(parts[-1], "degrees")
    return _UNIT_WORDS.get(words)


_DURATION = re.compile(
    r"(?<![\w.:-])(\d+(?:\.\d+)?)\s*(seconds?|secs?|minutes?|mins?|hours?|hrs?)\b"
)
_SECONDS = {"sec": 1.0, "min": 60.0, "hou": 3600.0, "hrs": 3600.0, "hr": 3600.0}


def find_duration(norm: str) -> float | None:
    """A duration the text gives ("for 10 minutes"), in seconds."""
    m = _DURATION.search(norm)
    if m is None:
        return None
    unit = m.group(2)
    factor = _SECONDS.get(unit[:3], _SECONDS.get(unit[:2], 1.0))
    return float(m.group(1)) * factor


def duration_unit(name: str, prop: Mapping[str, Any], description: str) -> float | None:
    """Seconds per unit of a property that takes a duration (``minutes``, ``duration_s``), or
    None when it is not one."""
    about = f"{name} {prop.get('description', '')}".lower()
    if re.search(r"\b(?:minutes?|mins?)\b|_min\b", about):
        return 60.0
    if re.search(r"\b(?:seconds?|secs?)\b|_s\b", about):
        return 1.0
    if re.search(r"\b(?:hours?|hrs?)\b|_h\b", about):
        return 3600.0
    return None


def has_time_number(norm: str) -> bool:
    return any(_TIME_UNIT.match(norm[m.end() :]) for m in _NUMBER.finditer(norm))


# --- conversion to the schema's unit ------------------------------------------------------------


def schema_unit(name: str, prop: Mapping[str, Any], description: str) -> Unit | None:
    """The unit a skill's numeric property takes, from its name and descriptions: ``celsius``,
    ``fahrenheit``, ``kelvin``, ``percent``, or None when they do not say."""
    about = f"{name} {prop.get('description', '')} {prop.get('title', '')} {description}".lower()
    if "celsius" in about or "°c" in about or "centigrade" in about:
        return "celsius"
    if "fahrenheit" in about or "°f" in about:
        return "fahrenheit"
    if "kelvin" in about:
        return "kelvin"
    if "percent" in about or "%" in about or "per cent" in about:
        return "percent"
    return None


def convert(number: Number, target: Unit | None) -> tuple[float | None, str | None]:
    """``number`` in the ``target`` unit, and a note saying what was converted; (None, why) when
    it cannot be."""
    said = number.unit
    if number.unknown_unit:
        want = f" in {target}" if target else ""
        return None, f"cannot convert {number.text}: say it{want}"
    if said is None or target is None:
        if said in ("fahrenheit", "kelvin") and target is None:
            return None, f"the skill does not say which unit it takes, and {number.text} is {said}"
        return number.value, None
    if said == "percent" or target == "percent":
        if said == target:
            return number.value, None
        if target == "percent":
            return None, f"takes a percentage, not {said}"
        return None, f"takes degrees {target.capitalize()}, not a percentage"
    source: Unit = "celsius" if said == "degrees" else said
    if source == target:
        return number.value, None
    celsius = {
        "celsius": number.value,
        "fahrenheit": (number.value - 32) * 5 / 9,
        "kelvin": number.value - 273.15,
    }[source]
    out = {"celsius": celsius, "fahrenheit": celsius * 9 / 5 + 32, "kelvin": celsius + 273.15}
    value = round(out[target], 1)
    return value, f"{number.value:g} {source} = {value:g} {target}"
