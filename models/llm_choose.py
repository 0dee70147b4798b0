"""The LLM optimizer's card and its choice: which precision of a language model suits a device.

Pure: variant records (measured here, estimated for the device by
:func:`~edgeagent.models.llm_estimate.estimate`) in, a :class:`~edgeagent.models.card.ChoiceRecord`
out. The rules, in order (each line of ``rules`` says what it eliminated):

1. measured: variants that failed to build or to run are out;
2. quality: the variant's quality (exact plans, or top-1 agreement with fp32's tokens) is at
   least the floor: fp32's quality minus the budget, in points (or an absolute floor given);
3. device: it runs there (:class:`~edgeagent.models.llm_estimate.LlmEstimate.runs`: the memory
   measured here with its margin fits ``model_budget_mb`` and RAM, the files fit
   ``storage_budget_mb``, onnxruntime-genai exists for the architecture);
4. fastest estimated decoding (tokens/s) on the device; variants within ``tie`` (5%) of the
   fastest count as tied and the smallest on disk wins (then the lower first-token latency).

Decoding speed decides because it is what a device's assistant waits for on every token; the
first token is paid once per request and scales with the same factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..devices.profile import DeviceProfile
from .card import ChoiceRecord, Machine, Reproduce
from .llm_bench import LlmDeviceEstimate
from .llm_estimate import Precision

TIE = 0.05
EPSILON = 1e-9


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlmFigures(_Model):
    """What was measured for one variant here, and its estimate on the device."""

    size_bytes: int = Field(description="All files of the variant's folder, bytes.")
    threads: int = Field(description="Intra-op threads used here (the profile's, capped).")
    prompts: int = Field(description="Prompts generated for (greedy, once each after warm-up).")
    prompt_tokens: float = Field(description="Mean prompt length, tokens.")
    tokens_per_s: float = Field(description="Decode rate after each first token, here.")
    first_token_ms: float = Field(description="Median first-token latency here, ms.")
    peak_memory_mb: float = Field(description="Peak RSS minus the RSS before loading, MiB.")
    peak_rss_mb: float = Field(description="Peak RSS of the measuring process, MiB.")
    exact_plan: float | None = Field(
        default=None, description="Share of held-out router requests answered with the exact plan."
    )
    agreement: float = Field(
        description="Share of fp32's greedy tokens this variant ranks first when fed fp32's "
        "preceding tokens (teacher-forced top-1 agreement; fp32 itself: 1)."
    )
    prefix_agreement: float = Field(
        description="Mean share of fp32's greedy tokens its own greedy answer reproduces before "
        "the first difference (free-running: one early difference ends the match)."
    )
    quality: float = Field(description="The figure the floor applies to (the card's metric).")
    drop: float = Field(description="fp32's quality minus this one, points (negative: better).")
    estimate: LlmDeviceEstimate


class LlmVariantRecord(_Model):
    name: str = Field(description="fp32, int8 or int4 (onnxruntime-genai builder, CPU).")
    precision: Precision
    technique: str
    folder: str = Field(description="The variant's genai folder, relative to the card.")
    error: str | None = Field(default=None, description="Why it could not be built or measured.")
    figures: LlmFigures | None = None


class LlmQuality(_Model):
    metric: Literal["exact_plan", "agreement"]
    prompts: str = Field(description="Which prompts the quality is measured on.")
    budget: float = Field(description="Largest drop against fp32 allowed, points.")
    floor: float = Field(description="The lowest quality accepted (0..1).")
    reference: float | None = Field(description="fp32's quality, when it was measured.")


class LlmModelInfo(_Model):
    name: str
    source: str = Field(description="What was optimized: zoo:NAME or a checkpoint folder.")
    checkpoint: str = Field(description="The transformers checkpoint the variants were built from.")


class LlmOptimizerCard(_Model):
    kind: Literal["edgeagent.optimizer.llm-card"] = "edgeagent.optimizer.llm-card"
    version: Literal[1] = 1
    created: datetime
    model: LlmModelInfo
    device: DeviceProfile
    quality: LlmQuality
    method: list[str]
    variants: list[LlmVariantRecord]
    choice: ChoiceRecord
    chosen_file: str | None = Field(
        description="The chosen variant's decoder, relative to the card; the card's folder is "
        "the chosen variant's genai folder (load_llm loads it)."
    )
    machine: Machine
    reproduce: Reproduce


def quality_floor(reference: float | None, budget: float, floor: float | None) -> float:
    """The lowest quality accepted: ``floor`` when given, else fp32's minus ``budget`` points
    (0 when fp32 has no figure: the rule then passes everything)."""
    if floor is not None:
        return floor
    return 0.0 if reference is None else max(0.0, reference - budget / 100)


def choose_llm(
    variants: Sequence[LlmVariantRecord], profile: DeviceProfile, floor: float, *, tie: float = TIE
) -> ChoiceRecord:
    """Apply the module's rules; pure."""
    rules: list[str] = []
    eliminated: dict[str, str] = {}
    alive: dict[str, tuple[LlmVariantRecord, LlmFigures]] = {}
    for v in variants:
        if v.figures is None:
            eliminated[v.name] = f"not measured: {v.error}"
        else:
            alive[v.name] = (v, v.figures)
    out = [f"{n} ({why})" for n, why in eliminated.items()]
    rules.append(
        f"measured: {len(alive)} of {len(variants)} variants"
        + (f"; out: {'; '.join(out)}" if out else "")
    )

    def apply(title: str, why: dict[str, str | None]) -> None:
        gone = {n: w for n, w in why.items() if w is not None}
        for n, w in gone.items():
            eliminated[n] = f"{title}: {w}"
            del alive[n]
        listed = "; ".join(f"{n} ({w})" for n, w in gone.items())
        rules.append(f"{title}: eliminated {listed}" if gone else f"{title}: all {len(alive)} pass")

    apply(
        f"quality at least {floor:.3f}",
        {
            n: None if f.quality >= floor - EPSILON else f"{f.quality:.3f} < {floor:.3f}"
            for n, (_, f) in alive.items()
        },
    )
    apply(
        f"runs on {profile.name} (model budget {profile.model_budget_mb.value:g} MiB, storage "
        f"{profile.storage_budget_mb.value:g} MiB, {profile.arch})",
        {n: None if f.estimate.runs else f.estimate.reason for n, (_, f) in alive.items()},
    )
    if not alive:
        rules.append("fastest: nothing left to choose from")
        return ChoiceRecord(
            variant=None,
            reason="no variant meets the rules: "
            + "; ".join(f"{n}: {w}" for n, w in eliminated.items()),
            rules=rules,
            eliminated=eliminated,
            qualified=[],
        )
    ranked = sorted(alive.values(), key=lambda vf: (-vf[1].estimate.tokens_per_s.mid, vf[0].name))
    best = ranked[0][1].estimate.tokens_per_s.mid
    tied = [vf for vf in ranked if vf[1].estimate.tokens_per_s.mid >= best * (1 - tie) - EPSILON]
    pick, pf = min(tied, key=lambda vf: (vf[1].size_bytes, vf[1].first_token_ms, vf[0].name))
    rules.append(
        f"fastest estimated decoding on {profile.name}: {ranked[0][0].name} ({best:.4g} tokens/s);"
        f" within {tie:.0%}: {', '.join(v.name for v, _ in tied)}; smallest of those: "
        f"{pick.name} ({pf.size_bytes} bytes)"
    )
    e = pf.estimate
    reason = (
        f"{pick.name} is the "
        + (
            "fastest"
            if len(tied) == 1
            else f"smallest of the {len(tied)} fastest (within {tie:.0%})"
        )
        + f" of the {len(alive)} variants that pass every rule on {profile.name}: est. "
        f"{e.tokens_per_s.mid:.3g} tokens/s ({pf.tokens_per_s:.4g} here / {e.speed_factor:g}), "
        f"first token ~{e.first_token_ms.mid:.0f} ms, needs {e.memory_mb:.0f} of "
        f"{e.budget_mb:g} MiB, {pf.size_bytes} bytes, quality {pf.quality:.3f} (floor {floor:.3f})"
    )
    return ChoiceRecord(
        variant=pick.name,
        reason=reason,
        rules=rules,
        eliminated=eliminated,
        qualified=[v.name for v, _ in ranked],
    )
