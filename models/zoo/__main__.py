"""``python -m edgeagent.models.zoo``: list the recipes, train one, or write its eval/calibration
data as .npz for the optimizer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import DEFAULT_SEED, LLM_RECIPE_NAMES, RECIPES, TrainingUnavailable, llm_recipes
from ._base import save_npz
from .llm_recipe import LlmBuildError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeagent.models.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the recipes, their inputs and committed metrics")
    train = sub.add_parser("train", help="train a recipe and write its ONNX file and model card")
    train.add_argument("name", choices=sorted([*RECIPES, *LLM_RECIPE_NAMES]))
    train.add_argument("--seed", type=int, default=DEFAULT_SEED)
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: models/zoo/NAME/; a large language model: the cache)",
    )
    data = sub.add_parser("data", help="write eval.npz and calibration.npz for a recipe")
    data.add_argument("name", choices=sorted(RECIPES))
    data.add_argument("--seed", type=int, default=DEFAULT_SEED)
    data.add_argument("--samples", type=int, default=256, help="calibration samples")
    data.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            for name, recipe in sorted(RECIPES.items()):
                try:
                    metrics = recipe.card()["metrics"]
                except FileNotFoundError:
                    metrics = "(not trained)"
                specs = ", ".join(map(str, recipe.inputs))
                print(f"{name}: {recipe.description}\n  input {specs}\n  metrics {metrics}")
            for name, llm in sorted(llm_recipes().items()):
                try:
                    card = llm.card()
                    facts = f"{card['size_bytes']:,} bytes, metrics {card['metrics']}"
                except FileNotFoundError:
                    facts = "(no card)"
                where = llm.model_dir
                if not (where / "genai_config.json").is_file():
                    where_text = f"not built here: python -m edgeagent.models.zoo train {name}"
                else:
                    where_text = f"files in {where}"
                print(f"{name} (language model): {llm.description}\n  {facts}\n  {where_text}")
        elif args.command == "train" and args.name in LLM_RECIPE_NAMES:
            built = llm_recipes()[args.name].build(args.seed, args.out)
            print(f"built {built.name} (seed {built.seed}) in {built.seconds:.1f} s")
            for key, value in built.metrics.items():
                print(f"  {key}: {value:.4f}")
            for path in built.artifacts.values():
                print(f"  wrote {path} ({path.stat().st_size} bytes)")
        elif args.command == "train":
            result = RECIPES[args.name].train(args.seed, args.out)
            print(f"trained {result.name} (seed {result.seed}) in {result.seconds:.1f} s")
            for key, value in result.metrics.items():
                print(f"  {key}: {value:.4f}")
            for path in result.artifacts.values():
                print(f"  wrote {path} ({path.stat().st_size} bytes)")
        else:
            recipe = RECIPES[args.name]
            args.out.mkdir(parents=True, exist_ok=True)
            save_npz(args.out / "eval.npz", recipe.make_eval(args.seed))
            calibration = recipe.make_calibration(args.seed, args.samples)
            save_npz(args.out / "calibration.npz", calibration)
            print(f"wrote {args.out / 'eval.npz'} and {args.out / 'calibration.npz'}")
    except (TrainingUnavailable, LlmBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
