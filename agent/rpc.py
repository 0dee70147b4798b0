"""The request/response protocol over MQTT 5, in one place: correlation, deadlines, properties.

Every edgeagent request is an MQTT 5 PUBLISH carrying a Response Topic, unguessable Correlation
Data and a Message Expiry Interval (the caller's deadline, whole seconds rounded up); the reply
goes to the Response Topic with the same Correlation Data and ``application/json``. The client
(:class:`~edgeagent.client.Fleet`), the coordinator and the device agent all build and read these
properties through the functions here, and the two requesters keep their waiting calls in a
:class:`PendingCalls` table: bounded, resolved by correlation data, expired by the injected
:class:`~edgeagent.clock.Clock` (never the loop's timers directly).

Nothing here does I/O: the caller publishes the :class:`~edgeagent.transport.base.Props` it gets
and feeds replies to :meth:`PendingCalls.resolve`.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .clock import Clock
from .errors import Busy, CallTimeout, Unavailable
from .protocol import JSON_CONTENT_TYPE, TRACE_PROPERTY
from .transport.base import Props

__all__ = [
    "CORRELATION_BYTES",
    "DEFAULT_MAX_PENDING",
    "PendingCalls",
    "expiry_seconds",
    "new_correlation",
    "reply_props",
    "request_props",
]

T = TypeVar("T")

#: Bytes of random Correlation Data: unguessable, since devices may publish on reply topics and
#: none may answer for another.
CORRELATION_BYTES = 12
#: Most calls one requester keeps waiting at once (past it a new call is refused as ``busy``).
DEFAULT_MAX_PENDING = 100_000


def new_correlation() -> bytes:
    """Fresh, unguessable Correlation Data."""
    return os.urandom(CORRELATION_BYTES)


def expiry_seconds(seconds: float) -> int:
    """A deadline as a Message Expiry Interval: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def request_props(
    reply_topic: str,
    correlation: bytes,
    expires_in: float,
    *,
    content_type: str | None = None,
    user_properties: tuple[tuple[str, str], ...] = (),
) -> Props:
    """The properties of a request answered on ``reply_topic`` within ``expires_in`` seconds."""
    return Props(
        response_topic=reply_topic,
        correlation_data=correlation,
        message_expiry=expiry_seconds(expires_in),
        content_type=content_type,
        user_properties=user_properties,
    )


def reply_props(request: Props) -> Props:
    """The properties of the reply to a request: its Correlation Data, JSON, its trace id."""
    trace = request.user_property(TRACE_PROPERTY)
    return Props(
        correlation_data=request.correlation_data,
        content_type=JSON_CONTENT_TYPE,
        user_properties=((TRACE_PROPERTY, trace),) if trace else (),
    )


class PendingCalls(Generic[T]):
    """Requests waiting for replies, keyed by Correlation Data (bounded; no I/O).

    :meth:`open` makes the key and a future; with ``wait`` the future fails with
    :class:`~edgeagent.errors.CallTimeout` after that many seconds of the clock. The entry is
    removed however the future settles (result, error, cancellation), so the table never holds
    a finished call. Past ``limit`` waiting calls, :meth:`open` raises
    :class:`~edgeagent.errors.Busy`.
    """

    __slots__ = ("_calls", "_clock", "limit")

    def __init__(self, clock: Clock, *, limit: int = DEFAULT_MAX_PENDING) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._clock = clock
        self._calls: dict[bytes, asyncio.Future[T]] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, correlation: object) -> bool:
        return correlation in self._calls

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._calls))

    def open(
        self,
        wait: float | None = None,
        message: str | Callable[[], str] = "no reply",
    ) -> tuple[bytes, asyncio.Future[T]]:
        """A new correlation key and the future its reply resolves.

        ``wait``: seconds until the future fails with CallTimeout(``message``); None waits until
        resolved, failed or cancelled.
        """
        if len(self._calls) >= self.limit:
            raise Busy(f"{len(self._calls):,} calls already wait for replies (the limit)")
        corr = new_correlation()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls[corr] = future
        timer = None if wait is None else self._clock.call_later(wait, _expire, future, message)

        def settled(_f: asyncio.Future[T]) -> None:
            if timer is not None:
                timer.cancel()
            self._calls.pop(corr, None)

        future.add_done_callback(settled)
        return corr, future

    def get(self, correlation: bytes | None) -> asyncio.Future[T] | None:
        """The waiting future for ``correlation`` (None if unknown, finished or missing)."""
        if correlation is None:
            return None
        future = self._calls.get(correlation)
        return None if future is None or future.done() else future

    def resolve(self, correlation: bytes | None, value: T) -> bool:
        """Settle a waiting call with ``value``; False for an unknown or late reply."""
        future = self.get(correlation)
        if future is None:
            return False
        future.set_result(value)
        return True

    def fail(self, correlation: bytes | None, exc: BaseException) -> bool:
        """Settle a waiting call with an error; False for an unknown or late reply."""
        future = self.get(correlation)
        if future is None:
            return False
        future.set_exception(exc)
        return True

    def fail_all(self, exc: BaseException | None = None) -> int:
        """Fail every waiting call (default: Unavailable, client closed); returns how many."""
        n = 0
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(exc if exc is not None else Unavailable("client closed"))
                n += 1
        return n


def _expire(future: asyncio.Future[object], message: str | Callable[[], str]) -> None:
    if not future.done():
        future.set_exception(CallTimeout(message if isinstance(message, str) else message()))
