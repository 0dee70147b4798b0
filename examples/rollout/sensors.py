"""The skills of the example rollout's devices: a temperature sensor and a camera's snapshot.

Tiny on purpose: the scenario is about the rollout (examples/rollout/fleet.yaml), not the skills.
"""

from __future__ import annotations

import random

from edgeagent import skill


@skill(side_effect="read", max_concurrency=4, max_queue=64)
def read_temperature(room: str = "any") -> float:
    """The temperature where the device is, °C."""
    return round(20.0 + random.Random(room).random() * 3, 2)


@skill(side_effect="read", max_concurrency=2, max_queue=16)
def snapshot_size(width: int = 640, height: int = 480) -> int:
    """Bytes of a JPEG snapshot of that size (about one bit per pixel)."""
    return width * height // 8
