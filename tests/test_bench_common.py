"""The benchmarks' shared statistics (benchmarks/_common): known inputs, known answers.

Every number in docs/benchmarks.md goes through these functions, so they are checked against
values worked out by hand, not against themselves. No broker, no processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Callable

import pytest

from benchmarks._common import (
    Load,
    Sample,
    echo_payload,
    make_sample,
    markdown_table,
    median,
    median_by_key,
    percentile,
    pipelined_calls,
    rotation,
    run_rounds,
    sequential_calls,
    summarize,
)

# percentile: nearest rank ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [(5, 15), (30, 20), (40, 20), (50, 35), (100, 50), (0, 15)],
)
def test_percentile_is_nearest_rank(p: float, expected: float) -> None:
    # The worked example of the nearest-rank method: ranks ceil(p/100 * 5).
    assert percentile([15, 20, 35, 40, 50], p) == expected


def test_percentile_of_a_hundred_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.5) == 100  # rank 99.5 rounds up to 100


def test_percentile_is_always_a_measured_value() -> None:
    assert percentile([1.0, 2.0], 50) == 1.0  # not 1.5, as an interpolating percentile says


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


# medians ---------------------------------------------------------------------------------------


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median(x for x in (7.0,)) == 7.0
    assert math.isnan(median([]))


def test_median_by_key_takes_each_key_on_its_own() -> None:
    rounds = [
        {"requester": 1.0, "broker": 30.0},
        {"requester": 3.0, "broker": 10.0},
        {"requester": 2.0, "broker": 20.0},
    ]
    got = median_by_key(rounds)
    assert got == {"requester": 2.0, "broker": 20.0}
    assert list(got) == ["requester", "broker"]  # the first round's order: JSON stays stable
    assert median_by_key([]) == {}


# rotation and rounds ---------------------------------------------------------------------------


def test_rotation_order_by_round() -> None:
    names = ["raw", "edge", "aio"]
    assert rotation(names, 0) == ["raw", "edge", "aio"]
    assert rotation(names, 1) == ["edge", "aio", "raw"]
    assert rotation(names, 2) == ["aio", "raw", "edge"]
    assert rotation(names, 3) == ["raw", "edge", "aio"]
    assert rotation([], 5) == []


def test_rotation_puts_each_item_first_equally_often() -> None:
    names = list("abcd")
    firsts = [rotation(names, r)[0] for r in range(8)]
    assert sorted(firsts) == sorted(names * 2)


def test_run_rounds_interleaves_in_rotating_order_and_reports() -> None:
    calls: list[str] = []
    counters = {"a": 0, "b": 0, "c": 0}

    def measure(name: str) -> Callable[[], int]:
        def run() -> int:
            calls.append(name)
            counters[name] += 1
            return counters[name] * 10

        return run

    seen: list[tuple[int, str, int]] = []
    ends: list[tuple[int, int]] = []
    out = run_rounds(
        {n: measure(n) for n in "abc"},
        3,
        on_sample=lambda r, name, s: seen.append((r, name, s)),
        after_round=lambda r: ends.append((r, len(calls))),
    )
    assert calls == list("abc" + "bca" + "cab")
    assert out == {"a": [10, 20, 30], "b": [10, 20, 30], "c": [10, 20, 30]}
    assert seen[:4] == [(0, "a", 10), (0, "b", 10), (0, "c", 10), (1, "b", 20)]
    assert ends == [(0, 3), (1, 6), (2, 9)]  # after each whole round


def test_run_rounds_stops_when_after_round_raises() -> None:
    calls: list[str] = []

    def dead(r: int) -> None:
        raise SystemExit("the agent exited")

    with pytest.raises(SystemExit):
        run_rounds({"a": lambda: calls.append("a")}, 5, after_round=dead)
    assert calls == ["a"]


# samples and summaries -------------------------------------------------------------------------


def test_make_sample_from_latencies() -> None:
    latencies = [ms / 1000 for ms in range(100, 0, -1)]  # 1..100 ms, unsorted
    s = make_sample(latencies, 1234.0, {"requester": 5.0}, {"requester": 4.0})
    assert s.p50_us == pytest.approx(50_000)
    assert s.p99_us == pytest.approx(99_000)
    assert s.mean_us == pytest.approx(50_500)
    assert s.calls_per_s == 1234.0
    assert s.cpu_sequential == {"requester": 5.0}
    assert s.cpu_pipelined == {"requester": 4.0}


def _sample(p50: float, p99: float, rate: float, cpu: float) -> Sample:
    return Sample(p50, p99, p50 + 1, rate, {"requester": cpu}, {"requester": cpu / 2})


def test_summarize_is_the_median_of_each_metric() -> None:
    rounds = [
        _sample(500, 900, 3000, 10),
        _sample(700, 800, 1000, 30),
        _sample(600, 2000, 2000, 20),
    ]
    s = summarize(rounds)
    assert (s.p50_us, s.p99_us, s.mean_us, s.calls_per_s) == (600, 900, 601, 2000)
    assert s.cpu_sequential == {"requester": 20}
    assert s.cpu_pipelined == {"requester": 10}
    assert s.rounds == rounds


def test_summarize_of_an_even_count_averages_the_middle_two() -> None:
    s = summarize([_sample(100, 1, 1, 1), _sample(300, 1, 1, 1)])
    assert s.p50_us == 200


def test_summarize_needs_rounds() -> None:
    with pytest.raises(ValueError, match="no rounds"):
        summarize([])


# loads and calls -------------------------------------------------------------------------------


def test_load_from_args() -> None:
    args = argparse.Namespace(calls=3000, warmup=300, inflight=64, payload=128)
    assert Load.from_args(args) == Load(calls=3000, warmup=300, inflight=64)


def test_echo_payload_has_the_size_asked() -> None:
    for size in (11, 12, 128, 4096):
        payload = echo_payload(size)
        assert len(payload) == size
        assert set(json.loads(payload)["data"]) <= {"x"}
    with pytest.raises(SystemExit):
        echo_payload(10)


def test_sequential_calls_time_each_call() -> None:
    done: list[int] = []

    async def call() -> None:
        done.append(1)

    latencies = asyncio.run(sequential_calls(call, 7))
    assert len(latencies) == 7
    assert len(done) == 7
    assert all(t >= 0 for t in latencies)


@pytest.mark.parametrize(("calls", "inflight"), [(50, 8), (5, 64), (1, 1)])
def test_pipelined_calls_keep_at_most_inflight_outstanding(calls: int, inflight: int) -> None:
    outstanding = peak = total = 0

    async def call() -> None:
        nonlocal outstanding, peak, total
        outstanding += 1
        total += 1
        peak = max(peak, outstanding)
        await asyncio.sleep(0)
        outstanding -= 1

    rate = asyncio.run(pipelined_calls(call, calls, inflight))
    assert total == calls
    assert peak == min(calls, inflight)
    assert rate > 0


# output ----------------------------------------------------------------------------------------


def test_markdown_table() -> None:
    table = markdown_table(("name", "µs"), [("a", "1.50"), ("b", 2)], "lr")
    assert table == "| name | µs |\n|---|---:|\n| a | 1.50 |\n| b | 2 |"


def test_markdown_table_refuses_a_mismatch() -> None:
    with pytest.raises(ValueError, match="align"):
        markdown_table(("a", "b"), [], "l")
    with pytest.raises(ValueError, match="row of 1 cells"):
        markdown_table(("a", "b"), [("x",)], "lr")
