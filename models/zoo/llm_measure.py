"""Measure a genai folder here: decoding tokens/s, first-token latency, peak memory.

:func:`measure` runs :func:`main` in a fresh Python (``python -m
edgeagent.models.zoo.llm_measure FOLDER PROMPTS.json``) so the peak RSS is that of a process that
only loads the model and generates, as a device would, and not that of the build that came
before. The model's memory is the peak RSS minus the RSS once onnxruntime-genai is imported and
before the model is loaded.

Greedy decoding, one warm-up generation, then every prompt once: first-token latency is the
median over prompts of the time from appending the prompt to the first new token (the prefill),
decoding speed is the new tokens after the first over the time they took.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._base import require
from .llm_recipe import LlmBuildError, machine

MEASURE_TIMEOUT_S = 600.0


def measure(
    folder: Path, prompts: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int = 64
) -> dict[str, Any]:
    """Measure ``folder`` on ``prompts`` (chat messages each) in a child process."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"prompts": [list(p) for p in prompts], "max_new_tokens": max_new_tokens}, f)
        path = Path(f.name)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "edgeagent.models.zoo.llm_measure", str(folder), str(path)],
            capture_output=True,
            text=True,
            timeout=MEASURE_TIMEOUT_S,
            check=False,
        )
    finally:
        path.unlink()
    if run.returncode != 0:
        tail = " | ".join(run.stderr.strip().splitlines()[-5:])
        raise LlmBuildError(f"measuring {folder} failed (exit {run.returncode}): {tail}")
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, MiB. Not ``getrusage``: Linux carries
    ``ru_maxrss`` over ``fork``/``exec``, so a child of a large parent would report its peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LlmBuildError(f"/proc/self/status has no {field}")  # pragma: no cover


def _generate(og: Any, model: Any, tokens: Sequence[int], max_new: int) -> tuple[float, int, float]:
    """(seconds to the first new token, new tokens, seconds for the tokens after the first)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens) + max_new, do_sample=False)
    gen = og.Generator(model, params)
    start = time.perf_counter()
    gen.append_tokens(tokens)
    gen.generate_next_token()
    first = time.perf_counter()
    n = 1
    while not gen.is_done() and n < max_new:
        gen.generate_next_token()
        n += 1
    return first - start, n, time.perf_counter() - first


def main(argv: Sequence[str]) -> int:
    folder, spec_path = argv
    spec = json.loads(Path(spec_path).read_text())
    og = require("onnxruntime_genai")

    before = _status_mb("VmRSS")
    model = og.Model(folder)
    tok = og.Tokenizer(model)
    encoded = [
        tok.encode(tok.apply_chat_template(json.dumps(p), add_generation_prompt=True))
        for p in spec["prompts"]
    ]
    max_new = int(spec["max_new_tokens"])
    _generate(og, model, encoded[0], max_new)  # warm-up
    firsts: list[float] = []
    decoded = 0
    decode_s = 0.0
    for tokens in encoded:
        first, n, rest = _generate(og, model, tokens, max_new)
        firsts.append(first)
        decoded += n - 1
        decode_s += rest
    peak = _status_mb("VmHWM")
    result = {
        "machine": machine(),
        "load_average": round(os.getloadavg()[0], 2),
        "onnxruntime_genai": og.__version__,
        "threads": "onnxruntime default (one per physical core)",
        "prompts": len(encoded),
        "prompt_tokens": round(statistics.mean(len(t) for t in encoded)),
        "max_new_tokens": max_new,
        "tokens_per_s": round(decoded / decode_s, 1) if decode_s > 0 else 0.0,
        "first_token_ms": round(1000 * statistics.median(firsts), 2),
        "peak_rss_mb": round(peak, 1),
        "model_memory_mb": round(peak - before, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
