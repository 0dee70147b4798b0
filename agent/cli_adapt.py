"""``edgeagent models adapt``: train a small LoRA adapter for one household (issue 15).

A thin click layer over :func:`edgeagent.models.lora.adapt` (docs/adapters.md). Errors are one
line, ``error: …``, exit status 1, as in the other ``models`` commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .errors import EdgeAgentError

if TYPE_CHECKING:
    from .models.lora import Score


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _score(s: Score) -> dict[str, Any]:
    return {"n": s.n, "intent_accuracy": round(s.intent, 4), "exact_match": round(s.exact, 4)}


def _line(label: str, before: Score, after: Score) -> str:
    return (
        f"{label} ({before.n}): base intent {before.intent:.1%}, exact {before.exact:.1%}  ->  "
        f"with adapter intent {after.intent:.1%}, exact {after.exact:.1%}"
    )


@click.command("adapt")
@click.argument("base")
@click.option(
    "--examples",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The household's phrases: YAML or JSONL of {text, intent, kind?, room?} (an LLM: "
    "{text, steps}).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The adapter file to write (.onnx_adapter).",
)
@click.option("--rank", default=None, type=click.IntRange(1, 64), help="LoRA rank [4; an LLM: 8].")
@click.option(
    "--epochs", default=None, type=click.IntRange(1, 1000), help="Epochs [40; an LLM: 10]."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Training seed.")
@click.option(
    "--held-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Phrases not trained on (same format): scored with the base and base + adapter.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def adapt(
    base: str,
    examples: Path,
    output: Path,
    rank: int | None,
    epochs: int | None,
    seed: int,
    held_out: Path | None,
    as_json: bool,
) -> None:
    """Train a LoRA adapter for BASE (zoo:intent, or a LoRA base file) on a household's own
    phrasing; prints its size, the training time and the accuracy with and without it.
    For a language model (zoo:tinyllm) the examples are requests with their plans."""
    from .cli_adapt_llm import adapt_llm_command, is_llm

    if is_llm(base):
        adapt_llm_command(base, examples, output, rank, epochs, seed, held_out, as_json)
        return
    rank, epochs = rank or 4, epochs or 40
    try:
        from .models.lora import adapt as train
        from .models.lora import score
        from .models.lora_adapter import load_adapted
        from .models.lora_examples import load_examples

        train_set = load_examples(examples)
        held = load_examples(held_out) if held_out is not None else None
        result = train(base, train_set, output, rank=rank, epochs=epochs, seed=seed)
        held_scores = None
        if held is not None:
            held_scores = (
                score(load_adapted(result.base_path, None).run, held),
                score(load_adapted(result.base_path, output).run, held),
            )
    except EdgeAgentError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    m = result.meta
    if as_json:
        doc: dict[str, Any] = {
            "adapter": str(result.path),
            "bytes": result.bytes,
            "base": str(result.base_path),
            "base_bytes": result.base_bytes,
            "seconds": round(result.seconds, 3),
            "meta": m.model_dump(mode="json"),
            "examples": {"base": _score(result.before), "adapted": _score(result.after)},
        }
        if held_scores is not None:
            doc["held_out"] = {"base": _score(held_scores[0]), "adapted": _score(held_scores[1])}
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"wrote {result.path}: {result.bytes} bytes ({result.bytes / result.base_bytes:.1%} of "
        f"the base {result.base_path.name}, {result.base_bytes} bytes)"
    )
    click.echo(
        f"trained in {result.seconds:.1f} s: rank {m.rank} on {', '.join(m.targets)}; "
        f"{m.examples} examples + {m.replay} replayed, {m.epochs} epochs, seed {m.seed}"
    )
    click.echo(_line("examples", result.before, result.after))
    if held_scores is not None:
        click.echo(_line("held-out", *held_scores))
