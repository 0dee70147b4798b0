"""A thermostat: reads a (simulated) room temperature and drives it towards a target."""

from __future__ import annotations

import asyncio
import random
from typing import ClassVar

from pydantic import BaseModel, Field

from edgeagent import SkillSet, skill
from edgeagent.skills import DeviceHandle


class Reading(BaseModel):
    celsius: float = Field(description="Room temperature, degrees Celsius.")
    target: float = Field(description="Target temperature, degrees Celsius.")
    heating: bool = Field(description="Whether the heating is running.")


class Target(BaseModel):
    celsius: float = Field(ge=5, le=30, description="Target temperature, degrees Celsius.")


class Thermostat(SkillSet):
    events: ClassVar[dict[str, str]] = {
        "reached": "The room reached its target temperature (Reading)."
    }

    def __init__(self, start: float = 19.0, target: float = 20.5, period_s: float = 1.0) -> None:
        self.celsius = start
        self.target = target
        self.period_s = period_s
        self._rng = random.Random(0)

    def reading(self) -> Reading:
        return Reading(
            celsius=round(self.celsius, 2), target=self.target, heating=self.celsius < self.target
        )

    @skill(side_effect="read", tags={"kind": "climate"})
    async def read_temperature(self) -> Reading:
        """Read the room temperature, the target and whether it is heating."""
        return self.reading()

    @skill(side_effect="actuate", idempotent=True, tags={"kind": "climate"})
    async def set_target(self, req: Target) -> Reading:
        """Set the target temperature in degrees Celsius (5 to 30)."""
        self.target = req.celsius
        return self.reading()

    async def run(self, device: DeviceHandle) -> None:
        """Physics, roughly: 0.1 °C per period towards the target, with a little noise."""
        while True:
            await asyncio.sleep(self.period_s)
            was_below = self.celsius < self.target
            step = 0.1 if was_below else -0.05
            self.celsius += step + self._rng.uniform(-0.02, 0.02)
            if was_below and self.celsius >= self.target:
                device.emit("reached", self.reading())
