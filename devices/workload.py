"""What one inference asks of a CPU, by operator class: the input of the device speed model.

A :class:`Workload` is counted from a model's graph (an ONNX file, a ``.tflite`` file, or an
ncnn ``.param`` file for the published calibration figures) at batch 1. The classes are the ones
whose cost per unit differs most between a desktop x86-64 core and a Cortex-A53/A72/A76:

- ``conv_mmac``: dense convolutions (group 1) with a kernel larger than 1×1, million MACs;
- ``pointwise_mmac``: 1×1 convolutions and matrix products whose weights are reused over more
  than one row (GEMM), million MACs;
- ``depthwise_mmac``: depthwise and grouped convolutions (group > 1), million MACs;
- ``fc_mweights``: matrix-vector products (a fully connected layer at batch 1: one row), million
  weights read: bound by memory bandwidth, not arithmetic;
- ``elementwise_melems``: elements written by every other op that runs (activations, pooling,
  add, concat, resize, softmax, normalization, ...), million elements: bound by memory traffic;
- ``nodes``: ops that run (not constants or shape arithmetic): each has a fixed dispatch cost.

Pure data: counting lives with the formats (:mod:`edgeagent.models.workload_onnx`, ...), the
speed model that turns a workload into milliseconds in :mod:`edgeagent.devices.speed`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["fp32", "fp16", "int8"]

WORK_CLASSES = (
    "conv_mmac",
    "pointwise_mmac",
    "depthwise_mmac",
    "fc_mweights",
    "elementwise_melems",
)
"""The costed classes, in a fixed order (the speed model has one rate per class)."""


class Workload(BaseModel):
    """One batch-1 inference of a model, counted by operator class (see the module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_mmac: float = Field(default=0.0, ge=0, description="Dense k>1 convolutions, MMAC.")
    pointwise_mmac: float = Field(default=0.0, ge=0, description="1x1 convs and GEMMs, MMAC.")
    depthwise_mmac: float = Field(default=0.0, ge=0, description="Depthwise/grouped convs, MMAC.")
    fc_mweights: float = Field(default=0.0, ge=0, description="Matrix-vector weights read, M.")
    elementwise_melems: float = Field(default=0.0, ge=0, description="Other ops' outputs, M.")
    nodes: int = Field(default=0, ge=0, description="Ops that run.")
    precision: Precision = Field(
        default="fp32", description="The arithmetic the graph asks for (int8 if quantized)."
    )
    unknown_ops: list[str] = Field(
        default_factory=list,
        description="Op types counted as elementwise for want of a cost of their own (sorted, "
        "unique): the estimate is less sure when this is not empty.",
    )

    @classmethod
    def counted(
        cls,
        *,
        conv: float,
        pointwise: float,
        depthwise: float,
        fc: float,
        elements: float,
        nodes: int,
        precision: Precision,
        unknown_ops: set[str] | list[str],
    ) -> Workload:
        """A workload from a counter's raw tallies (MACs, weights and elements, not millions)."""
        return cls(
            conv_mmac=conv / 1e6,
            pointwise_mmac=pointwise / 1e6,
            depthwise_mmac=depthwise / 1e6,
            fc_mweights=fc / 1e6,
            elementwise_melems=elements / 1e6,
            nodes=nodes,
            precision=precision,
            unknown_ops=sorted(set(unknown_ops)),
        )

    @property
    def total_mmac(self) -> float:
        """All multiply-accumulates, million (matrix-vector weights count one MAC each)."""
        return self.conv_mmac + self.pointwise_mmac + self.depthwise_mmac + self.fc_mweights

    def vector(self) -> tuple[float, ...]:
        """The costed amounts in :data:`WORK_CLASSES` order."""
        return tuple(float(getattr(self, name)) for name in WORK_CLASSES)
