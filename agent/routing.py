"""Routing decisions: which device gets a call, and why. Pure: the caller passes the randomness.

Selection is power-of-two choices on a latency estimate: two candidates drawn at random, the one
with the lower ``(outstanding + 1) × latency`` wins. It spreads load like "least loaded" without
every coordinator replica stampeding the same device, and it adapts to slow devices as their
measured latency grows. A device with no measurements yet is scored with the median latency of
the others, so new devices get traffic and are measured. Ties, and scores within ``TIE_BAND`` of
each other, go to the first of the two drawn (a random one), never to the same device by name.

Newcomers and suspects must be *vouched for*. While some candidates are settled (measured by
this coordinator, not timing out) or have answered it, a device not yet measured on the skill,
or one whose last ``suspect_after`` calls timed out, is in the draw only once it has answered
this coordinator (a ``_ping`` the coordinator sends it in the background, or any call). A new
device is pinged and in the draw within a round trip; a crowd of silent impostors is never
chosen while a device that answers can serve. In the draw, an unsettled device is scored as a
typical settled one.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .registry import Candidate

#: Two scores closer than this fraction of the larger are a tie (broken at random).
TIE_BAND = 0.25
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
    probe: bool = False
    """The chosen device is not settled yet: a newcomer or a suspect (module docstring)."""

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
    *,
    suspect_after: int = 3,
) -> Decision:
    """Pick one of ``candidates`` by power-of-two choices (see the module docstring)."""
    unsettled = {
        c.device for c in candidates if not c.measured or c.timeouts_in_row >= suspect_after
    }
    unvouched = {c.device for c in candidates if c.device in unsettled and not c.vouched}
    if unvouched and len(unvouched) < len(candidates):
        rejected = dict(rejected)
        for c in candidates:
            if c.device in unvouched:
                rejected[c.device] = (
                    f"suspect: {c.timeouts_in_row} timeouts in a row"
                    if c.measured
                    else "new: not measured, has not answered a ping yet"
                )
        candidates = [c for c in candidates if c.device not in unvouched]
    settled = [c.latency_s for c in candidates if c.device not in unsettled and c.latency_s]
    known = settled or [c.latency_s for c in candidates if c.latency_s is not None]
    fallback = statistics.median(known) if known else DEFAULT_LATENCY_S
    scored = [
        Scored(
            device=c.device,
            outstanding=c.outstanding,
            latency_ms=None if c.latency_s is None else round(c.latency_s * 1000, 3),
            # A probe is scored as a typical settled device: a few noisy (or timed-out)
            # samples must not decide that it never gets another call.
            score=round(
                score(c if c.device not in unsettled or not settled else _unmeasured(c), fallback)
                * 1000,
                4,
            ),
        )
        for c in candidates
    ]
    if not scored:
        return Decision(skill, where, None, "no candidate", [], rejected)
    if len(scored) == 1:
        chosen = scored[0].device
        return Decision(
            skill, where, chosen, "the only candidate", scored, rejected, chosen in unsettled
        )
    a, b = rng.sample(scored, 2)
    # A tie goes to `a`, the first drawn: random, so equal devices share the calls. Scores
    # within TIE_BAND of each other are a tie: timing noise must not starve an equal device.
    best = b if b.score < a.score * (1 - TIE_BAND) else a
    method = (
        f"power of two choices: {a.device} (score {a.score}) vs {b.device} (score {b.score}); "
        "score = (outstanding + 1) × latency ms"
    )
    return Decision(skill, where, best.device, method, scored, rejected, best.device in unsettled)


def _unmeasured(c: Candidate) -> Candidate:
    return dataclasses.replace(c, latency_s=None)


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
