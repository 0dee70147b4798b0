"""``edgeagent models optimize`` for language models: fp32/int8/int4 onnxruntime-genai variants of
a tiny LLaMA checkpoint (trained here in seconds on the tiny model's router data), each measured in
a child process and scored; the choice respects the device's memory budget and the quality floor;
the output folder loads with load_llm and generates; bad inputs are typed errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeagent.cli import main
from edgeagent.devices import DeviceProfile, load_profile
from edgeagent.models import llm_optimize
from edgeagent.models.llm_backend import load_llm
from edgeagent.models.llm_bench import device_estimate, precision_of
from edgeagent.models.llm_choose import LlmOptimizerCard, LlmVariantRecord, choose_llm
from edgeagent.models.llm_estimate import LlmMeasured, estimate
from edgeagent.models.llm_folder import resolve_llm
from edgeagent.models.llm_measure import measure_llm
from edgeagent.models.llm_optimize import optimize_llm, prefix_agreement
from edgeagent.models.llm_source import LlmOptimizeError, resolve_source, tinyllm_checkpoint
from edgeagent.models.zoo.tinyllm import generate_plans, score
from edgeagent.models.zoo.tinyllm_data import examples

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("torch")

PROMPTS = 12


@dataclasses.dataclass(frozen=True)
class Built:
    checkpoint: Path
    out: Path
    card: LlmOptimizerCard
    stdout: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A quick tiny checkpoint (800 examples, one epoch: seconds), optimized for the Pi 4 through
    the CLI with ``--json`` (12 held-out prompts instead of 40, to stay fast)."""
    root = tmp_path_factory.mktemp("llmopt")
    checkpoint = root / "hf"
    tinyllm_checkpoint(checkpoint, examples_count=800, epochs=1)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llm_optimize, "DEFAULT_PROMPTS", PROMPTS)
        result = CliRunner().invoke(
            main,
            ["models", "optimize", str(checkpoint), "--device", "pi4", "-o", str(out), "--json"],
        )
    assert result.exit_code == 0, result.output
    card = LlmOptimizerCard.model_validate_json(result.stdout)
    return Built(checkpoint, out, card, result.stdout)


def _variants(card: LlmOptimizerCard) -> dict[str, LlmVariantRecord]:
    return {v.name: v for v in card.variants}


def _with_budget(profile: DeviceProfile, mb: float) -> DeviceProfile:
    budget = profile.model_budget_mb.model_copy(update={"value": mb})
    return profile.model_copy(update={"model_budget_mb": budget})


@pytest.mark.slow
def test_variants_are_built_measured_and_scored(built: Built) -> None:
    card = built.card
    assert card == LlmOptimizerCard.model_validate_json((built.out / "card.json").read_text())
    assert (built.out / "card.md").read_text().startswith("# hf for pi4")
    variants = _variants(card)
    assert list(variants) == ["fp32", "int8", "int4"]
    sizes = {}
    requests = examples("test", PROMPTS, 0)
    for name, v in variants.items():
        f = v.figures
        assert f is not None, v.error
        folder = built.out / v.folder
        assert precision_of(folder) == name == v.precision
        sizes[name] = f.size_bytes
        assert f.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
        assert f.prompts == PROMPTS
        assert f.tokens_per_s > 0
        assert f.first_token_ms > 0
        assert 0 < f.peak_memory_mb < f.peak_rss_mb
        # The plans the measuring process wrote are the ones the folder writes here.
        assert f.exact_plan == pytest.approx(
            score(requests, generate_plans(folder, requests))["exact_plan"], abs=1e-4
        )
        assert f.quality == f.agreement  # a checkpoint folder: agreement with fp32 decides
        est = f.estimate
        assert est.profile == "pi4"
        assert est.tokens_per_s.mid == pytest.approx(f.tokens_per_s / est.speed_factor, rel=1e-3)
    assert sizes["fp32"] > sizes["int8"] > sizes["int4"]
    assert variants["fp32"].figures is not None
    assert variants["fp32"].figures.agreement == 1.0
    assert card.quality.metric == "agreement"
    assert card.quality.reference == 1.0
    assert card.quality.floor == pytest.approx(1.0 - llm_optimize.DEFAULT_BUDGET / 100)


@pytest.mark.slow
def test_the_output_folder_is_the_chosen_variant_and_generates(built: Built) -> None:
    card = built.card
    assert card.choice.variant is not None, card.choice.reason
    assert card.chosen_file == "model.onnx"
    chosen = built.out / "variants" / card.choice.variant
    assert (built.out / "model.onnx").read_bytes() == (chosen / "model.onnx").read_bytes()
    assert resolve_llm(built.out).name == "hf"
    llm = load_llm(built.out)
    request = examples("test", 1, 0)[0]
    g = llm.generate(request.chat(), max_tokens=160)
    assert g.tokens > 0
    assert g.text == generate_plans(chosen, [request])[0]
    # The pure rule gives the same pick from the card's own figures.
    again = choose_llm(card.variants, card.device, card.quality.floor)
    assert again.variant == card.choice.variant


def _measured(v: LlmVariantRecord) -> LlmMeasured:
    f = v.figures
    assert f is not None
    return LlmMeasured(
        f.tokens_per_s, f.first_token_ms, f.peak_memory_mb, f.size_bytes, v.precision
    )


def _reestimate(card: LlmOptimizerCard, profile: DeviceProfile) -> list[LlmVariantRecord]:
    """The card's variants with their measured figures estimated for ``profile``."""
    records = []
    for v in card.variants:
        assert v.figures is not None
        est = device_estimate(estimate(_measured(v), profile))
        records.append(
            v.model_copy(update={"figures": v.figures.model_copy(update={"estimate": est})})
        )
    return records


@pytest.mark.slow
def test_the_choice_respects_a_tight_memory_budget(built: Built) -> None:
    pi4 = load_profile("pi4")
    needs = {v.name: estimate(_measured(v), pi4).memory_mb for v in built.card.variants}
    tight = _with_budget(pi4, min(needs.values()))
    choice = choose_llm(_reestimate(built.card, tight), tight, 0.0)
    assert choice.variant is not None, choice.reason
    assert needs[choice.variant] <= tight.model_budget_mb.value
    for name, need in needs.items():
        if need > tight.model_budget_mb.value:
            assert "over the model budget" in choice.eliminated[name]
    none_fit = _with_budget(pi4, min(needs.values()) * 0.9)
    nothing = choose_llm(_reestimate(built.card, none_fit), none_fit, 0.0)
    assert nothing.variant is None
    assert "over the model budget" in nothing.reason


@pytest.mark.slow
def test_the_choice_keeps_the_quality_floor(built: Built) -> None:
    card = built.card
    quality = {v.name: v.figures.quality for v in card.variants if v.figures is not None}
    for name in card.choice.qualified:
        assert quality[name] >= card.quality.floor - 1e-9
    # A floor just above the worst variant's quality eliminates it (and only what is below).
    worst = min(quality, key=lambda n: quality[n])
    floor = quality[worst] + 1e-3
    choice = choose_llm(card.variants, card.device, floor)
    assert worst not in choice.qualified
    assert choice.variant is not None
    assert quality[choice.variant] >= floor
    for name, q in quality.items():
        assert (name in choice.eliminated) == (q < floor), name
    assert "quality at least" in choice.eliminated[worst]


def test_prefix_agreement_counts_the_shared_prefix() -> None:
    ref = [(5, 6, 7, 2), (1, 2)]
    assert prefix_agreement(ref, ref) == 1.0
    assert prefix_agreement(ref, [(5, 6, 9, 9), (3, 2)]) == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError, match="same non-zero number"):
        prefix_agreement(ref, ref[:1])


@pytest.mark.slow
def test_teacher_forced_agreement_is_one_on_its_own_tokens(built: Built) -> None:
    int4 = _variants(built.card)["int4"]
    assert int4.figures is not None
    chats = [e.chat() for e in examples("test", PROMPTS, 0)]
    folder = built.out / int4.folder
    own = measure_llm(folder, chats, threads=1, max_new_tokens=64).outputs()
    again = measure_llm(folder, chats, threads=1, max_new_tokens=64, reference=own)
    assert again.forced_agreement == 1.0
    assert again.outputs() == own
    fp32 = measure_llm(built.out / "variants" / "fp32", chats, threads=1, max_new_tokens=64)
    against_fp32 = measure_llm(
        folder, chats, threads=1, max_new_tokens=64, reference=fp32.outputs()
    )
    assert against_fp32.forced_agreement == pytest.approx(int4.figures.agreement, abs=1e-4)


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["models", "optimize", *args])


def test_bad_inputs_are_typed_errors(tmp_path: Path) -> None:
    built_folder = Path(resolve_llm("zoo:tinyllm").folder)
    r = _invoke(str(built_folder), "--device", "pi4", "-o", str(tmp_path / "a"))
    assert r.exit_code == 1
    assert "already built" in r.output
    assert "transformers checkpoint" in r.output

    no_weights = tmp_path / "ckpt"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    r = _invoke(str(no_weights), "--device", "pi4", "-o", str(tmp_path / "b"))
    assert r.exit_code == 1
    assert "no weights" in r.output

    r = _invoke("zoo:tinyllm", "--device", "pi4", "--variants", "fp16", "-o", str(tmp_path / "c"))
    assert r.exit_code == 1
    assert "unknown language-model variant" in r.output

    r = _invoke("zoo:tinyllm", "--device", "pi4", "--eval", "x.npz")
    assert r.exit_code == 1
    assert "not language models" in r.output

    r = _invoke("zoo:tinyllm", "--device", "no-such-device", "-o", str(tmp_path / "d"))
    assert r.exit_code == 1
    assert "no-such-device" in r.output

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = _invoke("zoo:tinyllm", "--device", "pi4", "-o", str(busy))
    assert r.exit_code == 1
    assert "not an optimizer folder" in r.output
    assert (busy / "notes.txt").read_text() == "mine"

    r = _invoke("digits", "--device", "pi4", "--min-quality", "0.5")
    assert r.exit_code == 1
    assert "--min-quality is for language models" in r.output

    with pytest.raises(LlmOptimizeError, match="no such zoo language model"):
        resolve_source("zoo:nosuch")
    with pytest.raises(LlmOptimizeError, match="no such folder"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(LlmOptimizeError, match="quality floor"):
        optimize_llm("zoo:tinyllm", load_profile("pi4"), tmp_path / "e", floor=1.5)
