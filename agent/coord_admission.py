"""Which calls the coordinator takes on: a pure policy over the calls it is serving.

A call is refused at once, before any routing, when what it asks for is out of bounds (a response
topic or idempotency key too long) or when the coordinator already serves as many calls as the
limits allow, in all or for that caller (its response topic). The policy counts the calls it let
in until they are released, and answers with the :class:`~edgeagent.protocol.ErrorReply` to send
back, or None; the coordinator publishes it. No I/O and no clock, so every bound is unit-tested
without a broker (``tests/test_coordinator_memory.py``).
"""

from __future__ import annotations

from typing import Final

from .limits import CoordinatorLimits
from .protocol import MAX_IDEMPOTENCY_KEY, ErrorReply

__all__ = ["MAX_RESPONSE_TOPIC", "Admission"]

#: Longest response topic a call may ask to be answered on, characters.
MAX_RESPONSE_TOPIC: Final = 1024


class Admission:
    """Calls in flight, in all and per caller, and the decision to take one more on."""

    __slots__ = ("_per_caller", "in_flight", "limits")

    def __init__(self, limits: CoordinatorLimits) -> None:
        self.limits = limits
        #: Calls admitted and not yet released (all callers).
        self.in_flight = 0
        self._per_caller: dict[str, int] = {}  # no entry for a caller with none in flight

    @property
    def callers(self) -> int:
        """Callers with at least one call in flight."""
        return len(self._per_caller)

    def in_flight_for(self, caller: str) -> int:
        return self._per_caller.get(caller, 0)

    def refusal(self, caller: str, idempotency_key: str | None) -> ErrorReply | None:
        """Why a call from ``caller`` (its response topic) is refused now; None: take it."""
        if len(caller) > MAX_RESPONSE_TOPIC:
            return ErrorReply(
                code="bad_request",
                message=f"response topic of {len(caller):,} characters: use at most "
                f"{MAX_RESPONSE_TOPIC}",
            )
        key = idempotency_key
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            return ErrorReply(
                code="bad_request",
                message=f"idempotency key of {len(key)} characters: use 1 to {MAX_IDEMPOTENCY_KEY}",
            )
        lim = self.limits
        if self.in_flight >= lim.max_in_flight:
            return ErrorReply(
                code="busy",
                message=f"coordinator at capacity ({lim.max_in_flight} calls in flight); "
                "retry later",
            )
        if self._per_caller.get(caller, 0) >= lim.max_in_flight_per_caller:
            return ErrorReply(
                code="busy",
                message=f"this caller has {lim.max_in_flight_per_caller} calls in flight "
                "(the limit); wait for some to finish",
            )
        return None

    def admit(self, caller: str, idempotency_key: str | None) -> ErrorReply | None:
        """Take the call on (counted until :meth:`release`) or return its refusal."""
        refusal = self.refusal(caller, idempotency_key)
        if refusal is None:
            self.in_flight += 1
            self._per_caller[caller] = self._per_caller.get(caller, 0) + 1
        return refusal

    def release(self, caller: str) -> None:
        """An admitted call of ``caller`` has been answered (or abandoned)."""
        left = self._per_caller.get(caller, 0) - 1
        if left < 0:
            raise ValueError(f"no call of {caller!r} is in flight")
        self.in_flight -= 1
        if left:
            self._per_caller[caller] = left
        else:
            del self._per_caller[caller]
