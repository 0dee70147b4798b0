"""The pure failover rules (agent/failover.py): retry, patience, hedging, at every boundary."""

from __future__ import annotations

import pytest

from edgeagent.failover import (
    MIN_HEDGE_S,
    MIN_PATIENCE_S,
    NEVER_RAN,
    PATIENCE_P95_FACTOR,
    RETRYABLE,
    hedge_after_s,
    hedges,
    patience_s,
    should_retry,
)


def test_the_codes_that_prove_a_call_never_ran_are_retryable_but_not_the_reverse() -> None:
    assert {"busy", "unavailable", "not_found"} == NEVER_RAN
    assert NEVER_RAN | {"timeout"} == RETRYABLE


@pytest.mark.parametrize("code", ["busy", "unavailable", "not_found"])
@pytest.mark.parametrize("idempotent", [True, False])
def test_a_call_that_never_ran_goes_elsewhere_whatever_the_skill(
    code: str, idempotent: bool
) -> None:
    assert should_retry(code, idempotent=idempotent, attempts=0, budget=2)


def test_a_timeout_is_retried_only_for_an_idempotent_skill() -> None:
    assert should_retry("timeout", idempotent=True, attempts=0, budget=2)
    # It may have run: a write must not run twice.
    assert not should_retry("timeout", idempotent=False, attempts=0, budget=2)


@pytest.mark.parametrize(
    "code", ["bad_request", "internal", "skill_error", "forbidden", "", "BUSY"]
)
def test_other_errors_are_the_answer(code: str) -> None:
    assert not should_retry(code, idempotent=True, attempts=0, budget=5)
    assert not should_retry(code, idempotent=False, attempts=0, budget=5)


def test_the_retry_budget_is_counted_in_retries() -> None:
    assert should_retry("busy", idempotent=True, attempts=1, budget=2)
    assert not should_retry("busy", idempotent=True, attempts=2, budget=2)
    assert not should_retry("busy", idempotent=True, attempts=3, budget=2)
    assert not should_retry("busy", idempotent=True, attempts=0, budget=0)


def test_patience_only_for_idempotent_skills_with_a_budget() -> None:
    assert patience_s(idempotent=False, budget=2, p95_s=0.1, left_s=10) is None
    assert patience_s(idempotent=True, budget=0, p95_s=0.1, left_s=10) is None


def test_patience_is_a_multiple_of_the_measured_p95_with_a_floor() -> None:
    assert PATIENCE_P95_FACTOR == 8
    assert patience_s(idempotent=True, budget=1, p95_s=0.1, left_s=10) == pytest.approx(0.8)
    floor = MIN_PATIENCE_S / PATIENCE_P95_FACTOR
    assert patience_s(idempotent=True, budget=1, p95_s=floor, left_s=10) == MIN_PATIENCE_S
    assert patience_s(idempotent=True, budget=1, p95_s=floor / 2, left_s=10) == MIN_PATIENCE_S
    assert patience_s(idempotent=True, budget=1, p95_s=0.0, left_s=10) == MIN_PATIENCE_S
    # Measured: the time left does not matter (the caller cuts the wait to the deadline).
    assert patience_s(idempotent=True, budget=1, p95_s=1.0, left_s=0.5) == 8.0


def test_unmeasured_patience_is_half_of_what_is_left_with_a_floor() -> None:
    assert patience_s(idempotent=True, budget=1, p95_s=None, left_s=10) == 5.0
    edge = 2 * MIN_PATIENCE_S
    assert patience_s(idempotent=True, budget=1, p95_s=None, left_s=edge) == MIN_PATIENCE_S
    assert patience_s(idempotent=True, budget=1, p95_s=None, left_s=0.1) == MIN_PATIENCE_S
    assert patience_s(idempotent=True, budget=1, p95_s=None, left_s=-1) == MIN_PATIENCE_S


@pytest.mark.parametrize(
    ("enabled", "side_effect", "idempotent", "expected"),
    [
        (True, "read", True, True),
        (False, "read", True, False),
        (True, "write", True, False),
        (True, "read", False, False),
        (True, "actuate", True, False),
    ],
)
def test_only_idempotent_reads_are_hedged_and_only_when_enabled(
    enabled: bool, side_effect: str, idempotent: bool, expected: bool
) -> None:
    assert hedges(enabled=enabled, side_effect=side_effect, idempotent=idempotent) is expected


def test_a_hedge_waits_for_the_p95_with_a_floor() -> None:
    assert hedge_after_s(p95_s=0.05, left_s=10) == 0.05
    assert hedge_after_s(p95_s=MIN_HEDGE_S, left_s=10) == MIN_HEDGE_S
    assert hedge_after_s(p95_s=MIN_HEDGE_S / 2, left_s=10) == MIN_HEDGE_S
    assert hedge_after_s(p95_s=0.0, left_s=10) == MIN_HEDGE_S
    assert hedge_after_s(p95_s=3.0, left_s=1.0) == 3.0  # cut to the deadline by the caller


def test_an_unmeasured_hedge_waits_for_half_of_what_is_left_with_a_floor() -> None:
    assert hedge_after_s(p95_s=None, left_s=4.0) == 2.0
    assert hedge_after_s(p95_s=None, left_s=2 * MIN_PATIENCE_S) == MIN_PATIENCE_S
    assert hedge_after_s(p95_s=None, left_s=0.01) == MIN_PATIENCE_S
