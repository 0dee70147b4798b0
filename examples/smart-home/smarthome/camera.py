"""A doorbell camera: classifies what is in front of it with a MobileNet-class image model.

There is no camera in a simulation or a test, so a snapshot is a synthetic frame made from a seed
(smooth shapes, deterministic); on a real device ``snapshot`` would read the sensor instead. The
model is any image classifier file with one NCHW float input (``model:`` in the skill's options),
e.g. ``edgeagent.models.convnets.mobilenet_v1_onnx(path, alpha=0.25, size=96, classes=10)`` or
the optimizer's output folder for the device. The simulator charges each call what the device's
speed model says this model costs on that device (``edgeagent models bench MODEL --device D``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from edgeagent import skill
from edgeagent.models.skillset import ModelSkillSet


class Snapshot(BaseModel):
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Which synthetic frame to take.")


class Sighting(BaseModel):
    label: int = Field(ge=0, description="Index of the most likely class.")
    confidence: float = Field(ge=0, le=1, description="Softmax probability of that class.")


def synthetic_frame(seed: int, channels: int, height: int, width: int) -> npt.NDArray[np.float32]:
    """A smooth, seeded test frame shaped (1, channels, height, width), values in [-1, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.empty((1, channels, height, width), dtype=np.float32)
    for c in range(channels):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 6.28)
        frame[0, c] = np.sin(fx * 6.28 * x / width + phase) * np.cos(fy * 6.28 * y / height)
    return frame


class Camera(ModelSkillSet):
    """A camera object with one image model; ``model`` is required (no zoo default)."""

    def __init__(self, model: str, profile: str | None = None) -> None:
        super().__init__(model, profile)
        spec = self.session.inputs[0]
        if len(spec.shape) != 4 or not all(isinstance(d, int) for d in spec.shape[1:]):
            raise ValueError(f"{model}: expected one NCHW image input, got {spec.shape}")
        self._input = spec.name
        self._chw = (int(spec.shape[1] or 3), int(spec.shape[2] or 1), int(spec.shape[3] or 1))

    @skill(side_effect="read", tags={"kind": "camera"}, max_concurrency=1, max_queue=8)
    def snapshot(self, req: Snapshot) -> Sighting:
        """Take a frame and say what is in it (class index and confidence)."""
        frame = synthetic_frame(req.seed, *self._chw)
        outputs = self.session.run({self._input: frame})
        logits = next(iter(outputs.values()))[0].astype(np.float64).ravel()
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        return Sighting(label=best, confidence=round(float(p[best]), 4))
