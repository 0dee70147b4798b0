"""The pure half of LLM generation: checking a request and cutting text at stop sequences.

Nothing here imports a runtime or reads a clock, so the rules (what a valid request is, what
text a stream may show before it knows whether a stop sequence is starting) are tested without a
model. :mod:`edgeagent.models.llm_backend` applies them around onnxruntime-genai.

::

    ModelError
    └── LlmInputError       a request is invalid: the message names the argument and the bound
        └── LlmBusy         the session stayed busy with another generation past the wait
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backend import ModelError

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 64
MAX_STOPS = 8
MAX_STOP_CHARS = 64
MAX_SCHEMA_CHARS = 64 * 1024


class LlmInputError(ModelError, ValueError):
    """A generation request is invalid (bad messages, a bound exceeded, a bad schema)."""


class LlmBusy(LlmInputError):
    """The session was generating for another caller for longer than the caller may wait."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is chosen. ``temperature`` 0 is greedy (deterministic by itself);
    above 0 the tokens are sampled, deterministically for a given ``seed``."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_sampling(temperature: float, top_p: float, top_k: int, seed: int | None) -> Sampling:
    """A :class:`Sampling`, or an :class:`LlmInputError` naming the argument out of range."""
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 5.0):
        raise LlmInputError(f"temperature must be within 0..5 (0: greedy), not {temperature!r}")
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise LlmInputError(f"top_p must be within (0, 1], not {top_p!r}")
    if not 1 <= top_k <= 1000:
        raise LlmInputError(f"top_k must be within 1..1000, not {top_k!r}")
    if seed is not None and not 0 <= seed < 2**31:
        raise LlmInputError(f"seed must be within 0..2**31-1, not {seed!r}")
    return Sampling(temperature=float(temperature), top_p=float(top_p), top_k=top_k, seed=seed)


def check_max_tokens(max_tokens: int, limit: int) -> int:
    if not 1 <= max_tokens <= limit:
        raise LlmInputError(
            f"max_tokens must be within 1..{limit} (the session's bound), not {max_tokens!r}"
        )
    return max_tokens


def check_stops(stop: Sequence[str] | str | None) -> tuple[str, ...]:
    """Stop sequences: at most :data:`MAX_STOPS`, each 1..:data:`MAX_STOP_CHARS` characters."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS:
        raise LlmInputError(f"stop: at most {MAX_STOPS} stop sequences, not {len(stops)}")
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
            raise LlmInputError(
                f"stop[{i}]: a stop sequence is a string of 1..{MAX_STOP_CHARS} characters"
            )
    return stops


def check_schema(json_schema: str | Mapping[str, Any] | None) -> str | None:
    """The schema as JSON text for the guidance (a JSON object, at most 64 KiB), or None.

    Unless the schema says otherwise (its own ``x-guidance``), the JSON must be compact: with the
    guidance's default flexible whitespace, a sampled small model spends its tokens on blank lines
    (SmolLM2-135M at temperature 1: two seeds of three hit 64 tokens inside a two-key object;
    compact, 11-12 tokens each).
    """
    if json_schema is None:
        return None
    text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise LlmInputError(f"json_schema: {len(text)} characters, at most {MAX_SCHEMA_CHARS}")
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise LlmInputError(f"json_schema is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise LlmInputError("json_schema must be a JSON object (a JSON Schema)")
    if "x-guidance" in parsed:
        return text
    return json.dumps({**parsed, "x-guidance": {"whitespace_flexible": False}})


def check_messages(messages: Sequence[Mapping[str, Any]], max_chars: int) -> list[dict[str, str]]:
    """Chat messages as ``[{"role", "content"}]``: known roles, string contents, bounded."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise LlmInputError("messages must be a list of {'role', 'content'} objects or a string")
    if not 1 <= len(messages) <= MAX_MESSAGES:
        raise LlmInputError(f"messages: 1..{MAX_MESSAGES} messages, not {len(messages)}")
    out: list[dict[str, str]] = []
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content"}:
            raise LlmInputError(f"messages[{i}]: an object with only 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise LlmInputError(f"messages[{i}].role: one of {', '.join(ROLES)}, not {role!r}")
        if not isinstance(content, str):
            raise LlmInputError(f"messages[{i}].content must be a string")
        total += len(content)
        out.append({"role": str(role), "content": content})
    check_prompt_chars(total, max_chars)
    return out


def check_prompt_chars(chars: int, max_chars: int) -> None:
    """Bound the text before it is tokenized (tokenizing is work an outsider could grow)."""
    if chars > max_chars:
        raise LlmInputError(f"prompt: {chars} characters, at most {max_chars}")


class StopScanner:
    """Cuts generated text at the first stop sequence, and says which text is safe to show.

    ``feed(piece)`` returns the text that can be shown now: everything except a tail that might
    be the start of a stop sequence (held back until the next piece decides). After a stop
    sequence, :attr:`stopped` is True and :attr:`text` ends just before it. ``flush()`` returns
    the held-back tail when generation ends without a stop.
    """

    __slots__ = ("_shown", "_stops", "_text", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._text = ""
        self._shown = 0
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text

    def feed(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        start = max(0, len(self._text) - max((len(s) for s in self._stops), default=0) + 1)
        self._text += piece
        cut = min((i for s in self._stops if (i := self._text.find(s, start)) >= 0), default=-1)
        if cut >= 0:
            self._text = self._text[:cut]
            self.stopped = True
            return self._release(len(self._text))
        return self._release(len(self._text) - self._partial())

    def flush(self) -> str:
        return self._release(len(self._text))

    def _partial(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop sequence."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(self._text)), best, -1):
                if self._text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, upto: int) -> str:
        if upto <= self._shown:
            return ""
        out = self._text[self._shown : upto]
        self._shown = upto
        return out


def decode_rate(tokens: int, first_s: float | None, end_s: float) -> float | None:
    """Tokens per second after the first token (the first pays for the prompt), or None."""
    if first_s is None or tokens < 2 or end_s <= first_s:
        return None
    return (tokens - 1) / (end_s - first_s)


class PieceBatcher:
    """Groups streamed text pieces into partial-output events at a bounded rate.

    ``add(piece, now)`` returns the text to publish now (every piece since the last event) when
    ``interval_s`` has passed since the last event, else ``""``; ``flush()`` returns what is left.
    The first piece goes out at once (the first token is the latency people notice); after it a
    call emits at most ``1 / interval_s`` events a second however fast tokens come, and the events
    joined in order are exactly the text. ``now`` is a monotonic time in seconds.
    """

    __slots__ = ("_interval", "_last", "_pending", "events")

    def __init__(self, interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self._interval = interval_s
        self._last = -math.inf
        self._pending: list[str] = []
        self.events = 0

    def add(self, piece: str, now: float) -> str:
        if piece:
            self._pending.append(piece)
        if not self._pending or now - self._last < self._interval:
            return ""
        self._last = now
        return self._take()

    def flush(self) -> str:
        return self._take() if self._pending else ""

    def _take(self) -> str:
        out = "".join(self._pending)
        self._pending.clear()
        self.events += 1
        return out
