"""A doorbell: a press emits a `ring` event that other objects (or rules) react to."""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel, Field

from edgeagent import SkillContext, SkillSet, skill


class Ring(BaseModel):
    who: str = Field(description="Who is at the door, as the camera guessed it.")
    at: float = Field(description="Unix time of the ring, seconds.")


class Press(BaseModel):
    who: str = Field(default="visitor", max_length=64, description="Who pressed.")


class SnapshotStats(BaseModel):
    size_bytes: int = Field(description="Size of the image, bytes.")
    mean: float = Field(description="Mean byte value (a crude brightness), 0-255.")
    dark: bool = Field(description="True when the mean is under `threshold`.")


class Doorbell(SkillSet):
    events: ClassVar[dict[str, str]] = {"ring": "Someone rang the bell (Ring)."}

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.rings: list[Ring] = []

    @skill(
        side_effect="actuate",
        idempotent=False,
        tags={"kind": "doorbell"},
        ha={"component": "button", "name": "Test ring", "entity_category": "diagnostic"},
    )
    async def press(self, req: Press, ctx: SkillContext) -> Ring:
        """Press the bell (as a test): rings and emits a `ring` event."""
        ring = Ring(who=req.who, at=round(time.time(), 3))
        self.rings = [*self.rings[-(self.keep - 1) :], ring]
        ctx.emit("ring", ring)
        return ring

    @skill(side_effect="read", tags={"kind": "doorbell"})
    def recent_rings(self, limit: int = 5) -> list[Ring]:
        """The last rings, newest last (a synchronous skill: runs in a worker thread)."""
        return self.rings[-limit:] if limit > 0 else []

    @skill(side_effect="read", tags={"kind": "doorbell"}, max_concurrency=2)
    def snapshot_stats(self, image: bytes, threshold: float = 40.0) -> SnapshotStats:
        """Measure a camera snapshot sent as raw bytes (Content Type application/octet-stream)."""
        mean = sum(image) / len(image) if image else 0.0
        return SnapshotStats(size_bytes=len(image), mean=round(mean, 3), dark=mean < threshold)
