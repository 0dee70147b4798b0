"""Inputs for the simulator's workload (``input_from: smarthome.samples:NAME``).

Each function takes the workload's seeded :class:`random.Random` and returns one skill input, so
a simulated run sends varied but reproducible requests.
"""

from __future__ import annotations

import random
from typing import Any

# Three 8x8 digits (grey levels 0-16), drawn like the scikit-learn digits the model learned from.
_DIGITS = {
    0: "..5dd9.. .dfaf5.. .3f2.b8. .4c..88. .58..98. .4b.1c7. .2e5ac.. ..6dd...",
    1: "...ce5.. ..2ffa.. ..bffa.. .6fff9.. ...ff8.. ...ff6.. ...ff7.. ...bfc..",
    7: ".2cfff7. .8a8adb. ....8f2. ...1ea.. ..8ffe7. ..9fb4.. ..ce.... .2f8....",
}


def _pixels(pattern: str) -> list[float]:
    return [0.0 if c == "." else float(int(c, 16)) for c in pattern.replace(" ", "")]


def digit_image(rng: random.Random) -> dict[str, Any]:
    """A meter cell: one of the digits with a little sensor noise."""
    base = _pixels(_DIGITS[rng.choice(sorted(_DIGITS))])
    return {"pixels": [min(16.0, max(0.0, p + rng.gauss(0, 0.8))) for p in base]}


def vibration_window(rng: random.Random) -> dict[str, Any]:
    """A pump's accelerometer window: healthy most of the time, now and then a fault."""
    import numpy as np

    from edgeagent.models.zoo import vibration

    kind = "healthy" if rng.random() < 0.85 else rng.choice(sorted(vibration.CLASSES[1:]))
    window = vibration.simulate(kind, 1, np.random.default_rng(rng.randrange(2**32)))[0]
    return {"samples": [round(float(x), 4) for x in window]}


_PHRASES = [
    "turn off the kitchen lights",
    "switch on the hall lamp",
    "dim the living room lights to 30 percent",
    "how warm is it in the bedroom",
    "set the office to 21 degrees",
    "is the hall light on",
]


def utterance(rng: random.Random) -> dict[str, Any]:
    """Something said to a speaker."""
    return {"text": rng.choice(_PHRASES)}


def brightness(rng: random.Random) -> dict[str, Any]:
    return {"level": rng.choice([0, 20, 40, 60, 80, 100])}
