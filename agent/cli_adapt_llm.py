"""``edgeagent models adapt zoo:tinyllm``: the LLM half of ``models adapt`` (issue 15).

:mod:`.cli_adapt` dispatches here when the base is a language model (a zoo LLM, or an
onnxruntime-genai folder); the examples are then requests with their plans
(:mod:`edgeagent.models.llm_plan_examples`) and the score is exact-plan accuracy. Errors are one
line, ``error: …``, exit status 1, like the other ``models`` commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from .errors import EdgeAgentError


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def is_llm(base: str) -> bool:
    """A zoo LLM (``zoo:tinyllm``) or a folder with a ``genai_config.json``."""
    from .models.zoo import LLM_RECIPE_NAMES

    if base.startswith("zoo:"):
        return base[4:] in LLM_RECIPE_NAMES
    return (Path(base) / "genai_config.json").is_file()


def adapt_llm_command(
    base: str,
    examples: Path,
    output: Path,
    rank: int | None,
    epochs: int | None,
    seed: int,
    held_out: Path | None,
    as_json: bool,
) -> None:
    try:
        from .models.llm_adapt import DEFAULT_EPOCHS, DEFAULT_RANK, adapt_llm
        from .models.llm_plan_examples import load_plan_examples

        train_set = load_plan_examples(examples)
        held = load_plan_examples(held_out) if held_out is not None else ()
        r = adapt_llm(
            base,
            train_set,
            output,
            rank=rank or DEFAULT_RANK,
            epochs=epochs or DEFAULT_EPOCHS,
            seed=seed,
            held_out=held,
        )
    except EdgeAgentError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    m = r.meta
    if as_json:
        doc: dict[str, Any] = {
            "adapter": str(r.path),
            "bytes": r.bytes,
            "base": m.base_file,
            "base_bytes": r.base_bytes,
            "seconds": round(r.seconds, 3),
            "steps": r.steps,
            "meta": m.model_dump(mode="json"),
            "examples": {"n": m.examples, "base": r.before, "adapted": r.after},
        }
        if r.held_out is not None:
            n, before, after = r.held_out
            doc["held_out"] = {"n": n, "base": before, "adapted": after}
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"wrote {r.path}: {r.bytes} bytes ({r.bytes / r.base_bytes:.1%} of the base "
        f"{m.base_file}/model.onnx, {r.base_bytes} bytes)"
    )
    click.echo(
        f"trained in {r.seconds:.1f} s ({r.steps} steps): rank {m.rank} on "
        f"{', '.join(m.targets)}; {m.examples} examples + {m.replay} replayed, {m.epochs} "
        f"epochs, seed {m.seed}"
    )
    click.echo(
        f"examples ({m.examples}): base exact plan {r.before:.1%}  ->  with adapter {r.after:.1%}"
    )
    if r.held_out is not None:
        n, before, after = r.held_out
        click.echo(f"held-out ({n}): base exact plan {before:.1%}  ->  with adapter {after:.1%}")
