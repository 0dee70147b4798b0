"""The plain-language router on a held-out set nobody tuning the router has read.

``benchmarks/nlu_heldout/heldout.yaml`` was written by someone who never saw the grammar (its
header says how), over the example fleet (``fleet.json``, the manifests of
``examples/smart-home``) plus four devices of the writer's own. Each case says what a careful
assistant would do: ``act`` (one right skill and input on the listed devices), ``read`` (answer
with a read skill) or ``no_act`` (actuate nothing). The router is scored as it would run in
``edgeagent ask``::

    right action     an act case carried out as labelled
    right answer     a read case answered by the right read skill on a right device
    right refusal    a no_act case not carried out (asked back, or answered with a read)
    safe miss        an act/read case asked back (nothing done)
    silent miss      an act case answered with a read: nothing done, but it looks done
    wrong answer     a read case answered by another read skill or device
    WRONG ACTUATION  any actuation that is not the labelled one (the target is zero)

Run ``python -m benchmarks.bench_nlu_heldout`` for the totals (by outcome and by class);
``--show`` also prints the cases that were not right (it prints the held-out sentences: people
tuning the router should not read them).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeagent.nlu import Catalog, Interpretation, Router, Unsure
from edgeagent.protocol import SkillSpec

HERE = Path(__file__).resolve().parent / "nlu_heldout"
OUTCOMES = (
    "right action",
    "right answer",
    "right refusal",
    "safe miss",
    "silent miss",
    "wrong answer",
    "WRONG ACTUATION",
)


@dataclass(frozen=True)
class Scored:
    text: str
    cls: str
    expect: str
    outcome: str
    got: str


def load_catalog(heldout: dict[str, Any]) -> Catalog:
    devices = json.loads((HERE / "fleet.json").read_text()) + heldout.get("extra_devices", [])
    return Catalog(
        [
            (d["device"], d["tags"], [SkillSpec.model_validate(s) for s in d["skills"]])
            for d in devices
        ]
    )


def _selected(catalog: Catalog, reading: Interpretation) -> set[str]:
    return {
        d.device
        for d in catalog.devices
        if any(s.name == reading.skill for s in d.skills)
        and all(d.tags.get(k) == v for k, v in reading.where.items())
    }


def _value_ok(want: Any, got: Any) -> bool:
    options = want if isinstance(want, list) else [want]
    for option in options:
        if isinstance(option, int | float) and isinstance(got, int | float):
            if not isinstance(option, bool) and math.isclose(option, got, abs_tol=0.051):
                return True
        elif option == got:
            return True
    return False


def score(catalog: Catalog, case: dict[str, Any], reading: Interpretation | Unsure) -> str:
    expect = case["expect"]
    if isinstance(reading, Unsure):
        return "right refusal" if expect == "no_act" else "safe miss"
    spec = next(
        s for d in catalog.devices for s in d.skills if s.name == reading.skill
    )  # the router only reads skills some device has
    selected = _selected(catalog, reading)
    allowed = set(case.get("devices", ()))
    right_skill = reading.skill == case.get("skill") and bool(selected) and selected <= allowed
    if spec.side_effect == "read":
        if expect == "no_act":
            return "right refusal"
        if expect == "act":
            return "silent miss"
        return "right answer" if right_skill else "wrong answer"
    if expect != "act" or not right_skill:
        return "WRONG ACTUATION"
    want_all = case.get("mode") == "all"
    if want_all != (reading.mode == "all") or (want_all and selected != allowed):
        return "WRONG ACTUATION"
    if not want_all and reading.mode == "one" and len(selected) > 1:
        return "WRONG ACTUATION"  # one of several, picked by the coordinator, not the user
    for key, want in (case.get("input") or {}).items():
        if key not in reading.input or not _value_ok(want, reading.input[key]):
            return "WRONG ACTUATION"
    return "right action"


def evaluate(path: Path = HERE / "heldout.yaml", router: Router | None = None) -> list[Scored]:
    heldout = yaml.safe_load(path.read_text())
    catalog = load_catalog(heldout)
    router = router or Router(catalog)
    out = []
    for case in heldout["cases"]:
        reading = router.route(case["text"])
        got = (
            f"unsure: {reading.reason}"
            if isinstance(reading, Unsure)
            else f"{reading.skill} {reading.input} where={reading.where} mode={reading.mode}"
        )
        out.append(
            Scored(case["text"], case["class"], case["expect"], score(catalog, case, reading), got)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print the cases not right")
    args = parser.parse_args()
    results = evaluate()
    totals = Counter(r.outcome for r in results)
    print(f"{len(results)} held-out cases")
    for outcome in OUTCOMES:
        print(f"  {outcome:16} {totals.get(outcome, 0)}")
    print("\nby class (outcome counts):")
    for cls in sorted({r.cls for r in results}):
        c = Counter(r.outcome for r in results if r.cls == cls)
        print(f"  {cls:20} " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    if args.show:
        print()
        for r in results:
            if not r.outcome.startswith("right"):
                print(f"[{r.outcome}] ({r.cls}, expect {r.expect}) {r.text!r}\n    -> {r.got}")


if __name__ == "__main__":
    main()
