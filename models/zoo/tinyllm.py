"""``zoo:tinyllm``: a tiny LLaMA-architecture language model that routes plain language to the
demo house's skills, trained in about a minute on CPU. The test suite's stand-in for SmolLM2.

It has SmolLM2's architecture, special tokens, chat template and onnxruntime-genai format, at
toy size (0.38 M parameters, int4, 320 KB in all), so the LLM runtime, the LLM skill and
the LLM router are tested against a real model file in real onnxruntime-genai without an 86 MB
download. It is trained on the router's own format (:mod:`edgeagent.nlu.llm_prompt`: the demo
tools in the system message, the request as the user message, the plan as the answer) over the
demo catalog of :mod:`.tinyllm_data`, with requests from the intent recipe's generator. It is not
meant to be good; the card reports how good it is on held-out phrasings.

The parts: :mod:`.tinyllm_data` (catalog and examples, pure), :mod:`.tinyllm_train` (tokenizer and
torch training), :mod:`.llm_recipe` (genai build, card), :mod:`.llm_measure` (speed and memory).

Why int4: fp32 weights would be 1.5 MB, over the 700 KB this model may add to the wheel every
device installs; int4 (``MatMulNBits``, block 32, the builder's CPU default) is about 5x smaller
and is what SmolLM2 runs as, so the tests exercise the same operators. The tied embedding reads
the int4 ``lm_head`` weights (``GatherBlockQuantized``); only norms and rotary tables are fp32.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...nlu.llm_prompt import PlanError, parse_plan
from ..llm_lora_base import LORA_DIR, make_lora_folder
from ._base import Stopwatch, require
from .llm_measure import measure
from .llm_recipe import LlmBuildResult, LlmCard, LlmRecipe, genai_build, write_llm_card
from .tinyllm_data import Example, examples, kinds_count
from .tinyllm_train import (
    CONFIG,
    MAX_TOKENS,
    VOCAB,
    render_prompt,
    save_hf,
    tokenizer_stats,
    train_model,
    train_tokenizer,
)

NAME = "tinyllm"
TRAIN_EXAMPLES = 6000
EPOCHS = 3
LEARNING_RATE = 8e-3
TEST_EXAMPLES = 300
MAX_NEW_TOKENS = 160
"""Longest answer generated in evaluation (a two-step plan is under 60 tokens)."""


def generate_plans(folder: Path, requests: Sequence[Example]) -> list[str]:
    """Greedy answers of the genai model in ``folder`` to each example's chat (unconstrained)."""
    og = require("onnxruntime_genai")
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    out: list[str] = []
    for e in requests:
        prompt = tok.apply_chat_template(json.dumps(e.chat()), add_generation_prompt=True)
        tokens = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(tokens) + MAX_NEW_TOKENS, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(tokens)
        new: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            new.append(int(gen.get_next_tokens()[0]))
        out.append(str(tok.decode(new)))
    return out


def score(requests: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """Exact plan match (the canonical text), valid-plan-JSON rate, and exact match per kind."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    valid = 0
    for e, text in zip(requests, answers, strict=True):
        totals[e.kind] += 1
        hits[e.kind] += text.strip() == e.answer
        try:
            parse_plan(text)
            valid += 1
        except PlanError:
            pass
    n = len(requests)
    metrics = {"exact_plan": sum(hits.values()) / n, "valid_json": valid / n}
    for kind in ("single", "multi", "refusal"):
        if totals[kind]:
            metrics[f"exact_{kind}"] = hits[kind] / totals[kind]
    return metrics


def _build(seed: int, model_dir: Path, card_dir: Path) -> LlmBuildResult:
    watch = Stopwatch()
    train = examples("train", TRAIN_EXAMPLES, seed)
    test = examples("test", TEST_EXAMPLES, seed)
    tokenizer = train_tokenizer([render_prompt(e) + e.answer + "<|im_end|>" for e in train])
    model, fit = train_model(tokenizer, train, seed=seed, epochs=EPOCHS, lr=LEARNING_RATE)
    with tempfile.TemporaryDirectory(prefix="edgeagent-tinyllm-") as tmp:
        save_hf(model, tokenizer, Path(tmp))
        genai_build(Path(tmp), model_dir, "int4")
    # the LoRA base household adapters apply to (models/llm_adapt.py): made from model.onnx
    make_lora_folder(model_dir, model_dir / LORA_DIR)
    metrics = score(test, generate_plans(model_dir, test))
    measured = measure(model_dir, [e.chat() for e in test[:20]], max_new_tokens=64)
    info = LlmCard(
        parameters=int(model.num_parameters()),
        architecture={"type": "LlamaForCausalLM", "vocab_size": VOCAB, **CONFIG},
        precision="int4",
        training=_training(train, test, tokenizer, fit),
        metrics=metrics,
        notes=(
            "Metrics are on held-out phrasings (the intent generator's test templates), greedy "
            "and without constrained decoding: valid_json is the share of answers that parse as "
            "a plan; exact_plan the share equal to the expected plan, character for character.",
            "Not meant to be good: it stands in for SmolLM2 in the tests (same architecture, "
            "tokens, template and runtime format).",
        ),
    )
    card_json, card_md = write_llm_card(
        RECIPE, model_dir, card_dir, seed=seed, info=info, measured=measured
    )
    return LlmBuildResult(NAME, seed, model_dir, card_json, card_md, metrics, watch.seconds)


def _training(
    train: list[Example], test: list[Example], tokenizer: Any, fit: dict[str, float]
) -> dict[str, Any]:
    return {
        "data": (
            "router requests from the intent recipe's generator over the demo house "
            "(edgeagent.models.zoo.tinyllm_data): chat messages from "
            "edgeagent.nlu.llm_prompt.messages, answers from render_plan"
        ),
        "train_examples": len(train),
        "train_mix": kinds_count(train),
        "test_examples": len(test),
        "test_mix": kinds_count(test),
        "tokenizer": f"byte-level BPE, {VOCAB} tokens, trained on the training chats",
        "tokens_per_example": tokenizer_stats(tokenizer, train),
        "max_tokens": MAX_TOKENS,
        "optimizer": f"AdamW lr {LEARNING_RATE}, 30-step warm-up, linear decay, batch 16",
        "epochs": EPOCHS,
        "loss": "cross-entropy on the answer tokens only",
        "final_loss": round(fit["final_loss"], 4),
        "steps": int(fit["steps"]),
    }


RECIPE = LlmRecipe(
    name=NAME,
    description=(
        "Tiny LLaMA-architecture language model (SmolLM2's architecture at toy size) that turns "
        "a request into a JSON plan over the demo house's skills; the tests' stand-in for "
        "SmolLM2-135M."
    ),
    version="1",
    licence="Apache-2.0 (trained here from generated data; the project's own model)",
    sources=(
        "Architecture: transformers LlamaForCausalLM, the architecture of SmolLM2 "
        "(huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct).",
        "Export: onnxruntime-genai model builder (python -m onnxruntime_genai.models.builder).",
        "Data: generated by edgeagent.models.zoo.intent_data and tinyllm_data (no external data).",
    ),
    build_fn=_build,
    committed=True,
)
