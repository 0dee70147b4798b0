"""Reconnect delays: exponential backoff with "equal jitter", the one rule both MQTT transports use.

Pure: the caller passes the attempt number and its own :class:`random.Random` (seeded in tests
and in the simulator, so a run replays), and arms the timer on its injected clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt ``n`` (from 0) waits between half and all of ``min(max_s, initial_s * 2**n)``:
    spread out, so a fleet that lost its broker does not reconnect in lockstep, yet never less
    than half the ceiling, so a flapping broker is not hammered."""

    initial_s: float
    max_s: float

    def ceiling(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * float(2 ** min(attempt, 64)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return rng.uniform(ceiling / 2, ceiling)
