"""The coordinator's routing decision as the fleet grows, and under hostile manifests.

Measures, in one run, the time of one routing decision (``Registry.candidates`` then
``routing.decide``, what the coordinator does per call before it forwards) for a skill that 4
lamps have, in fleets of:

1. **baseline**: 10 devices (4 lamps, 6 others), each with 20 skills.
2. **10,000 devices**: the same 4 lamps among 9,996 other devices of 20 skills each.
3. **hostile**: the baseline plus 20 made-up devices whose manifests list the coordinator's
   maximum of skills (``max_skills``, 256), the lamp's skill among them but offline, plus 20
   manifests of 10,000 skills offered to the coordinator's feed (refused: counted, not held).

Also the memory the registry holds in case 3 against case 1 (tracemalloc). The issue this
answers measured 20 manifests of 10,000 skills adding about 370 MB and slowing routing 6×.

    python -m benchmarks.bench_routing [--calls 20000] [--json]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from typing import Any

from benchmarks import _common as common
from edgeagent.limits import CoordinatorLimits
from edgeagent.protocol import Manifest, SkillSpec, StateMessage
from edgeagent.registry import Registry
from edgeagent.routing import decide

LAMP_SKILL = "set_brightness"


def spec(name: str) -> SkillSpec:
    return SkillSpec(
        name=name,
        side_effect="actuate",
        idempotent=True,
        input_schema={"type": "object"},
        output_schema={},
        max_concurrency=1,
        max_queue=8,
        timeout_s=10.0,
    )


def manifest(device: str, skills: list[str], tags: dict[str, str]) -> Manifest:
    return Manifest(
        device=device,
        fleet="bench",
        tags=tags,
        skills=[spec(s) for s in skills],
        max_payload=65536,
        agent_version="bench",
    )


def build(others: int, hostile: int, huge: int) -> tuple[Registry, int]:
    """A registry fed like the coordinator's; returns it and how many manifests were refused."""
    limits = CoordinatorLimits(max_devices=20_000)
    reg = Registry(limits.max_devices)
    refused = 0

    def feed(m: Manifest, online: bool = True) -> None:
        nonlocal refused
        if len(m.skills) > limits.max_skills:  # what Coordinator._fleet_problem refuses
            refused += 1
            return
        reg.apply(m, 0.0)
        status = "online" if online else "offline"
        reg.apply(StateMessage(device=m.device, status=status), 0.0)

    common = [f"skill_{i}" for i in range(19)]
    for i in range(4):
        feed(manifest(f"lamp-{i}", [LAMP_SKILL, *common], {"kind": "lamp", "room": f"r{i}"}))
    for i in range(others):
        feed(manifest(f"dev-{i}", [f"other_{i % 50}", *common], {"kind": "thing"}))
    for i in range(hostile):
        names = [LAMP_SKILL, *(f"x{i}_{k}" for k in range(limits.max_skills - 1))]
        feed(manifest(f"evil-{i}", names, {"kind": "lamp"}), online=False)
    for i in range(huge):
        feed(manifest(f"huge-{i}", [f"h{k}" for k in range(10_000)], {}))
    return reg, refused


def time_decisions(reg: Registry, calls: int) -> float:
    """Median microseconds per decision over 5 rounds."""
    rng = random.Random(1)
    where = {"kind": "lamp"}
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            candidates, rejected = reg.candidates(LAMP_SKILL, where)
            decide(LAMP_SKILL, where, candidates, rejected, rng)
        rounds.append((time.perf_counter() - t0) / (calls // 5) * 1e6)
    return common.median(rounds)


def held_bytes(others: int, hostile: int, huge: int) -> int:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    reg, _ = build(others, hostile, huge)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del reg
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = {"baseline (10 devices)": (6, 0, 0), "10,000 devices": (9_996, 0, 0),
             "hostile manifests": (6, 20, 20)}  # fmt: skip
    out: dict[str, Any] = {}
    for name, shape in cases.items():
        reg, refused = build(*shape)
        out[name] = {
            "devices": len(reg.devices),
            "refused_manifests": refused,
            "us_per_decision": round(time_decisions(reg, args.calls), 2),
            "registry_bytes": held_bytes(*shape),
        }
    base = out["baseline (10 devices)"]
    for row in out.values():
        row["vs_baseline"] = round(row["us_per_decision"] / base["us_per_decision"], 2)
    if args.json:
        common.print_json(out)
        return
    print(f"{'case':24} {'devices':>8} {'refused':>8} {'µs/decision':>12} {'× base':>7} "
          f"{'registry MB':>12}")  # fmt: skip
    for name, row in out.items():
        print(
            f"{name:24} {row['devices']:>8} {row['refused_manifests']:>8} "
            f"{row['us_per_decision']:>12} {row['vs_baseline']:>7} "
            f"{row['registry_bytes'] / 1e6:>12.2f}"
        )


if __name__ == "__main__":
    main()
