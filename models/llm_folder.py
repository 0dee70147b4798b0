"""Where a language model comes from: ``zoo:NAME`` or an onnxruntime-genai folder.

A folder is usable when ``genai_config.json`` and the files it names are there; anything else is a
:class:`ModelError` naming what is missing, before the runtime sees it (its own errors name a
C++ source line, not the file). The zoo's tiny model is committed in ``models/zoo/tinyllm/``;
larger ones (``zoo:smollm2``) are built into a cache by their recipe, whose module's
``resolve_folder()`` returns the folder or raises a ConfigError naming the command that builds it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .backend import ModelError


@dataclass(frozen=True, slots=True)
class ResolvedLlm:
    folder: Path
    name: str
    version: str


def _zoo_dir() -> Path:
    return Path(__file__).resolve().parent / "zoo"


def _card(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "card.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _zoo_folder(name: str) -> Path:
    """A zoo LLM's folder: committed in ``models/zoo/NAME/`` (tinyllm), or built into a cache
    by its recipe (smollm2), whose module's ``resolve_folder()`` says where or how to build."""
    base = _zoo_dir() / name
    if (base / "genai_config.json").is_file():
        return base
    try:
        module = importlib.import_module(f"edgeagent.models.zoo.{name}")
    except ImportError as exc:
        raise ConfigError(f"no zoo language model {name!r} ({exc})") from exc
    resolve = getattr(module, "resolve_folder", None)
    if resolve is None:
        raise ConfigError(
            f"zoo:{name} is not built: no {base / 'genai_config.json'}; "
            f"build it with: python -m edgeagent.models.zoo train {name}"
        )
    return Path(resolve())


def resolve_llm(spec: str | Path) -> ResolvedLlm:
    """``zoo:NAME`` or a folder holding ``genai_config.json`` -> the folder, name and version."""
    text = str(spec)
    folder = _zoo_folder(text[4:]) if text.startswith("zoo:") else Path(text)
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such folder (an onnxruntime-genai model is a folder)")
    if not (folder / "genai_config.json").is_file():
        raise ModelError(
            f"{folder}: not an onnxruntime-genai model folder: genai_config.json is missing"
        )
    card = _card(folder)
    if not card and text.startswith("zoo:"):  # a built zoo model: its card stays in the zoo
        card = _card(_zoo_dir() / text[4:])
    model = card.get("model")
    name = card.get("name") or (model.get("name") if isinstance(model, dict) else None)
    return ResolvedLlm(folder, str(name or folder.name), str(card.get("version", "1")))


def check_folder(folder: Path) -> dict[str, Any]:
    """genai_config.json, after checking that the files it names are there."""
    try:
        config = json.loads((folder / "genai_config.json").read_text())
        decoder = config["model"]["decoder"]
        filename = decoder["filename"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"{folder / 'genai_config.json'}: unreadable or incomplete ({exc})"
        ) from exc
    missing = [f for f in (filename, "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"{folder}: missing {', '.join(missing)} (named by genai_config.json)")
    return dict(config)
