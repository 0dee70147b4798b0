"""``models optimize`` for a language model: build precision variants, measure, choose, write.

::

    card = optimize_llm("zoo:tinyllm", load_profile("pi4"), Path("out"))
    card.choice.variant, card.choice.reason
    load_llm(Path("out"))                     # the chosen variant, an onnxruntime-genai folder

1. The source is a transformers checkpoint (:mod:`.llm_source`: the zoo's are reproduced into
   the cache); the onnxruntime-genai builder makes an fp32, an int8 and an int4 CPU folder of it
   in ``out/variants/NAME/`` (int8 and int4 are the builder's weight-only ``MatMulNBits``;
   fp32 is always built: it is the quality reference).
2. Each is measured by :func:`.llm_measure.measure_llm` in a fresh process with the profile's
   threads, greedily, on held-out router requests (:mod:`.zoo.tinyllm_data`): decode tokens/s,
   first-token latency, peak memory, and the tokens written, from which come the quality
   figures: the share of exact plans (:func:`.zoo.tinyllm.score`; what the tiny model is trained
   for) and the top-1 agreement with fp32's greedy tokens under teacher forcing (for any model:
   the measuring process feeds fp32's tokens and counts where the variant's top token is
   fp32's; free-running greedy answers diverge for good after one difference, so
   :func:`prefix_agreement` is reported but does not decide).
3. :func:`.llm_estimate.estimate` says what each does on the device; :func:`.llm_choose.choose_llm`
   picks the fastest that runs there and keeps the quality floor.
4. ``out/`` gets the chosen variant's files (so ``out/`` is a genai folder ``load_llm`` loads),
   ``card.json`` (:class:`.llm_choose.LlmOptimizerCard`) and ``card.md``.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..devices.profile import DeviceProfile
from .backend import ModelError
from .card import Reproduce
from .data import shown
from .llm_bench import device_estimate
from .llm_choose import (
    LlmFigures,
    LlmModelInfo,
    LlmOptimizerCard,
    LlmQuality,
    LlmVariantRecord,
    choose_llm,
    quality_floor,
)
from .llm_estimate import LlmMeasured, Precision, estimate
from .llm_measure import LlmMeasurement, measure_llm
from .llm_source import LlmOptimizeError, LlmSource, QualityMetric, resolve_source

VARIANTS: dict[str, tuple[Precision, str]] = {
    "fp32": ("fp32", "onnxruntime-genai builder, fp32, CPU"),
    "int8": ("int8", "onnxruntime-genai builder, int8 weight-only (MatMulNBits bits 8), CPU"),
    "int4": ("int4", "onnxruntime-genai builder, int4 weight-only (MatMulNBits block 32), CPU"),
}
DEFAULT_BUDGET = 5.0
"""Points of quality a variant may lose against fp32 (one held-out request of 20 is 5 points)."""
DEFAULT_PROMPTS = 40
MAX_PROMPTS = 300
MAX_NEW_TOKENS: dict[QualityMetric, int] = {"exact_plan": 160, "agreement": 64}
"""Longest answer generated: a two-step plan is under 60 tokens; agreement needs fewer."""
WARMUP = 2
"""Warm-up generations before the timed ones (the first run after loading is slower)."""
INLINE_BELOW = 100 * 2**20
"""Checkpoints smaller than this get their weights inside model.onnx (one file fewer)."""
Progress = Callable[[str], None]


def prefix_agreement(reference: Sequence[Sequence[int]], other: Sequence[Sequence[int]]) -> float:
    """Mean over prompts of the share of the reference's greedy tokens the other reproduces
    before the first difference (greedy decoding diverges for good after one)."""
    if len(reference) != len(other) or not reference:
        raise ValueError("prefix_agreement: the same non-zero number of outputs on both sides")
    shares = []
    for ref, oth in zip(reference, other, strict=True):
        same = 0
        for a, b in zip(ref, oth, strict=False):
            if a != b:
                break
            same += 1
        shares.append(same / len(ref) if ref else float(not oth))
    return sum(shares) / len(shares)


def _check_args(
    variants: Sequence[str] | None, budget: float, floor: float | None, prompts: int, out: Path
) -> list[str]:
    names = ["fp32"] + [v for v in (variants or VARIANTS) if v != "fp32"]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise LlmOptimizeError(
            f"unknown language-model variant(s) {unknown}; known: {', '.join(VARIANTS)}"
        )
    if budget < 0:
        raise LlmOptimizeError(f"budget: at least 0 points, got {budget:g}")
    if floor is not None and not 0 <= floor <= 1:
        raise LlmOptimizeError(f"quality floor: between 0 and 1, got {floor:g}")
    if not 1 <= prompts <= MAX_PROMPTS:
        raise LlmOptimizeError(f"prompts: 1 to {MAX_PROMPTS}, got {prompts}")
    if out.exists() and not out.is_dir():
        raise LlmOptimizeError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "card.json").is_file():
        raise LlmOptimizeError(
            f"{out}: not empty and not an optimizer folder (no card.json): choose another -o"
        )
    return list(dict.fromkeys(names))


def _checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _build(source: LlmSource, name: str, folder: Path) -> None:
    from .zoo.llm_recipe import LlmBuildError, genai_build

    precision = VARIANTS[name][0]
    folder.mkdir(parents=True)
    try:
        genai_build(
            source.checkpoint,
            folder,
            precision,
            inline=_checkpoint_bytes(source.checkpoint) < INLINE_BELOW,
        )
    except LlmBuildError as exc:
        raise ModelError(str(exc)) from exc


def _figures(
    m: LlmMeasurement,
    folder: Path,
    precision: Precision,
    profile: DeviceProfile,
    metric: QualityMetric,
    exact: float,
    agree: float,
    reference: float | None,
) -> LlmFigures:
    size = _checkpoint_bytes(folder)
    est = estimate(
        LlmMeasured(
            tokens_per_s=max(m.tokens_per_s, 1e-6),
            first_token_ms=max(m.first_token_ms, 1e-6),
            peak_memory_mb=max(m.model_memory_mb, 0.1),
            model_bytes=size,
            precision=precision,
        ),
        profile,
    )
    quality = exact if metric == "exact_plan" else agree
    return LlmFigures(
        size_bytes=size,
        threads=m.threads or 0,
        prompts=len(m.outputs()),
        prompt_tokens=round(m.prompt_tokens, 1),
        tokens_per_s=round(m.tokens_per_s, 2),
        first_token_ms=round(m.first_token_ms, 3),
        peak_memory_mb=round(m.model_memory_mb, 2),
        peak_rss_mb=round(m.peak_rss_mb, 2),
        exact_plan=round(exact, 4),
        agreement=round(agree, 4),
        prefix_agreement=1.0,
        quality=round(quality, 4),
        drop=round(((reference if reference is not None else quality) - quality) * 100, 4),
        estimate=device_estimate(est),
    )


def optimize_llm(
    spec: str,
    profile: DeviceProfile,
    out: Path,
    *,
    budget: float = DEFAULT_BUDGET,
    floor: float | None = None,
    variants: Sequence[str] | None = None,
    metric: QualityMetric | None = None,
    prompts: int | None = None,
    threads: int | None = None,
    cache: Path | None = None,
    device_arg: str | None = None,
    progress: Progress | None = None,
) -> LlmOptimizerCard:
    """Build, measure, choose and write (see the module); returns the card written to ``out``."""
    import os

    from .measure import machine
    from .zoo.tinyllm import score
    from .zoo.tinyllm_data import examples

    say = progress or (lambda _msg: None)
    prompts = DEFAULT_PROMPTS if prompts is None else prompts
    names = _check_args(variants, budget, floor, prompts, out)
    say(f"resolving {spec}")
    source = resolve_source(spec, cache)
    metric = metric or source.metric
    threads = threads or max(1, min(profile.threads, os.cpu_count() or 1))
    requests = examples("test", prompts, 0)
    chats = [e.chat() for e in requests]
    variant_dir = out / "variants"
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    built: list[LlmVariantRecord] = []
    for i, name in enumerate(names, 1):  # every build first: none runs while another measures
        precision, technique = VARIANTS[name]
        record = LlmVariantRecord(
            name=name, precision=precision, technique=technique, folder=f"variants/{name}"
        )
        say(f"[{i}/{len(names)}] building {name}")
        try:
            _build(source, name, variant_dir / name)
        except ModelError as exc:
            if name == "fp32":
                raise LlmOptimizeError(f"{spec}: the fp32 variant failed: {exc}") from exc
            record = record.model_copy(update={"error": str(exc)})
        built.append(record)
    records: list[LlmVariantRecord] = []
    reference_tokens: list[tuple[int, ...]] | None = None
    reference: float | None = None
    for i, record in enumerate(built, 1):
        if record.error is not None:
            records.append(record)
            continue
        say(f"[{i}/{len(built)}] measuring {record.name}")
        folder = out / record.folder
        try:
            m = measure_llm(
                folder,
                chats,
                threads=threads,
                warmup=WARMUP,
                max_new_tokens=MAX_NEW_TOKENS[metric],
                reference=reference_tokens,
            )
        except ModelError as exc:
            if record.name == "fp32":
                raise LlmOptimizeError(f"{spec}: the fp32 variant failed: {exc}") from exc
            records.append(record.model_copy(update={"error": str(exc)}))
            continue
        outputs = m.outputs()
        reference_tokens = reference_tokens or outputs
        exact = score(requests, m.texts())["exact_plan"]
        prefix = prefix_agreement(reference_tokens, outputs)
        agree = 1.0 if m.forced_agreement is None else m.forced_agreement
        if reference is None:
            reference = exact if metric == "exact_plan" else agree
        fig = _figures(m, folder, record.precision, profile, metric, exact, agree, reference)
        fig = fig.model_copy(update={"prefix_agreement": round(prefix, 4)})
        records.append(record.model_copy(update={"figures": fig}))

    lowest = quality_floor(reference, budget, floor)
    say("choosing")
    choice = choose_llm(records, profile, lowest)
    chosen_file = _write_choice(out, choice.variant)
    card = LlmOptimizerCard(
        created=datetime.now(UTC).replace(microsecond=0),
        model=LlmModelInfo(name=source.name, source=spec, checkpoint=shown(source.checkpoint)),
        device=profile,
        quality=LlmQuality(
            metric=metric,
            prompts=f"the first {prompts} held-out router requests of zoo:tinyllm's test set "
            "(edgeagent.models.zoo.tinyllm_data, seed 0), chat template applied",
            budget=budget,
            floor=round(lowest, 6),
            reference=reference,
        ),
        method=_method(threads, metric, profile),
        variants=records,
        choice=choice,
        chosen_file=chosen_file,
        machine=machine(),
        reproduce=Reproduce(
            command=_command(spec, device_arg or profile.name, out, budget, floor, variants),
            notes=[
                "speed and memory are measured, so they vary from run to run; the variants are "
                "built by the onnxruntime-genai builder from the same checkpoint",
            ],
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(card.model_dump_json(indent=2) + "\n")
    from .llm_optimize_md import render_llm_card

    (out / "card.md").write_text(render_llm_card(card))
    return card


def _write_choice(out: Path, variant: str | None) -> str | None:
    """Put the chosen variant's files at the top of ``out`` (old top-level files go first)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() and old.name not in ("card.json", "card.md"):
            old.unlink()
    if variant is None:
        return None
    chosen = out / "variants" / variant
    for f in sorted(chosen.iterdir()):
        if f.is_file():
            shutil.copy2(f, out / f.name)
    import json

    config = json.loads((out / "genai_config.json").read_text())
    return str(config["model"]["decoder"]["filename"])


def _method(threads: int, metric: QualityMetric, profile: DeviceProfile) -> list[str]:
    return [
        f"each variant measured in a fresh process (edgeagent.models.llm_measure) after every "
        f"variant was built, one after another, {threads} threads, greedy, {WARMUP} warm-up "
        "generations then each prompt once; tokens/s: tokens after each first token over their "
        "time; first token: median, from tokenizing the prompt; figures vary from run to run, "
        "more so on a busy machine",
        "peak memory: the process's peak RSS (VmHWM) minus its RSS before loading the model",
        f"quality ({metric}): "
        + (
            "share of requests answered with exactly the expected plan"
            if metric == "exact_plan"
            else "top-1 agreement with fp32: the share of fp32's greedy tokens the variant ranks "
            "first when fed fp32's preceding tokens (teacher forcing)"
        ),
        f"device estimate for {profile.name}: edgeagent.models.llm_estimate (memory x 1.10 "
        "against the model budget; tokens/s / the profile's speed factor, a 2x range)",
    ]


def _command(
    spec: str,
    device: str,
    out: Path,
    budget: float,
    floor: float | None,
    variants: Sequence[str] | None,
) -> str:
    args = ["edgeagent", "models", "optimize", spec, "--device", device, "--budget", f"{budget:g}"]
    if floor is not None:
        args += ["--min-quality", f"{floor:g}"]
    if variants is not None:
        args += ["--variants", ",".join(variants)]
    return shlex.join([*args, "-o", shown(out)])
