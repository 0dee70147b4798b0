"""LoRA adapters on the intent model: what a household gains, what it costs, in one run.

One synthetic household (``examples/adapters/household.yaml``: 40 phrases with its own idioms,
"make it cosy in the den") trains an adapter with ``edgeagent.models.lora.adapt`` for each seed;
then, against the base in the same run:

* **accuracy** on the household's held-out phrasing (``household-heldout.yaml``, 40 phrases never
  trained on) and on the zoo's own held-out test set (2,000 utterances: what the adapter must not
  forget), for the base alone and base + adapter; intent accuracy and exact match (all labelled
  heads right);
* **size**: the adapter file against the plain model and the LoRA base;
* **latency** of one utterance (batch 1, the same features every time) through
  ``OnnxSession.run``: the plain model, the LoRA base without an adapter, and the base with the
  adapter active, interleaved in rotating order over ``--rounds`` rounds of ``--runs`` runs each;
  the median over rounds of each round's p50/p99.

    python -m benchmarks.bench_adapter [--seeds 0 1 2] [--rounds 5] [--runs 2000] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as common
from edgeagent.models.lora import Score, adapt, score
from edgeagent.models.lora_adapter import load_adapted, zoo_base
from edgeagent.models.lora_examples import load_examples
from edgeagent.models.onnx_backend import OnnxSession
from edgeagent.models.zoo import RECIPES
from edgeagent.models.zoo.intent import featurize

EXAMPLES = common.REPO / "examples" / "adapters"
HEADS = ("intent", "kind", "room")


def _zoo_score(run: Callable[[dict[str, Any]], Any], ev: dict[str, Any]) -> dict[str, float]:
    out = run({"features": ev["features"]})
    right = [np.argmax(out[h], 1) == ev[f"labels_{h}"] for h in HEADS]
    return {
        "intent": float(np.mean(right[0])),
        "exact": float(np.mean(np.logical_and.reduce(right))),
    }


def _s(s: Score) -> dict[str, float]:
    return {"intent": s.intent, "exact": s.exact}


def accuracy(seeds: Sequence[int], work: Path, quiet: bool) -> dict[str, Any]:
    train = load_examples(EXAMPLES / "household.yaml")
    held = load_examples(EXAMPLES / "household-heldout.yaml")
    ev = RECIPES["intent"].make_eval(0)
    base = load_adapted("zoo:intent", None)
    per_seed = []
    for seed in seeds:
        common.progress(quiet, f"training seed {seed} …")
        result = adapt("zoo:intent", train, work / f"household-{seed}.onnx_adapter", seed=seed)
        adapted = load_adapted("zoo:intent", result.path)
        held_base, held_adapted = score(base.run, held), score(adapted.run, held)
        per_seed.append(
            {
                "seed": seed,
                "adapter": str(result.path),
                "bytes": result.bytes,
                "train_s": result.seconds,
                "examples": {"base": _s(result.before), "adapted": _s(result.after)},
                "held_out": {"base": _s(held_base), "adapted": _s(held_adapted)},
                "zoo_test": {
                    "base": _zoo_score(base.run, ev),
                    "adapted": _zoo_score(adapted.run, ev),
                },
            }
        )
    return {"household": len(train), "held_out": len(held), "seeds": per_seed}


def _timer(session: OnnxSession, feeds: dict[str, Any], runs: int) -> Callable[[], list[float]]:
    def measure() -> list[float]:
        out = []
        run = session.run
        for _ in range(runs):
            start = time.perf_counter()
            run(feeds)
            out.append(time.perf_counter() - start)
        return out

    return measure


def latency(adapter: Path, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    feeds = {"features": featurize("make it cosy in the den")[None]}
    sessions = {
        "plain model": OnnxSession(RECIPES["intent"].onnx_path),
        "LoRA base, no adapter": load_adapted("zoo:intent", None),
        "LoRA base + adapter": load_adapted("zoo:intent", adapter),
    }
    for s in sessions.values():
        s.warmup(200)
    samples = common.run_rounds(
        {name: _timer(s, feeds, runs) for name, s in sessions.items()}, rounds
    )
    out = {}
    for name, per_round in samples.items():
        p50 = [common.percentile(sorted(r), 50) * 1e6 for r in per_round]
        p99 = [common.percentile(sorted(r), 99) * 1e6 for r in per_round]
        out[name] = {"p50_us": statistics.median(p50), "p99_us": statistics.median(p99)}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        acc = accuracy(args.seeds, Path(tmp), args.quiet)
        common.progress(args.quiet, "latency …")
        lat = latency(Path(acc["seeds"][0]["adapter"]), args.rounds, args.runs)
    sizes = {
        "plain_model_bytes": RECIPES["intent"].onnx_path.stat().st_size,
        "lora_base_bytes": zoo_base("intent").stat().st_size,
        "adapter_bytes": acc["seeds"][0]["bytes"],
    }
    report = {"machine": common.machine_info(), "sizes": sizes, "accuracy": acc, "latency": lat}
    if args.json:
        common.print_json(report)
        return
    _print(report)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _print(report: dict[str, Any]) -> None:
    rows = []
    for s in report["accuracy"]["seeds"]:
        for part in ("held_out", "zoo_test"):
            b, a = s[part]["base"], s[part]["adapted"]
            rows.append(
                (
                    s["seed"],
                    part,
                    _pct(b["intent"]),
                    _pct(a["intent"]),
                    _pct(b["exact"]),
                    _pct(a["exact"]),
                    f"{s['train_s']:.2f}",
                )
            )
    print(
        common.markdown_table(
            (
                "seed",
                "set",
                "intent base",
                "intent +adapter",
                "exact base",
                "exact +adapter",
                "train s",
            ),
            rows,
            "rlrrrrr",
        )
    )
    sizes = report["sizes"]
    print()
    print(
        common.markdown_table(
            ("file", "bytes", "vs plain model"),
            [
                (k.removesuffix("_bytes"), v, _pct(v / sizes["plain_model_bytes"]))
                for k, v in sizes.items()
            ],
            "lrr",
        )
    )
    print()
    lat = report["latency"]
    plain = lat["plain model"]["p50_us"]
    print(
        common.markdown_table(
            ("session", "p50 µs", "p99 µs", "p50 vs plain"),
            [
                (k, f"{v['p50_us']:.1f}", f"{v['p99_us']:.1f}", f"{v['p50_us'] / plain:.2f}x")
                for k, v in lat.items()
            ],
            "lrrr",
        )
    )


if __name__ == "__main__":
    main()
