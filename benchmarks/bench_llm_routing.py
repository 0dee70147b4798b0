"""The LLM router layer on held-out requests: plans with and without constrained decoding.

The requests are the tiny LLM's held-out split (:func:`edgeagent.models.zoo.tinyllm_data.
examples` ``"test"``: templates never seen in training, single steps, two-step requests and
refusals) over its demo house. For each request, in the same run and on the same model:

    unconstrained   the model's greedy answer with no schema (the baseline): valid JSON?
                    a plan whose every step passes the pure checks? the exact plan?
    constrained     the same with the plan schema as guidance (:mod:`edgeagent.nlu.llm_schema`)
    router without llm   the baseline of the router: exact, grammar, model
    router          the whole router with the LLM layer (exact, grammar, model, llm), as
                    ``edgeagent ask --llm`` runs it: how many readings made calls ("acted"),
                    exact plan (a refusal counts when the router is unsure), and INVALID
                    CALLS (a step no device can run, or an input its schema refuses: the
                    target is zero)

Run ``python -m benchmarks.bench_llm_routing`` (the zoo's tiny LLM), ``--model zoo:smollm2`` or
``--model FOLDER`` (an onnxruntime-genai folder); ``--json`` for the report as JSON.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common.output import markdown_table, print_json, progress
from edgeagent.models.zoo.tinyllm_data import Example, demo_catalog, demo_tools, examples
from edgeagent.nlu import Catalog, Interpretation, Plan, Router, Unsure
from edgeagent.nlu.layer_llm import MAX_TOKENS, Completer, SessionCompleter
from edgeagent.nlu.llm_check import check_step
from edgeagent.nlu.llm_prompt import PlanError, Step, messages, parse_plan
from edgeagent.nlu.llm_schema import PlanSchema, plan_schema

N_REQUESTS = 40
SEED = 7


@dataclass
class Tally:
    """Counts for one way of asking."""

    n: int = 0
    valid_json: int = 0
    valid_plan: int = 0
    exact: int = 0
    invalid_calls: int = 0
    seconds: list[float] = field(default_factory=list)
    exact_by_kind: dict[str, int] = field(default_factory=dict)
    acted_by_layer: dict[str, int] = field(default_factory=dict)
    """Router only: readings that made calls, by the layer that read them."""

    def row(self, name: str) -> list[str]:
        """A table row; for the router, "valid" columns count the readings that made calls."""
        per = sum(self.seconds) / max(len(self.seconds), 1)
        acted = name.startswith("router")
        return [
            name,
            str(self.n),
            f"acted {self.valid_json} ({_counts(self.acted_by_layer)})"
            if acted
            else _pct(self.valid_json, self.n),
            "-" if acted else _pct(self.valid_plan, self.n),
            _pct(self.exact, self.n),
            _counts(self.exact_by_kind),
            str(self.invalid_calls),
            f"{per:.2f}",
        ]


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / max(n, 1):.0f}%)"


def same_steps(got: Sequence[Step], want: Sequence[Step]) -> bool:
    """The same calls in the same order (``21`` and ``21.0`` are the same number)."""
    return len(got) == len(want) and all(
        (g.skill, dict(g.where), dict(g.input)) == (w.skill, dict(w.where), dict(w.input))
        for g, w in zip(got, want, strict=True)
    )


def score_answer(
    text: str, want: Sequence[Step], catalog: Catalog, ps: PlanSchema, t: Tally
) -> None:
    """Count one raw answer: valid JSON, every step valid, the exact plan."""
    t.n += 1
    try:
        steps = parse_plan(text)
    except PlanError:
        return
    t.valid_json += 1
    if all(not isinstance(check_step(s, i, catalog, ps), str) for i, s in enumerate(steps)):
        t.valid_plan += 1
    t.exact += same_steps(steps, want)


def reading_steps(reading: Interpretation | Plan | Unsure) -> tuple[Step, ...] | None:
    """The calls a router reading makes (None: it makes none)."""
    if isinstance(reading, Unsure):
        return None
    calls = reading.steps if isinstance(reading, Plan) else (reading,)
    return tuple(Step(c.skill, c.where, c.input) for c in calls)


def invalid_calls(catalog: Catalog, ps: PlanSchema, steps: Sequence[Step]) -> list[str]:
    """Why each call cannot run as made (empty: all valid). Skills outside the LLM's schema
    (the grammar's, the model's) are checked for a device only."""
    out: list[str] = []
    for i, s in enumerate(steps):
        if not catalog.devices_with(s.skill, s.where):
            out.append(f"{s.skill} on {dict(s.where)}: no device")
        elif s.skill in ps.inputs and isinstance(found := check_step(s, i, catalog, ps), str):
            out.append(found)
    return out


def score_router(
    router: Router, e: Example, catalog: Catalog, ps: PlanSchema, t: Tally
) -> list[str]:
    t.n += 1
    reading = router.route_plan(e.text)
    steps = reading_steps(reading)
    if steps is None:
        t.exact += not e.steps  # a refusal asked for and given
        return []
    t.valid_json += 1
    t.valid_plan += 1
    layer = str(getattr(reading, "layer", "?"))
    t.acted_by_layer[layer] = t.acted_by_layer.get(layer, 0) + 1
    problems = invalid_calls(catalog, ps, steps)
    t.invalid_calls += bool(problems)
    t.exact += not problems and same_steps(steps, e.steps)
    return problems


def evaluate(
    completer: Completer, requests: Sequence[Example], quiet: bool = True
) -> dict[str, Tally]:
    """The three tallies over ``requests`` (see the module doc)."""
    catalog = demo_catalog()
    ps = plan_schema(demo_tools())
    tallies = {
        "unconstrained": Tally(),
        "constrained": Tally(),
        "router without llm": Tally(),
        "router": Tally(),
    }
    routers = {"router without llm": Router(catalog), "router": Router(catalog, llm=completer)}
    for k, e in enumerate(requests):
        prompt = messages(demo_tools(), e.text)
        for name, schema in (("unconstrained", None), ("constrained", ps.text)):
            start = time.perf_counter()
            text = completer.complete(
                prompt, schema, seed=0, temperature=0.0, max_tokens=MAX_TOKENS
            )
            tallies[name].seconds.append(time.perf_counter() - start)
            before = tallies[name].exact
            score_answer(text, e.steps, catalog, ps, tallies[name])
            _by_kind(tallies[name], e, before)
        problems: list[str] = []
        for name, router in routers.items():
            start = time.perf_counter()
            before = tallies[name].exact
            problems += score_router(router, e, catalog, ps, tallies[name])
            _by_kind(tallies[name], e, before)
            tallies[name].seconds.append(time.perf_counter() - start)
        progress(quiet, f"{k + 1}/{len(requests)} {e.kind}: {'; '.join(problems) or 'ok'}")
    return tallies


def _by_kind(t: Tally, e: Example, before: int) -> None:
    t.exact_by_kind[e.kind] = t.exact_by_kind.get(e.kind, 0) + (t.exact - before)


def held_out(n: int = N_REQUESTS, seed: int = SEED) -> list[Example]:
    return examples("test", n, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:tinyllm", help="zoo:tinyllm, zoo:smollm2, a folder")
    parser.add_argument("-n", type=int, default=N_REQUESTS, help="held-out requests")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    from edgeagent.models.llm_backend import LlmSettings, load_llm

    session = load_llm(args.model, LlmSettings(threads=args.threads))
    requests = held_out(args.n, args.seed)
    kinds = {k: sum(e.kind == k for e in requests) for k in ("single", "multi", "refusal")}
    tallies = evaluate(SessionCompleter(session), requests, args.quiet)
    report: dict[str, Any] = {
        "model": args.model,
        "requests": kinds,
        "seed": args.seed,
        "tallies": {k: {**vars(t), "seconds": sum(t.seconds)} for k, t in tallies.items()},
    }
    if args.json:
        print_json(report)
        return
    print(f"model {args.model}; {len(requests)} held-out requests {kinds} (seed {args.seed})")
    header = ["asked", "n", "valid JSON", "valid plan", "exact plan", "exact by kind",
              "invalid calls", "s/request"]  # fmt: skip
    print(markdown_table(header, [t.row(k) for k, t in tallies.items()], "lrrrrlrr"))


if __name__ == "__main__":
    main()
