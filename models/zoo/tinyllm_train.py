"""Training the tiny LLM: its byte-level BPE tokenizer and a small LlamaForCausalLM, seeded.

The tokenizer is trained with the ``tokenizers`` library on the rendered training chats: byte-level
BPE (every byte is in the alphabet, so any text encodes), :data:`VOCAB` tokens, with SmolLM2's
special tokens at SmolLM2's ids (``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2) and a
ChatML template like SmolLM2's, so onnxruntime-genai's ``Tokenizer`` and ``apply_chat_template``
treat it exactly like the real model.

The model is SmolLM2's architecture (LLaMA: RMSNorm, rotary positions, grouped-query attention,
SwiGLU, tied embeddings) at toy size (:data:`CONFIG`). Only the answer tokens (and the closing
``<|im_end|>``) carry loss: the prompt is the same tool list every time, and learning to predict it
would spend the small model on nothing useful. Training is seeded, single-threaded and
deterministic (:func:`._base.deterministic_torch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._base import deterministic_torch, require
from .tinyllm_data import Example

VOCAB = 640
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
MAX_TOKENS = 512
"""Longest training sequence (prompt + answer), tokens; also the model's context length."""


def render_prompt(example: Example) -> str:
    """The chat as the template renders it, up to and including ``<|im_start|>assistant\\n``."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in example.chat())
    return text + "<|im_start|>assistant\n"


def train_tokenizer(texts: Sequence[str]) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` with :data:`VOCAB` tokens (deterministic)."""
    tk = require("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIALS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_hf(model: Any, tokenizer: Any, out: Path) -> None:
    """A transformers folder (config, safetensors, tokenizer with the chat template): what the
    onnxruntime-genai builder reads."""
    transformers = require("transformers")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIALS[1],
        eos_token=SPECIALS[2],
        pad_token=SPECIALS[2],
        unk_token=SPECIALS[0],
        model_max_length=MAX_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    model.save_pretrained(out)
    fast.save_pretrained(out)


def encode_example(tokenizer: Any, example: Example) -> tuple[list[int], int]:
    """Token ids of prompt + answer + ``<|im_end|>``, and where the answer starts."""
    prompt = tokenizer.encode(render_prompt(example)).ids
    answer = tokenizer.encode(example.answer + SPECIALS[2]).ids
    return prompt + answer, len(prompt)


def shared_prefix(example: Example) -> str:
    """The text every training prompt starts with: the system message (the demo tools) and the
    opening of the user turn."""
    system = example.chat()[0]["content"]
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"


def train_model(
    tokenizer: Any,
    train: Sequence[Example],
    *,
    seed: int,
    epochs: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    config: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Train the tiny LLaMA on ``train`` (AdamW, warm-up then linear decay); the model and its
    final loss.

    Every prompt starts with the same tool list, so each batch runs that shared prefix once
    (batch 1, with the KV cache), repeats its cache across the batch and runs only the requests
    and answers on top: the same function as the full sequences, with less work. Logits are
    computed only where there is a loss (the answer positions). Together about 2.5x faster per
    step than full sequences here (0.26 s -> 0.10 s for a batch of 16, single thread).
    """
    with deterministic_torch(seed):
        torch = require("torch")
        transformers = require("transformers")
        llama = transformers.LlamaConfig(
            vocab_size=tokenizer.get_vocab_size(),
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            **(config or CONFIG),
        )
        model = transformers.LlamaForCausalLM(llama)
        prefix = tokenizer.encode(shared_prefix(train[0])).ids
        encoded = [encode_example(tokenizer, e) for e in train]
        for (ids, _), e in zip(encoded, train, strict=True):
            if ids[: len(prefix)] != prefix:
                raise ValueError(f"{e.text!r}: the prompt does not start with the shared prefix")
            if len(ids) > MAX_TOKENS:
                raise ValueError(f"{e.text!r}: {len(ids)} tokens, more than {MAX_TOKENS}")
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        steps = epochs * -(-len(encoded) // batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / 30) * (1.0 - 0.95 * s / steps)
        )
        prefix_ids = torch.tensor([prefix])
        p = len(prefix)
        model.train()
        losses: list[float] = []
        for _ in range(epochs):
            order = torch.randperm(len(encoded), generator=gen).tolist()
            for start in range(0, len(order), batch_size):
                batch = [encoded[i] for i in order[start : start + batch_size]]
                width = max(len(ids) for ids, _ in batch) - p
                ids = torch.full((len(batch), width), 2, dtype=torch.long)
                targets = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), p + width), dtype=torch.long)
                mask[:, :p] = 1
                for row, (seq, answer_at) in enumerate(batch):
                    tail = seq[p:]
                    ids[row, : len(tail)] = torch.tensor(tail)
                    # position t predicts token t + 1: the answer and its <|im_end|>
                    a = answer_at - p
                    targets[row, a - 1 : len(tail) - 1] = torch.tensor(tail[a:])
                    mask[row, p : p + len(tail)] = 1
                cache = model.model(input_ids=prefix_ids, use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(batch))
                hidden = model.model(
                    input_ids=ids, attention_mask=mask, cache=cache, use_cache=True
                ).last_hidden_state
                keep = targets != -100
                logits = model.lm_head(hidden[keep])
                loss = torch.nn.functional.cross_entropy(logits, targets[keep])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss))
        model.eval()
    tail_losses = losses[-20:]
    return model, {"final_loss": sum(tail_losses) / len(tail_losses), "steps": float(len(losses))}


def tokenizer_stats(tokenizer: Any, examples: Sequence[Example]) -> dict[str, float]:
    lengths = [len(encode_example(tokenizer, e)[0]) for e in examples]
    return {"max_tokens": float(max(lengths)), "mean_tokens": sum(lengths) / len(lengths)}
