"""The calibration's inputs as files: the hold-out list, published figures, workloads, records.

Everything here turns a file into the plain values :mod:`edgeagent.devices.calibrate` fits on,
and every problem into a :class:`~edgeagent.errors.ConfigError` naming the file (and the line
or entry where it can). The committed tables live in :data:`CALIBRATION_DIR`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..yamlconf import load_yaml_model
from .calibrate import Observation
from .calibration import CALIBRATION_DIR
from .calibration import load_published as _load_figures
from .calibration import load_workloads as _load_model_workloads
from .speed_schema import SpeedModel
from .workload import Workload

PUBLISHED_FILE = CALIBRATION_DIR / "published.yaml"
WORKLOADS_FILE = CALIBRATION_DIR / "workloads.yaml"
HOLDOUT_FILE = CALIBRATION_DIR / "holdout.yaml"

DERIVED_FROM = {"generic-arm64": "pi4", "jetson-orin-nano": "pi5"}
"""Profiles without figures of their own and the calibrated board with the nearest core:
generic-arm64 is a Cortex-A72-class board (the Pi 4's core); the Orin Nano's Cortex-A78AE is an
Armv8.2-A core with FP16 and dot product like the Pi 5's Cortex-A76 (the A78 is its successor)."""


class Holdout(BaseModel):
    """Models never fitted on, fixed before fitting (``holdout.yaml``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    reason: str = Field(min_length=10, description="Why these models, chosen when.")
    float_models: list[str] = Field(alias="float", description="Held-out fp32/fp16 models.")
    int8_models: list[str] = Field(alias="int8", description="Held-out int8 models.")

    def names(self) -> set[str]:
        """Every held-out model name."""
        return {*self.float_models, *self.int8_models}

    def holds(self, model: str, precision: str) -> bool:
        """Whether a figure of ``model`` at ``precision`` is held out: float names for fp32 and
        fp16 figures, int8 names (with or without the ``_int8`` suffix) for int8 ones."""
        if precision == "int8":
            return model in self.int8_models or f"{model}_int8" in self.int8_models
        return model in self.float_models


def load_holdout(path: Path = HOLDOUT_FILE) -> Holdout:
    """The hold-out list; :class:`ConfigError` naming the file when it is broken."""
    return load_yaml_model(path, Holdout)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON in {what}: {exc.msg}") from exc


def records_from_file(
    path: Path, profile: str, workload_by_sha: dict[str, Workload]
) -> tuple[list[Observation], dict[str, Workload]]:
    """Recorded runs of ``profile`` in a ``models bench --record`` file, and their workloads.

    A record's workload is its own ``workload`` field when it has one (the field is optional),
    else the workload counted from a ``--model`` file of the same sha256.
    """
    from ..models.card import CalibrationRecord  # pydantic only; the card module is light

    raw = _read_json(path, "bench records")
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a JSON list of bench records")
    observations: list[Observation] = []
    workloads: dict[str, Workload] = {}
    for i, item in enumerate(raw):
        try:
            rec = CalibrationRecord.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: record {i}: {where}: {first['msg']}") from exc
        if rec.profile != profile or rec.reference:
            continue
        work = getattr(rec, "workload", None) or workload_by_sha.get(rec.model_sha256)
        if not isinstance(work, Workload):
            raise ConfigError(
                f"{path}: record {i} ({rec.model}, sha256 {rec.model_sha256[:12]}…) has no "
                "workload: pass the model file with --model so it can be counted"
            )
        key = f"{rec.model}@{rec.model_sha256[:12]}"
        workloads[key] = work.model_copy(update={"precision": rec.precision})
        observations.append(
            Observation(
                model=key,
                precision=rec.precision,
                threads=rec.threads,
                ms=rec.p50_ms,
                runtime=rec.runtime,
                source=f"{path.name}: {rec.created:%Y-%m-%d} on {rec.machine.cpu}",
            )
        )
    return observations, workloads


def count_models(paths: Sequence[Path]) -> dict[str, Workload]:
    """Workloads of ONNX files by sha256 (for records without a workload of their own)."""
    import hashlib

    try:
        from ..models.workload_onnx import count_onnx
    except ImportError as exc:
        raise ConfigError(f"--model needs the onnx package (the optimize extra): {exc}") from exc
    out: dict[str, Workload] = {}
    for path in paths:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read model: {exc.strerror or exc}") from exc
        out[digest] = count_onnx(path)
    return out


SECTION_KEY = "speed_model"
SECTION_MARK = (
    "# speed_model: written by `edgeagent devices calibrate` from the tables in "
    "devices/calibration/;\n# refit rather than edit (tests check that the fit reproduces it).\n"
)


def section_text(model: SpeedModel) -> str:
    """The ``speed_model:`` section as YAML text (with its marker comment), deterministic."""
    data = {SECTION_KEY: model.model_dump(mode="json", exclude_none=True)}
    body = yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True)
    return SECTION_MARK + body


def _top_level(line: str) -> bool:
    return bool(line) and not line[0].isspace() and line.strip() != ""


def replace_section(text: str, model: SpeedModel) -> str:
    """``text`` (a profile file) with its ``speed_model:`` section replaced, or added after
    ``speed:``; everything else, comments included, is kept as it was."""
    lines = text.splitlines(keepends=True)
    new = section_text(model).splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"{SECTION_KEY}:")), None)
    if start is not None:
        end = start + 1
        while end < len(lines) and not _top_level(lines[end]):
            end += 1
        mark = SECTION_MARK.splitlines(keepends=True)
        if lines[max(start - len(mark), 0) : start] == mark:
            start -= len(mark)
        return "".join(lines[:start] + new + lines[end:])
    speed = next((i for i, ln in enumerate(lines) if ln.startswith("speed:")), None)
    if speed is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines + new)
    end = speed + 1
    while end < len(lines) and not _top_level(lines[end]):
        end += 1
    return "".join(lines[:end] + new + lines[end:])


def load_published(path: Path = PUBLISHED_FILE) -> dict[str, list[Observation]]:
    """Published figures by device profile name, as the fit's observations."""
    out: dict[str, list[Observation]] = {}
    for f in _load_figures(path):
        out.setdefault(f.device, []).append(
            Observation(
                model=f.model,
                precision=f.precision,
                threads=f.threads,
                ms=f.ms,
                runtime=f.runtime,
                clock_ghz=f.clock_ghz,
                noisy=f.noisy,
                bits=f.bits,
                source=f.source,
            )
        )
    return out


def load_workloads(path: Path = WORKLOADS_FILE) -> dict[str, Workload]:
    """Model name → :class:`Workload` (``workloads.yaml``)."""
    return {name: mw.workload for name, mw in _load_model_workloads(path).items()}
