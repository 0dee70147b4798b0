"""Training a household's LoRA adapter for the zoo's tiny LLM (issue 15).

``edgeagent models adapt zoo:tinyllm --examples plans.yaml -o house.onnx_adapter`` lands here
(:func:`adapt_llm`). The household's requests with their plans (:mod:`.llm_plan_examples`) are
rendered in the router's chat format exactly as the recipe trained the model
(:mod:`.zoo.tinyllm_train`); PEFT trains rank-r LoRA matrices on the attention projections of a
transformers ``LlamaForCausalLM`` that holds the committed int4 model's weights, dequantized
(:func:`.llm_lora_base.dequantized_weights`): the device's model, not a neighbouring checkpoint.
A **replay** sample of the recipe's own training requests (:data:`REPLAY_PER_EXAMPLE` per
household example) is mixed in so the adapter learns the idioms without forgetting the rest.

Why not the genai builder: the committed model is int4 and its transformers checkpoint is not
kept; building a checkpoint back with the adapter through the builder would re-quantize every
weight and give a *different* base. The LoRA matrices are therefore written straight into the
names the builder uses (``….qkv_proj.lora_A.MatMul.weight``): q/k/v adapters become one adapter
of the fused ``qkv_proj`` (A side by side, B block-diagonal), PEFT's scaling folded into B, in
the adapter format of :mod:`.lora_adapter` with the LoRA base's digest (:mod:`.lora_llm`).

Seeded and single-threaded (:func:`.zoo._base.deterministic_torch`): the same examples and seed
give the same adapter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .llm_folder import resolve_llm
from .llm_lora_base import dequantized_weights, lora_folder
from .llm_plan_examples import PlanExample
from .lora_adapter import AdapterMeta, write_adapter
from .lora_llm import base_digest, load_llm_adapter
from .zoo._base import Stopwatch, deterministic_torch, require
from .zoo.tinyllm_data import Example

DEFAULT_RANK = 8
DEFAULT_EPOCHS = 10
LEARNING_RATE = 5e-3
BATCH = 16
HOUSEHOLD_REPEAT = 4
"""Each household example appears this many times per epoch (they are few, the replay many)."""
REPLAY_PER_EXAMPLE = 4
MIN_REPLAY = 120
MAX_NEW_TOKENS = 160
_HF_TARGETS = ("q_proj", "v_proj", "o_proj")
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


def to_example(e: PlanExample) -> Example:
    plan = e.plan()
    if not plan:
        return Example(e.text, plan, "refusal")
    return Example(e.text, plan, "multi" if len(plan) > 1 else "single")


def torch_model(folder: Path) -> Any:
    """A transformers ``LlamaForCausalLM`` with the genai model's (dequantized) weights."""
    torch = require("torch")
    transformers = require("transformers")
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    card = (
        json.loads((folder / "card.json").read_text()) if (folder / "card.json").is_file() else {}
    )
    arch = dict(card.get("architecture") or {})
    arch.pop("type", None)
    if not arch:
        raise ValueError(f"{folder}: no card.json architecture to rebuild the model from")
    llama = transformers.LlamaConfig(
        bos_token_id=config["bos_token_id"],
        eos_token_id=config["eos_token_id"],
        pad_token_id=config.get("pad_token_id"),
        **arch,
    )
    model = transformers.LlamaForCausalLM(llama)
    w = dequantized_weights(folder / "model.onnx")
    heads, kv, size = arch["num_attention_heads"], arch["num_key_value_heads"], arch["hidden_size"]
    q_rows, kv_rows = size, kv * size // heads
    state: dict[str, Any] = {
        "model.embed_tokens.weight": w["lm_head"],
        "lm_head.weight": w["lm_head"],
        "model.norm.weight": w[
            f"model.layers.{arch['num_hidden_layers']}.final_norm_layernorm.weight"
        ],
    }
    for i in range(arch["num_hidden_layers"]):
        p = f"model.layers.{i}"
        qkv = w[f"{p}.attn.qkv_proj"]
        state[f"{p}.self_attn.q_proj.weight"] = qkv[:q_rows]
        state[f"{p}.self_attn.k_proj.weight"] = qkv[q_rows : q_rows + kv_rows]
        state[f"{p}.self_attn.v_proj.weight"] = qkv[q_rows + kv_rows :]
        state[f"{p}.self_attn.o_proj.weight"] = w[f"{p}.attn.o_proj"]
        for m in ("gate_proj", "up_proj", "down_proj"):
            state[f"{p}.mlp.{m}.weight"] = w[f"{p}.mlp.{m}"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"{p}.{norm}.weight"] = w[f"{p}.{norm}.weight"]
    model.load_state_dict({k: torch.tensor(v.copy()) for k, v in state.items()}, strict=True)
    model.eval()
    return model


def replay(n: int, seed: int) -> list[Example]:
    """``n`` requests from the recipe's own training distribution (seeded)."""
    from .zoo.tinyllm_data import examples

    return examples("train", n, seed)


def _batches(encoded: list[tuple[list[int], int]], prefix: int, gen: Any) -> Any:
    torch = require("torch")
    order = torch.randperm(len(encoded), generator=gen).tolist()
    for start in range(0, len(order), BATCH):
        batch = [encoded[i] for i in order[start : start + BATCH]]
        width = max(len(ids) for ids, _ in batch) - prefix
        ids = torch.full((len(batch), width), 2, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for row, (seq, answer_at) in enumerate(batch):
            tail = seq[prefix:]
            ids[row, : len(tail)] = torch.tensor(tail)
            a = answer_at - prefix  # position t predicts token t + 1: the answer and <|im_end|>
            targets[row, a - 1 : len(tail) - 1] = torch.tensor(tail[a:])
            mask[row, prefix : prefix + len(tail)] = 1
        yield ids, targets, mask


def train_llm_adapter(
    folder: Path,
    household: Sequence[Example],
    *,
    rank: int = DEFAULT_RANK,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """LoRA matrices by ONNX input name (scaling folded into B), and training facts."""
    from .zoo.tinyllm_train import encode_example, shared_prefix

    tk = require("tokenizers")
    tokenizer = tk.Tokenizer.from_file(str(folder / "tokenizer.json"))
    replayed = replay(max(MIN_REPLAY, REPLAY_PER_EXAMPLE * len(household)), seed)
    data = list(household) * HOUSEHOLD_REPEAT + replayed
    with deterministic_torch(seed):
        torch = require("torch")
        peft = require("peft")
        model = peft.get_peft_model(
            torch_model(folder),
            peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                            target_modules=list(_HF_TARGETS)),
        )  # fmt: skip
        prefix = tokenizer.encode(shared_prefix(data[0])).ids
        encoded = [encode_example(tokenizer, e) for e in data]
        gen = torch.Generator().manual_seed(seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(trainable, lr=LEARNING_RATE)
        core = model.base_model.model
        prefix_ids = torch.tensor([prefix])
        model.train()
        losses: list[float] = []
        for _ in range(epochs):
            for ids, targets, mask in _batches(encoded, len(prefix), gen):
                cache = core.model(input_ids=prefix_ids, use_cache=True).cache
                cache.batch_repeat_interleave(len(ids))
                hidden = core.model(
                    input_ids=ids, attention_mask=mask, cache=cache, use_cache=True
                ).last_hidden_state
                keep = targets != -100
                loss = torch.nn.functional.cross_entropy(core.lm_head(hidden[keep]), targets[keep])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss))
        model.eval()
        params = _export(model, rank, 2.0)
    tail = losses[-10:]
    return params, {"replay": len(replayed), "steps": len(losses), "loss": sum(tail) / len(tail)}


def _export(model: Any, rank: int, scaling: float) -> dict[str, Any]:
    """PEFT's per-projection A [r, in] / B [out, r] as the base's inputs: A [in, R], B [R, out];
    q/k/v stacked into the fused ``qkv_proj`` (B block-diagonal over its output columns)."""
    import numpy as np

    lora: dict[tuple[str, str], tuple[Any, Any]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.detach().numpy().T
            b = module.lora_B["default"].weight.detach().numpy().T * scaling
            layer, proj = name.split("model.layers.")[1].split(".")[0], name.rsplit(".", 1)[1]
            # C order: ORT reads the raw buffer (a transposed view would be garbage)
            lora[(layer, proj)] = (
                np.ascontiguousarray(a, np.float32),
                np.ascontiguousarray(b, np.float32),
            )
    out: dict[str, Any] = {}
    for layer in sorted({k[0] for k in lora}, key=int):
        p = f"model.layers.{layer}.attn"
        fused = [(proj, lora[(layer, proj)]) for proj in _QKV if (layer, proj) in lora]
        if fused:
            in_size = fused[0][1][0].shape[0]
            q_rows = model.base_model.model.config.hidden_size
            heads = model.base_model.model.config.num_attention_heads
            kv_rows = model.base_model.model.config.num_key_value_heads * q_rows // heads
            offsets = {"q_proj": (0, q_rows), "k_proj": (q_rows, kv_rows),
                       "v_proj": (q_rows + kv_rows, kv_rows)}  # fmt: skip
            a_all = np.zeros((in_size, rank * len(fused)), np.float32)
            b_all = np.zeros((rank * len(fused), q_rows + 2 * kv_rows), np.float32)
            for j, (proj, (a, b)) in enumerate(fused):
                start, width = offsets[proj]
                a_all[:, j * rank : (j + 1) * rank] = a
                b_all[j * rank : (j + 1) * rank, start : start + width] = b
            out[f"{p}.qkv_proj.lora_A.MatMul.weight"] = a_all
            out[f"{p}.qkv_proj.lora_B.MatMul.weight"] = b_all
        if (layer, "o_proj") in lora:
            a, b = lora[(layer, "o_proj")]
            out[f"{p}.o_proj.lora_A.MatMul.weight"] = a
            out[f"{p}.o_proj.lora_B.MatMul.weight"] = b
    return out


def generate_plans(base: Path, requests: Sequence[Example], adapter: Path | None) -> list[str]:
    """Greedy answers (unconstrained) of the LoRA base ``base``, with ``adapter`` active."""
    og = require("onnxruntime_genai")
    model = og.Model(str(base))
    tok = og.Tokenizer(model)
    adapters = None if adapter is None else load_llm_adapter(model, base, adapter, "house")
    out: list[str] = []
    for e in requests:
        prompt = tok.apply_chat_template(json.dumps(e.chat()), add_generation_prompt=True)
        tokens = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(tokens) + MAX_NEW_TOKENS, do_sample=False)
        gen = og.Generator(model, params)
        if adapters is not None:
            gen.set_active_adapter(adapters, "house")
        gen.append_tokens(tokens)
        new: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            new.append(int(gen.get_next_tokens()[0]))
        out.append(str(tok.decode(new)))
    return out


def exact(requests: Sequence[Example], answers: Sequence[str]) -> float:
    """Share of answers equal to the expected plan, character for character."""
    hits = sum(a.strip() == e.answer for e, a in zip(requests, answers, strict=True))
    return hits / len(requests)


@dataclass(frozen=True, slots=True)
class LlmAdaptResult:
    path: Path
    bytes: int
    base_bytes: int
    seconds: float
    meta: AdapterMeta
    steps: int
    before: float
    """Exact-plan accuracy of the base on the examples."""
    after: float
    held_out: tuple[int, float, float] | None
    """(n, base, with adapter) on the held-out examples."""


def adapt_llm(
    spec: str,
    household: Sequence[PlanExample],
    out: Path,
    *,
    rank: int = DEFAULT_RANK,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    held_out: Sequence[PlanExample] = (),
) -> LlmAdaptResult:
    """Train, write and score a household adapter for the LLM ``spec`` (``zoo:tinyllm``)."""
    resolved = resolve_llm(spec)
    base = lora_folder(resolved.folder)
    examples = [to_example(e) for e in household]
    require("peft")  # imports before the clock: training time only
    clock = Stopwatch()
    params, facts = train_llm_adapter(
        resolved.folder, examples, rank=rank, epochs=epochs, seed=seed
    )
    seconds = clock.seconds
    meta = AdapterMeta(
        base=resolved.name,
        base_file=f"{resolved.folder.name}/{base.name}" if base != resolved.folder else base.name,
        base_sha256=base_digest(base),
        rank=rank,
        alpha=2.0 * rank,
        targets=tuple(sorted({k.split(".lora_")[0] for k in params})),
        examples=len(examples),
        replay=int(facts["replay"]),
        epochs=epochs,
        seed=seed,
    )
    size = write_adapter(out, params, meta)
    before = exact(examples, generate_plans(base, examples, None))
    after = exact(examples, generate_plans(base, examples, out))
    scored = None
    if held_out:
        test = [to_example(e) for e in held_out]
        scored = (
            len(test),
            exact(test, generate_plans(base, test, None)),
            exact(test, generate_plans(base, test, out)),
        )
    base_bytes = (base / "model.onnx").stat().st_size
    return LlmAdaptResult(
        out, size, base_bytes, seconds, meta, int(facts["steps"]), before, after, scored
    )
