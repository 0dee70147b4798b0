"""LoRA adapters on the zoo's tiny LLM: what a household gains, what it costs, in one run.

One synthetic household (``examples/adapters/llm-household.yaml``: 40 requests with their plans,
"crank the whirly to 3") trains an adapter with ``edgeagent.models.llm_adapt.adapt_llm`` for each
seed; then, against the base in the same run:

* **exact-plan accuracy** (greedy, unconstrained; the answer equal to the expected plan,
  character for character) on the household's held-out phrasing (``llm-household-heldout.yaml``,
  24 requests never trained on) and on the recipe's own held-out set (``tinyllm_data.examples
  ("test", 300, 0)``, the card's test set: what the adapter must not forget), base alone and
  base + adapter;
* **size**: the adapter file against the plain model and the LoRA base (``model.onnx``);
* **tokens/s** (decode rate after the first token) and first-token latency through
  ``LlmSession.generate``, greedy, 64 new tokens at most, for the plain model, the LoRA base
  without an adapter and the base with the adapter active, interleaved in rotating order over
  ``--rounds`` rounds of ``--requests`` requests; the median over rounds of each round's median.

    python -m benchmarks.bench_llm_adapter [--seeds 0 1 2] [--rounds 5] [--requests 10] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from edgeagent.models.llm_adapt import adapt_llm, exact, generate_plans, to_example
from edgeagent.models.llm_backend import LlmSession, load_llm
from edgeagent.models.llm_lora_base import lora_folder
from edgeagent.models.llm_plan_examples import load_plan_examples
from edgeagent.models.zoo import llm_recipes
from edgeagent.models.zoo.tinyllm_data import examples

EXAMPLES = common.REPO / "examples" / "adapters"
PLAIN = llm_recipes()["tinyllm"].model_dir
BASE = lora_folder(PLAIN)
TEST = 300


def accuracy(seeds: Sequence[int], tmp: Path, quiet: bool) -> dict[str, Any]:
    household = load_plan_examples(EXAMPLES / "llm-household.yaml")
    held = load_plan_examples(EXAMPLES / "llm-household-heldout.yaml")
    held_ex = [to_example(e) for e in held]
    test = examples("test", TEST, 0)
    common.progress(quiet, "base …")
    base = {
        "held_out": exact(held_ex, generate_plans(BASE, held_ex, None)),
        "recipe_test": exact(test, generate_plans(BASE, test, None)),
    }
    out: list[dict[str, Any]] = []
    for seed in seeds:
        common.progress(quiet, f"seed {seed}: training …")
        r = adapt_llm("zoo:tinyllm", household, tmp / f"house-{seed}.onnx_adapter", seed=seed)
        common.progress(quiet, f"seed {seed}: scoring …")
        out.append(
            {
                "seed": seed,
                "adapter": str(r.path),
                "bytes": r.bytes,
                "train_s": round(r.seconds, 2),
                "steps": r.steps,
                "examples": {"base": r.before, "adapted": r.after},
                "held_out": exact(held_ex, generate_plans(BASE, held_ex, r.path)),
                "recipe_test": exact(test, generate_plans(BASE, test, r.path)),
            }
        )
    return {"base": base, "seeds": out, "n_held_out": len(held_ex), "n_recipe_test": len(test)}


def _one(llm: LlmSession, chats: Sequence[Any]) -> dict[str, float]:
    rates, firsts = [], []
    for chat in chats:
        g = llm.generate(chat, max_tokens=64)
        if g.tokens_per_s:
            rates.append(g.tokens_per_s)
        if g.first_token_ms is not None:
            firsts.append(g.first_token_ms)
    return {"tokens_per_s": statistics.median(rates), "first_token_ms": statistics.median(firsts)}


def speed(adapter: Path, rounds: int, requests: int) -> dict[str, dict[str, float]]:
    chats = [e.chat() for e in examples("test", requests, 7)]
    sessions = {
        "plain": load_llm(PLAIN),
        "lora_base": load_llm(BASE),
        "lora_base+adapter": load_llm("zoo:tinyllm", adapter=adapter),
    }
    for llm in sessions.values():
        _one(llm, chats[:2])  # warm-up
    per_round: list[dict[str, dict[str, float]]] = []
    for i in range(rounds):
        per_round.append(
            {name: _one(sessions[name], chats) for name in common.rotation(list(sessions), i)}
        )
    return {
        name: {
            key: round(statistics.median(r[name][key] for r in per_round), 2)
            for key in ("tokens_per_s", "first_token_ms")
        }
        for name in sessions
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        acc = accuracy(args.seeds, Path(tmp), args.quiet)
        common.progress(args.quiet, "speed …")
        spd = speed(Path(acc["seeds"][0]["adapter"]), args.rounds, args.requests)
    sizes = {
        "plain_model_bytes": (PLAIN / "model.onnx").stat().st_size,
        "lora_base_bytes": (BASE / "model.onnx").stat().st_size,
        "adapter_bytes": acc["seeds"][0]["bytes"],
    }
    report = {"machine": common.machine_info(), "sizes": sizes, "accuracy": acc, "speed": spd}
    if args.json:
        common.print_json(report)
        return
    _print(report)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _print(report: dict[str, Any]) -> None:
    acc = report["accuracy"]
    rows: list[tuple[object, ...]] = [
        ("base", _pct(acc["base"]["held_out"]), _pct(acc["base"]["recipe_test"]), "", "")
    ]
    for s in acc["seeds"]:
        rows.append(
            (
                f"+adapter seed {s['seed']}",
                _pct(s["held_out"]),
                _pct(s["recipe_test"]),
                _pct(s["examples"]["adapted"]),
                f"{s['train_s']:.1f}",
            )
        )
    header = (
        "model",
        f"household held-out ({acc['n_held_out']})",
        f"recipe test ({acc['n_recipe_test']})",
        "trained examples",
        "train s",
    )
    print(common.markdown_table(header, rows, "lrrrr"))
    print()
    sizes = report["sizes"]
    print(
        common.markdown_table(
            ("file", "bytes"),
            [(k.removesuffix("_bytes"), v) for k, v in sizes.items()],
            "lr",
        )
    )
    print()
    spd = report["speed"]
    print(
        common.markdown_table(
            ("model", "tokens/s p50", "first token ms p50"),
            [(k, v["tokens_per_s"], v["first_token_ms"]) for k, v in spd.items()],
            "lrr",
        )
    )
    print(f"\n{report['machine']}")


if __name__ == "__main__":
    main()
