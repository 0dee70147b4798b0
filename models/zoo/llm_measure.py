"""The card's measurement of a genai folder: decoding tokens/s, first-token latency, peak memory.

A thin shape over :func:`edgeagent.models.llm_measure.measure_llm` (the one LLM measurement,
shared with ``models bench`` and the LLM optimizer): a fresh child process loads only the model
and generates, as a device would, so the peak RSS is not the build's. Greedy decoding,
onnxruntime's default threads, one warm-up generation, then every prompt once: first-token
latency is the median over prompts, decoding speed the new tokens after each first over the time
they took. The model's memory is the peak RSS minus the RSS before the model was loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backend import ModelError
from ..llm_measure import measure_llm
from .llm_recipe import LlmBuildError, machine


def measure(
    folder: Path, prompts: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int = 64
) -> dict[str, Any]:
    """Measure ``folder`` on ``prompts`` (chat messages each): the card's ``measured`` block."""
    try:
        m = measure_llm(folder, prompts, threads=None, warmup=1, max_new_tokens=max_new_tokens)
    except ModelError as exc:
        raise LlmBuildError(str(exc)) from exc
    return {
        "machine": machine(),
        "load_average": m.load_average,
        "onnxruntime_genai": m.runtime_version,
        "threads": "onnxruntime default (one per physical core)",
        "prompts": len(prompts),
        "prompt_tokens": round(m.prompt_tokens),
        "max_new_tokens": max_new_tokens,
        "tokens_per_s": round(m.tokens_per_s, 1),
        "first_token_ms": round(m.first_token_ms, 2),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "model_memory_mb": round(m.model_memory_mb, 1),
    }
