"""Language models on the device: an :class:`LlmSession` over onnxruntime-genai.

::

    llm = load_llm("zoo:tinyllm", LlmSettings(threads=1))    # or zoo:smollm2, or a folder
    g = llm.generate([{"role": "user", "content": "Hi"}], max_tokens=64, seed=0, stop=("\\n\\n",))
    g.text, g.tokens, g.finish_reason, g.first_token_ms, g.tokens_per_s, g.prompt_tokens
    stream = llm.stream("raw prompt text", max_tokens=32)
    for piece in stream: ...                                  # text as it is decoded
    stream.generation                                         # the Generation, once exhausted

A model is an onnxruntime-genai folder (``genai_config.json``, the ONNX file, the tokenizer). The
runtime is imported when a model is loaded: an agent without the ``llm`` extra still starts, and
loading gets a :class:`RuntimeMissing` naming the extra. Every foreign error is translated here:
a bad folder is a :class:`ModelError` naming what is missing; a bad request an
:class:`LlmInputError` (``llm_text``) naming the argument and its bound.

Threads: the session's thread count is set through ``og.Config.overlay`` (the folder's
``genai_config.json`` is never edited). Sharing: one session runs ONE generation at a time (a
lock); other threads wait up to ``LlmSettings.busy_wait_s`` and then get :class:`LlmBusy`.
Decoding is memory-bandwidth bound, so on a Pi two interleaved generations take as long as two in
a row while each needs its own KV cache: serialising costs nothing and bounds memory.

onnxruntime-genai holds the GIL while it computes (the whole prompt, then each token): a session
in a worker thread still stalls the process's event loop. Async code that must stay responsive
(an agent, a coordinator) uses :class:`~edgeagent.models.llm_process.LlmProcess`, the same API
with the session in a child process.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..stats import LatencyWindow
from .backend import ModelError, RuntimeMissing
from .llm_folder import ResolvedLlm, check_folder, resolve_llm
from .llm_text import (
    LlmBusy,
    LlmInputError,
    Sampling,
    StopScanner,
    check_max_tokens,
    check_messages,
    check_prompt_chars,
    check_sampling,
    check_schema,
    check_stops,
    decode_rate,
)

__all__ = [
    "Generation",
    "LlmBusy",
    "LlmInputError",
    "LlmSession",
    "LlmSettings",
    "LlmStatistics",
    "LlmStream",
    "load_llm",
    "resolve_llm",
]

EXTRA = "pip install 'edgeagent[llm]'"
FinishReason = Literal["stop", "length", "stop_sequence"]
Prompt = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """How to run a language model; the device profile supplies ``threads``."""

    threads: int = 1
    max_tokens_limit: int = 1024
    """The largest ``max_tokens`` a call may ask for."""
    max_prompt_tokens: int = 2048
    """The longest prompt accepted, in tokens (also bounded by the model's context)."""
    max_prompt_chars: int = 32_768
    """The longest prompt text accepted before tokenizing, in characters."""
    busy_wait_s: float = 30.0
    """How long a call waits for another thread's generation on the same session, seconds."""
    adapter: str | None = None
    """A LoRA adapter file (``.onnx_adapter``, :mod:`.llm_adapt`) active for every generation;
    the model's LoRA base (:func:`.llm_lora_base.lora_folder`) is loaded instead of the model."""


@dataclass(frozen=True, slots=True)
class Generation:
    """One finished generation. ``tokens`` counts generated tokens (an end-of-sequence token
    included); ``tokens_per_s`` is the decode rate after the first token (None below 2)."""

    text: str
    tokens: int
    finish_reason: FinishReason
    prompt_tokens: int
    first_token_ms: float | None
    tokens_per_s: float | None
    total_ms: float


@dataclass(frozen=True, slots=True)
class LlmStatistics:
    generations: int
    tokens: int
    first_token_p50_ms: float | None
    first_token_p95_ms: float | None
    tokens_per_s_p50: float | None
    """Median decode rate over the recent generations."""


class GenerationStats:
    """Counts and recent first-token latencies and decode rates of finished generations."""

    def __init__(self) -> None:
        self._first = LatencyWindow()
        self._per_token = LatencyWindow()
        self.generations = 0
        self.tokens = 0

    def record(self, g: Generation) -> None:
        self.generations += 1
        self.tokens += g.tokens
        if g.first_token_ms is not None:
            self._first.add(g.first_token_ms / 1000)
        if g.tokens_per_s:
            self._per_token.add(1.0 / g.tokens_per_s)  # the window keeps durations

    def statistics(self) -> LlmStatistics:
        p50, p95 = self._first.percentiles_ms((50, 95))
        (per_token_ms,) = self._per_token.percentiles_ms((50,))
        return LlmStatistics(
            generations=self.generations,
            tokens=self.tokens,
            first_token_p50_ms=p50,
            first_token_p95_ms=p95,
            tokens_per_s_p50=None if not per_token_ms else round(1000.0 / per_token_ms, 2),
        )


def import_runtime() -> Any:
    try:
        return importlib.import_module("onnxruntime_genai")
    except ModuleNotFoundError as exc:
        raise RuntimeMissing(f"onnxruntime-genai is not installed: {EXTRA}") from exc
    except ImportError as exc:
        raise RuntimeMissing(f"onnxruntime-genai cannot be imported ({exc}): {EXTRA}") from exc


def load_llm(
    spec: str | Path, settings: LlmSettings | None = None, *, adapter: str | Path | None = None
) -> LlmSession:
    """Load ``zoo:NAME`` or an onnxruntime-genai folder (see :func:`resolve_llm`), with
    ``adapter`` (or ``settings.adapter``) active for every generation."""
    return LlmSession(resolve_llm(spec), with_adapter(settings or LlmSettings(), adapter))


def with_adapter(settings: LlmSettings, adapter: str | Path | None) -> LlmSettings:
    return settings if adapter is None else replace(settings, adapter=str(adapter))


def adapter_version(version: str, adapter: str | None) -> str:
    """The version a model with an adapter reports: ``1+adapter:house``."""
    return version if adapter is None else f"{version}+adapter:{Path(adapter).stem}"


class LlmSession:
    """A loaded language model. ``generate``/``stream`` block: call them from a worker thread
    in async code. Safe to share between threads (one generation at a time, see the module)."""

    def __init__(
        self,
        resolved: ResolvedLlm,
        settings: LlmSettings,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if settings.threads < 1 or settings.max_tokens_limit < 1 or settings.max_prompt_tokens < 1:
            raise ConfigError("LlmSettings: threads, max_tokens_limit and max_prompt_tokens >= 1")
        self.resolved = resolved
        self.settings = settings
        self.path = str(resolved.folder)
        self._clock = clock
        og = import_runtime()
        folder = resolved.folder
        if settings.adapter is not None:
            from .llm_lora_base import lora_folder

            folder = lora_folder(folder)
        config = check_folder(folder)
        self.context_length = int(config["model"].get("context_length") or 2048)
        self._og = og
        try:
            cfg = og.Config(str(folder))
            threads = {"intra_op_num_threads": settings.threads, "inter_op_num_threads": 1}
            cfg.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
            self._model = og.Model(cfg)
            self._tokenizer = og.Tokenizer(self._model)
            self._eos = frozenset(int(t) for t in self._tokenizer.eos_token_ids)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError for everything
            raise ModelError(f"{resolved.folder}: cannot load the model: {exc}") from exc
        self._adapters: Any = None
        if settings.adapter is not None:  # AdapterMismatch for another base's adapter
            from .lora_llm import load_llm_adapter

            self._adapters = load_llm_adapter(self._model, folder, Path(settings.adapter))
        self._lock = threading.Lock()
        self._stats = GenerationStats()

    def __repr__(self) -> str:
        r = self.resolved
        return (
            f"LlmSession({r.name!r} v{r.version}, {self.path!r}, threads={self.settings.threads})"
        )

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text for chat ``messages``, rendered by the tokenizer's chat template."""
        msgs = check_messages(messages, self.settings.max_prompt_chars)
        try:
            return str(
                self._tokenizer.apply_chat_template(json.dumps(msgs), add_generation_prompt=True)
            )
        except Exception as exc:
            raise ModelError(f"{self.path}: cannot apply the chat template: {exc}") from exc

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 50,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        json_schema: str | Mapping[str, Any] | None = None,
    ) -> Generation:
        """Generate up to ``max_tokens`` tokens for ``prompt`` (chat messages, rendered with the
        chat template, or the raw prompt text) and return the whole :class:`Generation`."""
        stream = self.stream(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            json_schema=json_schema,
        )
        for _ in stream:
            pass
        assert stream.generation is not None
        return stream.generation

    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 50,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        json_schema: str | Mapping[str, Any] | None = None,
    ) -> LlmStream:
        """Like :meth:`generate`, as an iterator of text pieces. Arguments are checked now; the
        generation starts (and takes the session) on the first ``next()``. Stopping early
        (``close()``, or leaving a ``for`` loop and dropping it) frees the session."""
        sampling = check_sampling(temperature, top_p, top_k, seed)
        limit = check_max_tokens(max_tokens, self.settings.max_tokens_limit)
        stops = check_stops(stop)
        schema = check_schema(json_schema)
        if isinstance(prompt, str):
            check_prompt_chars(len(prompt), self.settings.max_prompt_chars)
            text = prompt
        else:
            text = self.chat_prompt(prompt)
        return LlmStream(lambda out: self._run(out, text, limit, sampling, stops, schema))

    def _params(
        self, prompt_tokens: int, max_tokens: int, sampling: Sampling, schema: str | None
    ) -> Any:
        params = self._og.GeneratorParams(self._model)
        options: dict[str, Any] = {"max_length": prompt_tokens + max_tokens}
        if sampling.greedy:
            options["do_sample"] = False
        else:
            options.update(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
            )
            if sampling.seed is not None:
                options["random_seed"] = sampling.seed
        params.set_search_options(**options)
        if schema is not None:
            try:
                params.set_guidance("json_schema", schema)
            except Exception as exc:
                raise LlmInputError(f"json_schema is not usable as guidance: {exc}") from exc
        return params

    def _encode(self, text: str, max_tokens: int) -> Any:
        ids = self._tokenizer.encode(text)
        n = len(ids)
        bound = min(self.settings.max_prompt_tokens, self.context_length - max_tokens)
        if bound < 1:
            raise LlmInputError(
                f"max_tokens {max_tokens} leaves no room for a prompt in the model's context of "
                f"{self.context_length} tokens"
            )
        if n > bound:
            raise LlmInputError(
                f"prompt: {n} tokens, at most {bound} (max_prompt_tokens "
                f"{self.settings.max_prompt_tokens}; context {self.context_length} minus "
                f"max_tokens {max_tokens})"
            )
        if n == 0:
            raise LlmInputError("prompt: empty")
        return ids

    def _run(
        self,
        out: LlmStream,
        text: str,
        max_tokens: int,
        sampling: Sampling,
        stops: tuple[str, ...],
        schema: str | None,
    ) -> Generator[str, None, None]:
        """The generation loop (runs inside :class:`LlmStream`, holding the session's lock)."""
        clock = self._clock
        if not self._lock.acquire(timeout=self.settings.busy_wait_s):
            raise LlmBusy(
                f"{self.resolved.name}: busy with another generation for "
                f"{self.settings.busy_wait_s:g} s (one generation at a time per session)"
            )
        try:
            start = clock()
            ids = self._encode(text, max_tokens)
            try:
                generator = self._og.Generator(
                    self._model, self._params(len(ids), max_tokens, sampling, schema)
                )
                if self._adapters is not None:
                    generator.set_active_adapter(self._adapters, "default")
                generator.append_tokens(ids)  # runs the prompt: part of the first token's wait
                decoder = self._tokenizer.create_stream()
            except LlmInputError:
                raise
            except Exception as exc:
                raise ModelError(f"{self.path}: generation failed: {exc}") from exc
            scanner = StopScanner(stops)
            first: float | None = None
            tokens = 0
            eos = False
            while tokens < max_tokens and not generator.is_done():
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                tokens += 1
                if first is None:
                    first = clock()
                if token in self._eos:
                    eos = True
                    break
                shown = scanner.feed(decoder.decode(token))
                if shown:
                    yield shown
                if scanner.stopped:
                    break
            if not scanner.stopped:
                rest = scanner.flush()
                if rest:
                    yield rest
            end = clock()
            reason: FinishReason = (
                "stop_sequence" if scanner.stopped else "stop" if eos else "length"
            )
            rate = decode_rate(tokens, first, end)
            out.generation = Generation(
                text=scanner.text,
                tokens=tokens,
                finish_reason=reason,
                prompt_tokens=len(ids),
                first_token_ms=None if first is None else round((first - start) * 1000, 3),
                tokens_per_s=None if rate is None else round(rate, 2),
                total_ms=round((end - start) * 1000, 3),
            )
            self._stats.record(out.generation)
        finally:
            self._lock.release()

    def statistics(self) -> LlmStatistics:
        return self._stats.statistics()


class LlmStream:
    """Text pieces of one generation as they are decoded; :attr:`generation` once finished.

    Pieces never include the start of a stop sequence: text that might begin one is held back
    until the next token decides. Joined, the pieces are exactly ``generation.text``.
    """

    def __init__(self, run: Callable[[LlmStream], Generator[str, None, None]]) -> None:
        self.generation: Generation | None = None
        self._pieces = run(self)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating now and free the session (no :attr:`generation` is recorded)."""
        self._pieces.close()

    def __enter__(self) -> LlmStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
