"""A language model as a skill: ``generate`` text, streaming partial output as events.

::

    # agent YAML
    skills:
      - module: edgeagent.models.llm_skill:LlmSkillSet
        options: {model: "zoo:tinyllm", max_tokens_limit: 256, stream_interval_ms: 100}
        # a household's LoRA adapter (docs/adapters.md): the model reports "1+adapter:house"
        # options: {model: "zoo:tinyllm", adapter: house.onnx_adapter}

    await fleet.call("assistant", "generate", {"prompt": "…", "max_tokens": 64}, trace="t1")
    # meanwhile: events "partial" {"trace": "t1", "seq": 0, "text": "…"}, …

The model runs in its own process (:class:`~edgeagent.models.llm_process.LlmProcess`):
onnxruntime-genai holds the GIL while it computes, so in a thread it would freeze the agent's
event loop for a whole prompt and between tokens. This set's one worker thread feeds the pieces
from that process to the loop; the agent keeps answering its other skills (``llm_status`` here,
and any other set's) while the model generates. ``isolate: false`` loads the model in the agent
itself (less memory, one process, for a device that serves nothing else). One generation at a
time, as the model allows; the skill's queue bounds who waits. A call that times out or is
cancelled stops its generation at the next token.

Partial output goes out as ``partial`` events, at most one per ``stream_interval_ms`` per call
(the worker batches the pieces; :class:`~edgeagent.models.llm_text.PieceBatcher`), each carrying
the call's trace, a sequence number and the text since the previous event: joined in ``seq``
order they are the reply's ``text``. ``stream: false`` in a request turns them off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import BadRequest, Busy, ConfigError
from ..skills import DeviceHandle, SkillContext, SkillSet, skill
from .llm_backend import Generation, LlmSession, LlmSettings, adapter_version, load_llm
from .llm_process import LlmProcess
from .llm_text import LlmBusy, LlmInputError, PieceBatcher

MAX_PROMPT_CHARS = 32_768
MAX_TOKENS_CAP = 1024


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who speaks.")
    content: str = Field(max_length=MAX_PROMPT_CHARS, description="What they say.")


class GenerateRequest(BaseModel):
    """Exactly one of ``prompt`` (raw text) or ``messages`` (rendered by the chat template)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="Raw prompt text, passed to the model as is.",
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Chat messages, rendered with the model's chat template.",
    )
    max_tokens: int = Field(
        default=64,
        ge=1,
        le=MAX_TOKENS_CAP,
        description="Most tokens to generate (the skill's max_tokens_limit may be lower).",
    )
    temperature: float = Field(default=0.0, ge=0, le=5, description="0: greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(default=50, ge=1, le=1000, description="Sample among the k likeliest.")
    seed: int | None = Field(
        default=None, ge=0, lt=2**31, description="Sampling seed: same seed, same text."
    )
    stop: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Stop sequences (1..64 characters each): the text ends before the first.",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None, description="Constrain the output to JSON valid for this JSON Schema."
    )
    stream: bool = Field(default=True, description="Emit `partial` events while generating.")

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class GenerateResult(BaseModel):
    text: str = Field(description="The generated text (cut before a stop sequence).")
    tokens: int = Field(description="Tokens generated (an end-of-sequence token included).")
    prompt_tokens: int = Field(description="Tokens of the prompt.")
    finish_reason: Literal["stop", "length", "stop_sequence"] = Field(
        description="stop: the model ended; length: max_tokens; stop_sequence: a stop matched."
    )
    first_token_ms: float | None = Field(description="Prompt to first token, milliseconds.")
    tokens_per_s: float | None = Field(description="Decode rate after the first token.")
    total_ms: float = Field(description="Whole generation, milliseconds.")
    events: int = Field(description="`partial` events emitted for this call.")


class LlmStatus(BaseModel):
    model: str
    version: str
    threads: int
    generations: int
    tokens: int
    busy: bool = Field(description="A generation is running now.")
    first_token_p50_ms: float | None
    tokens_per_s_p50: float | None


def _result(g: Generation, events: int) -> GenerateResult:
    return GenerateResult(
        text=g.text,
        tokens=g.tokens,
        prompt_tokens=g.prompt_tokens,
        finish_reason=g.finish_reason,
        first_token_ms=g.first_token_ms,
        tokens_per_s=g.tokens_per_s,
        total_ms=g.total_ms,
        events=events,
    )


class LlmSkillSet(SkillSet):
    """A language model served as the ``generate`` skill (and ``llm_status``)."""

    events: ClassVar[dict[str, str]] = {
        "partial": "Text generated since the previous partial event of a running `generate` "
        "call: {trace, seq, text}; joined in seq order they are the reply's text."
    }

    def __init__(
        self,
        model: str = "zoo:tinyllm",
        profile: str | None = None,
        threads: int | None = None,
        max_tokens_limit: int = 256,
        stream_interval_ms: float = 100.0,
        isolate: bool = True,
        adapter: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_tokens_limit <= MAX_TOKENS_CAP:
            raise ConfigError(f"max_tokens_limit: 1..{MAX_TOKENS_CAP}, not {max_tokens_limit}")
        if not 0 <= stream_interval_ms <= 60_000:
            raise ConfigError(f"stream_interval_ms: 0..60000, not {stream_interval_ms}")
        if threads is None and profile is not None:
            from ..devices import load_profile

            threads = load_profile(profile).threads
        settings = LlmSettings(
            threads=threads or 1, max_tokens_limit=max_tokens_limit, adapter=adapter
        )
        self.llm: LlmSession | LlmProcess = (
            LlmProcess(model, settings) if isolate else load_llm(model, settings)
        )
        self._interval_s = stream_interval_ms / 1000.0
        self._clock = clock
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm")
        self._running = threading.Event()

    def model_info(self, skill_name: str) -> tuple[str, str] | None:
        r = self.llm.resolved
        return r.name, adapter_version(r.version, self.llm.settings.adapter)

    async def run(self, device: DeviceHandle) -> None:
        """Nothing in the background; on shutdown, stop the worker thread and the model's
        process."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker thread and the model's process (the agent does it on shutdown)."""
        self._worker.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.llm, LlmProcess):
            self.llm.close()

    @skill(side_effect="read", max_concurrency=1, max_queue=4, timeout_s=300.0)
    async def generate(self, req: GenerateRequest, ctx: SkillContext) -> GenerateResult:
        """Generate text with the device's language model; streams `partial` events."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()

        def publish(seq: int, text: str) -> None:  # on the loop
            ctx.emit("partial", {"trace": ctx.trace, "seq": seq, "text": text})

        def work() -> tuple[Generation | None, int]:  # in the worker thread
            return self._generate(req, cancel, publish if req.stream else None, loop)

        try:
            generation, events = await loop.run_in_executor(self._worker, work)
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next token
            raise
        except LlmBusy as exc:
            raise Busy(str(exc)) from exc
        except LlmInputError as exc:
            raise BadRequest(str(exc)) from exc
        assert generation is not None  # None only after a cancel, which never gets here
        return _result(generation, events)

    def _generate(
        self,
        req: GenerateRequest,
        cancel: threading.Event,
        publish: Callable[[int, str], None] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Generation | None, int]:
        """Run one generation, handing batched pieces to ``publish`` on the loop; None when
        ``cancel`` was set (the call is gone: stop at the next token, free the session)."""
        prompt: Any = req.prompt
        if req.messages is not None:
            prompt = [m.model_dump() for m in req.messages]
        stream = self.llm.stream(
            prompt,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stop,
            json_schema=req.json_schema,
        )
        batcher = PieceBatcher(self._interval_s)
        self._running.set()
        try:
            with stream:
                for piece in stream:
                    if cancel.is_set():
                        return None, batcher.events
                    if publish is not None and (text := batcher.add(piece, self._clock())):
                        loop.call_soon_threadsafe(publish, batcher.events - 1, text)
        finally:
            self._running.clear()
        if publish is not None and (text := batcher.flush()):
            loop.call_soon_threadsafe(publish, batcher.events - 1, text)
        return stream.generation, batcher.events

    @skill(side_effect="read", max_concurrency=4, max_queue=16, timeout_s=5.0)
    def llm_status(self) -> LlmStatus:
        """The language model this device runs, and how fast it has been generating."""
        s = self.llm.statistics()
        r = self.llm.resolved
        return LlmStatus(
            model=r.name,
            version=adapter_version(r.version, self.llm.settings.adapter),
            threads=self.llm.settings.threads,
            generations=s.generations,
            tokens=s.tokens,
            busy=self._running.is_set(),
            first_token_p50_ms=s.first_token_p50_ms,
            tokens_per_s_p50=s.tokens_per_s_p50,
        )
