"""A pump's vibration monitor: scores accelerometer windows with the zoo's vibration model."""

from __future__ import annotations

from pydantic import BaseModel, Field

from edgeagent import skill
from edgeagent.models.skillset import ModelSkillSet
from edgeagent.models.zoo import vibration


class Window(BaseModel):
    samples: list[float] = Field(
        min_length=vibration.WINDOW,
        max_length=vibration.WINDOW,
        description=f"{vibration.WINDOW} acceleration samples (g) at {vibration.SAMPLE_RATE} Hz.",
    )


class Score(BaseModel):
    score: float = Field(ge=0, le=1, description="Anomaly score: 0 healthy … 1 faulty.")
    anomalous: bool = Field(description="score >= threshold.")
    threshold: float = Field(description="The model card's operating threshold.")
    likely: str = Field(description="Most likely condition (healthy, imbalance, …).")


class VibrationMonitor(ModelSkillSet):
    events = {"anomaly": "A scored window was anomalous (Score)."}  # noqa: RUF012

    def __init__(self, model: str = "zoo:vibration", profile: str | None = None) -> None:
        super().__init__(model, profile)
        card = vibration.RECIPE
        self.labels = card.labels["logits"]
        self.threshold = float(self.resolved.card.get("threshold", 0.9))  # type: ignore[arg-type]

    @skill(side_effect="read", tags={"kind": "pump"}, max_concurrency=1, max_queue=32)
    def score_window(self, req: Window) -> Score:
        """Score one vibration window for faults (imbalance, looseness, bearing wear)."""
        logits = self.session.run({"features": vibration.featurize(req.samples)[None, :]})
        z = logits["logits"]
        score = float(vibration.anomaly_score(z)[0])
        return Score(
            score=round(score, 4),
            anomalous=score >= self.threshold,
            threshold=self.threshold,
            likely=self.labels[int(z[0].argmax())],
        )
