"""When to fail over, how long to wait for one device, when to hedge: pure decisions.

The coordinator and the client's local routing (:meth:`edgeagent.client.Fleet.call_skill` with
``via="local"``) ask these functions, with the registry's measurements and the time left, and act
on the answers; nothing here waits, publishes or reads a clock, so every rule is unit-tested with
plain numbers (``tests/test_failover.py``).

The rules:

* **Retry** another device after an error only if the call certainly did not run there (``busy``,
  ``unavailable``, ``not_found``), or, for an idempotent skill, also after a ``timeout``; and only
  within the retry budget.
* **Patience** (idempotent skills, with a retry budget): wait for one device at most 8 × its
  measured p95, at least :data:`MIN_PATIENCE_S`; unmeasured, half of what is left. Otherwise wait
  for the whole deadline.
* **Hedge** idempotent read skills: if the first device has not answered after its p95 (at least
  :data:`MIN_HEDGE_S`; unmeasured, half of what is left, at least :data:`MIN_PATIENCE_S`), ask a
  second device and take the first answer.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "MIN_HEDGE_S",
    "MIN_PATIENCE_S",
    "NEVER_RAN",
    "PATIENCE_P95_FACTOR",
    "RETRYABLE",
    "hedge_after_s",
    "hedges",
    "patience_s",
    "should_retry",
]

#: Hedge no earlier than this, seconds: below it a second request costs more than it saves.
MIN_HEDGE_S: Final = 0.002
#: Least time to wait for one device before an idempotent call fails over, seconds.
MIN_PATIENCE_S: Final = 0.25
#: Patience is this many times the device's measured p95.
PATIENCE_P95_FACTOR: Final = 8
#: Error codes after which an idempotent call may go to another device.
RETRYABLE: Final = frozenset({"busy", "unavailable", "not_found", "timeout"})
#: Error codes that prove the device did not run the call (any skill may go elsewhere).
NEVER_RAN: Final = frozenset({"busy", "unavailable", "not_found"})


def should_retry(code: str, *, idempotent: bool, attempts: int, budget: int) -> bool:
    """May a call that failed with ``code`` go to another device, after ``attempts`` retries?"""
    if attempts >= budget:
        return False
    return code in (RETRYABLE if idempotent else NEVER_RAN)


def patience_s(
    *, idempotent: bool, budget: int, p95_s: float | None, left_s: float
) -> float | None:
    """Seconds to wait for one device before failing over; None: wait for the whole deadline."""
    if not idempotent or budget == 0:
        return None
    if p95_s is None:
        return max(MIN_PATIENCE_S, left_s / 2)
    return max(MIN_PATIENCE_S, PATIENCE_P95_FACTOR * p95_s)


def hedges(*, enabled: bool, side_effect: Literal["read", "write"] | str, idempotent: bool) -> bool:
    """Is a call to this skill hedged (a second device asked if the first is slow)?"""
    return enabled and side_effect == "read" and idempotent


def hedge_after_s(*, p95_s: float | None, left_s: float) -> float:
    """Seconds without an answer from the first device before a second one is asked."""
    if p95_s is None:
        return max(MIN_PATIENCE_S, left_s / 2)
    return max(p95_s, MIN_HEDGE_S)
