"""What the zoo's language-model recipes share: the recipe type, building an onnxruntime-genai
folder from a transformers folder, the files' hashes, and the card.

A language model is not one ONNX file with a fixed signature (:class:`._base.Recipe`) but a
*genai folder*: ``genai_config.json``, ``model.onnx``, the tokenizer files and the chat template,
which ``onnxruntime_genai.Model(folder)`` loads. :class:`LlmRecipe` builds one from a seed into a
folder and writes its card (``card.json`` for machines, ``card.md`` for people) next to the
recipe's module, in ``models/zoo/<name>/``. A small model's folder is that same directory
(committed, shipped in the wheel: ``tinyllm``); a large one's lives in the cache
(:func:`llm_cache_dir`) and only its card is committed (``smollm2``).

The builder is run as a child process (``python -m onnxruntime_genai.models.builder``): it is a
command-line tool, prints progress bars, and keeps nothing we need in memory. Every figure a card
gives about speed and memory is measured in another child (:mod:`.llm_measure`), so the peak RSS
is the model's and not the training's.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, EdgeAgentError
from ..llm_estimate import Precision, estimate, measured_from_card
from ._base import DEFAULT_SEED, ZOO_DIR, require

GENAI_EXTRA_HINT = "pip install 'edgeagent[llm]'"
BUILD_TIMEOUT_S = 900.0
"""Longest a model-builder run may take (SmolLM2-135M takes about 10 s here)."""
GENAI_FILES = ("genai_config.json", "model.onnx", "tokenizer.json", "tokenizer_config.json")
"""What a genai folder must hold for the recipes' models (the chat template is in the config)."""


class LlmBuildError(EdgeAgentError):
    """Building a language model failed: the message says which step and why."""


@dataclass(frozen=True, slots=True)
class LlmBuildResult:
    """What :meth:`LlmRecipe.build` wrote and measured."""

    name: str
    seed: int
    model_dir: Path
    card_json: Path
    card_md: Path
    metrics: dict[str, float]
    seconds: float

    @property
    def artifacts(self) -> dict[str, Path]:
        files = {p.name: p for p in sorted(self.model_dir.iterdir()) if p.is_file()}
        return {**files, "card.json": self.card_json, "card.md": self.card_md}


@dataclass(frozen=True, slots=True)
class LlmRecipe:
    """One zoo language model: how to build its genai folder and card."""

    name: str
    description: str
    version: str
    licence: str
    sources: tuple[str, ...]
    build_fn: Callable[[int, Path, Path], LlmBuildResult] = field(repr=False)
    """``build_fn(seed, model_dir, card_dir)``."""
    committed: bool
    """True when the model files themselves are committed (next to the card)."""

    @property
    def card_dir(self) -> Path:
        """``models/zoo/<name>/``: the committed card (and, for small models, the files)."""
        return ZOO_DIR / self.name

    @property
    def model_dir(self) -> Path:
        """Where the built genai folder lives by default."""
        return self.card_dir if self.committed else llm_cache_dir() / self.name

    def card(self) -> dict[str, Any]:
        card: dict[str, Any] = json.loads((self.card_dir / "card.json").read_text())
        return card

    def build(
        self, seed: int = DEFAULT_SEED, out_dir: Path | None = None, card_dir: Path | None = None
    ) -> LlmBuildResult:
        """Build from ``seed`` into ``out_dir`` (default :attr:`model_dir`) and write the card
        into ``card_dir`` (default: ``out_dir`` when given, else :attr:`card_dir`)."""
        model_dir = Path(out_dir) if out_dir is not None else self.model_dir
        cards = (
            Path(card_dir)
            if card_dir is not None
            else (model_dir if out_dir is not None else self.card_dir)
        )
        model_dir.mkdir(parents=True, exist_ok=True)
        cards.mkdir(parents=True, exist_ok=True)
        return self.build_fn(seed, model_dir, cards)


def llm_cache_dir() -> Path:
    """``llm/`` in the deploy wheelhouse's cache root: ``$EDGEAGENT_CACHE``, else
    ``$XDG_CACHE_HOME/edgeagent`` or ``~/.cache/edgeagent``."""
    from ...deploy.wheelhouse import default_cache

    return default_cache() / "llm"


def resolve_model(recipe: LlmRecipe) -> Path:
    """The recipe's built genai folder, or :class:`ConfigError` naming the command to build it."""
    folder = recipe.model_dir
    missing = [f for f in GENAI_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"zoo:{recipe.name} is not built ({folder} has no {', '.join(missing)}); build it "
            f"with: python -m edgeagent.models.zoo train {recipe.name}"
        )
    return folder


# --- building a genai folder ------------------------------------------------------------------


def genai_build(hf_dir: Path, out_dir: Path, precision: Precision, *, inline: bool = True) -> None:
    """Run the onnxruntime-genai model builder (CPU) on a transformers folder; then put the chat
    template inside ``tokenizer_config.json`` and, with ``inline``, the weights inside
    ``model.onnx`` (no ``model.onnx.data``: one file fewer to ship for a small model)."""
    require_genai()
    with tempfile.TemporaryDirectory(prefix="edgeagent-genai-") as tmp:
        built = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            *("-i", str(hf_dir), "-o", str(built), "-p", precision, "-e", "cpu"),
            *("-c", str(Path(tmp) / "cache")),
        ]
        try:
            run = subprocess.run(
                cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LlmBuildError(
                f"the model builder took more than {BUILD_TIMEOUT_S:.0f} s"
            ) from exc
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
            raise LlmBuildError(
                f"the model builder failed on {hf_dir} (exit {run.returncode}): " + " | ".join(tail)
            )
        if inline:
            inline_weights(built)
        inline_chat_template(built)
        for name in sorted(p.name for p in built.iterdir()):
            shutil.copy2(built / name, out_dir / name)


def require_genai() -> None:
    try:
        require("onnxruntime_genai")
    except ImportError as exc:
        raise LlmBuildError(
            f"building or measuring a language model needs onnxruntime-genai: {GENAI_EXTRA_HINT}"
        ) from exc


def inline_weights(folder: Path) -> None:
    """Move ``model.onnx.data`` into ``model.onnx`` (only for models under protobuf's 2 GB)."""
    data = folder / "model.onnx.data"
    if not data.exists():
        return
    onnx = require("onnx")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=True)
    data.unlink()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=False)


def inline_chat_template(folder: Path) -> None:
    """Put ``chat_template.jinja`` into ``tokenizer_config.json`` (where onnxruntime-genai also
    looks), so the folder is the four :data:`GENAI_FILES`."""
    jinja = folder / "chat_template.jinja"
    if not jinja.exists():
        return
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = jinja.read_text()
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    jinja.unlink()


# --- files and card ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(folder: Path) -> list[dict[str, Any]]:
    """Every file of a genai folder except the card: name, bytes, sha256 (sorted by name)."""
    return [
        {"file": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in ("card.json", "card.md")
    ]


def machine() -> str:
    """This machine, for the card's "measured on"."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


@dataclass(frozen=True, slots=True)
class LlmCard:
    """What a card says besides the files and the measurements."""

    parameters: int
    architecture: Mapping[str, Any]
    precision: Precision
    training: Mapping[str, Any]
    metrics: Mapping[str, float]
    notes: Sequence[str] = ()


def write_llm_card(
    recipe: LlmRecipe,
    model_dir: Path,
    card_dir: Path,
    *,
    seed: int,
    info: LlmCard,
    measured: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Write ``card.json`` and ``card.md``: files (size, sha256), parameters, the measurements
    here (:mod:`.llm_measure`), the estimate per built-in device profile, licence, sources."""
    from ...devices import list_profiles

    files = model_files(model_dir)
    size = sum(int(f["bytes"]) for f in files)
    m = measured_from_card({"measured": measured, "size_bytes": size, "precision": info.precision})
    estimates = {}
    for profile in list_profiles():
        e = estimate(m, profile)
        estimates[profile.name] = {
            "runs": e.runs,
            "reason": e.reason,
            "memory_mb": round(e.memory_mb, 1),
            "tokens_per_s": [
                round(x, 1) for x in (e.tokens_per_s.low, e.tokens_per_s.mid, e.tokens_per_s.high)
            ],
            "first_token_ms": [
                round(x, 1)
                for x in (e.first_token_ms.low, e.first_token_ms.mid, e.first_token_ms.high)
            ],
            "factor": e.factor,
            "factor_kind": e.factor_kind,
        }
    card: dict[str, Any] = {
        "name": recipe.name,
        "kind": "llm",
        "format": "onnxruntime-genai",
        "version": recipe.version,
        "description": recipe.description,
        "parameters": info.parameters,
        "architecture": dict(info.architecture),
        "precision": info.precision,
        "size_bytes": size,
        "files": files,
        "training": dict(info.training),
        "seed": seed,
        "metrics": {k: round(float(v), 4) for k, v in info.metrics.items()},
        "measured": dict(measured),
        "estimates": estimates,
        "licence": recipe.licence,
        "sources": list(recipe.sources),
        "notes": list(info.notes),
        "reproduce": f"python -m edgeagent.models.zoo train {recipe.name} --seed {seed}",
        "built_with": _versions(),
    }
    json_path = card_dir / "card.json"
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path = card_dir / "card.md"
    from .llm_card_md import card_markdown

    md_path.write_text(card_markdown(card))
    return json_path, md_path


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for module in ("onnxruntime_genai", "onnxruntime", "torch", "transformers", "tokenizers"):
        try:
            out[module] = str(require(module).__version__).split("+")[0]
        except ImportError:
            continue
    return out
