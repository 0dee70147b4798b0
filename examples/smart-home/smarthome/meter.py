"""A meter reader: reads a digit from an 8x8 image with the zoo's digit model."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from edgeagent import skill
from edgeagent.data_skills import KeepsHardCases
from edgeagent.models.skillset import ModelSkillSet
from edgeagent.models.zoo import digits


class Image8x8(BaseModel):
    pixels: list[float] = Field(
        min_length=64, max_length=64, description="64 grey values, row by row, 0 (paper) to 16."
    )


class Digit(BaseModel):
    digit: int = Field(ge=0, le=9, description="The digit read.")
    confidence: float = Field(ge=0, le=1, description="Softmax probability of that digit.")


class DigitReader(KeepsHardCases, ModelSkillSet):
    """Keeps its unsure readings when the agent's ``data`` section enables ``read_digit``."""

    def __init__(self, model: str = "zoo:digits", profile: str | None = None) -> None:
        super().__init__(model, profile)

    @skill(side_effect="read", tags={"kind": "meter"}, max_concurrency=1, max_queue=32)
    def read_digit(self, req: Image8x8) -> Digit:
        """Read the digit in an 8x8 grey image (a meter or keypad cell)."""
        x = digits.featurize(req.pixels)[None, :]
        logits = self.session.run({"pixels": x})["logits"][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        out = Digit(digit=best, confidence=round(float(p[best]), 4))
        self.hard_cases.offer("read_digit", req, out, confidence=out.confidence)
        return out
