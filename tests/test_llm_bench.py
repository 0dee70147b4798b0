"""``edgeagent models bench`` on a language model: measured in a worker process, estimated for
the device, printed for people or as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeagent.cli import main
from edgeagent.models.llm_bench import is_llm, precision_of
from edgeagent.models.llm_folder import resolve_llm

MODEL = os.environ.get("EDGEAGENT_TEST_LLM", "zoo:tinyllm")


def test_bench_measures_a_language_model_and_estimates_it_for_the_device() -> None:
    assert is_llm(MODEL)
    result = CliRunner().invoke(
        main, ["models", "bench", MODEL, "--device", "pi5", "--runs", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    folder = resolve_llm(MODEL).folder
    assert report["folder"] == str(folder)
    assert report["precision"] == precision_of(folder)
    assert report["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert report["runs"] == 2
    assert report["tokens_per_s_min"] <= report["tokens_per_s_p50"] <= report["tokens_per_s_max"]
    assert report["first_token_p50_ms"] > 0
    assert report["peak_memory_mb"] > 0
    est = report["estimate"]
    assert est["profile"] == "pi5"
    # pi5 is slower than this machine by its speed factor: the estimate says so.
    assert est["tokens_per_s"]["mid"] < report["tokens_per_s_p50"]
    assert est["tokens_per_s"]["low"] < est["tokens_per_s"]["mid"] < est["tokens_per_s"]["high"]


def test_bench_of_a_language_model_in_words_and_its_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["models", "bench", MODEL, "--device", "pi4", "--runs", "1"])
    assert text.exit_code == 0, text.output
    assert "tokens/s p50" in text.output
    assert "est. pi4" in text.output
    bad = runner.invoke(main, ["models", "bench", MODEL, "--device", "pi4", "--record", "r.json"])
    assert bad.exit_code == 1
    assert "not language models" in bad.output
    monkeypatch.setenv("EDGEAGENT_CACHE", str(tmp_path))  # an empty cache: smollm2 not built
    missing = runner.invoke(main, ["models", "bench", "zoo:smollm2", "--device", "pi4"])
    assert missing.exit_code == 1
    assert "python -m edgeagent.models.zoo train smollm2" in missing.output
