"""``edgeagent models optimize`` for a language model: the click side of
:mod:`edgeagent.models.llm_optimize` (``cli_models.optimize_cmd`` dispatches here)."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_models import _fail, _profile, _progress
from .errors import EdgeAgentError


def is_llm_spec(model: str) -> bool:
    """A zoo language model, a transformers checkpoint folder, or a genai folder (refused by the
    optimizer with a message saying it needs the checkpoint)."""
    from .models.llm_bench import is_llm
    from .models.llm_source import is_llm_source

    return is_llm_source(model) or is_llm(model)


def optimize_llm_cmd(
    model: str,
    device: str,
    budget: float | None,
    min_quality: float | None,
    variants: str | None,
    out: Path | None,
    as_json: bool,
    quiet: bool,
    bad: object,
) -> None:
    """``models optimize`` of a language model (:mod:`edgeagent.models.llm_optimize`)."""
    from .models.llm_optimize import DEFAULT_BUDGET, optimize_llm
    from .models.llm_optimize_md import format_llm_card

    if bad:
        _fail("--calibration, --eval and --metric are for model files, not language models")
    try:
        profile = _profile(device)
        name = model.removeprefix("zoo:").rstrip("/").split("/")[-1] or "model"
        target = out or Path(f"{name}-{profile.name}")
        card = optimize_llm(
            model,
            profile,
            target,
            budget=DEFAULT_BUDGET if budget is None else budget,
            floor=min_quality,
            variants=None if variants is None else [v.strip() for v in variants.split(",")],
            device_arg=device,
            progress=_progress(not quiet),
        )
    except EdgeAgentError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(card.model_dump_json(indent=2))
    else:
        for line in format_llm_card(card, str(target)):
            click.echo(line)
    if card.choice.variant is None:
        _fail(card.choice.reason)
