"""Measure a language model here, in a fresh process: decoding tokens/s, first-token latency,
peak memory, and the greedy tokens it wrote. The one measurement behind the zoo's cards
(:mod:`.zoo.llm_measure`), ``models bench`` (:mod:`.llm_bench`) and the LLM optimizer
(:mod:`.llm_optimize`).

:func:`measure_llm` runs ``python -m edgeagent.models.llm_measure`` (a JSON request on stdin, a
JSON answer on stdout): onnxruntime-genai's memory is native, so neither tracemalloc nor this
process's RSS would see it, and a model loaded here would share pages with one loaded before.
The child imports the runtime, notes its RSS (``VmRSS``), loads the folder (with ``threads``
intra-op threads through an ``og.Config`` overlay, as :class:`~.llm_backend.LlmSession` does, or
onnxruntime's default of one per physical core), generates greedily ``warmup`` times and then
``repeats`` times per prompt, and reports each run and its peak RSS (``VmHWM``). The model's
memory is the peak minus the RSS before loading. Not ``getrusage``: Linux carries ``ru_maxrss``
over ``fork``/``exec``, so a child of a large parent would report the parent's peak.

The definitions are :class:`~.llm_backend.Generation`'s: first token from tokenizing the prompt
to the first generated token (the prefill included), ``tokens`` counts an end-of-sequence token,
the decode rate is the tokens after the first over the time they took. The child returns the
generated token ids too, so a caller can compare variants' greedy outputs (the optimizer does).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import ModelError

Prompt = str | Sequence[Mapping[str, str]]
"""Raw prompt text, or chat messages rendered with the folder's chat template."""
TIMEOUT_S = 900.0
MAX_PROMPTS = 1000
MAX_NEW_TOKENS = 1024
MAX_REPEATS = 1000


@dataclass(frozen=True, slots=True)
class LlmRun:
    """One greedy generation."""

    prompt: int
    """Index of its prompt."""
    prompt_tokens: int
    tokens: tuple[int, ...]
    """Generated token ids, an end-of-sequence token included."""
    text: str
    """The generated text (the end-of-sequence token left out)."""
    first_token_ms: float
    total_ms: float

    @property
    def decode_s(self) -> float:
        return max(0.0, (self.total_ms - self.first_token_ms) / 1000)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate after the first token (None below two tokens)."""
        if len(self.tokens) < 2 or self.decode_s <= 0:
            return None
        return (len(self.tokens) - 1) / self.decode_s


@dataclass(frozen=True, slots=True)
class LlmMeasurement:
    """What :func:`measure_llm` measured; the aggregates are properties."""

    folder: str
    threads: int | None
    """Intra-op threads, or None for onnxruntime's default (one per physical core)."""
    warmup: int
    max_new_tokens: int
    runs: tuple[LlmRun, ...]
    rss_before_mb: float
    peak_rss_mb: float
    load_average: float
    runtime_version: str
    forced: tuple[tuple[int, int], ...] = ()
    """Per prompt, (matches, tokens) of the teacher-forced pass over ``reference`` (if given)."""

    @property
    def forced_agreement(self) -> float | None:
        """Share of the reference's tokens this model ranks first when fed the reference's own
        preceding tokens (teacher forcing: one early difference does not derail the rest)."""
        total = sum(n for _, n in self.forced)
        return (
            None if not self.forced else (sum(k for k, _ in self.forced) / total if total else 1.0)
        )

    @property
    def model_memory_mb(self) -> float:
        """Peak RSS while generating minus the RSS before the model was loaded, MiB."""
        return max(0.0, self.peak_rss_mb - self.rss_before_mb)

    @property
    def tokens_per_s(self) -> float:
        """All tokens after each run's first over the time they took (0 when none)."""
        decoded = sum(max(0, len(r.tokens) - 1) for r in self.runs)
        seconds = sum(r.decode_s for r in self.runs if len(r.tokens) > 1)
        return decoded / seconds if seconds > 0 else 0.0

    @property
    def first_token_ms(self) -> float:
        """Median first-token latency over the runs."""
        return statistics.median(r.first_token_ms for r in self.runs)

    @property
    def prompt_tokens(self) -> float:
        return statistics.mean(r.prompt_tokens for r in self.runs)

    def outputs(self) -> list[tuple[int, ...]]:
        """Each prompt's generated ids (its first run; greedy runs repeat it)."""
        first: dict[int, tuple[int, ...]] = {}
        for r in self.runs:
            first.setdefault(r.prompt, r.tokens)
        return [first[i] for i in sorted(first)]

    def texts(self) -> list[str]:
        """Each prompt's generated text (its first run)."""
        first: dict[int, str] = {}
        for r in self.runs:
            first.setdefault(r.prompt, r.text)
        return [first[i] for i in sorted(first)]


def _prompt_json(p: Prompt) -> str | list[dict[str, str]]:
    return p if isinstance(p, str) else [dict(m) for m in p]


def measure_llm(
    folder: Path,
    prompts: Sequence[Prompt],
    *,
    threads: int | None = None,
    warmup: int = 1,
    repeats: int = 1,
    max_new_tokens: int = 64,
    reference: Sequence[Sequence[int]] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> LlmMeasurement:
    """Measure the genai ``folder`` on ``prompts`` in a child process (see the module). With
    ``reference`` (token ids per prompt, e.g. another variant's greedy output), the child also
    feeds each prompt and its reference tokens and counts where its top token is the
    reference's (after the timed runs, so the timings are not affected)."""
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ModelError(f"measure: 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ModelError(f"measure: max_new_tokens in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
    if not 1 <= repeats <= MAX_REPEATS or warmup < 0 or (threads is not None and threads < 1):
        raise ModelError(
            f"measure: repeats in 1..{MAX_REPEATS}, warmup >= 0, threads >= 1 "
            f"(got {repeats}, {warmup}, {threads})"
        )
    if reference is not None and (
        len(reference) != len(prompts) or any(len(r) > max_new_tokens for r in reference)
    ):
        raise ModelError(
            "measure: reference needs one token list per prompt, each at most max_new_tokens long"
        )
    request = {
        "folder": str(folder),
        "prompts": [_prompt_json(p) for p in prompts],
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "max_new_tokens": max_new_tokens,
        "reference": None if reference is None else [[int(t) for t in r] for r in reference],
    }
    answer = _call_child(request, timeout_s)
    return LlmMeasurement(
        folder=str(folder),
        threads=threads,
        warmup=warmup,
        max_new_tokens=max_new_tokens,
        runs=tuple(
            LlmRun(
                prompt=int(r["prompt"]),
                prompt_tokens=int(r["prompt_tokens"]),
                tokens=tuple(int(t) for t in r["tokens"]),
                text=str(r["text"]),
                first_token_ms=float(r["first_token_ms"]),
                total_ms=float(r["total_ms"]),
            )
            for r in answer["runs"]
        ),
        rss_before_mb=float(answer["rss_before_kb"]) / 1024,
        peak_rss_mb=float(answer["peak_kb"]) / 1024,
        load_average=float(answer["load_average"]),
        runtime_version=str(answer["version"]),
        forced=tuple((int(k), int(n)) for k, n in answer.get("forced") or ()),
    )


def _call_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    from .measure import run_json_module

    try:
        code, answer, stderr = run_json_module("edgeagent.models.llm_measure", request, timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"measuring {request['folder']} took longer than {timeout_s:g} s") from exc
    if code != 0 or "error" in answer or not answer:
        detail = answer.get("error") or " | ".join(stderr.strip().splitlines()[-3:])
        detail = detail or "no output"
        raise ModelError(f"measuring {request['folder']} failed (exit {code}): {detail}")
    return answer


# --- the child process ----------------------------------------------------------------------


def _status_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ModelError(f"/proc/self/status has no {field}")  # pragma: no cover


def _load(og: Any, folder: str, threads: int | None) -> Any:
    config = og.Config(folder)
    if threads is not None:
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def _generate(og: Any, model: Any, tok: Any, prompt: Any, max_new: int) -> dict[str, Any]:
    """One greedy generation, timed like :class:`~.llm_backend.Generation`."""
    start = time.perf_counter()
    if isinstance(prompt, str):
        text = prompt
    else:
        text = tok.apply_chat_template(json.dumps(prompt), add_generation_prompt=True)
    ids = tok.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    new: list[int] = []
    first = start
    while len(new) < max_new and not gen.is_done():
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
        if len(new) == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    eos = {int(t) for t in tok.eos_token_ids}
    return {
        "prompt_tokens": len(ids),
        "tokens": new,
        "text": str(tok.decode([t for t in new if t not in eos])),
        "first_token_ms": round((first - start) * 1000, 3),
        "total_ms": round((end - start) * 1000, 3),
    }


def _forced(og: Any, model: Any, tok: Any, prompt: Any, reference: Sequence[int]) -> list[int]:
    """(matches, tokens): where the model's top next token is the reference's, fed the prompt
    and then the reference one token at a time."""
    if isinstance(prompt, str):
        text = prompt
    else:
        text = tok.apply_chat_template(json.dumps(prompt), add_generation_prompt=True)
    ids = tok.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + len(reference) + 1, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    matches = 0
    for k, token in enumerate(reference):
        if k:
            gen.append_tokens([reference[k - 1]])
        logits = gen.get_logits()
        matches += int(logits.reshape(-1, logits.shape[-1])[-1].argmax()) == token
    return [matches, len(reference)]


def run_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The child's work: load, warm up, generate every prompt ``repeats`` times."""
    from .llm_backend import import_runtime

    og = import_runtime()
    before = _status_kb("VmRSS")
    model = _load(og, str(request["folder"]), request["threads"])
    tok = og.Tokenizer(model)
    prompts = request["prompts"]
    max_new = int(request["max_new_tokens"])
    for _ in range(int(request["warmup"])):
        _generate(og, model, tok, prompts[0], max_new)
    runs = []
    for _ in range(int(request["repeats"])):
        for i, prompt in enumerate(prompts):
            runs.append({"prompt": i, **_generate(og, model, tok, prompt, max_new)})
    reference = request.get("reference")
    forced = (
        [_forced(og, model, tok, p, r) for p, r in zip(prompts, reference, strict=True)]
        if reference
        else None
    )
    return {
        "runs": runs,
        "forced": forced,
        "rss_before_kb": before,
        "peak_kb": _status_kb("VmHWM"),
        "load_average": round(os.getloadavg()[0], 2),
        "version": str(og.__version__),
    }


def main() -> None:
    """``python -m edgeagent.models.llm_measure``: one measurement, JSON in and out."""
    request = json.loads(sys.stdin.read())
    try:
        answer = run_request(request)
    except Exception as exc:  # reported to the parent, which raises ModelError
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
