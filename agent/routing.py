"""Routing decisions: which device gets a call, and why. Pure: the caller passes the randomness.

Selection is power-of-two choices on a latency estimate: two candidates drawn at random, the one
with the lower ``(outstanding + 1) × latency`` wins. It spreads load like "least loaded" without
every coordinator replica stampeding the same device, and it adapts to slow devices as their
measured latency grows. A device with no measurements yet is scored with the median latency of
the others, so new devices get traffic and are measured.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .registry import Candidate

#: Latency assumed when no candidate has been measured yet, seconds.
DEFAULT_LATENCY_S = 0.001


@dataclass(frozen=True, slots=True)
class Scored:
    device: str
    outstanding: int
    latency_ms: float | None
    score: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The choice and everything that led to it (what ``--explain`` prints)."""

    skill: str
    where: dict[str, str]
    chosen: str | None
    method: str
    scored: list[Scored] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(c: Candidate, fallback_s: float) -> float:
    latency = c.latency_s if c.latency_s is not None else fallback_s
    return (c.outstanding + 1) * latency


def decide(
    skill: str,
    where: dict[str, str],
    candidates: list[Candidate],
    rejected: dict[str, str],
    rng: random.Random,
) -> Decision:
    """Pick one of ``candidates`` by power-of-two choices (see the module docstring)."""
    known = [c.latency_s for c in candidates if c.latency_s is not None]
    fallback = statistics.median(known) if known else DEFAULT_LATENCY_S
    scored = [
        Scored(
            device=c.device,
            outstanding=c.outstanding,
            latency_ms=None if c.latency_s is None else round(c.latency_s * 1000, 3),
            score=round(score(c, fallback) * 1000, 4),
        )
        for c in candidates
    ]
    if not scored:
        return Decision(skill, where, None, "no candidate", [], rejected)
    if len(scored) == 1:
        return Decision(skill, where, scored[0].device, "the only candidate", scored, rejected)
    a, b = rng.sample(scored, 2)
    best = min((a, b), key=lambda s: (s.score, s.outstanding, s.device))
    method = (
        f"power of two choices: {a.device} (score {a.score}) vs {b.device} (score {b.score}); "
        "score = (outstanding + 1) × latency ms"
    )
    return Decision(skill, where, best.device, method, scored, rejected)


def parse_where(text: str | None) -> dict[str, str]:
    """``"room=kitchen,kind=lamp"`` → ``{"room": "kitchen", "kind": "lamp"}``; ValueError if bad."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"bad where clause {part!r}: use key=value[,key=value]")
        out[key.strip()] = value.strip()
    return out


def format_where(where: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(where.items()))
