"""The LLM session on the real onnxruntime-genai runtime with the zoo's tiny model, and the pure
rules around it (stop sequences, event batching, request bounds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeagent.errors import ConfigError
from edgeagent.models import ModelError
from edgeagent.models.llm_backend import LlmSession, LlmSettings, load_llm, resolve_llm
from edgeagent.models.llm_text import (
    LlmBusy,
    LlmInputError,
    PieceBatcher,
    StopScanner,
    check_messages,
    check_schema,
    decode_rate,
)

MODEL = os.environ.get("EDGEAGENT_TEST_LLM", "zoo:tinyllm")
ASK = [{"role": "user", "content": "turn off the kitchen lights"}]


@pytest.fixture(scope="module")
def llm() -> LlmSession:
    return load_llm(MODEL, LlmSettings(threads=1, max_tokens_limit=128, busy_wait_s=0.0))


# The pure rules ---------------------------------------------------------------------------------


def scan(stops: tuple[str, ...], pieces: list[str]) -> tuple[list[str], StopScanner]:
    s = StopScanner(stops)
    shown = [s.feed(p) for p in pieces]
    if not s.stopped:
        shown.append(s.flush())
    return shown, s


def test_stop_sequence_split_across_pieces_is_cut_and_never_shown() -> None:
    shown, s = scan(("END",), ["abc E", "N", "Dxyz"])
    assert s.stopped
    assert s.text == "abc "
    assert shown == ["abc ", "", ""]  # "E", then "EN", were held back: they might start END


def test_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    shown, s = scan(("\n\n",), ["one\n", "two", "\n"])
    assert not s.stopped
    assert shown == ["one", "\ntwo", "", "\n"]
    assert "".join(shown) == s.text == "one\ntwo\n"


def test_earliest_of_several_stop_sequences_wins() -> None:
    _, s = scan(("cd", "b"), ["abcd"])
    assert s.text == "a"


def test_no_stop_sequences_shows_everything_at_once() -> None:
    shown, s = scan((), ["a", "b"])
    assert shown == ["a", "b", ""]
    assert s.text == "ab"


def test_batcher_bounds_the_event_rate_and_loses_no_text() -> None:
    b = PieceBatcher(0.1)
    times = [5.0 + i * 0.01 for i in range(100)]  # 100 pieces in one second
    out = [b.add(f"{i},", t) for i, t in enumerate(times)]
    assert out[0] == "0,"  # the first piece at once
    assert out[1:10] == [""] * 9
    out.append(b.flush())
    events = [o for o in out if o]
    assert len(events) <= 12  # the first, at most one per 100 ms after it, and the flush
    assert b.events == len(events)
    assert "".join(events) == "".join(f"{i}," for i in range(100))


def test_schemas_ask_for_compact_json_unless_they_say_otherwise() -> None:
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}}
    compact = json.loads(check_schema(schema) or "")
    assert compact == {**schema, "x-guidance": {"whitespace_flexible": False}}
    own = json.dumps({**schema, "x-guidance": {"whitespace_flexible": True}})
    assert check_schema(own) == own
    assert check_schema(None) is None


def test_decode_rate_excludes_the_first_token() -> None:
    assert decode_rate(11, first_s=1.0, end_s=2.0) == pytest.approx(10.0)
    assert decode_rate(1, first_s=1.0, end_s=2.0) is None
    assert decode_rate(5, first_s=None, end_s=2.0) is None


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "1..64 messages"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\].role"),
        ([{"role": "user", "content": 3}], r"messages\[0\].content"),
        ([{"role": "user", "content": "x", "name": "y"}], r"messages\[0\]"),
        ([{"role": "user", "content": "x" * 50}], "50 characters, at most 40"),
        ("just a string", "list"),
    ],
)
def test_bad_messages_name_what_is_wrong(messages: object, match: str) -> None:
    with pytest.raises(LlmInputError, match=match):
        check_messages(messages, max_chars=40)  # type: ignore[arg-type]


# The runtime ------------------------------------------------------------------------------------


def test_greedy_generation_is_deterministic_across_sessions(llm: LlmSession) -> None:
    a = llm.generate(ASK, max_tokens=48)
    b = llm.generate(ASK, max_tokens=48)
    c = load_llm(MODEL, LlmSettings(threads=1)).generate(ASK, max_tokens=48)
    assert a.text
    assert a.text == b.text == c.text
    assert a.tokens == b.tokens == c.tokens
    assert a.prompt_tokens == llm.count_tokens(llm.chat_prompt(ASK))
    assert a.first_token_ms is not None
    assert a.first_token_ms > 0
    assert a.total_ms >= a.first_token_ms


def test_sampling_is_deterministic_for_a_seed_and_varies_with_it(llm: LlmSession) -> None:
    def sample(seed: int) -> str:
        return llm.generate(ASK, max_tokens=24, temperature=1.5, top_k=200, seed=seed).text

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(6)}) >= 2


def test_max_tokens_cuts_the_greedy_text(llm: LlmSession) -> None:
    full = llm.generate(ASK, max_tokens=64)
    assert full.tokens > 4, full
    short = llm.generate(ASK, max_tokens=3)
    assert (short.tokens, short.finish_reason) == (3, "length")
    assert full.text.startswith(short.text)
    assert len(short.text) < len(full.text)


def test_stop_sequence_ends_the_text_before_it(llm: LlmSession) -> None:
    full = llm.generate(ASK, max_tokens=64)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert len(stop) == 3, full.text
    cut = llm.generate(ASK, max_tokens=64, stop=["never-in-the-text-@@", stop])
    assert cut.finish_reason == "stop_sequence"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.tokens < full.tokens


def test_stream_pieces_join_to_the_generated_text(llm: LlmSession) -> None:
    whole = llm.generate(ASK, max_tokens=40, stop="}")
    stream = llm.stream(ASK, max_tokens=40, stop="}")
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    assert stream.generation is not None
    assert stream.generation.text == whole.text
    assert stream.generation.finish_reason == whole.finish_reason


def test_json_schema_guidance_yields_valid_json(llm: LlmSession) -> None:
    schema = {
        "type": "object",
        "properties": {
            "room": {"enum": ["kitchen", "hall", "bedroom"]},
            "on": {"type": "boolean"},
        },
        "required": ["room", "on"],
        "additionalProperties": False,
    }
    for seed in range(3):
        g = llm.generate(ASK, max_tokens=64, temperature=1.0, seed=seed, json_schema=schema)
        value = json.loads(g.text)
        assert set(value) == {"room", "on"}, g.text
        assert value["room"] in ("kitchen", "hall", "bedroom")
        assert isinstance(value["on"], bool)
        assert g.finish_reason == "stop"


def test_a_busy_session_refuses_a_second_caller_then_serves_again(llm: LlmSession) -> None:
    stream = llm.stream(ASK, max_tokens=32)
    next(stream)  # the first generation now holds the session
    with pytest.raises(LlmBusy, match="one generation at a time"):
        llm.generate(ASK, max_tokens=4)
    stream.close()
    assert stream.generation is None
    assert llm.generate(ASK, max_tokens=4).tokens >= 1
    stats = llm.statistics()
    assert stats.generations >= 1
    assert stats.tokens >= 1
    assert stats.first_token_p50_ms is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, "max_tokens must be within 1..128"),
        ({"max_tokens": 129}, "max_tokens must be within 1..128"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"seed": -3}, "seed"),
        ({"stop": [""]}, r"stop\[0\]"),
        ({"stop": ["x"] * 9}, "at most 8"),
        ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
        ({"json_schema": "[1]"}, "JSON object"),
    ],
)
def test_bad_arguments_are_typed_errors(
    llm: LlmSession, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(LlmInputError, match=match):
        llm.generate(ASK, **kwargs)  # type: ignore[arg-type]


def test_a_prompt_over_the_token_bound_is_refused() -> None:
    small = load_llm(MODEL, LlmSettings(max_prompt_tokens=8))
    with pytest.raises(LlmInputError, match=r"prompt: \d+ tokens, at most 8"):
        small.generate("the kitchen lights " * 10, max_tokens=4)
    with pytest.raises(LlmInputError, match="characters, at most"):
        small.generate("x" * 40_000, max_tokens=4)


def test_bad_folders_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"genai_config\.json is missing"):
        load_llm(tmp_path)
    with pytest.raises(ModelError, match="no such folder"):
        load_llm(tmp_path / "nowhere")
    (tmp_path / "genai_config.json").write_text(
        json.dumps({"model": {"decoder": {"filename": "model.onnx"}}})
    )
    with pytest.raises(ModelError, match=r"missing model.onnx, tokenizer.json"):
        load_llm(tmp_path)
    (tmp_path / "genai_config.json").write_text("{")
    with pytest.raises(ModelError, match="unreadable or incomplete"):
        load_llm(tmp_path)
    with pytest.raises(ConfigError, match="no zoo language model 'no-such-model'"):
        resolve_llm("zoo:no-such-model")
