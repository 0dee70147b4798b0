"""The language model in a child process: the same text as in this process, errors that keep
their type across the pipe, early stops, and a child that dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.errors import ConfigError
from edgeagent.models import ModelError
from edgeagent.models.llm_backend import LlmSettings, load_llm
from edgeagent.models.llm_process import LlmProcess
from edgeagent.models.llm_text import LlmBusy, LlmInputError

MODEL = os.environ.get("EDGEAGENT_TEST_LLM", "zoo:tinyllm")
ASK = [{"role": "user", "content": "turn on the hall lamp"}]
LONG = {"type": "array", "items": {"type": "integer"}, "minItems": 400, "maxItems": 400}


@pytest.fixture(scope="module")
def child() -> Iterator[LlmProcess]:
    with LlmProcess(MODEL, LlmSettings(threads=1, max_tokens_limit=400, busy_wait_s=0.0)) as p:
        yield p


def test_the_child_generates_what_this_process_generates(child: LlmProcess) -> None:
    here = load_llm(MODEL, LlmSettings(threads=1))
    assert child.chat_prompt(ASK) == here.chat_prompt(ASK)
    mine, theirs = here.generate(ASK, max_tokens=40), child.generate(ASK, max_tokens=40)
    assert (theirs.text, theirs.tokens, theirs.finish_reason) == (
        mine.text,
        mine.tokens,
        mine.finish_reason,
    )
    sampled = [
        p.generate(ASK, max_tokens=24, temperature=1.2, seed=5, stop=["]"]).text
        for p in (here, child)
    ]
    assert sampled[0] == sampled[1]
    stream = child.stream("numbers:", max_tokens=300, json_schema=LONG)
    pieces = list(stream)
    assert stream.generation is not None
    assert "".join(pieces) == stream.generation.text
    assert stream.generation.tokens == 300
    assert child.statistics().generations >= 3


def test_errors_keep_their_type_across_the_pipe(child: LlmProcess, tmp_path: Path) -> None:
    with pytest.raises(LlmInputError, match=r"messages\[0\]\.role"):
        child.generate([{"role": "robot", "content": "x"}])
    with pytest.raises(LlmInputError, match=r"max_tokens must be within 1\.\.400"):
        child.generate(ASK, max_tokens=401)
    with pytest.raises(LlmInputError, match="json_schema"):
        child.generate(ASK, json_schema="[")
    assert child.generate(ASK, max_tokens=2).tokens <= 2  # still serving after the errors
    with pytest.raises(ModelError, match="genai_config"):
        LlmProcess(tmp_path)
    with pytest.raises(ConfigError, match="no zoo language model"):
        LlmProcess("zoo:no_such_model")


def test_an_early_stop_frees_the_model_and_a_second_caller_is_refused(
    child: LlmProcess,
) -> None:
    before = child.statistics().generations
    stream = child.stream("numbers:", max_tokens=400, json_schema=LONG)
    assert next(stream)
    with pytest.raises(LlmBusy, match="one generation at a time"):
        child.generate(ASK, max_tokens=4)
    stream.close()
    assert stream.generation is None
    again = child.generate("numbers:", max_tokens=50, json_schema=LONG)
    assert again.tokens == 50  # not the tail of the stopped generation
    assert child.statistics().generations == before + 1


def test_a_dead_child_is_a_model_error() -> None:
    with LlmProcess(MODEL) as p:
        assert p.generate(ASK, max_tokens=3).tokens >= 1
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        with pytest.raises(ModelError, match="the model process exited"):
            p.generate(ASK, max_tokens=3)
