"""A dimmable lamp: actuate skills on its own state, a `changed` event on every change."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from edgeagent import SkillContext, SkillSet, skill


class LampState(BaseModel):
    on: bool = Field(description="Whether the lamp is lit.")
    brightness: int = Field(ge=0, le=100, description="Brightness, percent.")


class Brightness(BaseModel):
    level: int = Field(ge=0, le=100, description="Brightness, percent (0 turns the lamp off).")


class Lamp(SkillSet):
    events: ClassVar[dict[str, str]] = {"changed": "The lamp's state changed (LampState)."}

    def __init__(self, brightness: int = 80) -> None:
        self.state = LampState(on=False, brightness=brightness)

    def _set(self, ctx: SkillContext, on: bool, brightness: int) -> LampState:
        new = LampState(on=on, brightness=brightness)
        if new != self.state:
            self.state = new
            ctx.emit("changed", new)
        return self.state

    @skill(side_effect="actuate", idempotent=True, tags={"kind": "light"})
    async def turn_on(self, ctx: SkillContext) -> LampState:
        """Turn the lamp on at its last brightness."""
        return self._set(ctx, True, self.state.brightness or 80)

    @skill(side_effect="actuate", idempotent=True, tags={"kind": "light"})
    async def turn_off(self, ctx: SkillContext) -> LampState:
        """Turn the lamp off."""
        return self._set(ctx, False, self.state.brightness)

    @skill(side_effect="actuate", idempotent=True, tags={"kind": "light"})
    async def set_brightness(self, req: Brightness, ctx: SkillContext) -> LampState:
        """Set the brightness in percent; 0 turns the lamp off."""
        return self._set(ctx, req.level > 0, req.level or self.state.brightness)

    @skill(side_effect="actuate", idempotent=False, tags={"kind": "light"})
    async def toggle(self, ctx: SkillContext) -> LampState:
        """Flip the lamp on or off (not idempotent: never retried)."""
        return self._set(ctx, not self.state.on, self.state.brightness or 80)

    @skill(side_effect="read")
    async def get_state(self) -> LampState:
        """Read whether the lamp is on and how bright."""
        return self.state
