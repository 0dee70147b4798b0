"""The device agent's idempotency cache: a repeated key gets the first run's reply, never a
second run. Pure and bounded: no I/O, no clock, no publishing.

A call carrying an idempotency key is looked up (:meth:`IdempotencyCache.lookup`) before it is
admitted, and the cache answers with a decision the agent acts on:

* :data:`NEW_CALL`: never seen (or forgotten): admit and run it; :meth:`~IdempotencyCache.start`
  when it is queued, :meth:`~IdempotencyCache.finish` with its reply when it is answered;
* :class:`Replay`: answered before: publish that reply again (same bytes);
* :data:`WAIT`: still running: the waiter given to ``lookup`` is answered by ``finish``;
* :class:`~edgeagent.admission.Refusal`: ``bad_request`` when the key came with another input
  (a key names one call, not a slot to reuse), ``busy`` when :data:`IDEMPOTENCY_WAITERS` repeats
  already wait.

Keys are matched within one caller's calls to one skill (:func:`call_key`), and remembered with a
digest of their input (:func:`input_digest`). The cache keeps the :data:`IDEMPOTENCY_KEYS_KEPT`
most recently used keys; past that the least recently used is forgotten (and a repeat of it runs
again). A call that never ran (expired while queued, cancelled) is forgotten at ``finish(None)``,
so its key may run again; its waiters are not answered (their caller gets no reply, as the first
caller does not).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from .admission import Refusal
from .logutil import clip

__all__ = [
    "IDEMPOTENCY_KEYS_KEPT",
    "IDEMPOTENCY_WAITERS",
    "NEW_CALL",
    "WAIT",
    "CallKey",
    "Decision",
    "IdempotencyCache",
    "NewCall",
    "Replay",
    "Wait",
    "call_key",
    "input_digest",
]

#: How many idempotency keys (and their replies) an agent remembers.
IDEMPOTENCY_KEYS_KEPT = 4096
#: Repeats of a call still running that wait for its reply; more get ``busy``.
IDEMPOTENCY_WAITERS = 16

#: (hash of the caller, skill, key): a key is only ever matched within one caller's calls to one
#: skill.
CallKey = tuple[str, str, str]
W = TypeVar("W")


def call_key(caller: str, skill: str, key: str) -> CallKey:
    """The cache key of idempotency key ``key`` sent by ``caller`` to ``skill``."""
    return (hashlib.blake2b(caller.encode(), digest_size=16).hexdigest(), skill, key)


def input_digest(payload: bytes, content_type: str | None, input_property: str | None) -> bytes:
    """What makes two calls "the same input": the bytes, their content type, binary inputs."""
    h = hashlib.blake2b(payload, digest_size=16)
    h.update(b"\0" + (content_type or "").encode())
    h.update(b"\0" + (input_property or "").encode())
    return h.digest()


@dataclass(frozen=True, slots=True)
class NewCall:
    """Not a repeat: admit and run the call."""


@dataclass(frozen=True, slots=True)
class Replay:
    """A repeat of an answered call: publish its reply again."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Wait:
    """A repeat of a running call: its waiter is answered when the first call finishes."""


NEW_CALL: Final = NewCall()
WAIT: Final = Wait()
Decision = NewCall | Replay | Wait | Refusal


@dataclass(slots=True)
class _Entry(Generic[W]):
    digest: bytes
    payload: bytes | None = None
    waiters: list[W] = field(default_factory=list)


class IdempotencyCache(Generic[W]):
    """Keys of recent calls, their input digests and replies; ``W`` is how a waiter is answered
    (the agent uses its reply topic and properties)."""

    __slots__ = ("_entries", "keep", "max_waiters")

    def __init__(
        self, *, keep: int = IDEMPOTENCY_KEYS_KEPT, max_waiters: int = IDEMPOTENCY_WAITERS
    ) -> None:
        if keep < 1 or max_waiters < 0:
            raise ValueError("keep must be at least 1 and max_waiters at least 0")
        self._entries: OrderedDict[CallKey, _Entry[W]] = OrderedDict()
        self.keep = keep
        self.max_waiters = max_waiters

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def lookup(self, key: CallKey, digest: bytes, waiter: W) -> Decision:
        """What to do with a call carrying ``key`` and an input of ``digest``; on :data:`WAIT`
        the cache keeps ``waiter`` for :meth:`finish`. A known key becomes the most recent."""
        entry = self._entries.get(key)
        if entry is None:
            return NEW_CALL
        self._entries.move_to_end(key)
        if entry.digest != digest:
            return Refusal(
                "bad_request",
                f"idempotency key {clip(key[2], 40)!r} was used for a call to {key[1]!r} with a "
                "different input: use a new key for a new call",
            )
        if entry.payload is not None:
            return Replay(entry.payload)
        if len(entry.waiters) >= self.max_waiters:
            return Refusal("busy", "too many repeats of a call still running")
        entry.waiters.append(waiter)
        return WAIT

    def start(self, key: CallKey, digest: bytes) -> None:
        """Remember a call admitted after :data:`NEW_CALL`, forgetting the least recent keys
        beyond ``keep``."""
        self._entries[key] = _Entry(digest)
        while len(self._entries) > self.keep:
            self._entries.popitem(last=False)

    def finish(self, key: CallKey, payload: bytes | None) -> Sequence[W]:
        """Record the reply of a started call; returns the waiters to answer with it.

        ``payload`` None: the call never ran, so its key is forgotten (and may run again).
        A key forgotten meanwhile (evicted) returns no waiters.
        """
        entry = self._entries.get(key)
        if entry is None:
            return ()
        if payload is None:
            del self._entries[key]
            return ()
        entry.payload = payload
        if not entry.waiters:
            return ()  # the common case, without a new list
        waiters, entry.waiters = entry.waiters, []
        return waiters
