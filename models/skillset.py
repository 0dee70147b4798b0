"""Skills backed by a model: load it once per agent, run it in the agent's worker threads.

::

    class DigitReader(ModelSkillSet):
        def __init__(self, model: str = "zoo:digits", profile: str | None = None) -> None:
            super().__init__(model, profile)

        @skill(side_effect="read")
        def read_digit(self, pixels: list[float]) -> Reading:   # a plain def: runs in a thread
            logits = self.session.run({"pixels": ...})["logits"]

``model`` is a file (``.onnx``/``.tflite``), a folder the optimizer wrote (its ``card.json``
names the chosen file), or ``zoo:NAME``: the zoo's committed model, or the optimizer's choice for
``profile`` when ``models/zoo/NAME/<profile>/`` holds one. The session's thread count comes from
the device profile. The skill's manifest and health name the model and the version the card
gives (``SkillSet.model_info``).

``adapter`` (a path, per device in the agent YAML's skill options) is a LoRA adapter trained by
``edgeagent models adapt``: the skill then runs the model's LoRA base (``zoo:intent`` →
``intent-lora.onnx``, whatever the profile) with the adapter active, refuses an adapter trained
for another base, and reports version ``1+adapter:<file stem>`` (docs/adapters.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..skills import SkillSet
from .backend import ModelError, RuntimeSettings, Session


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path
    name: str
    version: str
    card: dict[str, object]
    variant: str = "fp32"
    """The optimizer's variant (fp32 for a model used as trained)."""


def _variant(card: dict[str, object]) -> str:
    choice = card.get("choice")
    variant = choice.get("variant") if isinstance(choice, dict) else None
    return str(variant) if variant else "fp32"


def _zoo_dir() -> Path:
    return Path(__file__).resolve().parent / "zoo"


def _read_card(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read model card: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a model card is a JSON object")
    return data


def resolve_model(spec: str, profile: str | None = None) -> ResolvedModel:
    """Turn ``zoo:NAME``, an optimizer output folder or a model file into a loadable file."""
    if spec.startswith("zoo:"):
        name = spec[4:]
        base = _zoo_dir() / name
        if not (base / "card.json").is_file():
            known = sorted(p.name for p in _zoo_dir().iterdir() if (p / "card.json").is_file())
            raise ConfigError(f"no zoo model {name!r} (zoo models: {', '.join(known)})")
        zoo_card = _read_card(base / "card.json")
        version = str(zoo_card.get("version", "1"))
        if profile and (base / profile / "card.json").is_file():
            opt_card = _read_card(base / profile / "card.json")
            chosen = opt_card.get("chosen_file")
            if isinstance(chosen, str):
                return ResolvedModel(
                    base / profile / chosen, name, version, opt_card, _variant(opt_card)
                )
        return ResolvedModel(base / f"{name}.onnx", name, version, zoo_card)
    path = Path(spec)
    if path.is_dir():
        card = _read_card(path / "card.json")
        chosen = card.get("chosen_file")
        if not isinstance(chosen, str):
            raise ModelError(f"{path / 'card.json'}: the optimizer chose no model")
        model = card.get("model")
        name = str(model.get("name", path.name)) if isinstance(model, dict) else path.name
        return ResolvedModel(path / chosen, name, "1", card, _variant(card))
    if not path.is_file():
        raise ConfigError(f"model {spec!r} is neither a file, an optimizer folder nor zoo:NAME")
    return ResolvedModel(path, path.stem, "1", {})


class ModelSkillSet(SkillSet):
    """A :class:`SkillSet` holding one loaded model (``self.session``)."""

    def __init__(self, model: str, profile: str | None = None, adapter: str | None = None) -> None:
        from . import load_model, settings_for

        self.resolved = resolve_model(model, profile)
        if adapter is not None:
            from .lora_adapter import resolve_base

            base = resolve_base(model)
            self.resolved = ResolvedModel(
                base, self.resolved.name, self.resolved.version, self.resolved.card,
                f"adapter:{Path(adapter).name.removesuffix('.onnx_adapter')}",
            )  # fmt: skip
        settings = RuntimeSettings()
        if profile is not None:
            from ..devices import load_profile

            settings = settings_for(
                load_profile(profile), model_bytes=self.resolved.path.stat().st_size
            )
        if adapter is None:
            self.session: Session = load_model(self.resolved.path, settings)
        else:
            from .lora_adapter import load_adapted

            self.session = load_adapted(self.resolved.path, adapter, settings)
        self.session.warmup()

    def model_info(self, skill_name: str) -> tuple[str, str] | None:
        """``("digits", "1+litert-structured-50")``: zoo version plus the optimizer's variant
        (or ``"1+adapter:household"`` with an adapter)."""
        r = self.resolved
        return r.name, r.version if r.variant == "fp32" else f"{r.version}+{r.variant}"
