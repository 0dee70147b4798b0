"""The device agent's pure policies: admission and the idempotency cache, without a broker or a
loop. The texts asserted are the ones callers see (tests/test_bad_input.py and
tests/test_hardening.py check the same replies end to end)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from edgeagent import device
from edgeagent.admission import (
    MAX_HOP,
    PING_SKILL,
    Admitted,
    Refusal,
    admit,
    is_full,
    key_refusal,
    parse_hop,
    parse_input,
)
from edgeagent.idempotency import (
    IDEMPOTENCY_KEYS_KEPT,
    IDEMPOTENCY_WAITERS,
    NEW_CALL,
    WAIT,
    CallKey,
    IdempotencyCache,
    Replay,
    call_key,
    input_digest,
)
from edgeagent.protocol import (
    BINARY_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    MAX_IDEMPOTENCY_KEY,
    TRACE_PROPERTY,
)
from edgeagent.rpc import reply_props
from edgeagent.skills import build_skill, skill
from edgeagent.transport.base import Props

# --- idempotency -----------------------------------------------------------------------------

KEY: CallKey = call_key("caller-1", "echo", "k1")
DIGEST = input_digest(b'{"text":"a"}', JSON_CONTENT_TYPE, None)
OTHER = input_digest(b'{"text":"b"}', JSON_CONTENT_TYPE, None)


def test_names_stay_importable_from_the_device_module() -> None:
    assert device.IDEMPOTENCY_KEYS_KEPT == IDEMPOTENCY_KEYS_KEPT == 4096
    assert device.IDEMPOTENCY_WAITERS == IDEMPOTENCY_WAITERS == 16
    assert device.PING_SKILL == PING_SKILL == "_ping"
    assert device.MAX_HOP == MAX_HOP == 64


def test_a_new_key_is_a_new_call_and_is_only_remembered_once_started() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    assert cache.lookup(KEY, DIGEST, "w1") is NEW_CALL
    assert KEY not in cache
    assert len(cache) == 0
    assert cache.lookup(KEY, DIGEST, "w1") is NEW_CALL
    cache.start(KEY, DIGEST)
    assert KEY in cache
    assert len(cache) == 1


def test_repeats_of_a_running_call_wait_and_are_answered_with_its_reply() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    cache.start(KEY, DIGEST)
    assert cache.lookup(KEY, DIGEST, "w1") is WAIT
    assert cache.lookup(KEY, DIGEST, "w2") is WAIT
    assert list(cache.finish(KEY, b"reply")) == ["w1", "w2"]
    # Answered: later repeats replay the same bytes and wait for nothing.
    assert cache.lookup(KEY, DIGEST, "w3") == Replay(b"reply")
    assert cache.finish(KEY, b"reply") == ()


def test_the_same_key_with_another_input_is_refused() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    cache.start(KEY, DIGEST)
    refusal = cache.lookup(KEY, OTHER, "w1")
    assert refusal == Refusal(
        "bad_request",
        "idempotency key 'k1' was used for a call to 'echo' with a different input: "
        "use a new key for a new call",
    )
    cache.finish(KEY, b"reply")
    assert cache.lookup(KEY, OTHER, "w2") == refusal  # answered or not
    assert cache.lookup(KEY, DIGEST, "w2") == Replay(b"reply")


def test_a_long_key_is_clipped_in_the_refusal() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    key = call_key("c", "echo", "x" * 100)
    cache.start(key, DIGEST)
    refusal = cache.lookup(key, OTHER, "w")
    assert isinstance(refusal, Refusal)
    assert f"{'x' * 40}…[100 chars]" in refusal.message
    assert "x" * 41 not in refusal.message


def test_waiters_are_capped() -> None:
    cache: IdempotencyCache[int] = IdempotencyCache()
    cache.start(KEY, DIGEST)
    for i in range(IDEMPOTENCY_WAITERS):
        assert cache.lookup(KEY, DIGEST, i) is WAIT
    assert cache.lookup(KEY, DIGEST, 99) == Refusal(
        "busy", "too many repeats of a call still running"
    )
    assert list(cache.finish(KEY, b"r")) == list(range(IDEMPOTENCY_WAITERS))  # 99 not among them
    assert IdempotencyCache[int](max_waiters=0).max_waiters == 0


def test_a_call_that_never_ran_is_forgotten_so_its_key_runs_again() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    cache.start(KEY, DIGEST)
    assert cache.lookup(KEY, DIGEST, "w1") is WAIT
    assert cache.finish(KEY, None) == ()  # no reply to give the waiter
    assert KEY not in cache
    assert cache.lookup(KEY, OTHER, "w2") is NEW_CALL  # and its input no longer binds the key


def test_finishing_an_unknown_or_evicted_key_answers_nobody() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache(keep=1)
    assert cache.finish(KEY, b"r") == ()
    cache.start(KEY, DIGEST)
    assert cache.lookup(KEY, DIGEST, "w1") is WAIT
    other = call_key("caller-1", "echo", "k2")
    cache.start(other, DIGEST)  # evicts KEY, waiter and all
    assert KEY not in cache
    assert cache.finish(KEY, b"r") == ()


def test_the_cache_keeps_the_most_recently_used_keys() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache(keep=3)
    keys = [call_key("c", "echo", f"k{i}") for i in range(5)]
    for k in keys[:3]:
        cache.start(k, DIGEST)
        cache.finish(k, b"r")
    cache.start(keys[3], DIGEST)
    assert keys[0] not in cache
    assert len(cache) == 3
    assert cache.lookup(keys[0], DIGEST, "w") is NEW_CALL
    # A lookup makes a key the most recent: k1 is used, so k2 is the one forgotten next.
    assert cache.lookup(keys[1], DIGEST, "w") == Replay(b"r")
    cache.start(keys[4], DIGEST)
    assert [k in cache for k in keys] == [False, True, False, True, True]
    # Refused lookups count as use too.
    assert isinstance(cache.lookup(keys[3], OTHER, "w"), Refusal)
    cache.start(keys[0], DIGEST)
    assert [k in cache for k in keys] == [True, False, False, True, True]


def test_the_default_bound_is_idempotency_keys_kept() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    first = call_key("c", "echo", "first")
    cache.start(first, DIGEST)
    for i in range(IDEMPOTENCY_KEYS_KEPT - 1):
        cache.start(call_key("c", "echo", str(i)), DIGEST)
    assert first in cache
    assert len(cache) == IDEMPOTENCY_KEYS_KEPT
    cache.start(call_key("c", "echo", "one more"), DIGEST)
    assert first not in cache
    assert len(cache) == IDEMPOTENCY_KEYS_KEPT


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        IdempotencyCache[str](keep=0)
    with pytest.raises(ValueError, match="max_waiters at least 0"):
        IdempotencyCache[str](max_waiters=-1)


def test_keys_are_matched_per_caller_and_skill_and_the_caller_is_hashed() -> None:
    assert call_key("a", "echo", "k") == call_key("a", "echo", "k")
    assert call_key("a", "echo", "k") != call_key("b", "echo", "k")
    assert call_key("a", "echo", "k") != call_key("a", "other", "k")
    caller, skill_name, key = call_key("reply/topic/of/a", "echo", "k")
    assert "reply" not in caller
    assert len(caller) == 32
    assert (skill_name, key) == ("echo", "k")


def test_the_input_digest_covers_bytes_content_type_and_binary_inputs() -> None:
    base = input_digest(b"x", None, None)
    assert input_digest(b"x", None, None) == base
    assert input_digest(b"x", "", "") == base  # absent and empty are the same
    assert input_digest(b"y", None, None) != base
    assert input_digest(b"x", BINARY_CONTENT_TYPE, None) != base
    assert input_digest(b"x", BINARY_CONTENT_TYPE, '{"a":1}') != input_digest(
        b"x", BINARY_CONTENT_TYPE, '{"a":2}'
    )
    assert len(base) == 16


# --- admission -------------------------------------------------------------------------------


@dataclass
class FakeLoad:
    in_flight: int = 0
    queued: int = 0
    max_concurrency: int = 1
    max_queue: int = 1


def check(
    name: str = "echo",
    *,
    hop: str | None = None,
    draining: bool = False,
    size: int = 10,
    skills: dict[str, FakeLoad] | None = None,
) -> Admitted | Refusal:
    return admit(
        name,
        hop=hop,
        draining=draining,
        size=size,
        max_payload=100,
        device="lamp",
        skills={"echo": FakeLoad(), "add": FakeLoad()} if skills is None else skills,
    )


def test_the_idempotency_key_length_is_checked() -> None:
    assert key_refusal(None) is None
    assert key_refusal("k") is None
    assert key_refusal("k" * MAX_IDEMPOTENCY_KEY) is None
    assert key_refusal("") == Refusal(
        "bad_request", "idempotency key of 0 characters: use 1 to 128"
    )
    assert key_refusal("k" * (MAX_IDEMPOTENCY_KEY + 1)) == Refusal(
        "bad_request", "idempotency key of 129 characters: use 1 to 128"
    )


@pytest.mark.parametrize(
    ("value", "hop"),
    [
        (None, 0),
        ("0", 0),
        ("7", 7),
        ("064", 64),
        ("64", 64),
        ("65", None),
        ("0064", None),
        ("-1", None),
        ("1.0", None),
        ("", None),
        ("\u0663", None),  # an Arabic-Indic 3: a digit, not an ASCII one
    ],
)
def test_the_hop_property(value: str | None, hop: int | None) -> None:
    assert parse_hop(value) == hop


def test_a_call_with_room_is_admitted_with_its_hop() -> None:
    assert check() == Admitted(0)
    assert check(hop="3") == Admitted(3, ping=False)
    assert check(size=100) == Admitted(0)  # the limit itself is allowed


def test_checks_run_in_order_and_the_first_failing_one_answers() -> None:
    full = {"echo": FakeLoad(in_flight=1, queued=1)}
    everything_wrong = {"hop": "x", "draining": True, "size": 101, "skills": full}
    hop_msg = "user property 'hop' must be a whole number from 0 to 64"
    assert check(**everything_wrong) == Refusal("bad_request", hop_msg)  # type: ignore[arg-type]
    assert check(draining=True, size=101, skills=full) == Refusal(
        "unavailable", "device is shutting down"
    )
    size_msg = "payload of 101 bytes exceeds this device's limit of 100 bytes"
    assert check("nope", size=101) == Refusal("bad_request", size_msg)
    assert check(PING_SKILL, size=101) == Refusal("bad_request", size_msg)
    assert check(PING_SKILL, draining=True) == Refusal("unavailable", "device is shutting down")
    assert check("nope", skills=full) == Refusal(
        "not_found", "device 'lamp' has no skill 'nope' (skills: echo)"
    )
    assert check(skills=full) == Refusal(
        "busy",
        "skill 'echo' is at capacity (1 running, 1 queued); retry later or elsewhere",
        skill_full=True,
    )


def test_unknown_skills_are_listed_sorted_or_none() -> None:
    assert check("nope") == Refusal(
        "not_found", "device 'lamp' has no skill 'nope' (skills: add, echo)"
    )
    assert check("nope", skills={}) == Refusal(
        "not_found", "device 'lamp' has no skill 'nope' (skills: none)"
    )


def test_ping_is_answered_unless_a_skill_has_its_name() -> None:
    assert check(PING_SKILL, hop="2") == Admitted(2, ping=True)
    assert check(PING_SKILL, skills={}) == Admitted(0, ping=True)
    assert check(PING_SKILL, skills={PING_SKILL: FakeLoad()}) == Admitted(0, ping=False)


@pytest.mark.parametrize(
    ("load", "full"),
    [
        (FakeLoad(0, 0, 1, 0), False),
        (FakeLoad(1, 0, 1, 0), True),
        (FakeLoad(1, 0, 1, 1), False),
        (FakeLoad(1, 1, 1, 1), True),
        (FakeLoad(0, 2, 1, 1), True),  # queued at admission before a slot is taken
        (FakeLoad(3, 60, 4, 64), False),
    ],
)
def test_capacity_is_running_plus_queued_against_both_limits(load: FakeLoad, full: bool) -> None:
    assert is_full(load) is full
    assert isinstance(check(skills={"echo": load}), Refusal) is full


@skill
def echo(text: str) -> str:
    return text


@skill
def snapshot(image: bytes, threshold: int = 0) -> int:
    return len(image)


def test_input_is_parsed_or_refused_with_a_summary() -> None:
    s = build_skill(echo)
    value = parse_input(s, b'{"text": "hi"}', JSON_CONTENT_TYPE, None)
    assert isinstance(value, BaseModel)
    assert value.model_dump() == {"text": "hi"}
    refusal = parse_input(s, b'{"text": 1}', None, None)
    assert isinstance(refusal, Refusal)
    assert refusal.code == "bad_request"
    assert refusal.message.startswith("invalid input: text: ")
    bad_json = parse_input(s, b"not json", None, None)
    assert isinstance(bad_json, Refusal)
    assert bad_json.message.startswith("invalid input: (body): ")
    many = parse_input(s, b'{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}', None, None)
    assert isinstance(many, Refusal)
    assert many.message.count(";") == 5
    assert many.message.endswith("and 3 more")


def test_binary_input_is_parsed_or_refused() -> None:
    s = build_skill(snapshot)
    value = parse_input(s, b"\x00\x01", BINARY_CONTENT_TYPE, '{"threshold": 3}')
    assert isinstance(value, BaseModel)
    assert value.model_dump() == {"image": b"\x00\x01", "threshold": 3}
    assert parse_input(s, b"\x00", BINARY_CONTENT_TYPE, "[1]") == Refusal(
        "bad_request", "the 'input' user property must hold a JSON object"
    )
    bad = parse_input(s, b"\x00", BINARY_CONTENT_TYPE, '{"threshold": "high"}')
    assert isinstance(bad, Refusal)
    assert bad.message.startswith("invalid input: threshold: ")
    assert parse_input(build_skill(echo), b"\x00", BINARY_CONTENT_TYPE, None) == Refusal(
        "bad_request", "skill 'echo' takes no binary input; send JSON"
    )


def test_replies_carry_the_correlation_json_and_only_the_trace() -> None:
    """The device answers with rpc.reply_props: the properties it always built itself."""
    request = Props(
        response_topic="r/x",
        correlation_data=b"c1",
        message_expiry=5,
        content_type=BINARY_CONTENT_TYPE,
        user_properties=(("idem", "k"), (TRACE_PROPERTY, "t1"), ("hop", "2")),
    )
    assert reply_props(request) == Props(
        correlation_data=b"c1",
        content_type=JSON_CONTENT_TYPE,
        user_properties=((TRACE_PROPERTY, "t1"),),
    )
    assert reply_props(Props(correlation_data=None)) == Props(content_type=JSON_CONTENT_TYPE)
