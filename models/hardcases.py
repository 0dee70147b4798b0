"""Hard cases: the calls a model skill got wrong or nearly wrong, kept to train on (issue 15).

A model skill *offers* each result it is unsure of (:class:`CaseKeeper` in
:mod:`edgeagent.data_skills`); what is kept is decided here, without I/O:

- nothing, unless the agent's ``data.skills`` names the skill (off by default, per skill);
- only for the reasons its :class:`SkillPolicy` lists: ``low_confidence`` (below
  ``confidence_below``), ``disagreement`` (the grammar and the model disagree), ``correction`` (a
  user said what the right answer was) or ``sampled`` (a random ``sample_rate`` of all calls);
- never a raw input (bytes, an image's pixels, an audio window: any array of numbers of
  :data:`RAW_MIN_ITEMS` or more) unless ``keep_raw``: a SHA-256 digest and the shape stand in
  for it, so a dataset can still count and deduplicate what it cannot see;
- text passed through the policy's ``redact`` patterns (and an optional code hook) and clipped.

The records are :class:`HardCase` (one JSON line each on disk:
:class:`~edgeagent.models.hardcase_store.HardCaseStore`; one item of a ``data.cases`` page on the
wire). Pure: the caller gives the time and the randomness.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

Reason = Literal["low_confidence", "disagreement", "correction", "sampled"]
REASONS: tuple[Reason, ...] = get_args(Reason)

DEFAULT_REASONS: tuple[Reason, ...] = ("low_confidence", "disagreement", "correction")
"""What a skill named in ``data.skills`` keeps when its policy lists no ``reasons``."""

RAW_MIN_ITEMS = 16
"""A list of this many numbers or more (nested lists counted by their leaves) is a raw signal
(an image, audio, a sensor window): stored only with ``keep_raw``."""

RAW_KEY = "$raw"
"""The key of the stand-in for a raw value that was not kept: ``{"$raw": {sha256, shape,
kind, bytes}}``."""

BYTES_KEY = "$bytes"
"""The key of a kept ``bytes`` value: ``{"$bytes": BASE64}``."""

REDACTED = "[redacted]"

#: A code hook for text: ``redact(text) -> text`` (runs after the policy's patterns).
Redactor = Callable[[str], str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SkillPolicy(_Strict):
    """What one skill keeps. A skill the agent's ``data.skills`` does not name keeps nothing."""

    reasons: list[Reason] = Field(
        default_factory=lambda: list(DEFAULT_REASONS),
        description="Reasons to keep a case: low_confidence, disagreement, correction, sampled.",
    )
    confidence_below: float = Field(
        default=0.6, ge=0, le=1, description="low_confidence: kept when the confidence is below."
    )
    sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="sampled: the fraction of all calls kept (0..1)."
    )
    keep_raw: bool = Field(
        default=False,
        description="Keep raw inputs (bytes, images, audio, arrays of 16+ numbers); otherwise "
        "only their SHA-256 digest and shape are stored.",
    )
    redact: list[str] = Field(
        default_factory=list,
        description="Regular expressions; every match in a text field is replaced by "
        f"{REDACTED!r} before the case is stored.",
    )
    max_text_chars: int = Field(
        default=500, ge=1, le=100_000, description="Text fields are clipped to this length."
    )

    @field_validator("redact")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for i, pattern in enumerate(v):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"redact[{i}] {pattern!r} is no regular expression: {exc}"
                ) from exc
        return v


class DataConfig(_Strict):
    """The agent config's ``data`` section: where hard cases are kept and how many at most."""

    dir: Path = Field(
        default=Path("hard-cases"),
        description="Folder of the case stores (one subfolder per device); relative to the "
        "config file's folder.",
    )
    max_cases: int = Field(default=1000, ge=1, le=1_000_000, description="Cases kept at most.")
    max_bytes: int = Field(
        default=4 * 1024 * 1024, ge=4096, le=2**34, description="Bytes on disk at most."
    )
    max_case_bytes: int = Field(
        default=16 * 1024,
        ge=512,
        le=128 * 1024,
        description="One case's JSON at most, bytes; a larger case is not kept (raw inputs "
        "first give way to their digest).",
    )
    skills: dict[str, SkillPolicy] = Field(
        default_factory=dict,
        description="Skill name -> what it keeps. Skills not named keep nothing.",
    )


class HardCase(_Strict):
    """One kept case (a JSON line on disk, an item of a ``data.cases`` page)."""

    id: str = Field(description="Unique id: DEVICE:HEX (a dataset deduplicates on it).")
    seq: int = Field(default=0, ge=0, description="Position in the device's store (cursor).")
    device: str
    skill: str
    model: str | None = None
    model_version: str | None = None
    reason: Reason
    confidence: float | None = Field(default=None, description="The model's confidence, 0..1.")
    input: dict[str, Any] = Field(description="The call's input, summarised (see keep_raw).")
    output: Any = Field(default=None, description="What the skill answered.")
    label: Any = Field(default=None, description="The right answer, from a correction.")
    of: str | None = Field(default=None, description="correction: the id of the case corrected.")
    ts: float = Field(description="Unix time the case was kept, seconds.")


def decide(
    policy: SkillPolicy | None,
    *,
    confidence: float | None = None,
    disagreement: bool = False,
    rng: random.Random,
) -> Reason | None:
    """Why to keep a call's result (None: don't). The order is the most telling reason first;
    ``rng`` is drawn from only when ``sampled`` is the last chance, so a seed replays."""
    if policy is None:
        return None
    if disagreement and "disagreement" in policy.reasons:
        return "disagreement"
    if (
        confidence is not None
        and math.isfinite(confidence)
        and "low_confidence" in policy.reasons
        and confidence < policy.confidence_below
    ):
        return "low_confidence"
    if "sampled" in policy.reasons and policy.sample_rate > 0 and rng.random() < policy.sample_rate:
        return "sampled"
    return None


def _leaves(value: Any) -> tuple[list[int], int, bool] | None:
    """(shape, count, all numbers) of a nested list, or None when it is not a regular array."""
    if not isinstance(value, list | tuple):
        return None
    if not value:
        return [0], 0, True
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [len(value)], len(value), True
    inner = [_leaves(v) for v in value]
    if any(i is None for i in inner):
        return None
    shapes = {tuple(i[0]) for i in inner if i is not None}
    if len(shapes) != 1:
        return None
    count = sum(i[1] for i in inner if i is not None)
    return [len(value), *next(iter(shapes))], count, all(i is not None and i[2] for i in inner)


def _digest(kind: str, data: bytes, shape: list[int]) -> dict[str, Any]:
    return {
        RAW_KEY: {
            "sha256": hashlib.sha256(data).hexdigest(),
            "shape": shape,
            "kind": kind,
            "bytes": len(data),
        }
    }


class Summarizer:
    """Turns a call's input or output into what may be stored under one policy (pure)."""

    def __init__(self, policy: SkillPolicy, hook: Redactor | None = None) -> None:
        self.policy = policy
        self._patterns = [re.compile(p) for p in policy.redact]
        self._hook = hook

    def text(self, value: str) -> str:
        for pattern in self._patterns:
            value = pattern.sub(REDACTED, value)
        if self._hook is not None:
            value = self._hook(value)
        limit = self.policy.max_text_chars
        return value if len(value) <= limit else value[: limit - 1] + "…"

    def value(self, value: Any, *, keep_raw: bool | None = None) -> Any:
        """A JSON-ready copy: raw signals digested unless kept, text redacted and clipped."""
        keep = self.policy.keep_raw if keep_raw is None else keep_raw
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="python")
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            if keep:
                return {BYTES_KEY: base64.b64encode(data).decode()}
            return _digest("bytes", data, [len(data)])
        if hasattr(value, "tolist") and hasattr(value, "shape"):  # a numpy array
            value = value.tolist()
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): self.value(v, keep_raw=keep) for k, v in value.items()}
        if isinstance(value, list | tuple):
            found = _leaves(value)
            if found is not None and found[2] and found[1] >= RAW_MIN_ITEMS:
                if keep:
                    return json.loads(json.dumps(value))
                raw = json.dumps(value, separators=(",", ":")).encode()
                return _digest("array", raw, found[0])
            return [self.value(v, keep_raw=keep) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))


def case_bytes(case: HardCase) -> int:
    """Size of the case's stored line, bytes (newline included)."""
    return len(case.model_dump_json()) + 1


def make_case(
    *,
    policy: SkillPolicy,
    reason: Reason,
    case_id: str,
    device: str,
    skill: str,
    input: Any,
    output: Any,
    now: float,
    max_case_bytes: int,
    model: tuple[str, str] | None = None,
    confidence: float | None = None,
    label: Any = None,
    of: str | None = None,
    hook: Redactor | None = None,
) -> HardCase | None:
    """The record to store, or None when even without raw data it exceeds ``max_case_bytes``.

    A case with kept raw data that is too large is stored with digests instead (smaller, still
    countable); text was clipped already.
    """
    s = Summarizer(policy, hook)
    summary = s.value(input)
    if not isinstance(summary, dict):
        summary = {"value": summary}
    conf = confidence if confidence is None or math.isfinite(confidence) else None
    case = HardCase(
        id=case_id,
        device=device,
        skill=skill,
        model=model[0] if model else None,
        model_version=model[1] if model else None,
        reason=reason,
        confidence=None if conf is None else round(float(conf), 6),
        input=summary,
        output=s.value(output),
        label=s.value(label),
        of=of,
        ts=round(now, 3),
    )
    if case_bytes(case) <= max_case_bytes:
        return case
    if policy.keep_raw:
        digested = s.value(input, keep_raw=False)
        case = case.model_copy(
            update={
                "input": digested if isinstance(digested, dict) else {"value": digested},
                "output": s.value(output, keep_raw=False),
                "label": s.value(label, keep_raw=False),
            }
        )
        if case_bytes(case) <= max_case_bytes:
            return case
    return None


def new_case_id(device: str, rng: random.Random) -> str:
    """``DEVICE:16 hex digits``: unique across the fleet and across a store's clears."""
    return f"{device}:{rng.getrandbits(64):016x}"


def is_raw(value: Any) -> bool:
    """Whether ``value`` is a stand-in for a raw value that was not kept."""
    return isinstance(value, dict) and set(value) == {RAW_KEY}


__all__ = [
    "BYTES_KEY",
    "RAW_KEY",
    "RAW_MIN_ITEMS",
    "REASONS",
    "REDACTED",
    "DataConfig",
    "HardCase",
    "Reason",
    "Redactor",
    "SkillPolicy",
    "Summarizer",
    "case_bytes",
    "decide",
    "is_raw",
    "make_case",
    "new_case_id",
]
