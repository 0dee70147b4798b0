"""A language model in its own process, so generating never stalls the caller's event loop.

onnxruntime-genai holds Python's GIL while it computes: ``append_tokens`` (the prompt) and every
``generate_next_token``. Measured here with SmolLM2-135M: a 600-token prompt froze every other
thread of the process for 3.5 s, and while decoding a thread waiting on a 1 ms sleep woke once per
token (17 ms). A worker thread therefore does not keep an agent responsive: MQTT keep-alives,
other skills and health reports all wait. :class:`LlmProcess` runs the
:class:`~edgeagent.models.llm_backend.LlmSession` in a child process and has the same
``generate``/``stream``/``chat_prompt``/``statistics`` API. Text comes back over a pipe as it is
decoded: the first piece at once, then what accumulated every ``batch_s`` (20 ms): each message
needs the caller's GIL, and a busy event loop holds it for up to the switch interval (5 ms); one
message per token made a loaded test agent drain 480 tiny-model tokens in 3.3 s instead of 0.1.

::

    llm = LlmProcess("zoo:tinyllm", LlmSettings(threads=1))   # waits until the model is loaded
    for piece in (stream := llm.stream(messages, max_tokens=64)): ...
    stream.generation; llm.close()

One generation at a time, as for a session (a lock; :class:`LlmBusy` after ``busy_wait_s``).
Stopping a stream early (``close()``) sends a cancel the child sees at its next token. The child
is ``python -m edgeagent.models.llm_process`` (not ``multiprocessing``, whose ``spawn`` re-imports
the caller's main module) talking over a socket pair with ``multiprocessing.connection``.
Errors cross the pipe by name: an invalid request is still an :class:`LlmInputError`, a model
that cannot load a :class:`ModelError` (or ``RuntimeMissing``, ``ConfigError``). A child that
dies (out of memory) makes every later call a :class:`ModelError`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .backend import ModelError, RuntimeMissing
from .llm_backend import (
    Generation,
    GenerationStats,
    LlmSession,
    LlmSettings,
    LlmStatistics,
    LlmStream,
    Prompt,
    load_llm,
    with_adapter,
)
from .llm_folder import ResolvedLlm
from .llm_text import (
    LlmBusy,
    LlmInputError,
    PieceBatcher,
    check_max_tokens,
    check_sampling,
    check_stops,
)
from .lora_adapter import AdapterError, AdapterMismatch

START_TIMEOUT_S = 300.0
_ERRORS: dict[str, type[Exception]] = {
    "LlmBusy": LlmBusy,
    "LlmInputError": LlmInputError,
    "RuntimeMissing": RuntimeMissing,
    "ConfigError": ConfigError,
    "AdapterError": AdapterError,
    "AdapterMismatch": AdapterMismatch,
}


def _error(name: str, message: str) -> Exception:
    return _ERRORS.get(name, ModelError)(message)


def _serve(conn: Connection, spec: str, settings: LlmSettings) -> None:
    """The child: load the model, then answer requests until ``quit`` or the pipe closes."""
    try:
        llm = load_llm(spec, settings)
    except Exception as exc:
        conn.send(("error", 0, (type(exc).__name__, str(exc))))
        return
    r = llm.resolved
    conn.send(("ready", 0, ((str(r.folder), r.name, r.version), llm.context_length)))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "quit":
            return
        if msg[0] != "cancel":  # a cancel that arrives after its call ended is moot
            _answer(conn, llm, msg)


def _answer(conn: Connection, llm: LlmSession, msg: tuple[Any, ...]) -> None:
    kind, seq, args = msg
    try:
        if kind == "chat_prompt":
            conn.send(("done", seq, llm.chat_prompt(args)))
            return
        prompt, options, batch_s = args
        batcher = PieceBatcher(batch_s)
        with llm.stream(prompt, **options) as stream:
            for piece in stream:
                if conn.poll() and conn.recv()[0] == "cancel":  # one call at a time
                    conn.send(("cancelled", seq, None))
                    return
                if text := batcher.add(piece, time.monotonic()):
                    conn.send(("piece", seq, text))
        if text := batcher.flush():
            conn.send(("piece", seq, text))
        conn.send(("done", seq, asdict(stream.generation) if stream.generation else None))
    except Exception as exc:  # sent to the parent, which raises it by name
        conn.send(("error", seq, (type(exc).__name__, str(exc))))


def main(argv: Sequence[str]) -> None:
    """``python -m edgeagent.models.llm_process FD SPEC SETTINGS_JSON``: the child."""
    fd, spec, settings = argv
    _serve(Connection(int(fd)), spec, LlmSettings(**json.loads(settings)))


class LlmProcess:
    """An :class:`LlmSession` served by a child process (see the module docstring)."""

    def __init__(
        self,
        spec: str | Path,
        settings: LlmSettings | None = None,
        *,
        batch_s: float = 0.02,
        adapter: str | Path | None = None,
    ) -> None:
        self.settings = with_adapter(settings or LlmSettings(), adapter)
        self.batch_s = batch_s
        mine, theirs = socket.socketpair()
        self._conn = Connection(mine.detach())
        cmd = [sys.executable, "-m", "edgeagent.models.llm_process", str(theirs.fileno())]
        cmd += [str(spec), json.dumps(asdict(self.settings))]
        self._proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL)
        theirs.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self.close()
            raise ModelError(f"{spec}: the model process did not start in {START_TIMEOUT_S:g} s")
        first = self._recv(str(spec))
        if first[0] == "error":
            self.close()
            raise _error(*first[2])
        (folder, name, version), self.context_length = first[2]
        self.resolved = ResolvedLlm(Path(folder), name, version)
        self.path: str = folder
        self._lock = threading.Lock()
        self._seq = 0
        self._stats = GenerationStats()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def __repr__(self) -> str:
        r = self.resolved
        return (
            f"LlmProcess({r.name!r} v{r.version}, pid {self.pid}, threads={self.settings.threads})"
        )

    def close(self) -> None:
        """Stop the child (asked to quit, then terminated)."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(("quit",))
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._conn.close()

    def __enter__(self) -> LlmProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> LlmStatistics:
        return self._stats.statistics()

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text for chat ``messages`` (rendered in the child, by its tokenizer)."""
        reply = _Reply()
        for _ in self._exchange("chat_prompt", [dict(m) for m in messages], reply):
            pass
        return str(reply.value)

    def generate(self, prompt: Prompt, **options: Any) -> Generation:
        """As :meth:`LlmSession.generate` (same keyword arguments)."""
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.generation is not None
        return stream.generation

    def stream(self, prompt: Prompt, **options: Any) -> LlmStream:
        """As :meth:`LlmSession.stream`; the pieces come from the child as it decodes them."""
        known = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "json_schema"}
        if set(options) - known:
            raise LlmInputError(f"unknown generation options: {sorted(set(options) - known)}")
        check_sampling(
            options.get("temperature", 0.0),
            options.get("top_p", 1.0),
            options.get("top_k", 50),
            options.get("seed"),
        )
        check_max_tokens(options.get("max_tokens", 64), self.settings.max_tokens_limit)
        if options.get("stop") is not None:
            options["stop"] = list(check_stops(options["stop"]))
        if not isinstance(prompt, str):
            prompt = [dict(m) for m in prompt]
        return LlmStream(lambda out: self._pieces(out, prompt, options))

    def _pieces(
        self, out: LlmStream, prompt: Prompt, options: dict[str, Any]
    ) -> Generator[str, None, None]:
        reply = _Reply()
        yield from self._exchange("stream", (prompt, options, self.batch_s), reply)
        if reply.value is not None:
            out.generation = Generation(**reply.value)
            self._stats.record(out.generation)

    def _exchange(self, kind: str, args: Any, reply: _Reply) -> Generator[str, None, None]:
        """One request to the child: its pieces, then ``reply.value``. Stopping early cancels
        the generation and drains the pipe up to the child's last word on it."""
        if not self._lock.acquire(timeout=self.settings.busy_wait_s):
            raise LlmBusy(
                f"{self.resolved.name}: busy with another generation for "
                f"{self.settings.busy_wait_s:g} s (one generation at a time per model)"
            )
        self._seq += 1
        seq = self._seq
        finished = False
        try:
            self._conn.send((kind, seq, args))
            while True:
                msg = self._recv()
                if msg[1] != seq:
                    continue  # the tail of an earlier, cancelled call
                if msg[0] == "piece":
                    yield msg[2]
                    continue
                finished = True
                if msg[0] == "error":
                    raise _error(*msg[2])
                reply.value = msg[2]
                return
        finally:
            if not finished:
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(("cancel", seq, None))
                self._drain(seq)
            self._lock.release()

    def _drain(self, seq: int) -> None:
        try:
            while True:
                msg = self._recv()
                if msg[1] == seq and msg[0] in ("done", "error", "cancelled"):
                    return
        except ModelError:
            return

    def _recv(self, name: str | None = None) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._proc.poll()
            who = name or self.resolved.name
            raise ModelError(f"{who}: the model process exited (status {code})") from exc
        return msg


class _Reply:
    """What a request to the child answered once it is done."""

    value: Any = None


if __name__ == "__main__":
    main(sys.argv[1:])
